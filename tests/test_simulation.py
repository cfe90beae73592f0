"""In-process checks that the DP aggregator really clips and noises what the ledger accounts."""

from __future__ import annotations

import numpy as np
import pytest

from dpfed.build import build_simulation
from dpfed.federated.runtime import tff_runtime
from tests.conftest import compose_config

PLAIN_SERVER = (
    "strategy.server_optimizer.momentum=null",
    "strategy.server_optimizer.learning_rate=1.0",
)


@pytest.fixture(scope="module")
def runtime():
    with tff_runtime():
        yield


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
