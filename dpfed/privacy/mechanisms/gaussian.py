"""User-level DP-FedAvg with a fixed clip (McMahan et al., ICLR 2018)."""

from __future__ import annotations

from dataclasses import dataclass

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
    prefix_sum_errors,
)
from dpfed.privacy.plan import Account


class GaussianMechanism(Mechanism):
    """User-level DP-FedAvg with fixed clipping (McMahan et al., ICLR 2018).

    Each client's update is clipped to L2 norm ``clip``; Gaussian noise of std
    ``noise_multiplier * clip`` is added to the sum, which is then divided by
    the expected cohort size: TFF's ``DifferentiallyPrivateFactory.gaussian_fixed``,
    built with a seeded Gaussian sum query so that the noise is fixed by the
    run's DP seed and checkpointed with the aggregator's state. Under
    ``strategy=centralized`` (pooled records) it is DP-SGD with this noise and
    clip (Abadi et al. 2016).

    Args:
        noise_multiplier: noise std divided by ``clip``; >= 0 (0 means no privacy).
        clip: L2 clipping norm of client updates; > 0.
    """

    label = "gaussian"
    pooled_records = True

    def __init__(self, noise_multiplier: float, clip: float):
        check_noise(noise_multiplier)
        check_clip(clip, noise_multiplier)
        self.noise_multiplier, self.clip = noise_multiplier, clip

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        return (central_account(ctx, noise_multiplier),)

    def setup(self, plan, model) -> MechanismParts:
        z, clip = plan.noise_multiplier, finite_clip(self.clip)
        if plan.sampler.unit == "record":  # pooled records: DP-SGD
            return MechanismParts(example_dp=ExampleDP(clip, z))
        from dpfed.privacy.queries import SeededGaussianSumQuery

        query = SeededGaussianSumQuery(clip, clip * z, plan.stream_key("sum"))
        return central_parts(query, plan)

    def describe(self, plan) -> dict:
        if plan.sampler.unit == "record":
            return {"clip": self.clip}
        from dpfed.privacy import factorization as mf

        # independent noise every round: C = I in the matrix-factorization view
        errors = prefix_sum_errors(
            plan.noise_multiplier,
            lambda kind: mf.toeplitz_prefix_sum_error([1.0], plan.rounds, kind),
        )
        return {"clip": self.clip, **errors}


@dataclass
class GaussianConfig(NoisyConfig):
    """User-level DP-FedAvg (McMahan et al. 2018) with TFF's fixed-clip Gaussian aggregator.

    Attributes:
        clip: L2 bound on each client's model update.
    """

    _target_: str = "dpfed.privacy.mechanisms.gaussian.GaussianMechanism"
    clip: float = 1.0


CONFIGS = {"gaussian": GaussianConfig}
