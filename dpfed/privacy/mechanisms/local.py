"""Local DP: each client clips and randomizes its own update (Warner 1965; Duchi et al. 2013)."""

from __future__ import annotations

from dataclasses import dataclass

import dp_accounting

from dpfed.privacy.accounting import AccountantKind
from dpfed.privacy.mechanisms.base import (
    LocalRandomizer,
    Mechanism,
    MechanismParts,
    NoisyConfig,
    central_parts,
    check_clip,
    check_noise,
    finite_clip,
)
from dpfed.privacy.plan import Account, participation_account


class LocalMechanism(Mechanism):
    """Local DP: a client clips its update to ``clip`` and adds noise of scale ``z * clip`` itself.

    The server only averages what arrives (divided by the expected cohort
    size). Under replace-one (any two updates of one client) one participation
    is a release with noise multiplier ``z / 2``, under zero-out ``z``. Epsilon
    is per client, composed over the rounds that client took part in:
    ``epsilon`` in metrics.csv is that of the client that took part most often
    so far, ``epsilon_planned`` assumes one client could be in every round the
    sampler allows (once per epoch for ``shuffle``). Cohort sampling is not
    credited (no amplification). Noise is seeded per (round, client) from the
    run's DP seed (`dpfed.privacy.noise`), never from the update.

    Args:
        noise_multiplier: noise scale divided by ``clip``; >= 0.
        clip: clipping bound of the update, in ``norm``.
    """

    norm: str
    noise: str

    def __init__(self, noise_multiplier: float, clip: float):
        check_noise(noise_multiplier)
        check_clip(clip, noise_multiplier)
        self.noise_multiplier, self.clip = noise_multiplier, clip

    def release(self, accounted_noise_multiplier: float) -> dp_accounting.DpEvent:
        raise NotImplementedError

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        return (participation_account(ctx, "epsilon", "user", noise_multiplier, self.release),)

    def setup(self, plan, model) -> MechanismParts:
        import tensorflow_privacy as tfp

        z = plan.noise_multiplier
        local = LocalRandomizer(
            self.norm, finite_clip(self.clip), self.noise, 0.0 if z == 0 else z * self.clip
        )
        query = tfp.NoPrivacySumQuery()  # the clients' own noise is the whole mechanism
        return central_parts(query, plan, local=local)

    def describe(self, plan) -> dict:
        head = plan.headline
        one = plan.accountant(head).planned_epsilon([head.event(1)])
        return {
            "clip": self.clip,
            "clip_norm": self.norm,
            "local": True,
            "epsilon_per_participation": one,
        }


class LaplaceLocalMechanism(LocalMechanism):
    """Local DP with L1 clipping, Laplace noise: pure ``2 / z`` per participation (replace-one)."""

    label, norm, noise = "laplace_local", "l1", "laplace"

    def release(self, accounted_noise_multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.LaplaceDpEvent(accounted_noise_multiplier)


class GaussianLocalMechanism(LocalMechanism):
    """Local DP with L2 clipping and Gaussian noise, (epsilon, delta) per client."""

    label, norm, noise = "gaussian_local", "l2", "gaussian"

    def release(self, accounted_noise_multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.GaussianDpEvent(accounted_noise_multiplier)


@dataclass
class LaplaceLocalConfig(NoisyConfig):
    """Local DP: each client clips its update in L1 and adds Laplace noise itself.

    Attributes:
        clip: L1 bound on each client's update.
        accountant: ``pure`` (basic composition of pure epsilon-DP), ``rdp`` or ``pld``.
    """

    _target_: str = "dpfed.privacy.mechanisms.local.LaplaceLocalMechanism"
    clip: float = 1.0
    accountant: AccountantKind = AccountantKind.pure


@dataclass
class GaussianLocalConfig(NoisyConfig):
    """Local DP: each client clips its update in L2 and adds Gaussian noise itself.

    Attributes:
        clip: L2 bound on each client's update.
    """

    _target_: str = "dpfed.privacy.mechanisms.local.GaussianLocalMechanism"
    clip: float = 1.0


CONFIGS = {"laplace_local": LaplaceLocalConfig, "gaussian_local": GaussianLocalConfig}
