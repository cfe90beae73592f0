"""What an audit adds to a run, and the run without one (`NoAudit`).

An audit is built from the ``audit`` config group without TensorFlow (like the
privacy plan). It may change the population the sampler draws from (canary
clients), the mechanism's parts (what the aggregator adds), and, round by
round, what the simulation does with a sampled cohort; it reports its
measurements as ``audit/*`` columns of metrics.csv and keys of summary.json.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np

from dpfed.errors import check
from dpfed.privacy.accounting import DEFAULT_DELTA


class Audit:
    """The hooks a run calls; every default changes nothing (an unaudited run)."""

    #: metrics.csv columns the audit fills
    columns: tuple[str, ...] = ()

    def __init__(self, run_seed: int = 0, dp_delta: float = DEFAULT_DELTA):
        """``run_seed`` and ``dp_delta`` are the run's, passed by `dpfed.build.build_audit`."""

    def population(self, population):
        """The population the sampler and the accountant see (``Population``)."""
        return population

    def check(self, plan) -> None:
        """Refuses a privacy plan the audit cannot measure (ConfigError naming ``audit``)."""

    def mechanism_plan(self, plan):
        """The plan the mechanism's TensorFlow parts are built from (the accounted one)."""
        return plan

    def wrap(self, parts, plan, model):
        """The mechanism's parts with the audit's additions (here: unchanged)."""
        return parts

    def start(self, process, state) -> None:
        """Called once with the process's initial state, before any round (also when resuming)."""

    def split(self, cohort: list[str]) -> tuple[list[str], list[int]]:
        """The real clients of a sampled cohort, and the audit's own among them."""
        return cohort, []

    def before_round(self, state, canaries: list[int]):
        """The process state for a round in which ``canaries`` take part."""
        return state

    def observe_round(self, client_work: dict) -> None:
        """Receives the round's client-work measurements (the process's ``client_work``)."""

    def after_round(self, state, round_num: int, evaluate: bool) -> dict:
        """The audit's columns after round ``round_num`` (estimates when ``evaluate``)."""
        return {}

    def describe(self) -> dict:
        """The audit's settings for summary.json."""
        return {}

    def warnings(self, plan) -> tuple[str, ...]:
        """Settings the audit runs with but that weaken what it checks (logged by a run)."""
        return ()

    def state_dict(self) -> dict:
        """What the audit needs to continue after a checkpoint (JSON)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restores `state_dict`."""


class NoAudit(Audit):
    """``audit=none``: the run as configured."""


def with_noise_factor(plan, factor: float):
    """``plan`` whose noise multiplier is ``factor`` times the accounted one (planted bug)."""
    return replace(plan, noise_multiplier=plan.noise_multiplier * factor)


def flat_weights(leaves) -> np.ndarray:
    """Model weights (a list of arrays or tensors) as one float64 vector."""
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in leaves])


class CanaryAuditBase(Audit):
    """What both canary audits share: their settings, the planted bug, and statistics
    measured from the initial model ``self.initial`` (set by `start`), which a checkpoint
    holds (`statistics`) with the initial model's digest, which a resumed run must match.

    Args:
        delta: delta of the audit's epsilons; None: ``dp_delta``.
        significance: the lower bounds hold with probability at least ``1 - significance``.
        seed: seeds the canaries; None: ``run_seed``.
        planted_noise_factor: the mechanism adds this times the accounted noise (1: no bug).
        run_seed, dp_delta: the run's, passed by `dpfed.build.build_audit`.
    """

    initial: np.ndarray
    process = None

    def __init__(
        self,
        delta: float | None = None,
        significance: float = 0.05,
        seed: int | None = None,
        planted_noise_factor: float = 1.0,
        run_seed: int = 0,
        dp_delta: float = DEFAULT_DELTA,
    ):
        check(delta is None or 0 < delta < 1, "delta", delta, "null (dp.delta) or in (0, 1)")
        check(0 < significance < 0.5, "significance", significance, "in (0, 0.5)")
        check(seed is None or seed >= 0, "seed", seed, "null (the run's seed) or >= 0")
        check(
            0 <= planted_noise_factor <= 1,
            "planted_noise_factor",
            planted_noise_factor,
            "in [0, 1] (1: no planted bug)",
        )
        self.significance = float(significance)
        self.delta = float(dp_delta if delta is None else delta)
        self.seed = int(run_seed if seed is None else seed)
        self.planted_noise_factor = float(planted_noise_factor)

    def mechanism_plan(self, plan):
        return with_noise_factor(plan, self.planted_noise_factor)

    def _weights(self, state) -> np.ndarray:
        """The process state's trainable weights, flat."""
        return flat_weights(self.process.get_model_weights(state).trainable)

    def relation_warnings(self, plan, column: str, canary: str) -> tuple[str, ...]:
        """A warning when ``column``, the epsilon the audit's bounds are checked against, is
        accounted under replace-one: the canaries realise zero-out adjacency (``canary``
        present or zero), whose epsilon is smaller (replace-one's sensitivity is 2 x clip,
        so its accountant sees half the noise), and a check against the larger one catches
        less. Add/remove is accounted as zero-out is: no warning."""
        bound = plan.account(column)
        if str(bound.neighboring) != "replace_one":
            return ()
        return (
            f"audit: the canaries realise zero-out adjacency ({canary} present or zero), "
            f"but {bound.column} is accounted under {bound.neighboring}, which gives a larger "
            "epsilon: the audit's bounds are checked against more than the zero-out epsilon "
            "and catch less; dp.neighboring=zero_out compares like with like",
        )

    def describe_settings(self) -> dict:
        """summary.json fields of the shared settings."""
        return {
            "audit_delta": self.delta,
            "audit_significance": self.significance,
            "audit_seed": self.seed,
            "audit_planted_noise_factor": self.planted_noise_factor,
        }

    def statistics(self) -> dict[str, np.ndarray]:
        """The audit's running statistics, by name (float64 arrays)."""
        return {}

    def state_dict(self) -> dict:
        return {
            **{k: [float(v) for v in a] for k, a in self.statistics().items()},
            "initial_model_sha256": _digest(self.initial),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores the statistics; the initial model must be the checkpointed run's.

        Raises:
            RuntimeError: this process's initial model differs from the one the
                audit measured from (the final-model statistic would be wrong).
        """
        for name, current in self.statistics().items():
            if name in state:
                current[...] = np.asarray(state[name], np.float64)
        saved = state.get("initial_model_sha256")
        if saved is not None and saved != _digest(self.initial):
            raise RuntimeError(
                "the resumed run's initial model differs from the checkpointed "
                "run's: the audit's statistics cannot be continued"
            )


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
