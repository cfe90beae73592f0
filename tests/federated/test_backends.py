"""The vectorized client backend computes what TFF's own client work (the reference) computes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hydra.utils import instantiate

from dpfed.build import build_dataset, build_simulation
from dpfed.errors import ConfigError
from dpfed.federated.backends.base import ClientRound, batch_seeds, client_dataset
from dpfed.federated.backends.vectorized import VectorizedBackend
from dpfed.models.stacked import StackedGRU
from tests.conftest import compose_config
from tests.helpers import PLAIN_SERVER, change, first_rounds

# Run by `pytest -m slow` (and CI), not by default: the round equivalences beyond tree, bandmf and
# DP-SGD on text.
SLOW_CASES = {
    "test_a_round_is_the_reference_round[fedadam]",
    "test_a_round_is_the_reference_round[weighted-momentum]",
    "test_a_round_is_the_reference_round[regression-every-step]",
    "test_a_round_is_the_reference_round[dpsgd-binding-clip]",
    "test_a_round_is_the_reference_round[dpsgd-noise-fedprox-user-level]",
    "test_a_round_is_the_reference_round[dpsgd-poisson-records]",
    "test_a_round_is_the_reference_round[local]",
    "test_a_round_is_the_reference_round[per-layer]",
    *(
        f"test_auto_runs_vectorized_where_it_takes_the_setting_and_reference_otherwise[{case}]"
        for case in ("textbook-dpsgd", "centralized", "adam-clients", "canary-records")
    ),
}

# several, uneven shards; fixed-size cohorts so that no round is empty
VECTORIZED = ("backend=vectorized", "backend.users_per_shard=2")
REFERENCE = ("backend=reference",)  # the default (auto) would run vectorized too
FIXED = ("strategy.sampling=fixed",)


def bound_model(*overrides):
    cfg = compose_config("debug=smoke", *overrides)
    dataset = build_dataset(cfg)
    return instantiate(cfg.model).bind(dataset), dataset


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("model=textbook",),
        ("dataset=health", "dataset.labels=every_step", "model.outputs=every_step"),
        ("dataset=finance", "dataset.target=return", "model.units=[6,5]"),
        (
            "dataset=finance",
            "dataset.target=return",
            "dataset.labels=every_step",
            "model.outputs=every_step",
        ),
    ],
)
def test_stacked_forward_equals_each_users_keras_model(overrides):
    model, dataset = bound_model(*overrides)
    x, _ = dataset.train.arrays(0)
    x = x[:5]
    users = []
    for seed in range(3):  # three users with different weights
        tf.keras.utils.set_random_seed(seed)
        users.append(model.keras_model())
    weights = [tf.stack(w) for w in zip(*(u.trainable_variables for u in users), strict=True)]
    net = StackedGRU(model)
    assert [tuple(w.shape[1:]) for w in weights] == net.shapes()
    inputs = np.stack([x + k for k in range(3)])  # each user its own batch
    out = net(weights, tf.constant(inputs)).numpy()
    for k, user in enumerate(users):
        np.testing.assert_allclose(out[k], user(inputs[k]).numpy(), rtol=1e-5, atol=1e-5)


def test_stacked_forward_embeds_tokens_for_text_models():
    from dpfed.data.shakespeare import Shakespeare

    data = Shakespeare(seq_len=12, num_clients=3, examples_mean=6, eval_fraction=0.2, seed=0)
    cfg = compose_config("dataset=shakespeare", "model.units=[8,8]", "model.embedding_dim=5")
    model = instantiate(cfg.model).bind(data)
    x, _ = data.train.arrays(0)
    users = [model.keras_model() for _ in range(2)]
    weights = [tf.stack(w) for w in zip(*(u.trainable_variables for u in users), strict=True)]
    out = StackedGRU(model)(weights, tf.constant(np.stack([x, x[::-1]]))).numpy()
    np.testing.assert_allclose(out[0], users[0](x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], users[1](x[::-1]).numpy(), rtol=1e-5, atol=1e-5)


def _rounds(strategy, sizes, round_num=1, seed=0):
    update = strategy.client_update
    return [
        ClientRound.shuffled(
            np.arange(n * 2, dtype=np.float32).reshape(n, 1, 2) + 100 * k,
            np.arange(n, dtype=np.int32),
            update,
            seed,
            round_num,
            k,
        )
        for k, n in enumerate(sizes)
    ]


def test_a_clients_round_is_a_permutation_per_epoch_keyed_by_its_position():
    strategy = instantiate(compose_config("debug=smoke", "strategy.local_epochs=3").strategy)
    (client,) = _rounds(strategy, [21])
    assert len(client.epochs) == 3
    orders = [y for _, y in client.epochs]
    for order in orders:  # every record exactly once per epoch
        np.testing.assert_array_equal(np.sort(order), np.arange(21))
    assert not np.array_equal(orders[0], orders[1])  # each epoch is reshuffled
    for x, y in client.epochs:  # records keep their labels
        np.testing.assert_array_equal(x[:, 0, 0], 2 * y)
    batches = client.batches(8)  # 3 per epoch, the last of each epoch partial
    assert [len(b[1]) for b in batches] == [8, 8, 5] * 3
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches[:3]]), orders[0])
    same = _rounds(strategy, [21])[0].epochs[0][1]
    np.testing.assert_array_equal(same, orders[0])  # a function of the position alone
    for other in (
        _rounds(strategy, [21], round_num=2)[0],
        _rounds(strategy, [21], seed=1)[0],
        _rounds(strategy, [0, 21])[1],
    ):
        assert not np.array_equal(other.epochs[0][1], orders[0])


def test_the_reference_dataset_holds_the_same_batches_with_their_seeds():
    strategy = instantiate(compose_config("debug=smoke", "strategy.local_epochs=2").strategy)
    (client,) = _rounds(strategy, [13])
    seeds = batch_seeds(7, 1, 1, 4)
    got = list(client_dataset(client, 8, seeds).as_numpy_iterator())
    want = client.batches(8)
    assert len(got) == len(want) == 4
    for ((x, y), seed), (bx, by), s in zip(got, want, seeds, strict=True):
        np.testing.assert_array_equal(x, bx)
        np.testing.assert_array_equal(y, by)
        np.testing.assert_array_equal(seed, s)


def _poisson(n, q=0.1, steps=30, key=123, round_num=2, client=5):
    from dpfed.federated.backends.base import PoissonBatches

    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1) * 2
    return ClientRound.poisson(
        x, np.arange(n, dtype=np.int32), PoissonBatches(key, q, 10), steps, round_num, client
    )


def test_poisson_batches_take_each_record_with_probability_q_keyed_by_position():
    client = _poisson(40)
    assert len(client.steps) == 30  # as many as asked, whatever is drawn
    for x, y in client.steps:  # distinct records of this client, with their own features
        assert len(set(y)) == len(y) and set(y) <= set(range(40))
        np.testing.assert_array_equal(x[:, 0, 0], 2 * y)
    taken = np.zeros(40)
    for round_num in range(200):
        for _, y in _poisson(40, round_num=round_num).steps:
            taken[y] += 1
    rate = taken / (200 * 30)  # q = 0.1 per record and step; std 0.0039 per record
    assert abs(rate.mean() - 0.1) < 0.004 and np.abs(rate - 0.1).max() < 0.02
    sizes = [len(y) for _, y in client.steps]
    assert min(sizes) < 4 < max(sizes)  # sizes vary around the expected batch
    again = _poisson(40)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(again.steps, client.steps, strict=True))
    for other in (_poisson(40, key=124), _poisson(40, round_num=3), _poisson(40, client=6)):
        assert any(
            not np.array_equal(a[1], b[1]) for a, b in zip(other.steps, client.steps, strict=True)
        )
    full = _poisson(3, q=1.0, steps=2)  # q = 1: every step holds every record
    assert len(full.steps) == 2 and all(len(y) == 3 for _, y in full.steps)
    assert [len(y) for _, y in _poisson(0, steps=4).steps] == [0] * 4  # noise-only steps


def test_poisson_batches_reach_both_backends_with_empty_steps_kept():
    from types import SimpleNamespace

    clients = [_poisson(9, q=1 / 9, steps=9, client=k) for k in (1, 2)]
    sizes = [[len(y) for _, y in c.steps] for c in clients]
    assert (
        all(len(s) == 9 for s in sizes) and min(map(min, sizes)) == 0 and max(map(max, sizes)) > 1
    )
    seeds = [batch_seeds(7, 2, k, 9) for k in (1, 2)]
    for client, steps, s in zip(clients, sizes, seeds, strict=True):  # reference: one per step
        got = list(client_dataset(client, 1, s).as_numpy_iterator())
        assert [len(y) for (_, y), _ in got] == steps
        for ((x, y), seed), (bx, by), want in zip(got, client.steps, s, strict=True):
            np.testing.assert_array_equal(y, by)
            np.testing.assert_array_equal(x, bx)
            np.testing.assert_array_equal(seed, want)
    strategy = SimpleNamespace(client_update=SimpleNamespace(batch_size=1))
    (shard,) = VectorizedBackend(4).pack(strategy, clients, seeds)
    x, y, mask, shard_seeds = shard.get_single_element()
    assert x.shape[:3] == (9, 2, max(map(max, sizes)))  # padded to the largest batch
    np.testing.assert_array_equal(mask.numpy().sum(2).T, sizes)
    assert np.all(shard_seeds.numpy().any(-1))  # every step, empty or not, has its noise seed


def test_shards_hold_each_users_batches_in_order_padded_and_masked():
    strategy = instantiate(compose_config("debug=smoke").strategy)  # batch 8
    sizes = [13, 0, 3, 21]
    expected = [c.batches(8) for c in _rounds(strategy, sizes)]
    assert [len(u) for u in expected] == [2, 0, 1, 3]
    seeds = [batch_seeds(7, 1, k, len(u)) for k, u in enumerate(expected)]
    shards = VectorizedBackend(3).pack(strategy, _rounds(strategy, sizes), seeds)
    (x1, y1, m1, s1), (x2, y2, m2, s2) = (next(iter(s)) for s in shards)
    assert s1.shape == (2, 3, 2) and s2.shape == (3, 1, 2)  # a seed per step and user
    np.testing.assert_array_equal(s2[:, 0].numpy(), seeds[3])  # the user of 21 examples
    np.testing.assert_array_equal(s1[:, 2].numpy(), seeds[0])
    assert not s1[:, 0].numpy().any()  # the user without data has no seeds
    assert x1.shape == (2, 3, 8, 1, 2) and x2.shape == (3, 1, 8, 1, 2)  # users sorted by steps
    np.testing.assert_array_equal(m1.numpy().sum((0, 2)), [0, 3, 13])  # empty user: all masked
    np.testing.assert_array_equal(
        x1[:, 2].numpy()[m1[:, 2].numpy() > 0], np.concatenate([b[0] for b in expected[0]])
    )
    np.testing.assert_array_equal(m2.numpy().sum((0, 2)), [21])
    assert m2[2, 0].numpy().sum() == 5 and not x2[2, 0, 5:].numpy().any()  # padded with zeros


def assert_same_round(reference, vectorized):
    assert (reference[3].backend.name, vectorized[3].backend.name) == ("reference", "vectorized")
    for a, b in zip(reference[0], vectorized[0], strict=True):
        np.testing.assert_array_equal(a, b)  # same initial model from the same seed
    # The backends sum the same float32 client updates in another order, so a variable's
    # error scales with the summands (the round's changes), not with its own value: a bias
    # whose client updates of about 0.1 cancel to 3e-5 differs by a few float32 ulps of 0.1.
    largest_change = max(np.abs(b - a).max() for a, b in zip(*reference[:2], strict=True))
    for a, b in zip(reference[1], vectorized[1], strict=True):
        np.testing.assert_allclose(
            b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max() + 1e-6 * largest_change
        )
    ref, vec = reference[2].metrics, vectorized[2].metrics
    train_ref, train_vec = ref["client_work"]["train"], vec["client_work"]["train"]
    assert set(train_vec) == set(train_ref)
    for key in train_ref:
        assert train_vec[key] == pytest.approx(train_ref[key], rel=1e-4)
    queried = [tf.nest.flatten(m["aggregator"].get("dp_query_metrics", ())) for m in (ref, vec)]
    np.testing.assert_allclose(queried[1], queried[0], rtol=1e-4)  # e.g. the adaptive clip


@pytest.mark.parametrize(
    "overrides",
    [
        (
            "dp=none",
            "strategy.weighted=true",
            "strategy.local_epochs=2",
            "strategy.client_optimizer.momentum=0.9",
        ),
        (
            "dataset=finance",
            "dataset.target=return",
            "dataset.labels=every_step",
            "model.outputs=every_step",
            "dp=none",
        ),
        (
            "dataset=health",
            "dataset.labels=every_step",
            "model.outputs=every_step",
            "dp=per_layer",
            "dp.noise_multiplier=0.5",
            "dp.clip=0.01",
        ),
        ("dp=tree", "dp.noise_multiplier=0.5"),
        ("dp=bandmf", "dp.noise_multiplier=0.5", "strategy.clients_per_round=10"),
        ("dp=laplace_local", "dp.noise_multiplier=5", "dp.clip=0.05"),  # seeded per client
        ("strategy=fedadam", "dp=none"),  # TFF's server optimizer state carries over
        ("dp=dpsgd", "dp.noise_multiplier=0", "dp.clip=0.05", "strategy.local_epochs=2"),
        (
            "dp=dpsgd",
            "dp.noise_multiplier=2",
            "dp.clip=0.05",
            "strategy=fedprox",
            "strategy.client_optimizer.momentum=0.5",
            "dp.user_noise_multiplier=0.5",
        ),
        ("dp=dpsgd", "dataset=shakespeare", "model.units=[8]", "dp.noise_multiplier=1"),
        # Poisson batches of expected size 2: some empty (noise alone), some larger than 2
        (
            "dp=dpsgd",
            "dp.record_sampling=poisson",
            "dp.neighboring=zero_out",
            "dp.noise_multiplier=1",
            "dp.clip=0.05",
            "strategy.batch_size=2",
        ),
    ],
    ids=[
        "weighted-momentum",
        "regression-every-step",
        "per-layer",
        "tree",
        "bandmf",
        "local",
        "fedadam",
        "dpsgd-binding-clip",
        "dpsgd-noise-fedprox-user-level",
        "dpsgd-text",
        "dpsgd-poisson-records",
    ],
)
def test_a_round_is_the_reference_round(runtime, overrides):
    server = () if "strategy=fedadam" in overrides else PLAIN_SERVER
    # tree and bandmf draw their own epochs (shuffled, cyclic)
    cohorts = () if {"dp=tree", "dp=bandmf"} & set(overrides) else FIXED
    reference = first_rounds(*cohorts, *overrides, *REFERENCE, server=server, rounds=2)
    vectorized = first_rounds(*cohorts, *overrides, *VECTORIZED, server=server, rounds=2)
    assert change(reference) > 1e-3
    assert_same_round(reference, vectorized)


def test_clipping_binds_and_is_per_user(runtime):
    clip = 1e-3  # far below every user's update in one smoke round
    # the one-step task, whose first-round updates mostly agree (the bound below was set on it)
    overrides = ("dp.noise_multiplier=0", f"dp.clip={clip}", "dataset.horizon=1")
    reference = first_rounds(*FIXED, *overrides, *REFERENCE)
    vectorized = first_rounds(*FIXED, *overrides, *VECTORIZED)
    assert_same_round(reference, vectorized)
    # The mean of updates clipped to `clip` has norm <= clip; each binding clip shrinks it.
    # Every update then has norm `clip`, so the mean's norm is `clip` times the length of the
    # clients' mean direction.
    assert 0.5 * clip < change(vectorized) <= clip * (1 + 1e-4)


@pytest.mark.slow
def test_seeded_noise_is_drawn_identically(runtime):
    overrides = ("dp.noise_multiplier=1.0", "dp.clip=0.01")
    quiet = first_rounds(*FIXED, "dp.noise_multiplier=0", "dp.clip=0.01", *VECTORIZED)
    reference = first_rounds(*FIXED, *overrides, *REFERENCE)
    vectorized = first_rounds(*FIXED, *overrides, *VECTORIZED)
    assert_same_round(reference, vectorized)
    assert change(vectorized) > 5 * change(quiet)  # the noise is there, and the same


@pytest.mark.slow
def test_adaptive_clipping_over_two_rounds(runtime):
    overrides = (
        "dp=adaptive",
        "dp.noise_multiplier=0.5",
        "dp.clipped_count_stddev=1.0",
        "dp.initial_clip=0.01",
    )
    reference = first_rounds(*FIXED, *overrides, *REFERENCE, rounds=2)
    vectorized = first_rounds(*FIXED, *overrides, *VECTORIZED, rounds=2)
    assert_same_round(reference, vectorized)
    assert vectorized[2].metrics["aggregator"]["dp_query_metrics"]["clip"] != pytest.approx(0.01)


@pytest.mark.slow
def test_fedprox_equals_the_reference(runtime):
    overrides = (
        "strategy=fedprox",
        "strategy.proximal_strength=0.5",
        "dp=none",
        "strategy.weighted=true",
        *FIXED,
    )
    reference = first_rounds(*overrides, *REFERENCE)
    vectorized = first_rounds(*overrides, *VECTORIZED)
    assert_same_round(reference, vectorized)


@pytest.mark.slow
def test_fedprox_pulls_clients_towards_the_server_model(runtime):
    """The proximal term shrinks the update (TFF 0.87's own FedProx would grow it).

    The vectorized backend computes the same round (`test_fedprox_equals_the_reference`).
    """
    fedavg = first_rounds("dp=none", *REFERENCE)
    prox = first_rounds("strategy=fedprox", "strategy.proximal_strength=0.5", "dp=none", *REFERENCE)
    none = first_rounds("strategy=fedprox", "strategy.proximal_strength=0", "dp=none", *REFERENCE)
    for a, b in zip(none[1], fedavg[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert change(prox) < change(fedavg)


def test_a_vectorized_run_completes_and_writes_metrics(runtime, tmp_path):
    import pandas as pd

    from dpfed.io.run_writer import RunWriter

    sim = build_simulation(compose_config("debug=smoke", "backend=vectorized"))
    summary = sim.run(RunWriter(tmp_path, sim.columns))
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert summary["status"] == "completed" and len(metrics) == 2
    assert (summary["backend"], summary["users_per_shard"]) == ("vectorized", 100)
    assert (metrics["train/examples"] > 0).all() and np.isfinite(metrics["eval/loss"]).all()


@pytest.mark.parametrize(
    "overrides,runs",
    [
        ((), "vectorized"),  # the default run
        (("model=textbook", "dp=dpsgd"), "vectorized"),
        (("strategy=fedsgd",), "reference"),
        (("strategy=centralized",), "reference"),  # no clients: no lockstep
        (("optimizer@strategy.client_optimizer=adam",), "reference"),
        (("dp=dpsgd", "audit=canary_gradients", "audit.canaries=20"), "vectorized"),
    ],
    ids=["default", "textbook-dpsgd", "fedsgd", "centralized", "adam-clients", "canary-records"],
)
def test_auto_runs_vectorized_where_it_takes_the_setting_and_reference_otherwise(
    runtime, overrides, runs
):
    """The default backend: the same model either way (the round tests above), vectorized
    several times faster; what it refuses runs on reference rather than failing."""
    sim = build_simulation(compose_config("debug=smoke", *overrides))
    choices = compose_config(*overrides, return_hydra_config=True).hydra.runtime.choices
    assert choices.backend == "auto"
    assert sim.backend.name == runs and sim.backend.describe()["backend"] == runs
    assert sim.backend.lockstep == (runs == "vectorized")


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("backend=vectorized", "backend.users_per_shard=0"), "backend.users_per_shard"),
        (("backend.users_per_shard=0",), "backend.users_per_shard"),  # auto: refused, not skipped
        # auto, where both refuse (`test_auto_refuses_with_the_reason_a_user_can_act_on`):
        # vectorized needs SGD on the clients, only vectorized runs the canary records
        (
            ("dp=dpsgd", "audit=canary_gradients", "optimizer@strategy.client_optimizer=adam"),
            "strategy.client_optimizer",
        ),
        (("backend=vectorized", "strategy=fedsgd"), "backend"),
        (("backend=vectorized", "strategy=centralized"), "backend"),
        (
            ("backend=vectorized", "optimizer@strategy.client_optimizer=adam"),
            "strategy.client_optimizer",
        ),
        (("strategy=fedsgd", "dp=dpsgd"), "strategy"),
        (("strategy=fedsgd", "dp=laplace_local"), "strategy"),
        # a client's weight would count the records its Poisson batches drew (both backends)
        (
            (
                "dp=dpsgd",
                "dp.record_sampling=poisson",
                "dp.neighboring=zero_out",
                "strategy.weighted=true",
            ),
            "strategy.weighted",
        ),
        (
            (
                "dp=dpsgd",
                "dp.record_sampling=poisson",
                "dp.neighboring=zero_out",
                "strategy.weighted=true",
                "backend=vectorized",
            ),
            "strategy.weighted",
        ),
    ],
)
def test_unsupported_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        build_simulation(compose_config("debug=smoke", *overrides))
    assert err.value.key == key


@pytest.mark.parametrize(
    "on_vectorized,on_reference,raised",
    [
        ("strategy.weighted", "strategy.weighted", "strategy.weighted"),  # both, one setting
        ("backend", "strategy", "strategy"),  # fedsgd with dp=dpsgd: change the strategy
        ("strategy.client_optimizer", "backend", "strategy.client_optimizer"),
        ("backend", "backend", "backend"),  # neither runs this work: both reasons
        ("strategy.client_optimizer", "strategy.weighted", "backend"),  # two settings: both
    ],
)
def test_auto_refuses_with_the_reason_a_user_can_act_on(
    monkeypatch, on_vectorized, on_reference, raised
):
    from types import SimpleNamespace

    from dpfed.federated.backends.auto import AutoBackend
    from dpfed.federated.backends.reference import ReferenceBackend

    def refusing(key, backend):
        def check(self, strategy, parts, model):
            raise ConfigError(key, backend, f"something {backend} refuses", absolute=True)

        return check

    monkeypatch.setattr(VectorizedBackend, "check", refusing(on_vectorized, "vectorized"))
    monkeypatch.setattr(ReferenceBackend, "check", refusing(on_reference, "reference"))
    strategy = SimpleNamespace(client_update=object())
    with pytest.raises(ConfigError) as err:
        AutoBackend(users_per_shard=2).for_run(strategy, None, None)
    assert err.value.key == raised
    if raised == "backend":  # neither names a setting the user can change alone
        assert err.value.value == "auto"
        assert "vectorized refuses it (" in str(err.value)
        assert "reference refuses it (" in str(err.value)
