"""Epsilon from the ledger equals an independent dp-accounting computation, per sampling."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from dpfed.errors import ConfigError
from dpfed.federated.sampling import FixedSizeSampler, PoissonSampler, ShuffleSampler
from dpfed.privacy.accounting import PrivacyLedger, event_from_dict, event_to_dict
from dpfed.privacy.mechanisms import GaussianMechanism, NoPrivacy

REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE
TUTORIAL_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def independent_fixed(n, m, z, rounds, delta):
    """Fixed-size sampling, replace-one: the clipped sum moves by 2*clip, so sigma/2."""
    accountant = RdpAccountant(neighboring_relation=REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        n, m, dp_accounting.GaussianDpEvent(z / 2)
    )
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


def run_ledger(mech, sampler, rounds):
    ledger = mech.ledger(sampler)
    eps = [ledger.record(mech.round_event(sampler, r)) for r in range(1, rounds + 1)]
    return ledger, eps


@pytest.mark.parametrize("n,m,z,rounds", [(1000, 50, 1.0, 5), (200, 20, 2.0, 3), (50, 50, 1.5, 4)])
def test_fixed_sampling_epsilon_matches_independent_computation(n, m, z, rounds):
    mech = GaussianMechanism(noise_multiplier=z, clip=0.7, delta=1e-5)
    sampler = FixedSizeSampler(n, m, seed=0)
    ledger, eps = run_ledger(mech, sampler, rounds)
    for t, e in enumerate(eps, start=1):
        assert e == pytest.approx(independent_fixed(n, m, z, t, 1e-5), rel=1e-9)
    assert all(np.diff(eps) > 0) and all(math.isfinite(e) for e in eps)
    planned = ledger.planned_epsilon(mech.round_event(sampler, r) for r in range(1, rounds + 1))
    assert planned == pytest.approx(eps[-1], rel=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_poisson_sampling_epsilon_matches_independent_computation(accountant):
    mech = GaussianMechanism(noise_multiplier=1.2, clip=2.0, accountant=accountant)
    sampler = PoissonSampler(500, 25, seed=0)
    _, eps = run_ledger(mech, sampler, 6)
    reference = RdpAccountant() if accountant == "rdp" else PLDAccountant()
    # add/remove adjacency: sensitivity is clip, so the accountant sees the full multiplier
    reference.compose(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.2)), 6
    )
    assert eps[-1] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)


def test_shuffle_sampling_counts_one_unamplified_release_per_started_epoch():
    mech = GaussianMechanism(noise_multiplier=3.0, clip=1.0)
    sampler = ShuffleSampler(100, 30, seed=0)  # 3 rounds per epoch, 10 clients sit each epoch out
    _, eps = run_ledger(mech, sampler, 7)  # rounds 1, 4, 7 start epochs
    reference = RdpAccountant(neighboring_relation=REPLACE_ONE)
    expected = []
    for epochs in (1, 1, 1, 2, 2, 2, 3):
        reference = RdpAccountant(neighboring_relation=REPLACE_ONE)
        reference.compose(dp_accounting.GaussianDpEvent(1.5), epochs)
        expected.append(reference.get_epsilon(1e-5))
    np.testing.assert_allclose(eps, expected, rtol=1e-9)


def test_shuffle_cohorts_cover_each_client_at_most_once_per_epoch():
    sampler = ShuffleSampler(100, 30, seed=4)
    epoch = [c for r in (1, 2, 3) for c in sampler.sample(r)]
    assert len(epoch) == len(set(epoch)) == 90
    assert set(sampler.sample(4)) != set(sampler.sample(1))


def test_poisson_cohorts_vary_with_mean_q_times_n():
    sampler = PoissonSampler(2000, 40, seed=1)
    sizes = np.array([len(sampler.sample(r)) for r in range(1, 401)])
    assert len(set(sizes)) > 5
    assert sizes.mean() == pytest.approx(40, rel=0.05)  # q * N; sd of the mean is ~0.3


def test_classic_conversion_reproduces_tf_privacy_tutorial_table():
    # TF Privacy's MNIST tutorial: n=60000, batch 256, noise 1.1, 60 epochs, delta 1e-5 -> 3.01
    mech = GaussianMechanism(
        noise_multiplier=1.1, clip=1.0, orders=TUTORIAL_ORDERS, conversion="classic"
    )
    sampler = PoissonSampler(60000, 256, seed=0)
    ledger = mech.ledger(sampler)
    steps = 60 * 60000 // 256
    eps = ledger.planned_epsilon(mech.round_event(sampler, 1) for _ in range(steps))
    assert round(eps, 2) == 3.01
    improved = GaussianMechanism(noise_multiplier=1.1, clip=1.0, orders=TUTORIAL_ORDERS)
    assert improved.ledger(sampler).planned_epsilon([mech.round_event(sampler, 1)] * steps) < eps


def test_fixed_sampling_with_pld_is_rejected():
    mech = GaussianMechanism(noise_multiplier=1.0, clip=1.0, accountant="pld")
    with pytest.raises(ConfigError, match="accountant"):
        mech.ledger(FixedSizeSampler(100, 10, seed=0))


def test_more_noise_gives_smaller_epsilon():
    sampler = FixedSizeSampler(1000, 50, seed=0)
    eps = []
    for z in (0.8, 1.6, 3.2):
        mech = GaussianMechanism(noise_multiplier=z, clip=1.0)
        eps.append(run_ledger(mech, sampler, 10)[1][-1])
    assert eps[0] > eps[1] > eps[2] > 0


@pytest.mark.parametrize("sampler", [FixedSizeSampler(100, 10, 0), PoissonSampler(100, 10, 0)])
def test_calibration_round_trips_noise_epsilon_noise(sampler):
    mech = GaussianMechanism(noise_multiplier=1.0, clip=1.0, target_epsilon=2.0)
    ledger = mech.ledger(sampler)
    mech.prepare(sampler, ledger, rounds=30)
    planned = ledger.planned_epsilon(mech.round_event(sampler, r) for r in range(1, 31))
    assert 2.0 * 0.98 <= planned <= 2.0
    assert mech.calibrated_epsilon == pytest.approx(planned, rel=1e-12)
    # noise -> epsilon -> noise: calibrating to the epsilon just found gives the noise back
    again = GaussianMechanism(noise_multiplier=7.0, clip=1.0, target_epsilon=planned)
    again.prepare(sampler, again.ledger(sampler), rounds=30)
    assert again.noise_multiplier == pytest.approx(mech.noise_multiplier, rel=0.01)


def test_unreachable_target_epsilon_is_rejected():
    mech = GaussianMechanism(noise_multiplier=1.0, clip=1.0, target_epsilon=1e-9)
    sampler = FixedSizeSampler(10, 10, seed=0)
    with pytest.raises(ConfigError, match="target_epsilon"):
        mech.prepare(sampler, mech.ledger(sampler), rounds=1000)


def test_budget_peek_does_not_record():
    mech = GaussianMechanism(noise_multiplier=1.0, clip=1.0)
    sampler = PoissonSampler(100, 10, seed=0)
    ledger = mech.ledger(sampler)
    ledger.record(mech.round_event(sampler, 1))
    before = ledger.epsilon
    assert ledger.peek(mech.round_event(sampler, 2)) > before == ledger.epsilon


def test_zero_noise_is_infinite_epsilon():
    mech = GaussianMechanism(noise_multiplier=0.0, clip=1.0)
    assert math.isinf(run_ledger(mech, FixedSizeSampler(100, 10, 0), 1)[1][-1])


def test_no_privacy_is_infinite_never_zero():
    sampler = FixedSizeSampler(100, 10, 0)
    ledger, eps = run_ledger(NoPrivacy(), sampler, 2)
    assert all(math.isinf(e) for e in eps)


def test_event_round_trips_through_json_dict():
    event = GaussianMechanism(noise_multiplier=1.3, clip=1.0).round_event(
        FixedSizeSampler(500, 25, 0), 1
    )
    assert event_from_dict(event_to_dict(event)) == event


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"noise_multiplier": -1.0, "clip": 1.0}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "clip": 0.0}, "clip"),
        ({"noise_multiplier": 1.0, "clip": -2.0}, "clip"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "delta": 0.0}, "delta"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "delta": 1.0}, "delta"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "orders": [0.5]}, "orders"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "conversion": "magic"}, "conversion"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "target_epsilon": 0.0}, "target_epsilon"),
        ({"noise_multiplier": 1.0, "clip": 1.0, "max_epsilon": -1.0}, "max_epsilon"),
    ],
)
def test_bad_privacy_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as err:
        GaussianMechanism(**kwargs).ledger(FixedSizeSampler(10, 2, 0))
    assert err.value.key == key and key in str(err.value)


def test_unknown_accountant_is_rejected():
    with pytest.raises(ConfigError, match="accountant"):
        PrivacyLedger("moments", 1e-5, REPLACE_ONE)


def test_incremental_pld_equals_pld_accountant_composing_the_same_rounds():
    """The ledger caches each event's PLD; epsilon after every round equals dp-accounting's."""
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    rounds = [
        dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.1)),
        dp_accounting.GaussianDpEvent(6.0),
        dp_accounting.PoissonSampledDpEvent(0.02, dp_accounting.GaussianDpEvent(1.1)),
    ] * 5
    ledger = PrivacyLedger("pld", 1e-5, relation)
    reference = PLDAccountant(relation, 1e-4)
    for event in rounds:
        peeked = ledger.peek(event)
        ours = ledger.record(event)
        reference.compose(event)
        assert peeked == ours
        assert ours == pytest.approx(reference.get_epsilon(1e-5), rel=1e-8)
    assert ledger.record(dp_accounting.NonPrivateDpEvent()) == math.inf
