"""Empirical privacy auditing: canary clients (`canaries`) and canary records (`records`) in
runs, and the estimators (`estimators`).

The schemas of the ``audit`` config group live here so that composing a config
imports no TensorFlow: ``audit=none`` (default), ``audit=canaries`` (canary clients,
federated runs) and ``audit=canary_gradients`` (canary records in DP-SGD: pooled
records, or inside clients on the vectorized backend).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NoAuditConfig:
    """No audit (``audit=none``)."""

    _target_: str = "dpfed.audit.base.NoAudit"


@dataclass
class CanaryAuditConfig:
    """Canary clients and one-shot empirical privacy estimation (``audit=canaries``).

    Attributes:
        inserted: canary clients added to the population; the sampler draws them
            like real clients and a sampled one sends its fixed direction.
        held_out: canary clients never sampled (the null of the all-iterates statistic).
        delta: delta of the estimates; null: the run's ``dp.delta``.
        significance: the lower bound ``audit/epsilon_lower`` holds with
            probability at least ``1 - significance``.
        seed: seeds the canary directions; null: the run's ``seed``.
        planted_noise_factor: a deliberate privacy bug for checking the audit: the
            aggregator adds this times the noise the accountant is told about
            (1: no bug; 0.1 or 0: too little noise, which the audit must detect).
    """

    _target_: str = "dpfed.audit.canaries.CanaryAudit"
    inserted: int = 100
    held_out: int = 100
    delta: float | None = None
    significance: float = 0.05
    seed: int | None = None
    planted_noise_factor: float = 1.0


@dataclass
class GradientCanaryAuditConfig:
    """Canary records in DP-SGD and one-run auditing (``audit=canary_gradients``): DP-SGD on
    pooled records, or inside federated clients (``backend=vectorized``).

    Attributes:
        canaries: canary records, each on its own model coordinate and included in
            training independently with probability 1/2 (at most the model's size).
        delta: delta of the bounds; null: the run's ``dp.delta``.
        significance: both lower bounds hold together with probability at least
            ``1 - significance``.
        seed: seeds the canaries' coordinates, inclusion and batches; null: the run's ``seed``.
        planted_noise_factor: a deliberate privacy bug for checking the audit: DP-SGD
            adds this times the noise the accountant is told about (1: no bug).
    """

    _target_: str = "dpfed.audit.records.GradientCanaryAudit"
    canaries: int = 1000
    delta: float | None = None
    significance: float = 0.05
    seed: int | None = None
    planted_noise_factor: float = 1.0


SCHEMAS = {
    "none": NoAuditConfig,
    "canaries": CanaryAuditConfig,
    "canary_gradients": GradientCanaryAuditConfig,
}
