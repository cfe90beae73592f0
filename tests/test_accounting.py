"""Epsilon from the ledger equals an independent dp-accounting computation."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant

from dpfed.errors import ConfigError
from dpfed.privacy.accounting import PrivacyLedger, event_from_dict, event_to_dict

REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


class _FixedSampler:
    """The sampler's accounting interface without TFF (see test_sampling for the real one)."""

    name = "fixed"
    neighboring_relation = REPLACE_ONE

    def __init__(self, population, cohort):
        self.population, self.clients_per_round = population, cohort

    def subsampled(self, event):
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.clients_per_round, event
        )


def _independent_epsilon(num_clients, cohort, noise_multiplier, rounds, delta):
    """Fixed-size sampling, replace-one: the clipped sum moves by 2*clip, so sigma/2."""
    accountant = RdpAccountant(neighboring_relation=REPLACE_ONE)
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        num_clients, cohort, dp_accounting.GaussianDpEvent(noise_multiplier / 2)
    )
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


@pytest.fixture(scope="module")
def gaussian():
    from dpfed.privacy.mechanisms import GaussianMechanism

    return GaussianMechanism


@pytest.mark.parametrize("n,m,z,rounds", [(1000, 50, 1.0, 5), (200, 20, 2.0, 3), (50, 50, 1.5, 4)])
def test_round_by_round_epsilon_matches_independent_computation(gaussian, n, m, z, rounds):
    mech = gaussian(noise_multiplier=z, clip=0.7, delta=1e-5)
    sampler = _FixedSampler(n, m)
    ledger = mech.ledger(sampler)
    event = mech.round_event(sampler)
    eps = [ledger.record(event) for _ in range(rounds)]
    for t, e in enumerate(eps, start=1):
        assert e == pytest.approx(_independent_epsilon(n, m, z, t, 1e-5), rel=1e-9)
    assert all(np.diff(eps) > 0) and all(math.isfinite(e) for e in eps)
    assert ledger.planned_epsilon(event, rounds) == pytest.approx(eps[-1], rel=1e-9)


def test_fixed_size_sampling_is_not_accounted_as_poisson(gaussian):
    mech = gaussian(noise_multiplier=1.0, clip=1.0)
    event = mech.round_event(_FixedSampler(1000, 50))
    assert isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent)
    assert event.event.noise_multiplier == pytest.approx(0.5)  # replace-one sensitivity 2*clip


def test_more_noise_gives_smaller_epsilon(gaussian):
    sampler = _FixedSampler(1000, 50)
    eps = []
    for z in (0.8, 1.6, 3.2):
        mech = gaussian(noise_multiplier=z, clip=1.0)
        eps.append(mech.ledger(sampler).planned_epsilon(mech.round_event(sampler), 10))
    assert eps[0] > eps[1] > eps[2] > 0


def test_zero_noise_is_infinite_epsilon(gaussian):
    mech = gaussian(noise_multiplier=0.0, clip=1.0)
    sampler = _FixedSampler(100, 10)
    assert math.isinf(mech.ledger(sampler).record(mech.round_event(sampler)))


def test_no_privacy_is_infinite_never_zero():
    from dpfed.privacy.mechanisms import NoPrivacy

    mech, sampler = NoPrivacy(), _FixedSampler(100, 10)
    ledger = mech.ledger(sampler)
    assert math.isinf(ledger.record(mech.round_event(sampler)))
    assert math.isinf(ledger.planned_epsilon(mech.round_event(sampler), 3))


def test_event_round_trips_through_json_dict(gaussian):
    mech = gaussian(noise_multiplier=1.3, clip=1.0)
    event = mech.round_event(_FixedSampler(500, 25))
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
    ],
)
def test_bad_privacy_settings_name_the_key(gaussian, kwargs, key):
    with pytest.raises(ConfigError) as err:
        mech = gaussian(**kwargs)
        mech.ledger(_FixedSampler(10, 2))
    assert err.value.key == key and key in str(err.value)


def test_unknown_accountant_is_rejected():
    with pytest.raises(ConfigError, match="accountant"):
        PrivacyLedger("moments", 1e-5, REPLACE_ONE)
