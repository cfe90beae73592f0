"""In-process checks that the DP aggregator really clips and noises what the ledger accounts."""

from __future__ import annotations

import numpy as np
import pytest

from dpfed.build import build_simulation
from tests.conftest import compose_config

PLAIN_SERVER = (
    "strategy.server_optimizer.momentum=null",
    "strategy.server_optimizer.learning_rate=1.0",
)


def one_round_update(*overrides):
    """Returns (flat model change after one round, number of parameters, cohort size)."""
    sim = build_simulation(compose_config("debug=smoke", *PLAIN_SERVER, *overrides))
    state = sim.process.initialize()
    before = sim.process.get_model_weights(state).trainable
    cohort = sim.sampler.sample(1)
    state = sim.process.next(state, sim.cohort_datasets(cohort, 1)).state
    after = sim.process.get_model_weights(state).trainable
    delta = np.concatenate([np.ravel(a - b) for a, b in zip(after, before, strict=True)])
    return delta, delta.size, len(cohort)


def test_updates_are_clipped_to_clip(runtime):
    free, _, _ = one_round_update("dp=none", "strategy.client_optimizer.learning_rate=0.5")
    clip = 0.1 * np.linalg.norm(free)
    clipped, _, _ = one_round_update(
        "dp.noise_multiplier=0", f"dp.clip={clip}", "strategy.client_optimizer.learning_rate=0.5"
    )
    # the mean of updates clipped to `clip` has norm <= clip; unclipped it was 10x larger
    assert np.linalg.norm(clipped) <= clip * (1 + 1e-4)
    assert np.linalg.norm(clipped) > 0.5 * clip


def test_noise_std_is_noise_multiplier_times_clip_over_cohort(runtime):
    z, clip = 2.0, 1e-3
    delta, params, cohort = one_round_update(f"dp.noise_multiplier={z}", f"dp.clip={clip}")
    expected_noise_norm = z * clip * np.sqrt(params) / cohort
    signal_bound = clip
    assert expected_noise_norm > 10 * signal_bound  # the noise dominates what we measure
    assert np.linalg.norm(delta) == pytest.approx(expected_noise_norm, rel=0.15)
    assert np.std(delta) == pytest.approx(z * clip / cohort, rel=0.15)


def test_same_seed_same_model_without_noise(runtime):
    first, _, _ = one_round_update("dp=none")
    again, _, _ = one_round_update("dp=none")
    other, _, _ = one_round_update("dp=none", "seed=1")
    np.testing.assert_allclose(first, again, rtol=1e-5, atol=1e-7)
    assert not np.allclose(first, other)


def run_in_process(tmp_path, *overrides):
    import pandas as pd

    from dpfed.io.run_writer import RunWriter

    sim = build_simulation(compose_config("debug=smoke", *overrides))
    summary = sim.run(RunWriter(tmp_path, sim.columns))
    metrics = pd.read_csv(tmp_path / "metrics.csv") if (tmp_path / "metrics.csv").exists() else None
    return sim, summary, metrics


def test_poisson_cohorts_vary_and_are_accounted_as_poisson(runtime, tmp_path):
    sim, summary, metrics = run_in_process(
        tmp_path, "strategy.sampling=poisson", "rounds=6", "strategy.eval_every=0"
    )
    assert (
        summary["sampling"] == "poisson" and summary["neighboring_relation"] == "add_or_remove_one"
    )
    assert metrics["clients"].nunique() > 1
    assert summary["dp_events"][0]["event"]["type"] == "PoissonSampledDpEvent"
    assert summary["dp_events"][0]["count"] == 6


def test_target_epsilon_ends_within_two_percent_below(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "dp.target_epsilon=2", "rounds=3")
    assert 2 * 0.98 <= summary["epsilon"] <= 2
    assert summary["epsilon_planned"] == pytest.approx(summary["epsilon"], rel=1e-9)
    assert summary["noise_multiplier"] != 1.0 and summary["target_epsilon"] == 2


def test_max_epsilon_stops_before_the_round_that_would_exceed_it(runtime, tmp_path):
    probe = build_simulation(compose_config("debug=smoke", "rounds=2"))
    budget = probe.epsilon_planned * 1.0001  # room for exactly two rounds
    sim, summary, metrics = run_in_process(tmp_path, f"dp.max_epsilon={budget}", "rounds=5")
    assert summary["status"] == "stopped" and summary["rounds"] == 2
    assert "round 3" in summary["stop_reason"]
    assert len(metrics) == 2 and metrics["epsilon"].max() <= budget


@pytest.mark.parametrize(
    "overrides,metric",
    [
        (("dataset=health", "dataset.labels=every_step"), "accuracy"),
        (("dataset=finance", "dataset.target=return"), "mae"),
    ],
)
def test_per_step_labels_and_regression_train_through_tff(runtime, tmp_path, overrides, metric):
    sim, summary, metrics = run_in_process(tmp_path, *overrides)
    assert summary["status"] == "completed" and len(metrics) == 2
    assert metrics[f"train/{metric}"].notna().all() and metrics[f"eval/{metric}"].notna().all()
    assert np.isfinite(metrics["train/loss"]).all()


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam", "fedyogi", "fedsgd"])
def test_every_strategy_trains_with_user_level_dp(runtime, tmp_path, strategy):
    sim, summary, metrics = run_in_process(tmp_path, f"strategy={strategy}")
    assert summary["status"] == "completed" and summary["strategy"] == sim.strategy.name
    assert np.isfinite(metrics["train/loss"]).all() and np.isfinite(metrics["epsilon"]).all()


def test_fedprox_without_proximal_term_is_fedavg(runtime):
    fedavg, _, _ = one_round_update("dp=none")
    fedprox, _, _ = one_round_update("dp=none", "strategy=fedprox", "strategy.proximal_strength=0")
    np.testing.assert_allclose(fedprox, fedavg, rtol=1e-5, atol=1e-7)


def test_adaptive_clip_is_logged_moves_and_is_accounted_like_gaussian(runtime, tmp_path):
    sim, summary, metrics = run_in_process(
        tmp_path, "dp=adaptive", "dp.clipped_count_stddev=2.0", "rounds=3", "dp.initial_clip=0.01"
    )
    clips = metrics["dp/clip"].to_numpy()
    assert np.isfinite(clips).all() and clips[-1] != clips[0]
    gaussian = build_simulation(compose_config("debug=smoke", "rounds=3"))
    assert summary["epsilon"] == pytest.approx(gaussian.epsilon_planned, rel=1e-12)


def test_adaptive_rejects_a_count_noise_tff_cannot_split(runtime):
    from dpfed.errors import ConfigError

    with pytest.raises(ConfigError, match="dp.clipped_count_stddev"):
        build_simulation(compose_config("debug=smoke", "dp=adaptive"))  # 0.05 * 5 <= 1 / 2


@pytest.mark.parametrize("mechanism", ["laplace_local", "gaussian_local"])
def test_local_dp_trains_and_reports_the_worst_clients_epsilon(runtime, tmp_path, mechanism):
    sim, summary, metrics = run_in_process(tmp_path, f"dp={mechanism}", "rounds=3")
    assert summary["status"] == "completed" and summary["local"] is True
    assert np.isfinite(metrics["train/loss"]).all()
    k = summary["max_participations"]
    assert 1 <= k <= 3
    if mechanism == "laplace_local":
        assert summary["accountant"] == "pure"
        assert summary["epsilon_per_participation"] == pytest.approx(
            2 / summary["noise_multiplier"]
        )
        assert summary["epsilon"] == pytest.approx(k * 2 / summary["noise_multiplier"])
    assert summary["epsilon_planned"] >= summary["epsilon"]


def test_local_noise_reaches_the_server_update(runtime):
    quiet, _, _ = one_round_update("dp=gaussian_local", "dp.noise_multiplier=0.001", "dp.clip=1e-3")
    loud, params, cohort = one_round_update(
        "dp=gaussian_local", "dp.noise_multiplier=50", "dp.clip=1e-3"
    )
    # each client adds std 50 * 1e-3; the mean of `cohort` clients has std 0.05 / sqrt(cohort)
    assert np.std(loud) == pytest.approx(0.05 / np.sqrt(cohort), rel=0.15)
    assert np.linalg.norm(quiet) <= 1e-3 * (1 + 1e-3) + 0.001 * 1e-3 * np.sqrt(params)


def test_dp_ftrl_tree_runs_on_shuffled_epochs_with_tree_rdp(runtime, tmp_path):
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    sim, summary, metrics = run_in_process(
        tmp_path, "dp=tree", "strategy.sampling=shuffle", "rounds=3", "dp.noise_multiplier=2"
    )
    assert summary["status"] == "completed" and np.isfinite(metrics["train/loss"]).all()
    assert summary["neighboring_relation"] == "replace_special" and summary["restart_period"] == 8
    reference = RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL
    )
    reference.compose(dp_accounting.SingleEpochTreeAggregationDpEvent(2.0, [8]))  # 40 // 5 rounds
    assert summary["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    assert (metrics["epsilon"] == summary["epsilon"]).all()  # one tree, counted when it starts


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_dp_ftrl_with_sampling_is_rejected(runtime, sampling):
    from dpfed.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy.sampling"):
        build_simulation(compose_config("debug=smoke", "dp=tree", f"strategy.sampling={sampling}"))


def test_dpsgd_in_clients_reports_record_level_epsilon(runtime, tmp_path):
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    sim, summary, metrics = run_in_process(
        tmp_path, "dp=dpsgd", "rounds=3", "strategy.local_epochs=2"
    )
    assert summary["status"] == "completed" and np.isfinite(metrics["train/loss"]).all()
    assert np.isinf(metrics["epsilon"]).all()  # no user-level protection without user noise
    k = summary["max_participations"]
    reference = RdpAccountant()
    reference.compose(dp_accounting.GaussianDpEvent(1.0), 2 * k)  # local epochs x participations
    assert metrics["epsilon_record"].iloc[-1] == pytest.approx(
        reference.get_epsilon(1e-5), rel=1e-9
    )


def test_dpsgd_combined_with_user_level_dp_logs_both_epsilons(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "dp=dpsgd", "dp.user_noise_multiplier=1.0")
    gaussian = build_simulation(compose_config("debug=smoke"))
    assert summary["epsilon"] == pytest.approx(gaussian.epsilon_planned, rel=1e-12)
    assert summary["user_level"] == "gaussian" and np.isfinite(summary["epsilon_record"])


def test_input_noise_trains_on_noisy_features_with_constant_epsilon(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "dp=input_noise", "dp.noise_multiplier=0.5")
    assert summary["status"] == "completed" and np.isfinite(metrics["train/loss"]).all()
    np.testing.assert_allclose(metrics["epsilon"], 2.0)


def test_centralized_trains_on_pooled_data_without_privacy(runtime, tmp_path):
    sim, summary, metrics = run_in_process(tmp_path, "strategy=centralized", "dp=none", "rounds=2")
    assert summary["num_clients"] == 5  # debug=smoke pools clients_per_round=5 clients
    assert summary["status"] == "completed"
    assert (metrics["train/examples"] == summary["num_records"]).all()
    assert np.isinf(metrics["epsilon"]).all() and np.isfinite(metrics["eval/accuracy"]).all()


def test_centralized_dpsgd_is_accounted_as_poisson_sampled_steps(runtime, tmp_path):
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    sim, summary, metrics = run_in_process(
        tmp_path, "strategy=centralized", "dp=dpsgd", "rounds=2", "strategy.batch_size=8"
    )
    n = summary["num_records"]
    reference = RdpAccountant()
    steps = -(-2 * n // 8)  # ceil(epochs * n / batch)
    reference.compose(
        dp_accounting.PoissonSampledDpEvent(8 / n, dp_accounting.GaussianDpEvent(1.0)), steps
    )
    assert summary["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)
    np.testing.assert_allclose(metrics["epsilon_record"], metrics["epsilon"])


def test_centralized_reproduces_tf_privacy_compute_dp_sgd_privacy(runtime):
    from tensorflow_privacy.privacy.analysis.compute_dp_sgd_privacy_lib import (
        compute_dp_sgd_privacy,
    )

    # textbook: n = 60000 (1000 clients x 60 training records), batch 128, noise 1.0, 10 epochs
    cfg = compose_config(
        "strategy=centralized", "dp=dpsgd", "rounds=10", "strategy.batch_size=128",
        "dataset.num_clients=1000", "dataset.examples_mean=75", "dataset.examples_spread=0",
        "dataset.seq_len=4", "dp.orders=[" + ",".join(
            [str(1 + x / 10.0) for x in range(1, 100)] + [str(o) for o in range(11, 64)] + ["128", "256", "512"]) + "]",
    )  # fmt: skip
    sim = build_simulation(cfg)
    assert sim.sampler.num_records == 60000
    expected, _ = compute_dp_sgd_privacy(
        n=60000, batch_size=128, noise_multiplier=1.0, epochs=10, delta=1e-5
    )
    assert sim.epsilon_planned == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [("dp=adaptive", "dp.clipped_count_stddev=2"), ("dp=laplace_local",), ("dp=input_noise",)],
)
def test_centralized_rejects_client_level_mechanisms(runtime, overrides):
    from dpfed.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^dp[.=]"):  # rejected, naming a dp setting
        build_simulation(compose_config("debug=smoke", "strategy=centralized", *overrides))


def test_centralized_with_gaussian_is_dpsgd_on_the_pooled_records(runtime):
    gaussian = build_simulation(compose_config("debug=smoke", "strategy=centralized"))
    dpsgd = build_simulation(compose_config("debug=smoke", "strategy=centralized", "dp=dpsgd"))
    assert gaussian.process.dpsgd == dpsgd.process.dpsgd == (1.0, 1.0)
    assert gaussian.epsilon_planned == pytest.approx(dpsgd.epsilon_planned, rel=1e-12)


@pytest.mark.parametrize(
    "private,reference",
    [
        (("dp.noise_multiplier=0", "dp.clip=inf"), ("dp=none",)),
        (("dp=gaussian_local", "dp.noise_multiplier=0", "dp.clip=inf"), ("dp=none",)),
        (("dp=laplace_local", "dp.noise_multiplier=0", "dp.clip=inf", "dp.accountant=rdp"), ("dp=none",)),
        (("dp=adaptive", "dp.noise_multiplier=0", "dp.initial_clip=inf"), ("dp=none",)),
        (("dp=tree", "dp.noise_multiplier=0", "dp.clip=inf", "strategy.sampling=shuffle"),
         ("dp=none", "strategy.sampling=shuffle")),
        (("dp=dpsgd", "dp.noise_multiplier=0", "dp.clip=inf", "strategy.batch_size=1"),
         ("dp=none", "strategy.batch_size=1")),
        (("strategy=fedprox", "dp.noise_multiplier=0", "dp.clip=inf"), ("strategy=fedprox", "dp=none")),
        (("strategy=fedsgd", "dp.noise_multiplier=0", "dp.clip=inf"), ("strategy=fedsgd", "dp=none")),
    ],
)  # fmt: skip
def test_without_noise_or_clipping_every_dp_mechanism_is_its_non_private_counterpart(
    runtime, private, reference
):
    got, _, _ = one_round_update(*private)
    want, _, _ = one_round_update(*reference)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
