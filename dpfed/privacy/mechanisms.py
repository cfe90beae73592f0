"""DP mechanisms for federated rounds: the TFF aggregator and the DP event of one round."""

from __future__ import annotations

import math

import dp_accounting

from dpfed.errors import check
from dpfed.federated.runtime import tff
from dpfed.privacy.accounting import PrivacyLedger


class NoPrivacy:
    """Non-private baseline: TFF's default mean; every round is a non-private event.

    Args:
        delta: delta at which the (infinite) epsilon is reported.
        accountant: accountant name, kept so sweeps over ``dp`` share columns.
    """

    name = "none"

    def __init__(self, delta: float = 1e-5, accountant: str = "rdp"):
        check(0 < delta < 1, "delta", delta, "in (0, 1)")
        self.delta, self.accountant = delta, accountant

    def aggregator(self, clients_per_round: int):
        return None  # the learning algorithm's default (weighted) mean

    def ledger(self, sampler) -> PrivacyLedger:
        return PrivacyLedger(self.accountant, self.delta, sampler.neighboring_relation)

    def round_event(self, sampler) -> dp_accounting.DpEvent:
        return dp_accounting.NonPrivateDpEvent()

    def describe(self, sampler) -> dict:
        return {"mechanism": self.name, "noise_multiplier": 0.0, "clip": math.inf}


class GaussianMechanism:
    """User-level DP-FedAvg with fixed clipping (McMahan et al., ICLR 2018).

    Each client's update is clipped to L2 norm ``clip``; Gaussian noise of std
    ``noise_multiplier * clip`` is added to the sum, which is then divided by
    the cohort size, by TFF's ``DifferentiallyPrivateFactory.gaussian_fixed``.

    Under replace-one adjacency (what fixed-size cohorts require) one user can
    move the clipped sum by up to ``2 * clip``, so the accountant sees the noise
    multiplier ``noise_multiplier / 2``; under add/remove it is ``clip``.

    Args:
        noise_multiplier: noise std divided by ``clip``; >= 0 (0 means no privacy).
        clip: L2 clipping norm of client updates; > 0.
        delta: target delta, in (0, 1).
        accountant: ``rdp``.
        orders: RDP orders, None for dp-accounting's defaults.
    """

    name = "gaussian"

    def __init__(
        self,
        noise_multiplier: float,
        clip: float,
        delta: float = 1e-5,
        accountant: str = "rdp",
        orders=None,
    ):
        check(noise_multiplier >= 0, "noise_multiplier", noise_multiplier, ">= 0")
        check(clip > 0 and math.isfinite(clip), "clip", clip, "a finite number > 0")
        check(0 < delta < 1, "delta", delta, "in (0, 1)")
        self.noise_multiplier, self.clip, self.delta = noise_multiplier, clip, delta
        self.accountant, self.orders = accountant, orders

    def aggregator(self, clients_per_round: int):
        return tff.aggregators.DifferentiallyPrivateFactory.gaussian_fixed(
            noise_multiplier=self.noise_multiplier,
            clients_per_round=clients_per_round,
            clip=self.clip,
        )

    def ledger(self, sampler) -> PrivacyLedger:
        return PrivacyLedger(self.accountant, self.delta, sampler.neighboring_relation, self.orders)

    def sensitivity(self, neighboring_relation) -> float:
        """L2 sensitivity of the clipped sum under the given adjacency."""
        if neighboring_relation == dp_accounting.NeighboringRelation.REPLACE_ONE:
            return 2 * self.clip
        return self.clip

    def round_event(self, sampler) -> dp_accounting.DpEvent:
        if self.noise_multiplier == 0:
            return dp_accounting.NonPrivateDpEvent()  # clipping alone gives no DP
        sensitivity = self.sensitivity(sampler.neighboring_relation)
        gaussian = dp_accounting.GaussianDpEvent(self.noise_multiplier * self.clip / sensitivity)
        return sampler.subsampled(gaussian)

    def describe(self, sampler) -> dict:
        """Settings, plus the sensitivity and noise multiplier the accountant sees."""
        sensitivity = self.sensitivity(sampler.neighboring_relation)
        return {
            "mechanism": self.name,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "sensitivity": sensitivity,
            "accounted_noise_multiplier": self.noise_multiplier * self.clip / sensitivity,
        }
