"""No DP: the non-private baseline."""

from __future__ import annotations

from dataclasses import dataclass

import dp_accounting

from dpfed.privacy.mechanisms.base import Mechanism, MechanismParts, PrivacyConfig
from dpfed.privacy.plan import Account


class NoPrivacy(Mechanism):
    """Non-private baseline: TFF's default mean; every round is a non-private event.

    Epsilon is reported as infinite, never 0.
    """

    label = "none"
    pooled_records = True

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        sampler = ctx.sampler
        neighboring = sampler.neighboring(ctx.neighboring, private=False)
        unit = "record" if sampler.unit == "record" else "user"
        return (
            Account(
                "epsilon",
                unit,
                neighboring,
                sampler.relations[neighboring],
                False,
                lambda _: dp_accounting.NonPrivateDpEvent(),
            ),
        )

    def setup(self, plan, model) -> MechanismParts:
        return MechanismParts()


@dataclass
class NoPrivacyConfig(PrivacyConfig):
    """Non-private baseline: plain mean of client updates, epsilon reported as inf."""

    _target_: str = "dpfed.privacy.mechanisms.none.NoPrivacy"


CONFIGS = {"none": NoPrivacyConfig}
