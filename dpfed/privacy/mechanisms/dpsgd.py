"""Example-level DP-SGD inside every client (Abadi et al., CCS 2016), with optional user-level DP."""

from __future__ import annotations

from dataclasses import dataclass

import dp_accounting

from dpfed.errors import check
from dpfed.privacy.mechanisms.base import (
    ExampleDP,
    Mechanism,
    MechanismParts,
    NoisyConfig,
    central_account,
    central_parts,
    check_clip,
    check_noise,
    finite_clip,
)
from dpfed.privacy.plan import Account, participation_account


class DPSGDMechanism(Mechanism):
    """Example-level DP-SGD inside every client (Abadi et al., CCS 2016), optionally with
    user-level DP-FedAvg on top (McMahan et al., ICLR 2018).

    Local training clips each example's gradient to ``clip`` and adds Gaussian
    noise of std ``noise_multiplier * clip`` to every batch's sum, divided by
    the configured batch size. A client's data is shuffled and cut into batches
    within each local epoch, so every record is in exactly one batch per epoch
    and the number of steps does not depend on any one record: a participation
    of its client is ``local_epochs`` Gaussian releases per record, with noise
    multiplier ``z`` under zero-out (a record replaced by one with zero
    gradient) and ``z / 2`` under replace-one. No subsampling amplification is
    credited, and add/remove is not analysed (adding a record shifts the
    batches). ``epsilon_record`` is that of a record of the client that took part
    most often so far. ``epsilon`` is user-level: infinite unless
    ``user_noise_multiplier > 0``, which adds TFF's fixed-clip Gaussian
    aggregator (clip ``user_clip``), accounted as ``dp=gaussian``.

    Under ``strategy=centralized`` it is DP-SGD on Poisson batches of the
    pooled records, accounted per step (user-level noise does not apply).

    Args:
        noise_multiplier: example-level noise std / clip, >= 0.
        clip: per-example L2 clipping norm, > 0.
        user_noise_multiplier: user-level noise multiplier; 0 turns user-level DP off.
        user_clip: user-level clip of client updates.
    """

    label = "dpsgd"
    pooled_records = True

    def __init__(self, noise_multiplier: float, clip: float, user_noise_multiplier: float = 0.0,
                 user_clip: float = 1.0):  # fmt: skip
        check_noise(noise_multiplier)
        check_clip(clip, noise_multiplier)
        check_noise(user_noise_multiplier, "user_noise_multiplier")
        check_clip(user_clip, user_noise_multiplier, "user_clip")
        self.noise_multiplier, self.clip = noise_multiplier, clip
        self.user_noise_multiplier, self.user_clip = user_noise_multiplier, user_clip

    @property
    def tunable_noise(self) -> float:
        return self.user_noise_multiplier or self.noise_multiplier

    def split(self, noise_multiplier: float) -> tuple[float, float]:
        """(user, example) noise multipliers when the tunable one is ``noise_multiplier``."""
        if self.user_noise_multiplier > 0:
            return noise_multiplier, self.noise_multiplier
        return 0.0, noise_multiplier

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        user_z, example_z = self.split(noise_multiplier)
        if ctx.sampler.unit == "record":  # pooled records: DP-SGD on Poisson batches
            check(user_z == 0, "user_noise_multiplier", user_z,
                  "0 with strategy=centralized (no users to protect separately)")  # fmt: skip
            return (central_account(ctx, example_z),)
        epochs = ctx.local_epochs

        def per_participation(accounted):
            return dp_accounting.SelfComposedDpEvent(
                dp_accounting.GaussianDpEvent(accounted), epochs
            )

        record = participation_account(ctx, "epsilon_record", "record", example_z,
                                       per_participation)  # fmt: skip
        return central_account(ctx, user_z), record

    def setup(self, plan, model) -> MechanismParts:
        user_z, example_z = self.split(plan.noise_multiplier)
        example = ExampleDP(finite_clip(self.clip), example_z)
        if user_z == 0:
            return MechanismParts(example_dp=example)
        from dpfed.privacy.queries import SeededGaussianSumQuery

        clip = finite_clip(self.user_clip)
        query = SeededGaussianSumQuery(clip, clip * user_z, plan.stream_key("sum"))
        return central_parts(query, plan, example_dp=example)  # fmt: skip

    def describe(self, plan) -> dict:
        user_z, example_z = self.split(plan.noise_multiplier)
        out = {"clip": self.user_clip if user_z else None, "user_noise_multiplier": user_z,
               "example_noise_multiplier": example_z, "example_clip": self.clip}  # fmt: skip
        if plan.population.coupled_records:
            out["record_note"] = (
                f"a record is one window as released; {plan.population.coupled_records}"
            )
        return out


@dataclass
class DPSGDConfig(NoisyConfig):
    """Example-level DP-SGD inside clients, optionally with user-level DP-FedAvg.

    Attributes:
        clip: per-example L2 clipping norm.
        user_noise_multiplier: user-level noise multiplier (0: no user-level DP).
        user_clip: user-level clip of client updates.
    """

    _target_: str = "dpfed.privacy.mechanisms.dpsgd.DPSGDMechanism"
    clip: float = 1.0
    user_noise_multiplier: float = 0.0
    user_clip: float = 1.0


CONFIGS = {"dpsgd": DPSGDConfig}
