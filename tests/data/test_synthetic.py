"""Synthetic datasets: deterministic, lazy, non-IID, split per client, and learnable."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dpfed.data.synthetic import Finance, Health, SmartHome
from dpfed.errors import ConfigError

# Run by `pytest -m slow` (and CI), not by default: the learnability of finance and health
# (smart_home's runs by default).
SLOW_CASES = {
    "test_labels_are_learnable_a_gru_clearly_beats_the_majority_class[Finance]",
    "test_labels_are_learnable_a_gru_clearly_beats_the_majority_class[Health]",
}

DATASETS = [SmartHome, Health, Finance]
BASE = dict(
    num_clients=300,
    examples_mean=40,
    examples_spread=0.5,
    min_examples=4,
    seq_len=16,
    num_features=6,
    heterogeneity=0.5,
    eval_fraction=0.2,
    labels="last",
    seed=3,
)


def make(cls, **overrides):
    return cls(**{**BASE, **overrides})


@pytest.mark.parametrize("cls", DATASETS)
def test_clients_are_deterministic_and_differ(cls):
    a, b = make(cls), make(cls)
    xa, ya = a.train.arrays("7")
    xb, yb = b.train.arrays("7")
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    other = make(cls, seed=4).train.arrays("7")[0]
    assert other.shape != xa.shape or not np.allclose(other, xa)


@pytest.mark.parametrize("cls", DATASETS)
def test_shapes_split_and_varying_sizes(cls):
    d = make(cls)
    sizes = []
    for i in range(40):
        (xt, yt), (xe, ye) = d.train.arrays(i), d.eval.arrays(i)
        assert xt.shape[1:] == (16, 6) and xt.dtype == np.float32
        assert len(xt) == len(yt) >= 1 and len(xe) == len(ye) >= 1
        assert len(xt) + len(xe) == d.num_examples(i)
        assert not np.shares_memory(xt, xe)
        sizes.append(len(xt) + len(xe))
    assert min(sizes) >= 4 and len(set(sizes)) > 5  # a distribution, not a constant
    constant = make(cls, examples_spread=0.0)
    assert {constant.num_examples(i) for i in range(20)} == {40}


@pytest.mark.parametrize("cls", DATASETS)
def test_client_data_is_lazy_and_makes_tf_datasets_on_demand(cls):
    d = make(cls, num_clients=100_000)
    assert len(d.train.client_ids) == 100_000
    ds = d.train.create_tf_dataset_for_client("99999")
    assert ds.element_spec == d.train.element_type_structure
    assert len(list(ds.as_numpy_iterator())) == len(d.train.arrays(99999)[0])
    with pytest.raises(ValueError):
        d.train.arrays(100_000)


def test_every_step_labels():
    d = make(SmartHome, labels="every_step")
    x, y = d.train.arrays(0)
    assert y.shape == (len(x), 16) and d.horizon == 4  # two hours ahead by default
    # the label at step t is the light's state at t+4, which is channel 4 at step t+4
    np.testing.assert_array_equal(y[:, :-4], x[:, 4:, 4].astype(np.int32))


@pytest.mark.parametrize("horizon", [1, 3])
def test_smart_home_horizon_predicts_the_light_that_many_steps_ahead(horizon):
    d = make(SmartHome, labels="every_step", horizon=horizon)
    x, y = d.train.arrays(0)
    assert y.shape == (len(x), 16)
    # the label at step t is the light's state at t + horizon: channel 4 at step t + horizon
    np.testing.assert_array_equal(y[:, :-horizon], x[:, horizon:, 4].astype(np.int32))


def test_smart_home_at_horizon_1_generates_the_data_of_the_old_default_task():
    """horizon=1, persistence=2.0 draw exactly what the generator drew before they existed (the
    digest of 9169c8a's SmartHome, whose task was the default until horizon 4 replaced it)."""
    import hashlib

    digest = hashlib.sha256()
    for labels in ("last", "every_step"):
        config = {**BASE, "num_clients": 1000, "seq_len": 24, "seed": 0, "labels": labels}
        d = SmartHome(**config, horizon=1)
        for i in (0, 1, 999):
            for part in (*d.train.arrays(i), *d.eval.arrays(i)):
                digest.update(np.ascontiguousarray(part).tobytes())
    expected = "1921f624a931550494fc1d3c6a5c22bcec77c987ac2adbe73ca06ee5125052c2"
    assert digest.hexdigest() == expected


def test_last_value_forecasts_each_target_by_its_current_value():
    # one step ahead, the naive forecast at step t is the target of step t - 1
    for d in (
        make(SmartHome, labels="every_step", horizon=1),
        make(Finance, labels="every_step"),
        make(Finance, labels="every_step", target="return"),
    ):
        x, y = d.eval.arrays(1)
        forecast = d.last_value(x)
        assert forecast.shape == y.shape and forecast.dtype == y.dtype
        np.testing.assert_array_equal(forecast[:, 1:], y[:, :-1])
    # with one label per sequence, the forecast reads the last step
    d = make(SmartHome)
    x, y = d.eval.arrays(1)
    np.testing.assert_array_equal(d.last_value(x), x[:, -1, 4].astype(np.int32))
    assert make(Health).last_value(x) is None  # a ward's deterioration is not an input


def _scores(d, clients, forecast):
    """Accuracy of ``forecast(index, x)`` on the held-out data of ``clients``, and where it
    predicts on and off, how often the light is really on."""
    hits = total = 0
    on = {0: [], 1: []}
    for i in clients:
        x, y = d.eval.arrays(i)
        predicted = forecast(i, x)
        assert predicted.shape == y.shape and predicted.dtype == y.dtype
        hits, total = hits + np.sum(predicted == y), total + y.size
        for side in (0, 1):
            on[side].extend(y[predicted == side].ravel())
    return hits / total, np.mean(on[0]), np.mean(on[1])


@pytest.mark.parametrize("labels", ["last", "every_step"])
def test_smart_home_oracle_is_the_bayes_optimal_forecast(labels):
    """The oracle thresholds the probability that the light is on at one half: where it says on,
    the light is on more often than not, and off where it says off (a wrong hour, horizon or
    household would break that). Knowing the household, it beats every input-only rule here."""
    d = make(SmartHome, labels=labels, examples_mean=200, heterogeneity=1.0)
    clients = range(60)
    oracle, on_when_off, on_when_on = _scores(d, clients, d.oracle_forecast)
    assert on_when_off < 0.5 < on_when_on
    last, _, _ = _scores(d, clients, lambda i, x: d.last_value(x))
    labels_seen = np.concatenate([d.eval.arrays(i)[1].ravel() for i in clients])
    majority = max(labels_seen.mean(), 1 - labels_seen.mean())
    assert oracle > last + 0.05 and oracle > majority + 0.05
    # another household's parameters forecast worse: the oracle uses the client's own
    wrong, _, _ = _scores(d, clients, lambda i, x: d.oracle_forecast(i + 1000, x))
    assert oracle > wrong + 0.02


def test_smart_home_oracle_one_step_ahead_is_close_to_the_last_value():
    # with persistence 2, the light's current state decides its next state at most hours
    d = make(SmartHome, horizon=1, examples_mean=200)
    oracle, _, _ = _scores(d, range(40), d.oracle_forecast)
    last, _, _ = _scores(d, range(40), lambda i, x: d.last_value(x))
    assert last - 0.005 <= oracle <= last + 0.02


def test_only_smart_home_knows_its_oracle():
    for cls in DATASETS:
        d = make(cls)
        x = d.eval.arrays(0)[0]
        assert (d.oracle_forecast(0, x) is None) == (cls is not SmartHome)


def test_smart_home_persistence_sets_how_often_the_light_keeps_its_state():
    def kept(persistence):
        d = make(SmartHome, labels="every_step", persistence=persistence)
        _, y = _pooled(d.train, 50)
        return np.mean(y[:, 1:] == y[:, :-1])

    assert kept(0.5) + 0.1 < kept(2.0) < kept(4.0)


def test_heterogeneity_zero_gives_identical_client_processes():
    d = make(Finance, heterogeneity=0.0)
    params = [d._client_params(np.random.default_rng([3, i, 1])) for i in range(5)]
    assert len({round(p["beta"], 12) for p in params}) == 1
    d = make(Finance, heterogeneity=1.0)
    params = [d._client_params(np.random.default_rng([3, i, 1])) for i in range(5)]
    assert len({round(p["beta"], 12) for p in params}) == 5


def test_finance_return_target_is_regression():
    d = make(Finance, target="return")
    assert d.task == "regression" and d.train.arrays(0)[1].dtype == np.float32


@pytest.mark.parametrize(
    "overrides,key",
    [
        ({"num_clients": 0}, "num_clients"),
        ({"heterogeneity": 1.5}, "heterogeneity"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"labels": "first"}, "labels"),
        ({"seq_len": 1}, "seq_len"),
        ({"num_features": 2}, "num_features"),
        ({"examples_mean": 2}, "examples_mean"),
        ({"horizon": 0}, "horizon"),
        ({"persistence": -1.0}, "persistence"),
    ],
)
def test_bad_dataset_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        make(SmartHome, **overrides)
    assert err.value.key == key


def _pooled(client_data, n):
    parts = [client_data.arrays(i) for i in range(n)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("cls", DATASETS)
def test_labels_are_learnable_a_gru_clearly_beats_the_majority_class(cls):
    """And the last value, where it is known (smart_home two hours ahead, finance)."""
    d = make(cls, num_clients=150)
    x, y = _pooled(d.train, 150)
    xe, ye = _pooled(d.eval, 150)
    majority = max(np.mean(ye), 1 - np.mean(ye))
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.GRU(16), tf.keras.layers.Dense(2)])
    model.compile(
        tf.keras.optimizers.Adam(0.01),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ["accuracy"],
    )
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    accuracy = model.evaluate(xe, ye, verbose=0)[1]
    assert accuracy > majority + 0.08, (cls.__name__, accuracy, majority)
    forecast = d.last_value(xe)  # where the inputs hold the target's current value, beat it too
    if forecast is not None:
        assert accuracy > np.mean(forecast == ye) + 0.04, (cls.__name__, accuracy)


@pytest.mark.parametrize("cls", DATASETS)
def test_population_counts_training_records_without_generating_them(cls):
    data = make(cls, num_clients=30)
    population = data.population()
    clients = [0, 3, 29]
    assert population.num_clients == 30
    assert population.train_records(clients) == sum(len(data.train.arrays(i)[0]) for i in clients)
    assert population.record_size == 16 * 6 and population.coupled_records is None
