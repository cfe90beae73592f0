"""Local DP: the client-side randomizer and per-client accounting over participations."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
from dp_accounting.rdp import RdpAccountant

from dpfed.federated.sampling import FixedSizeSampler, ShuffleSampler
from dpfed.privacy.local import LocalRandomizerQuery
from dpfed.privacy.mechanisms import GaussianLocalMechanism, LaplaceLocalMechanism


def randomize(norm, noise, clip, scale, record):
    query = LocalRandomizerQuery(norm, clip, noise, scale)
    params = query.derive_sample_params(query.initial_global_state())
    return [np.asarray(v) for v in query.preprocess_record(params, record)]


def test_clipping_in_l1_and_l2_without_noise():
    record = [tf.constant([3.0, -4.0]), tf.constant([[12.0]])]  # L1 = 19, L2 = 13
    l1 = randomize("l1", "laplace", 1.9, 0.0, record)
    assert sum(np.abs(v).sum() for v in l1) == pytest.approx(1.9, rel=1e-5)
    l2 = randomize("l2", "gaussian", 1.3, 0.0, record)
    assert math.sqrt(sum((v**2).sum() for v in l2)) == pytest.approx(1.3, rel=1e-5)
    np.testing.assert_allclose(l2[0], [0.3, -0.4], rtol=1e-5)  # direction kept
    small = randomize("l2", "gaussian", 100.0, 0.0, record)
    np.testing.assert_allclose(small[1], [[12.0]])  # inside the ball: untouched


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_noise_has_the_configured_scale(noise):
    tf.random.set_seed(0)
    out = randomize("l2" if noise == "gaussian" else "l1", noise, 1e-9, 2.0, [tf.zeros([200_000])])[
        0
    ]
    assert abs(out.mean()) < 0.03
    if noise == "laplace":
        assert np.abs(out).mean() == pytest.approx(2.0, rel=0.02)  # E|X| = b
    else:
        assert out.std() == pytest.approx(2.0, rel=0.02)


def test_laplace_epsilon_is_pure_and_composes_over_a_clients_participations():
    mech = LaplaceLocalMechanism(noise_multiplier=4.0, clip=1.0)
    sampler = FixedSizeSampler(10, 2, seed=0)
    ledger = mech.ledger(sampler)
    eps = [ledger.record(mech.round_event(sampler, r, c))
           for r, c in enumerate([["a", "b"], ["a", "c"], ["d", "e"], ["a", "b"]], start=1)]  # fmt: skip
    # per participation: L1 sensitivity 2 * clip over Laplace scale 4 * clip = 0.5
    assert eps == pytest.approx([0.5, 1.0, 1.0, 1.5])
    assert mech.max_participations == 3
    planned = ledger.planned_epsilon(mech.round_event(sampler, r) for r in range(1, 5))
    assert planned == pytest.approx(2.0)  # a client could be in all 4 rounds


def test_gaussian_local_epsilon_matches_dp_accounting_per_participation():
    mech = GaussianLocalMechanism(noise_multiplier=6.0, clip=1.0)
    sampler = ShuffleSampler(6, 2, seed=0)  # once per epoch of 3 rounds
    ledger = mech.ledger(sampler)
    for r in range(1, 7):
        eps = ledger.record(mech.round_event(sampler, r, sampler.sample(r)))
    reference = RdpAccountant()
    reference.compose(dp_accounting.GaussianDpEvent(3.0), 2)  # 2 epochs, sensitivity 2 * clip
    assert mech.max_participations == 2
    assert eps == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)


def test_laplace_with_an_l2_clip_is_rejected():
    from dpfed.errors import ConfigError

    with pytest.raises(ConfigError, match="norm"):
        LaplaceLocalMechanism(noise_multiplier=1.0, clip=1.0, norm="l2")
