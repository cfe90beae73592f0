"""DP-FedAvg with adaptive clipping to a quantile of update norms (Andrew et al., NeurIPS 2021)."""

from __future__ import annotations

from dataclasses import dataclass

from dpfed.errors import ConfigError, check
from dpfed.privacy.mechanisms.base import (
    Mechanism,
    MechanismParts,
    NoisyConfig,
    central_account,
    central_parts,
    check_clip,
    check_noise,
    finite_clip,
)
from dpfed.privacy.plan import Account

# warn when the sum's own noise multiplier exceeds the combined one by this factor (the count then
# takes more than half of the budget's inverse variance)
SUM_NOISE_WARNING = 2**0.5


class AdaptiveGaussianMechanism(Mechanism):
    """DP-FedAvg whose clip follows a quantile of the update norms (Andrew et al., NeurIPS 2021).

    TFF's ``DifferentiallyPrivateFactory.gaussian_adaptive`` privately
    estimates, each round, which share of clients' update norms fall below the
    current clip (a count with Gaussian noise of std ``clipped_count_stddev``)
    and moves the clip geometrically towards ``target_quantile``. Here
    ``noise_multiplier`` is the *effective* multiplier of the two releases
    together: TFF splits it so that ``z^-2 = z_value^-2 + (2 * count_std)^-2``
    (the count query's sensitivity is half a unit: counts are shifted by -0.5),
    which composes exactly to one Gaussian release of ``z`` under zero-out or
    add/remove and of ``z / 2`` under replace-one. The clip in use is logged per
    round as ``dp/clip``. Both noises (sum and clipped count) are seeded.

    Args:
        noise_multiplier: the effective noise multiplier, >= 0.
        initial_clip: the clip of the first round, > 0.
        target_quantile: share of updates meant to be unclipped, in (0, 1).
        clip_learning_rate: step size of the geometric clip update, > 0.
        clipped_count_stddev: noise std on the clipped count; null takes TFF's
            default ``0.05 * clients_per_round``. Must exceed noise_multiplier / 2.
    """

    label = "adaptive"

    def __init__(
        self,
        noise_multiplier: float,
        initial_clip: float,
        target_quantile: float,
        clip_learning_rate: float,
        clipped_count_stddev: float | None = None,
    ):
        check_noise(noise_multiplier)
        check_clip(initial_clip, noise_multiplier, "initial_clip")
        check(0 < target_quantile < 1, "target_quantile", target_quantile, "in (0, 1)")
        check(clip_learning_rate > 0, "clip_learning_rate", clip_learning_rate, "> 0")
        check(
            clipped_count_stddev is None or clipped_count_stddev > 0,
            "clipped_count_stddev",
            clipped_count_stddev,
            "null or > 0",
        )
        self.noise_multiplier, self.initial_clip = noise_multiplier, initial_clip
        self.target_quantile, self.clip_learning_rate = target_quantile, clip_learning_rate
        self.clipped_count_stddev = clipped_count_stddev

    def count_stddev(self, cohort: float) -> float:
        """The clipped-count noise used: as configured, or TFF's default 0.05 x cohort."""
        return self.clipped_count_stddev or 0.05 * cohort

    def sum_noise_multiplier(self, noise_multiplier: float, cohort: float) -> float:
        """The noise multiplier left for the clipped sum of updates after the count's share.

        TFF's split, ``z^-2 = z_sum^-2 + (2 * count_std)^-2``, solved for ``z_sum``
        (``noise_multiplier`` below ``2 * count_std``, which `accounts` requires),
        the expression of TFF 0.87's private ``adaptive_clip_noise_params`` (a
        test holds the two equal); `setup` noises the sum with it.
        """
        if noise_multiplier == 0:
            return 0.0
        return (noise_multiplier**-2 - (2 * self.count_stddev(cohort)) ** -2) ** -0.5

    def noise_limit(self, ctx) -> tuple[float, str]:
        count_std = self.count_stddev(ctx.sampler.expected_cohort)
        why = (
            f"with clipped_count_stddev={count_std:g} the noise multiplier must stay below "
            f"{2 * count_std:g}, twice the count noise (a larger one allows more)"
        )
        return 2 * count_std, why

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        count_std = self.count_stddev(ctx.sampler.expected_cohort)
        if noise_multiplier > 0 and count_std <= noise_multiplier / 2:
            raise ConfigError(
                "clipped_count_stddev",
                count_std,
                f"> noise_multiplier / 2 = {noise_multiplier / 2:g} (the count "
                "noise alone must not exceed the privacy budget; TFF's default "
                "is 0.05 * clients_per_round: set it explicitly or use larger "
                "cohorts)",
            )
        return (central_account(ctx, noise_multiplier),)

    def setup(self, plan, model) -> MechanismParts:
        from dpfed.privacy.queries import SeededQuantileAdaptiveClipSumQuery

        cohort = plan.sampler.expected_cohort
        value_z = self.sum_noise_multiplier(plan.noise_multiplier, cohort)
        count_std = self.count_stddev(cohort)
        query = SeededQuantileAdaptiveClipSumQuery(
            initial_l2_norm_clip=finite_clip(self.initial_clip),
            noise_multiplier=value_z,
            target_unclipped_quantile=self.target_quantile,
            learning_rate=self.clip_learning_rate,
            clipped_count_stddev=count_std,
            expected_num_records=cohort,
            geometric_update=True,
            sum_key=plan.stream_key("sum"),
            count_key=plan.stream_key("clipped_count"),
        )
        return central_parts(
            query,
            plan,
            metric_columns=("dp/clip",),
            round_metrics=lambda m: {"dp/clip": float(m["dp_query_metrics"]["clip"])},
        )

    def metric_columns(self) -> tuple[str, ...]:
        return ("dp/clip",)

    def describe(self, plan) -> dict:
        return {
            "clip": None,
            "initial_clip": self.initial_clip,
            "target_quantile": self.target_quantile,
            "clip_learning_rate": self.clip_learning_rate,
            "clipped_count_stddev": self.count_stddev(plan.sampler.expected_cohort),
            "sum_noise_multiplier": self.sum_noise_multiplier(
                plan.noise_multiplier, plan.sampler.expected_cohort
            ),
        }

    def warnings(self, plan) -> tuple[str, ...]:
        z = plan.noise_multiplier
        z_sum = self.sum_noise_multiplier(z, plan.sampler.expected_cohort)
        if z == 0 or z_sum <= SUM_NOISE_WARNING * z:
            return ()
        count_std = self.count_stddev(plan.sampler.expected_cohort)
        return (
            f"adaptive: the clipped count takes most of the budget: the sum of updates gets "
            f"noise multiplier {z_sum:.4g}, not {z:.4g} (clipped_count_stddev={count_std:g} "
            f"is close to noise_multiplier / 2 = {z / 2:.4g}); a larger "
            "dp.clipped_count_stddev leaves more of the budget to the updates",
        )


@dataclass
class AdaptiveConfig(NoisyConfig):
    """DP-FedAvg with adaptive clipping (Andrew et al. 2021) via TFF's gaussian_adaptive.

    Attributes:
        initial_clip: clip of the first round.
        target_quantile: share of client updates meant to stay unclipped.
        clip_learning_rate: step size of the geometric clip update.
        clipped_count_stddev: noise std of the clipped-count estimate; null
            takes TFF's default 0.05 * clients_per_round (summary.json records
            the value used).
    """

    _target_: str = "dpfed.privacy.mechanisms.adaptive.AdaptiveGaussianMechanism"
    initial_clip: float = 0.1
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None


CONFIGS = {"adaptive": AdaptiveConfig}
