"""Recorded datasets (offline), the user's own tables, and the partitioners."""

from __future__ import annotations

import gzip
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from dpfed.build import build_simulation, config_group
from dpfed.data import partition as part
from dpfed.data.markets import Markets, day_targets, lagged_features, load_prices, log_returns
from dpfed.data.recorded import package_file
from dpfed.data.shakespeare import BOS, EOS, VOCAB_SIZE, Shakespeare, TFFShakespeare, parse_play
from dpfed.data.table import Table
from dpfed.data.vowels import Vowels, parse_ts
from dpfed.data.watch import Watch
from dpfed.errors import ConfigError
from tests.conftest import compose_config

# Run by `pytest -m slow` (and CI), not by default: Shakespeare's round (watch's runs by default;
# DP-SGD on Shakespeare in test_backends).
SLOW_CASES = {
    "test_one_federated_round_on_real_data[overrides0]",
}

BASE = dict(num_clients=None, examples_mean=None, eval_fraction=0.2, seed=0)


def check_contract(d):
    """Every client's arrays match the element spec; train and eval are non-empty."""
    x_spec, y_spec = d.element_spec
    for i in range(d.num_clients):
        for split in (d.train, d.eval):
            x, y = split.arrays(i)
            assert len(x) == len(y) >= 1
            assert x.shape[1:] == tuple(x_spec.shape) and x.dtype == x_spec.dtype.as_numpy_dtype
            assert y.shape[1:] == tuple(y_spec.shape) and y.dtype == y_spec.dtype.as_numpy_dtype
            assert np.isfinite(x).all() and np.isfinite(y).all()
    ds = d.train.create_tf_dataset_for_client("0")
    assert ds.element_spec == d.element_spec


def same_clients(a, b):
    assert a.num_clients == b.num_clients and a.client_names == b.client_names
    for i in range(a.num_clients):
        for sa, sb in ((a.train, b.train), (a.eval, b.eval)):
            for u, v in zip(sa.arrays(i), sb.arrays(i), strict=True):
                np.testing.assert_array_equal(u, v)


# --------------------------------------------------------------------------- partitioners
def label_entropy(parts, labels):
    """Mean entropy (bits) of the label distribution of each client."""
    out = []
    for idx in parts:
        p = np.bincount(labels[idx], minlength=labels.max() + 1) / len(idx)
        p = p[p > 0]
        out.append(-(p * np.log2(p)).sum())
    return float(np.mean(out))


LABELS = np.random.default_rng(0).integers(0, 10, size=3000)


@pytest.mark.parametrize("method", part.PARTITIONS)
def test_partitions_cover_every_index_once_and_respect_min_examples(method):
    parts = part.partition(method, LABELS, 40, alpha=0.1, seed=3, min_examples=5)
    assert len(parts) == 40
    merged = np.concatenate(parts)
    assert len(merged) == len(LABELS) and len(np.unique(merged)) == len(LABELS)
    assert min(len(p) for p in parts) >= 5
    again = part.partition(method, LABELS, 40, alpha=0.1, seed=3, min_examples=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = part.partition(method, LABELS, 40, alpha=0.1, seed=4, min_examples=5)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_small_alpha_is_more_label_skewed_than_large_alpha():
    skewed = label_entropy(part.dirichlet(LABELS, 30, 0.05, seed=1), LABELS)
    mild = label_entropy(part.dirichlet(LABELS, 30, 100.0, seed=1), LABELS)
    iid = label_entropy(part.iid(len(LABELS), 30, seed=1), LABELS)
    assert skewed < mild - 1.0  # bits
    assert mild == pytest.approx(iid, abs=0.2) and iid > math.log2(10) - 0.3


def test_quantity_skew_varies_sizes_with_alpha_and_iid_does_not():
    def spread(parts):
        sizes = np.array([len(p) for p in parts])
        return sizes.std() / sizes.mean()

    n = len(LABELS)
    assert spread(part.quantity(n, 30, 0.2, seed=2)) > 3 * spread(part.quantity(n, 30, 50, seed=2))
    assert (
        max(len(p) for p in part.iid(n, 30, seed=2)) - min(len(p) for p in part.iid(n, 30, 2)) <= 1
    )


def test_partition_rejects_too_many_clients():
    with pytest.raises(ConfigError, match="num_clients"):
        part.iid(10, 6, seed=0, min_examples=2)
    with pytest.raises(ConfigError, match="alpha"):
        part.dirichlet(LABELS, 5, 0.0, seed=0)


# --------------------------------------------------------------------------- shakespeare
PLAY = """# A Play

## ACT I

### SCENE I. A heath.

_Enter FIRST and SECOND, with
Attendants_

**FIRST**  
Fair is foul,  
and foul is fair.

**SECOND**  
_\\[Aside]_ Hover  
through the fog.

_Exit FIRST_

And filthy air.

*Sound a horn.*

**FIRST**  
[Within]_  
Anon\\--anon!
"""


def test_parse_play_keeps_speeches_and_drops_stage_directions():
    speeches = parse_play(PLAY)
    assert speeches == {
        "FIRST": ["Fair is foul, and foul is fair.", "Anon--anon!"],
        "SECOND": ["Hover through the fog. And filthy air."],
    }


@pytest.fixture(scope="module")
def shakespeare():
    return Shakespeare(seq_len=80, **BASE)


def test_shakespeare_clients_snippets_and_next_character_targets(shakespeare):
    d = shakespeare
    assert d.num_clients > 500 and d.vocab_size == VOCAB_SIZE == 90 and d.num_features is None
    assert d.labels == "every_step" and d.num_classes == VOCAB_SIZE
    assert d.element_spec == (tf.TensorSpec([80], tf.int32), tf.TensorSpec([80], tf.int32))
    for i in range(0, d.num_clients, 50):
        for split in (d.train, d.eval):
            x, y = split.arrays(i)
            np.testing.assert_array_equal(y[:, :-1], x[:, 1:])  # y[t] == x[t + 1]
            assert x.min() >= 0 and x.max() < VOCAB_SIZE
    name = "macbeth/DUNCAN"
    x, _ = d.train.arrays(d.client_names.index(name))
    speeches = Shakespeare.corpus()[name]
    first = np.array([ord(c) for c in speeches[0][:20]])
    decoded = x.ravel()[1:21]
    assert x.ravel()[0] == BOS and len(np.unique(decoded)) > 5
    # characters map one to one: equal characters <-> equal ids
    assert ((first[:, None] == first[None, :]) == (decoded[:, None] == decoded[None, :])).all()


def test_shakespeare_split_is_leaf_like_and_deterministic(shakespeare):
    d = shakespeare
    corpus = Shakespeare.corpus()
    i = d.client_names.index("hamlet/HAMLET")
    speeches = corpus["hamlet/HAMLET"]
    n_train = round(len(speeches) * 0.8)
    eos_train = (d.train.arrays(i)[0] == EOS).sum() + (d.train.arrays(i)[1][:, -1] == EOS).sum()
    eos_eval = (d.eval.arrays(i)[0] == EOS).sum() + (d.eval.arrays(i)[1][:, -1] == EOS).sum()
    assert (eos_train, eos_eval) == (n_train, len(speeches) - n_train)  # one EOS per speech
    assert all(len(corpus[n]) >= 10 for n in d.client_names)
    small = Shakespeare(seq_len=80, **{**BASE, "num_clients": 30, "examples_mean": 5})
    assert small.num_clients == 30
    sizes = [small.num_examples(i) for i in range(30)]
    assert np.mean(sizes) <= 5 + 2
    same_clients(small, Shakespeare(seq_len=80, **{**BASE, "num_clients": 30, "examples_mean": 5}))
    other = Shakespeare(seq_len=80, **{**BASE, "num_clients": 30, "seed": 1})
    assert other.client_names != small.client_names


def make_tff_cache(directory, clients):
    """A tiny stand-in for TFF's shakespeare.sqlite, in TFF's SqlClientData layout."""
    db = sqlite3.connect(directory / "shakespeare.sqlite")
    db.execute(
        "CREATE TABLE examples (split_name TEXT, client_id TEXT, serialized_example_proto BLOB)"
    )
    db.execute("CREATE TABLE client_metadata (client_id TEXT, split_name TEXT, num_examples INT)")
    for cid, splits in clients.items():
        for split, snippets in splits.items():
            db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, len(snippets)))
            for text in snippets:
                feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()]))
                proto = tf.train.Example(features=tf.train.Features(feature={"snippets": feature}))
                db.execute(
                    "INSERT INTO examples VALUES (?, ?, ?)",
                    (split, cid, proto.SerializeToString()),
                )
    db.commit()
    db.close()


def test_tff_shakespeare_without_a_cache_fails_before_any_download(tmp_path, monkeypatch):
    from dpfed.runtime import tff

    def no_download(*args, **kwargs):
        raise AssertionError("load_data must not be called without a cached file")

    monkeypatch.setattr(tff.simulation.datasets.shakespeare, "load_data", no_download)
    with pytest.raises(ConfigError) as err, config_group("dataset"):
        TFFShakespeare(cache_dir=str(tmp_path / "empty"), seq_len=80, **BASE)
    assert err.value.key == "dataset.cache_dir"
    assert "shakespeare.sqlite" in str(err.value) and "network" in str(err.value)


def test_tff_shakespeare_reads_tffs_train_and_test_splits_from_the_cache(tmp_path):
    make_tff_cache(
        tmp_path,
        {
            "A": {"train": ["To be, or not to be", "that is the question"], "test": ["Ay."]},
            "B": {"train": ["Out, out, brief candle!"], "test": ["Life's but a walking shadow"]},
        },
    )
    d = TFFShakespeare(cache_dir=str(tmp_path), seq_len=10, **BASE)
    assert d.client_names == ["A", "B"] and d.num_clients == 2
    x, y = d.train.arrays(0)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    stream = np.concatenate([x, y[:, -1:]], axis=1).ravel()
    assert x.shape[1] == 10 and (stream == BOS).sum() == (stream == EOS).sum() == 2  # 2 snippets
    assert (d.eval.arrays(1)[0] == BOS).sum() == 1


# --------------------------------------------------------------------------- watch
def test_watch_has_ten_subjects_seven_exercises_and_client_standardization():
    d = Watch(seq_len=50, stride=25, standardize="client", **BASE)
    assert d.num_clients == 10 and d.num_classes == 7 and d.num_features == 6
    check_contract(d)
    for i in range(d.num_clients):
        x, y = d.train.arrays(i)
        assert set(np.unique(y)) == set(range(7))
        np.testing.assert_allclose(x.mean(axis=(0, 1)), 0, atol=1e-3)
        np.testing.assert_allclose(x.std(axis=(0, 1)), 1, atol=1e-2)
    raw = Watch.raw()
    first = np.flatnonzero(raw["subject"] == 1)[0]
    plain = Watch(seq_len=50, stride=25, standardize="none", **BASE)
    x, y = plain.train.arrays(0)
    np.testing.assert_allclose(x[0], raw["X"][first][:50].astype(np.float32))
    assert y[0] == raw["y"][first]
    same_clients(d, Watch(seq_len=50, stride=25, standardize="client", **BASE))


def test_watch_eval_windows_do_not_overlap_training_windows():
    d = Watch(seq_len=50, stride=10, standardize="none", **BASE)
    raw = Watch.raw()
    series = raw["X"][np.flatnonzero(raw["subject"] == 1)[0]].astype(np.float32)
    x_train, x_eval = d.train.arrays(0)[0], d.eval.arrays(0)[0]
    where = {row.tobytes(): i for i, row in enumerate(series)}  # rows of subject 1's first take
    train_at = [where[r.tobytes()] for w in x_train for r in w if r.tobytes() in where]
    eval_at = [where[r.tobytes()] for w in x_eval for r in w if r.tobytes() in where]
    assert train_at and eval_at and max(train_at) < min(eval_at)  # held out after, no overlap
    assert max(eval_at) >= len(series) - 10  # the recording's end (within one stride) evaluates
    assert len(series) - min(eval_at) == pytest.approx(0.2 * len(series), abs=10)


# --------------------------------------------------------------------------- vowels
def test_parse_ts_reads_japanese_vowels():
    path = package_file("sktime", "datasets", "data", "JapaneseVowels", "JapaneseVowels_TRAIN.ts")
    series, labels = parse_ts(path)
    assert len(series) == 270 and {s.shape[1] for s in series} == {12}
    assert min(len(s) for s in series) >= 7 and max(len(s) for s in series) <= 29
    assert sorted(set(labels)) == [str(k) for k in range(1, 10)]
    data = [ln for ln in path.read_text().splitlines() if ln and ln[0] not in "#@"]
    first = [float(v) for v in data[0].split(":")[0].split(",")]
    np.testing.assert_allclose(series[0][:, 0], first, rtol=1e-6)


def test_vowels_speaker_task_is_partitioned():
    d = Vowels(
        task="speaker", partition="dirichlet", alpha=0.1, seq_len=20, **{**BASE, "num_clients": 15}
    )
    assert d.num_clients == 15 and d.task == "classification" and d.num_classes == 9
    check_contract(d)
    total = sum(d.num_examples(i) for i in range(15))
    assert total == 640
    iid = Vowels(task="speaker", partition="iid", seq_len=20, **{**BASE, "num_clients": 15})

    def labels(v):
        return [np.concatenate([v.train.arrays(i)[1], v.eval.arrays(i)[1]]) for i in range(15)]

    assert label_entropy_of(labels(d)) < label_entropy_of(labels(iid)) - 0.5


def label_entropy_of(client_labels):
    """Mean entropy (bits) of each client's label distribution."""
    out = []
    for ys in client_labels:
        p = np.bincount(ys, minlength=9) / len(ys)
        out.append(-(p[p > 0] * np.log2(p[p > 0])).sum())
    return np.mean(out)


def test_vowels_next_frame_targets_the_next_frames_coefficient():
    d = Vowels(task="next_frame", coefficient=0, seq_len=20, **BASE)
    assert d.num_clients == 9 and d.task == "regression" and d.num_classes == 1
    check_contract(d)
    path = package_file("sktime", "datasets", "data", "JapaneseVowels", "JapaneseVowels_TRAIN.ts")
    lines = [ln for ln in path.read_text().splitlines() if ln and ln[0] not in "#@"]
    speaker1 = [ln for ln in lines if ln.rsplit(":", 1)[1].strip() == "1"][0]
    coef0 = [float(v) for v in speaker1.split(":")[0].split(",")]
    x, y = d.train.arrays(0)
    assert y[0] == pytest.approx(coef0[1]) and y[1] == pytest.approx(coef0[2])
    assert x[0, -1, 0] == pytest.approx(coef0[0]) and (x[0, :-1] == 0).all()  # padded in front
    np.testing.assert_allclose(x[1, -2:, 0], coef0[:2], rtol=1e-6)


# --------------------------------------------------------------------------- markets
def test_markets_return_target_is_the_next_days_log_return_from_the_csv():
    d = Markets(
        instruments=["sp500"],
        client_by="instrument",
        target="return",
        seq_len=10,
        lags=3,
        norm_window=20,
        stride=1,
        labels="last",
        **BASE,
    )
    assert d.num_clients == 1 and d.task == "regression" and d.num_features == 3
    check_contract(d)
    path = package_file("arch", "data", "sp500", "sp500.csv.gz")
    with gzip.open(path, "rt") as f:
        rows = [line.strip().split(",") for line in f][1:]
    close = np.array([float(r[5]) for r in rows])  # Adj Close, already in date order
    first = 20 + 3 - 1  # first day (in returns) with a full history
    _, y = d.train.arrays(0)
    for k in (0, 7, 500):
        t = first + k + 10 - 1  # the window's last day, as an index of the returns
        expected = 100 * math.log(close[t + 2] / close[t + 1])  # return t -> t + 1
        assert y[k] == pytest.approx(expected, rel=1e-4)
    direction = Markets(
        instruments=["sp500"],
        client_by="instrument",
        target="direction",
        seq_len=10,
        lags=3,
        norm_window=20,
        **BASE,
    )
    np.testing.assert_array_equal(direction.train.arrays(0)[1], (y > 0).astype(np.int32))


def test_markets_volatility_target_compares_the_next_and_last_horizons_realized_variance():
    r = np.random.default_rng(1).normal(size=40)
    y = day_targets(r, "volatility", 3)
    for t in (2, 10, 36):  # days with 3 returns before (t included) and 3 after
        assert y[t] == float(np.mean(r[t + 1 : t + 4] ** 2) > np.mean(r[t - 2 : t + 1] ** 2))
    assert np.isnan(y[:2]).all() and np.isnan(y[-3:]).all() and np.isfinite(y[2:-3]).all()
    d = Markets(
        instruments=["sp500"],
        client_by="instrument",
        target="volatility",
        horizon=3,
        seq_len=10,
        lags=3,
        norm_window=20,
        **BASE,
    )
    assert d.task == "classification" and d.num_classes == 2
    check_contract(d)
    returns = log_returns(load_prices("sp500"))
    first = 20 + 3 - 1
    _, y_train = d.train.arrays(0)
    x_eval, y_eval = d.eval.arrays(0)
    for k in (0, 7, 500):
        t = first + k + 10 - 1  # the window's last day
        past, future = returns[t - 2 : t + 1], returns[t + 1 : t + 4]
        assert y_train[k] == int(np.mean(future**2) > np.mean(past**2))
    # the last training target reads returns up to the first evaluation day's, no further
    # (as with the next day's direction), so none spans an evaluation target's returns
    n = len(returns) - 3 - first  # days with features and a target
    n_eval = int(round(n * 0.2))
    last_train_day = first + len(y_train) - 1 + 10 - 1
    first_eval_day = first + n - n_eval
    assert last_train_day + 3 == first_eval_day and len(y_eval) == n_eval - 10 + 1
    assert 0.3 < y_train.mean() < 0.7  # about as often up as down
    with pytest.raises(ConfigError, match="horizon"):
        Markets(target="direction", horizon=5, seq_len=10, **BASE)
    with pytest.raises(ConfigError, match="horizon"):
        Markets(target="volatility", horizon=0, seq_len=10, **BASE)


def test_markets_features_do_not_look_ahead_and_windows_make_many_clients():
    r = np.random.default_rng(0).normal(size=300)
    changed = r.copy()
    changed[200:] *= 5
    a, b = lagged_features(r, 4, 30), lagged_features(changed, 4, 30)
    np.testing.assert_array_equal(a[:200], b[:200])
    assert np.isnan(a[:32]).any() and np.isfinite(a[33:]).all()
    d = Markets(seq_len=20, client_by="window", window_days=250, **BASE)
    assert d.num_clients > 50 and d.num_features == 5
    assert any(n.startswith("vix/") for n in d.client_names)
    check_contract(d)


# --------------------------------------------------------------------------- table
def write_table(tmp_path, rows=30, clients=("a", "b", "c"), name="data.csv"):
    rng = np.random.default_rng(0)
    frames = []
    for c in clients:
        t = rng.permutation(rows)  # shuffled: the order column must sort them
        frames.append(
            pd.DataFrame(
                {
                    "user": c,
                    "time": t,
                    "x1": t * 1.0 + 100 * (ord(c) - 97),
                    "x2": rng.normal(size=rows),
                    "label": t % 3,
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def table(path, **overrides):
    kwargs = dict(
        path=str(path),
        feature_columns=["x1", "x2"],
        target_column="label",
        client_column="user",
        order_column="time",
        task="classification",
        labels="last",
        stride=1,
        standardize="none",
        seq_len=5,
        **BASE,
    )
    kwargs.update(overrides)
    return Table(**kwargs)


@pytest.mark.parametrize("name", ["data.csv", "data.parquet"])
def test_table_windows_rows_in_order_per_client(tmp_path, name):
    d = table(write_table(tmp_path, name=name))
    assert d.num_clients == 3 and d.client_names == ["a", "b", "c"] and d.num_classes == 3
    check_contract(d)
    x, y = d.train.arrays(1)  # client "b": x1 = time + 100
    np.testing.assert_array_equal(x[0, :, 0], np.arange(5) + 100)
    np.testing.assert_array_equal(x[3, :, 0], np.arange(3, 8) + 100)
    assert y[0] == 4 % 3 and y[3] == 7 % 3  # the target of the window's last row
    xe, _ = d.eval.arrays(1)
    assert xe[0, 0, 0] == 124  # the last 20% (6 rows, at least seq_len) evaluate
    assert x[:, :, 0].max() < 124  # no training window reaches them
    steps = table(write_table(tmp_path, name=name), labels="every_step")
    np.testing.assert_array_equal(steps.train.arrays(1)[1][0], np.arange(5) % 3)


def test_table_without_client_column_is_partitioned(tmp_path):
    d = table(
        write_table(tmp_path),
        client_column=None,
        order_column=None,
        num_clients=4,
        partition="quantity",
        alpha=1.0,
    )
    assert d.num_clients == 4
    check_contract(d)
    assert sum(d.num_examples(i) for i in range(4)) == 90 - 5 + 1


def test_table_regression_and_named_classes(tmp_path):
    path = write_table(tmp_path)
    frame = pd.read_csv(path)
    frame["label"] = np.where(frame["time"] % 2 == 0, "even", "odd")
    frame["value"] = frame["time"] * 0.5
    frame.to_csv(path, index=False)
    d = table(path)
    assert d.class_names == ["even", "odd"] and d.num_classes == 2
    r = table(path, target_column="value", task="regression")
    assert r.task == "regression" and r.train.arrays(0)[1][0] == pytest.approx(2.0)


def corrupt(path, line, column, value):
    """Sets one cell of the CSV, addressed by its 1-based line number (header = 1)."""
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "value,problem", [("abc", "not a number"), ("NaN", "NaN"), ("", "empty"), ("inf", "infinite")]
)
def test_table_bad_cell_names_file_line_and_column(tmp_path, value, problem):
    path = write_table(tmp_path)
    corrupt(path, 17, "x2", value)
    with pytest.raises(ConfigError) as err, config_group("dataset"):
        table(path)
    message = str(err.value)
    assert err.value.key == "dataset.path"
    assert (
        str(path) in message and "line 17" in message and "'x2'" in message and problem in message
    )


def test_table_missing_column_unknown_file_and_short_client(tmp_path):
    path = write_table(tmp_path)
    with pytest.raises(ConfigError) as err, config_group("dataset"):
        table(path, feature_columns=["x1", "pressure"])
    assert err.value.key == "dataset.feature_columns" and "pressure" in str(err.value)
    assert str(path) in str(err.value)
    with pytest.raises(ConfigError) as err, config_group("dataset"):
        table(tmp_path / "nope.csv")
    assert err.value.key == "dataset.path" and "nope.csv" in str(err.value)
    short = write_table(tmp_path, rows=30, clients=("a",), name="short.csv")
    frame = pd.read_csv(short)
    pd.concat([frame, frame.head(4).assign(user="tiny")]).to_csv(short, index=False)
    with pytest.raises(ConfigError) as err, config_group("dataset"):
        table(short)
    assert err.value.key == "dataset.seq_len" and "'tiny'" in str(err.value)
    assert "4 rows" in str(err.value) and "line 32" in str(err.value)
    with pytest.raises(ConfigError, match="target_column"):
        table(path, feature_columns=["x1", "label"])


def test_bad_class_label_and_order_value_name_their_line(tmp_path):
    path = write_table(tmp_path)
    corrupt(path, 5, "label", "1.5")
    with pytest.raises(ConfigError, match=r"line 5.*'label'"):
        table(path)
    path = write_table(tmp_path, name="b.csv")
    corrupt(path, 9, "time", "yesterday-ish")
    with pytest.raises(ConfigError, match=r"line 9.*'time'"):
        table(path)


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "overrides,clients",
    [
        (("dataset=watch",), 10),
        (("dataset=vowels", "dataset.task=next_frame"), 9),
        (("dataset=vowels",), 40),
        (("dataset=markets", "dataset.client_by=instrument"), 4),
        (("dataset=shakespeare",), 40),
    ],
)
def test_smoke_configs_build_their_datasets(overrides, clients):
    from dpfed.build import build_dataset

    cfg = compose_config(*overrides, "debug=smoke")
    with config_group("dataset"):
        d = build_dataset(cfg)
    assert d.num_clients == clients and d.seq_len == 8
    check_contract(d)


def test_too_large_cohort_for_a_small_population_names_the_key():
    with pytest.raises(ConfigError) as err:
        build_simulation(compose_config("dataset=watch", "strategy.clients_per_round=50"))
    assert err.value.key == "strategy.clients_per_round" and "10" in str(err.value)


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize(
    "overrides",
    [
        ("dataset=shakespeare", "strategy.clients_per_round=3", "model.units=[16]"),
        ("dataset=watch", "strategy.clients_per_round=3"),
    ],
)
def test_one_federated_round_on_real_data(runtime, tmp_path, overrides):
    from dpfed.io.run_writer import RunWriter

    sim = build_simulation(compose_config("debug=smoke", "rounds=1", *overrides))
    summary = sim.run(RunWriter(tmp_path, sim.columns))
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert summary["status"] == "completed" and len(metrics) == 1
    assert np.isfinite(metrics["train/loss"]).all() and metrics["eval/accuracy"].notna().all()
    assert metrics["clients"].iloc[0] == 3


# --------------------------------------------------------------------------- tff_stackoverflow
def make_stackoverflow_cache(directory, clients, words):
    """A tiny stand-in for TFF's stackoverflow.sqlite and word-count file, in TFF's layout."""
    db = sqlite3.connect(directory / "stackoverflow.sqlite")
    db.execute(
        "CREATE TABLE examples (split_name TEXT, client_id TEXT, serialized_example_proto BLOB)"
    )
    db.execute("CREATE TABLE client_metadata (client_id TEXT, split_name TEXT, num_examples INT)")

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))

    for cid, splits in clients.items():
        for split, sentences in splits.items():
            db.execute("INSERT INTO client_metadata VALUES (?, ?, ?)", (cid, split, len(sentences)))
            for text in sentences:
                fields = {
                    "creation_date": "2010",
                    "score": 1,
                    "tags": "python",
                    "title": "t",
                    "tokens": text,
                    "type": "question",
                }
                proto = tf.train.Example(
                    features=tf.train.Features(feature={k: feature(v) for k, v in fields.items()})
                )
                db.execute(
                    "INSERT INTO examples VALUES (?, ?, ?)", (split, cid, proto.SerializeToString())
                )
    db.commit()
    db.close()
    (directory / "datasets").mkdir()
    (directory / "datasets" / "stackoverflow.word_count").write_text(
        "".join(f"{w}\t{100 - i}\n" for i, w in enumerate(words))
    )


def test_tff_stackoverflow_without_a_cache_fails_before_any_download(tmp_path, monkeypatch):
    from dpfed.data.stackoverflow import TFFStackOverflow
    from dpfed.runtime import tff

    def no_download(*args, **kwargs):
        raise AssertionError("load_data must not be called without a cached file")

    monkeypatch.setattr(tff.simulation.datasets.stackoverflow, "load_data", no_download)
    with pytest.raises(ConfigError) as err, config_group("dataset"):
        TFFStackOverflow(cache_dir=str(tmp_path))
    assert err.value.key == "dataset.cache_dir"
    assert "stackoverflow.sqlite" in str(err.value) and "network" in str(err.value)


def test_tff_stackoverflow_reads_clients_lazily_with_tffs_vocabulary(tmp_path):
    from dpfed.data.stackoverflow import TFFStackOverflow

    make_stackoverflow_cache(
        tmp_path,
        {
            "u1": {"train": ["how do i sort a list", "the list is long"], "test": ["sort it"]},
            "u2": {"train": ["what is a tuple"], "heldout": ["x"]},  # no test sentences
        },
        words=["the", "a", "list", "sort", "is", "i"],
    )
    d = TFFStackOverflow(cache_dir=str(tmp_path), vocab_size=4, seq_len=6)
    assert d.num_clients == 2 and d.client_names == ["u1", "u2"]
    assert d.vocab == {"the": 1, "a": 2, "list": 3, "sort": 4} and d.vocab_size == 8
    x, y = d.train.arrays(0)
    oov, bos, eos = d.oov, d.bos, d.eos
    # "how do i sort a list" -> BOS how do i sort a | list (cut to seq_len + 1 = 7 tokens)
    np.testing.assert_array_equal(x[0], [bos, oov, oov, oov, 4, 2])
    np.testing.assert_array_equal(y[0], [oov, oov, oov, 4, 2, 3])
    # "the list is long" -> BOS the list is long EOS PAD
    np.testing.assert_array_equal(x[1], [bos, 1, 3, oov, oov, eos])
    np.testing.assert_array_equal(y[1], [1, 3, oov, oov, eos, 0])
    assert d.eval.arrays(0)[0].shape == (1, 6) and d.eval.arrays(1)[0].shape == (0, 6)
    check = TFFStackOverflow(cache_dir=str(tmp_path), vocab_size=4, seq_len=6, num_clients=1)
    assert check.num_clients == 1 and check.element_spec[0].dtype == tf.int32


def test_overlapping_or_client_standardized_windows_are_declared_coupled():
    """Record-level guarantees there protect a window as released (input_noise is refused)."""
    from dpfed.data.watch import Watch

    default = Watch(seq_len=50, num_clients=None, examples_mean=None, eval_fraction=0.2, seed=0)
    assert "overlap" in default.population().coupled_records
    assert "standardized" in default.population().coupled_records
    independent = Watch(
        seq_len=50,
        stride=50,
        standardize="window",
        num_clients=None,
        examples_mean=None,
        eval_fraction=0.2,
        seed=0,
    )
    assert independent.population().coupled_records is None
