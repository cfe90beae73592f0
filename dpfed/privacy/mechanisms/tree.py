"""DP-FTRL with tree aggregation, restarted every epoch (Kairouz et al., ICML 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting

from dpfed.errors import ConfigError
from dpfed.privacy.mechanisms.base import (
    Mechanism,
    MechanismParts,
    NoisyConfig,
    central_parts,
    check_clip,
    check_noise,
    finite_clip,
    prefix_sum_errors,
)
from dpfed.privacy.neighboring import Neighboring, Relation, sensitivity_factor
from dpfed.privacy.plan import Account


class TreeMechanism(Mechanism):
    """DP-FTRL (Kairouz et al., ICML 2021): tree-aggregated noise, restarted every epoch.

    Clients' updates are clipped to ``clip``; TF Privacy's ``TreeResidualSumQuery``
    adds Gaussian noise of std ``noise_multiplier * clip`` at every node of a
    binary tree over the rounds, so each round's aggregate is the difference of
    two noised prefix sums; the tree restarts every epoch. No sampling
    amplification is needed or credited: cohorts come from shuffled epochs
    (``strategy.sampling=shuffle``), each client at most once per tree, and an
    epoch is accounted as one ``SingleEpochTreeAggregationDpEvent`` over the
    rounds of that epoch the run plans (a run shorter than an epoch is one tree
    over its rounds), counted in full when it starts. dp-accounting analyses it
    under replace-with-special adjacency: with ``zero_out`` the noise
    multiplier is ``z``, with ``replace_one`` (two clips) ``z / 2``.

    Args:
        noise_multiplier: noise std per tree node divided by ``clip``, >= 0.
        clip: L2 clipping norm of client updates, > 0.
    """

    label = "tree"

    def __init__(self, noise_multiplier: float, clip: float):
        check_noise(noise_multiplier)
        check_clip(clip, noise_multiplier)
        self.noise_multiplier, self.clip = noise_multiplier, clip

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        sampler = ctx.sampler
        if not sampler.epochs:
            raise ConfigError(
                "strategy.sampling",
                sampler.label,
                "shuffle with dp=tree (DP-FTRL accounts each client once per "
                "restarted tree, without sampling amplification)",
                absolute=True,
            )
        neighboring = ctx.neighboring or Neighboring.replace_one
        if neighboring == Neighboring.add_remove:
            raise ConfigError(
                "neighboring",
                str(neighboring),
                "replace_one or zero_out with dp=tree (shuffled epochs have a fixed cohort size)",
            )
        factor = sensitivity_factor(neighboring)
        accounted = noise_multiplier / factor

        def event(round_num):
            if noise_multiplier == 0:
                return dp_accounting.NonPrivateDpEvent()
            if sampler.position(round_num)[1] != 0:
                return dp_accounting.NoOpDpEvent()
            steps = sampler.epoch_rounds(round_num, max(ctx.rounds, round_num))
            return dp_accounting.SingleEpochTreeAggregationDpEvent(accounted, steps)

        return (
            Account(
                "epsilon",
                "user",
                neighboring,
                Relation.REPLACE_SPECIAL,
                False,
                event,
                noise_multiplier,
                factor,
            ),
        )

    def setup(self, plan, model) -> MechanismParts:
        import tensorflow_privacy as tfp
        from tensorflow_privacy.privacy.dp_query.restart_query import (
            PeriodicRoundRestartIndicator,
        )

        tree = tfp.TreeResidualSumQuery.build_l2_gaussian_query(
            finite_clip(self.clip),
            plan.noise_multiplier,
            model.trainable_weight_specs(),
            noise_seed=plan.stream_key("tree"),
        )
        restart = PeriodicRoundRestartIndicator(plan.sampler.rounds_per_epoch)
        query = tfp.RestartQuery(tree, restart)
        return central_parts(query, plan)

    def describe(self, plan) -> dict:
        from dpfed.privacy import factorization as mf

        period = plan.sampler.rounds_per_epoch
        out = {"clip": self.clip, "restart_period": period}
        if plan.rounds % period == 0:  # whole epochs: one tree per epoch
            epochs = plan.rounds // period
            scale = math.sqrt(mf.tree_sensitivity_squared(plan.rounds, epochs))
            out.update(
                prefix_sum_errors(
                    plan.noise_multiplier,
                    lambda kind: mf.tree_prefix_sum_error(plan.rounds, kind, epochs) / scale,
                )
            )
        return out


@dataclass
class TreeConfig(NoisyConfig):
    """DP-FTRL with tree aggregation and per-epoch restarts (Kairouz et al. 2021).

    Needs ``strategy.sampling=shuffle`` (selecting ``dp=tree`` sets it).

    Attributes:
        clip: L2 bound on each client's update.
    """

    _target_: str = "dpfed.privacy.mechanisms.tree.TreeMechanism"
    clip: float = 1.0


CONFIGS = {"tree": TreeConfig}
