"""In-process runs: the DP aggregator really clips and noises what the ledger accounts."""

from __future__ import annotations

import dataclasses
import math

import dp_accounting as dpa
import numpy as np
import pytest

from dpfed.errors import ConfigError
from dpfed.privacy.mechanisms import SCHEMAS
from tests.conftest import compose_config
from tests.helpers import build, first_rounds, independent_epsilon, one_round_update, run_in_process

FIXED = "strategy.sampling=fixed"

# Run by `pytest -m slow` (and CI), not by default: the cases beyond one of each property
# (gaussian and dpsgd keep the noise-free check, the tree its own test; fedsgd trains under DP;
# laplace_local reports local epsilon; DP-SGD's cap binds in the clients).
SLOW_CASES = {
    *(
        f"test_every_strategy_trains_with_user_level_dp[{s}]"
        for s in ("fedadam", "fedyogi", "fedprox")
    ),
    *(
        f"test_without_noise_or_clipping_every_mechanism_is_its_non_private_counterpart[{m}]"
        for m in ("adaptive", "bandmf", "gaussian_local", "laplace_local", "per_layer", "tree")
    ),
    "test_max_epsilon_binds_record_level_dp_sgd_too[overrides0]",
    "test_local_dp_reports_the_worst_clients_epsilon[gaussian_local]",
}


# The DP aggregator's clipping and noise on both client backends (the default, auto, runs
# vectorized here; tests/federated/test_backends.py compares their rounds)
BACKENDS = pytest.mark.parametrize("backend", ["reference", "vectorized"])


@BACKENDS
def test_updates_are_clipped_to_clip(runtime, backend):
    # the one-step task, whose first-round updates mostly agree (the bound below was set on it)
    task = (
        "dataset.horizon=1",
        "strategy.client_optimizer.learning_rate=0.5",
        FIXED,
        f"backend={backend}",
    )
    free, _, _ = one_round_update("dp=none", *task)
    clip = 0.1 * np.linalg.norm(free)
    clipped, _, _ = one_round_update("dp.noise_multiplier=0", f"dp.clip={clip}", *task)
    # the mean of updates clipped to `clip` has norm <= clip (unclipped it was 10x larger): `clip`
    # times the length of the clients' mean direction
    assert 0.5 * clip < np.linalg.norm(clipped) <= clip * (1 + 1e-4)


@BACKENDS
def test_noise_std_is_noise_multiplier_times_clip_over_expected_cohort(runtime, backend):
    z, clip = 2.0, 1e-3
    delta, params, cohort = one_round_update(
        f"dp.noise_multiplier={z}", f"dp.clip={clip}", FIXED, f"backend={backend}"
    )
    assert z * clip * np.sqrt(params) / cohort > 10 * clip  # the noise dominates what we measure
    assert np.std(delta) == pytest.approx(z * clip / cohort, rel=0.15)


@BACKENDS
def test_an_empty_poisson_cohort_still_releases_its_noise(runtime, backend):
    """Skipping the round would reveal that nobody was sampled (not what Poisson analysis assumes)."""
    z, clip = 2.0, 1e-3
    sim = build(
        "strategy.clients_per_round=1",
        f"dp.noise_multiplier={z}",
        f"dp.clip={clip}",
        "strategy.server_optimizer.momentum=null",
        f"backend={backend}",
    )
    assert sim.backend.name == backend
    empty = next(r for r in range(1, 50) if not sim.sampler.sample(r))
    state = sim.process.initialize()
    before = [np.asarray(w) for w in sim.process.get_model_weights(state).trainable]
    state = sim.process.next(state, sim.cohort_datasets([], empty)).state
    after = sim.process.get_model_weights(state).trainable
    delta = np.concatenate([np.ravel(b - a) for a, b in zip(before, after, strict=True)])
    assert np.std(delta) == pytest.approx(z * clip / 1, rel=0.15)  # expected cohort 1


@pytest.mark.slow
def test_same_seed_same_model_without_noise(runtime):
    first, _, _ = one_round_update("dp=none")
    again, _, _ = one_round_update("dp=none")
    other, _, _ = one_round_update("dp=none", "seed=1")
    np.testing.assert_allclose(first, again, rtol=1e-5, atol=1e-7)
    assert not np.allclose(first, other)


def test_a_run_writes_every_account_and_its_relation(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "rounds=4", "strategy.eval_every=0")
    assert summary["sampling"] == "poisson" and summary["neighboring"] == "add_remove"
    assert summary["accounting_relation"] == "add_or_remove_one"
    assert summary["dp_events"][0]["event"]["type"] == "PoissonSampledDpEvent"
    assert summary["dp_events"][0]["count"] == 4 == len(metrics)
    assert summary["accounts"][0]["column"] == "epsilon"
    assert summary["epsilon"] == metrics["epsilon"].iloc[-1] == summary["epsilon_planned"]


def test_target_epsilon_ends_within_one_percent_below(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "dp.target_epsilon=2", "rounds=3")
    assert 2 * 0.99 <= summary["epsilon"] <= 2
    assert summary["epsilon_planned"] == pytest.approx(summary["epsilon"], rel=1e-9)
    assert summary["noise_multiplier"] != 1.0 and summary["target_epsilon"] == 2


def test_max_epsilon_stops_before_the_round_that_would_exceed_it(runtime, tmp_path):
    probe = build("rounds=2")
    budget = probe.epsilon_planned * 1.0001  # room for exactly two rounds
    sim, summary, metrics = run_in_process(tmp_path, f"dp.max_epsilon={budget}", "rounds=5")
    assert summary["status"] == "stopped" and summary["rounds"] == 2
    assert "round 3" in summary["stop_reason"]
    assert len(metrics) == 2 and metrics["epsilon"].max() <= budget


@pytest.mark.parametrize(
    "overrides",
    [
        (
            "dp=dpsgd",
            "strategy.sampling=fixed",
            "dataset.num_clients=6",
            "strategy.clients_per_round=6",
        ),  # every client every round
        ("strategy=centralized", "dp=dpsgd", "strategy.batch_size=8"),
    ],
)
def test_max_epsilon_binds_record_level_dp_sgd_too(runtime, tmp_path, overrides):
    """The first version ignored dp.max_epsilon for DP-SGD without user-level noise."""
    probe = build(*overrides, "rounds=4")
    column = probe.plan.budget_account.column
    budget = probe.plan.epsilon(column, rounds=2, participations=2) * 1.0001
    sim, summary, metrics = run_in_process(
        tmp_path, *overrides, "rounds=4", f"dp.max_epsilon={budget}"
    )
    assert summary["status"] == "stopped" and summary[column] <= budget
    assert summary["max_participations"] == summary["rounds"] == len(metrics) <= 2


@pytest.mark.parametrize(
    "overrides,metric",
    [
        (("dataset=health", "dataset.labels=every_step"), "accuracy"),
        (("dataset=finance", "dataset.target=return"), "mae"),
    ],
)
@pytest.mark.slow
def test_per_step_labels_and_regression_train_through_tff(runtime, tmp_path, overrides, metric):
    sim, summary, metrics = run_in_process(tmp_path, *overrides, FIXED)
    assert summary["status"] == "completed" and len(metrics) == 2
    assert metrics[f"train/{metric}"].notna().all() and metrics[f"eval/{metric}"].notna().all()
    assert np.isfinite(metrics["train/loss"]).all()


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam", "fedyogi", "fedsgd"])
def test_every_strategy_trains_with_user_level_dp(runtime, tmp_path, strategy):
    sim, summary, metrics = run_in_process(tmp_path, f"strategy={strategy}", FIXED)
    assert summary["status"] == "completed"
    assert summary["client_work"] == ("gradient" if strategy == "fedsgd" else "local_training")
    assert np.isfinite(metrics["train/loss"]).all() and np.isfinite(metrics["epsilon"]).all()


def test_adaptive_clip_is_logged_moves_and_is_accounted_like_gaussian(runtime, tmp_path):
    sim, summary, metrics = run_in_process(
        tmp_path, "dp=adaptive", "dp.clipped_count_stddev=2.0", "rounds=3", "dp.initial_clip=0.01"
    )
    clips = metrics["dp/clip"].to_numpy()
    assert np.isfinite(clips).all() and clips[-1] != clips[0]
    assert summary["epsilon"] == pytest.approx(build("rounds=3").epsilon_planned, rel=1e-12)
    assert summary["clipped_count_stddev"] == 2.0
    from tensorflow_federated.python.aggregators.differential_privacy import (
        adaptive_clip_noise_params,
    )

    z_sum, _ = adaptive_clip_noise_params(
        summary["noise_multiplier"], sim.plan.sampler.expected_cohort, 2.0
    )
    assert summary["sum_noise_multiplier"] == pytest.approx(z_sum, rel=1e-12)


@pytest.mark.parametrize("mechanism", ["laplace_local", "gaussian_local"])
def test_local_dp_reports_the_worst_clients_epsilon(runtime, tmp_path, mechanism):
    sim, summary, metrics = run_in_process(tmp_path, f"dp={mechanism}", "rounds=3", FIXED)
    assert summary["status"] == "completed" and summary["local"] is True
    k = summary["max_participations"]
    assert 1 <= k <= 3
    if mechanism == "laplace_local":
        assert summary["accountant"] == "pure"
        assert summary["epsilon_per_participation"] == pytest.approx(2 / sim.plan.noise_multiplier)
        assert summary["epsilon"] == pytest.approx(k * 2 / sim.plan.noise_multiplier)
    assert summary["epsilon_planned"] >= summary["epsilon"]


def test_local_noise_reaches_the_server_update(runtime):
    loud, params, cohort = one_round_update(
        "dp=gaussian_local", "dp.noise_multiplier=50", "dp.clip=1e-3", FIXED
    )
    # each client adds std 50 * 1e-3; the mean of `cohort` clients has std 0.05 / sqrt(cohort)
    assert np.std(loud) == pytest.approx(0.05 / np.sqrt(cohort), rel=0.15)


def test_dp_ftrl_tree_shorter_than_an_epoch_is_one_tree_over_its_rounds(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "dp=tree", "rounds=3", "dp.noise_multiplier=2")
    assert summary["status"] == "completed" and np.isfinite(metrics["train/loss"]).all()
    assert summary["neighboring"] == "replace_one" and summary["restart_period"] == 8
    tree = dpa.SingleEpochTreeAggregationDpEvent(1.0, 3)  # z / 2 (replace-one), 3 of 8 rounds
    assert summary["epsilon"] == pytest.approx(
        independent_epsilon([(tree, 1)], "replace_special"), rel=1e-9
    )
    assert (metrics["epsilon"] == summary["epsilon"]).all()  # one tree, counted when it starts


def test_dpsgd_in_clients_reports_record_level_epsilon(runtime, tmp_path):
    sim, summary, metrics = run_in_process(
        tmp_path, "dp=dpsgd", "rounds=3", "strategy.local_epochs=2", FIXED
    )
    assert summary["status"] == "completed" and np.isfinite(metrics["train/loss"]).all()
    assert np.isinf(metrics["epsilon"]).all()  # no user-level protection without user noise
    k = summary["max_participations"]
    expected = independent_epsilon([(dpa.GaussianDpEvent(0.5), 2 * k)])  # replace-one, 2 epochs
    assert metrics["epsilon_record"].iloc[-1] == pytest.approx(expected, rel=1e-9)
    assert summary["epsilon_record"] == pytest.approx(metrics["epsilon_record"].iloc[-1], rel=1e-12)


def test_input_noise_trains_on_noisy_features_with_constant_epsilon(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "dp=input_noise", "dp.noise_multiplier=1")
    assert summary["status"] == "completed" and np.isfinite(metrics["train/loss"]).all()
    np.testing.assert_allclose(metrics["epsilon"], 2.0)


def test_centralized_trains_on_pooled_data(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "strategy=centralized", "dp=none")
    assert summary["num_clients"] == 40 and summary["clients_per_round"] == 5
    assert summary["backend"] is None  # no clients, so no client backend ran
    assert (metrics["train/examples"] == summary["num_records"]).all()
    assert np.isinf(metrics["epsilon"]).all() and np.isfinite(metrics["eval/accuracy"]).all()


def test_centralized_dpsgd_records_what_it_used_and_is_poisson_sampled_steps(runtime, tmp_path):
    sim, summary, metrics = run_in_process(
        tmp_path, "strategy=centralized", "dp=dpsgd", "strategy.batch_size=8"
    )
    n = summary["num_records"]
    event = dpa.PoissonSampledDpEvent(8 / n, dpa.GaussianDpEvent(1.0))
    assert summary["epsilon"] == pytest.approx(
        independent_epsilon([(event, -(-2 * n // 8))]), rel=1e-9
    )
    assert summary["noise_multiplier"] == 1.0 and summary["example_clip"] == 1.0
    assert summary["unit"] == "record" and summary["neighboring"] == "add_remove"


def test_an_empty_poisson_batch_applies_noise_alone(runtime):
    sim = build("strategy=centralized", "dp=dpsgd", "dp.noise_multiplier=3")
    process = sim.process
    state = process.initialize()
    before = [np.asarray(w) for w in state.trainable]
    process._batches = lambda round_num: iter([np.array([], dtype=np.int64)] * 3)
    state = process.next(state).state
    moved = sum(np.abs(b - a).sum() for a, b in zip(before, state.trainable, strict=True))
    assert moved > 0  # nothing sampled, and still a noisy step (three of them)


def test_centralized_reproduces_tf_privacy_compute_dp_sgd_privacy(runtime):
    from tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib import (
        compute_dp_sgd_privacy,
    )

    # textbook: n = 60000 (1000 clients x 60 training records), batch 128, noise 1.0, 10 epochs
    orders = [str(1 + x / 10.0) for x in range(1, 100)] + [str(o) for o in range(11, 64)]
    from dpfed.build import build_dataset, build_privacy
    from dpfed.config import compose

    cfg = compose(
        "strategy=centralized",
        "dp=dpsgd",
        "rounds=10",
        "strategy.batch_size=128",
        "dataset.num_clients=1000",
        "dataset.examples_mean=75",
        "dataset.examples_spread=0",
        "dataset.seq_len=4",
        "dp.orders=[" + ",".join([*orders, "128", "256", "512"]) + "]",
    )
    plan = build_privacy(cfg, build_dataset(cfg).population())
    assert plan.sampler.num_records == 60000
    expected, _ = compute_dp_sgd_privacy(
        n=60000, batch_size=128, noise_multiplier=1.0, epochs=10, delta=1e-5
    )
    assert plan.epsilon() == pytest.approx(expected, rel=1e-6)


def test_centralized_with_gaussian_is_dpsgd_on_the_pooled_records(runtime):
    gaussian = build("strategy=centralized")
    dpsgd = build("strategy=centralized", "dp=dpsgd")
    assert gaussian.process.dpsgd == dpsgd.process.dpsgd
    assert (gaussian.process.dpsgd.clip, gaussian.process.dpsgd.noise_multiplier) == (1.0, 1.0)
    assert gaussian.epsilon_planned == pytest.approx(dpsgd.epsilon_planned, rel=1e-12)


def noise_free(option: str) -> tuple[str, ...]:
    """Every noise multiplier of a mechanism's schema set to 0 and every clip to inf."""
    schema = SCHEMAS[option]
    out = [f"dp={option}"]
    for field in dataclasses.fields(schema):
        if field.name.endswith("noise_multiplier"):
            out.append(f"dp.{field.name}=0")
        elif field.name.endswith("clip"):
            out.append(f"dp.{field.name}=inf")
    return tuple(out)


@pytest.mark.parametrize("option", sorted(set(SCHEMAS) - {"none"}))
def test_without_noise_or_clipping_every_mechanism_is_its_non_private_counterpart(runtime, option):
    """Taken from the registry: a new mechanism is checked without being listed here."""
    # a mechanism that needs epochs (tree: shuffle, bandmf: cyclic) selects its sampling
    chosen = str(compose_config(f"dp={option}").strategy.sampling)
    sampling = FIXED if chosen == "poisson" else f"strategy.sampling={chosen}"
    common = ("strategy.batch_size=1", sampling)
    private = noise_free(option)
    if option.endswith("_local"):
        private += ("dp.accountant=rdp",)
    try:
        got, _, _ = one_round_update(*private, *common)
    except ConfigError as err:  # a mechanism that cannot be noise-free must say so
        assert "noise_multiplier" in str(err)
        return
    want, _, _ = one_round_update("dp=none", *common)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_fedsgd_without_noise_or_clipping_is_fedsgd(runtime):
    got, _, _ = one_round_update("strategy=fedsgd", "dp.noise_multiplier=0", "dp.clip=inf", FIXED)
    want, _, _ = one_round_update("strategy=fedsgd", "dp=none", FIXED)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_seeded_noise_reproduces_and_a_secret_seed_does_not(runtime):
    runs = [first_rounds(FIXED, *extra)[1] for extra in ((), (), ("dp.seed=null",))]
    for a, b in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, c) for a, c in zip(runs[0], runs[2], strict=True))
    assert math.isfinite(np.sum([np.sum(w) for w in runs[2]]))


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("dataset=smart_home",), "eval/last_value_accuracy"),
        (("dataset=finance", "dataset.target=return"), "eval/last_value_mae"),
        (("dataset=health",), None),
    ],
)
def test_the_trivial_predictors_are_scored_on_the_evaluation_data(runtime, overrides, key):
    from dpfed.io.provenance import result_line

    sim = build(*overrides, "strategy.eval_clients=6")
    trivial = sim.trivial_predictor()
    x, y = sim._eval_x, np.asarray(sim._eval_y).ravel()
    # only smart_home knows its Bayes-optimal forecast (the oracle)
    oracle = "eval/oracle_accuracy" in trivial
    assert oracle == (overrides == ("dataset=smart_home",)), trivial
    if key is None:
        assert not any(k.startswith("eval/last_value") for k in trivial)
        return
    forecast = sim.dataset.last_value(x).ravel()
    expected = np.mean(forecast == y) if key.endswith("accuracy") else np.mean(np.abs(forecast - y))
    assert trivial[key] == pytest.approx(expected)
    metric = key.replace("last_value_", "")
    line = result_line({**trivial, metric: 0.5, "rounds": 2, "status": "completed"}, "out")
    assert f"{trivial['trivial_predictor']}: " in line and f"last value: {expected:.3f}" in line
    if oracle:  # scored on the same clients, in the same order
        best = np.concatenate(
            [sim.dataset.oracle_forecast(i, sim.dataset.eval.arrays(i)[0]) for i in sim._eval_ids]
        )
        assert len(sim._eval_ids) == 6 and trivial["eval/oracle_accuracy"] == np.mean(best == y)
        assert f"last value: {expected:.3f}; oracle: {np.mean(best == y):.3f})" in line
