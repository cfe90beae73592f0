"""What an audit adds to a run, and the run without one (`NoAudit`).

An audit is built from the ``audit`` config group without TensorFlow (like the
privacy plan). It may change the population the sampler draws from (canary
clients), the mechanism's parts (what the aggregator adds), and, round by
round, what the simulation does with a sampled cohort; it reports its
measurements as ``audit/*`` columns of metrics.csv and keys of summary.json.
"""

from __future__ import annotations

from dataclasses import replace


class Audit:
    """The hooks a run calls; every default changes nothing (an unaudited run)."""

    #: metrics.csv columns the audit fills
    columns: tuple[str, ...] = ()

    def __init__(self, run_seed: int = 0, dp_delta: float = 1e-5):
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

    def after_round(self, state, round_num: int, evaluate: bool) -> dict:
        """The audit's columns after round ``round_num`` (estimates when ``evaluate``)."""
        return {}

    def describe(self) -> dict:
        """The audit's settings for summary.json."""
        return {}

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
