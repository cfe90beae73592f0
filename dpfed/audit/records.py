"""Canary records in DP-SGD: one-run auditing (``audit=canary_gradients``).

Steinke, Nasr, Jagielski, "Privacy auditing with one (1) training run" (NeurIPS 2023), in
its white-box setting with Dirac canaries, built into DP-SGD on pooled records
(``strategy=centralized``) and into DP-SGD inside federated clients (``dp=dpsgd`` with a
federated strategy, ``backend=vectorized``):

- ``audit.canaries`` (m) canary records each get their own model coordinate (drawn
  without replacement, seeded) and are included in the training set independently
  with probability 1/2. An included canary is a record whose clipped gradient is
  ``clip`` times its coordinate's unit vector (the worst-case record DP-SGD's
  analysis allows: any record's clipped gradient has norm at most ``clip``). Each
  DP-SGD step draws its Poisson batch of canaries like that of real records (each
  independently with probability q) and adds their gradients to the clipped sum
  before the noise. Excluded canaries are the zero-gradient records of the
  zero-out relation; for Poisson-sampled DP-SGD that is also add/remove, so the
  bound is one on the epsilon the run's accountant states under zero-out or
  add/remove, and below it under replace-one.
- Inside federated clients, each canary record belongs to one real client (drawn
  uniformly, seeded) and, like the client's own records, sits in exactly one of
  its batches per local epoch (the batch drawn from the position (round, client)
  alone), where an included canary adds ``clip`` times its unit vector to the
  clipped sum before the noise and an excluded one adds nothing. That is the
  release the accountant's ``epsilon_record`` analyses (local_epochs Gaussian
  releases per record per participation of its client, zero-out), so the bounds
  are bounds on ``epsilon_record`` (summary.json's ``audit_bounds``), not on the
  user-level ``epsilon``. The clients measure each step's residual on their
  canaries' coordinates and the round's measurements carry the sum per canary
  (`observe_round`); only ``backend=vectorized`` runs this.
- After each evaluation round every canary is scored, and the auditor guesses
  "included" for the canaries above a threshold (jax_privacy's rule: every
  threshold on the ROC curve's convex hull, Bonferroni-corrected;
  `dpfed.audit.estimators.one_run_audit`), which gives a lower bound on epsilon
  at ``audit.delta`` holding with probability at least ``1 - audit.significance``:

  * ``audit/epsilon_lower``: from the final model alone (minus the change of the
    canary's coordinate since the initial model; SGD moves against the gradient);
  * ``audit/epsilon_lower_iterates``: from every step's noised gradient sum minus
    the real records' clipped sum, on the canary's coordinate, summed over the
    steps (pooled records: all steps; in clients: the steps of the canary's batches).
    An adversary who knows every other record and sees every iterate can compute
    this: given the iterate and the other records' batch, the real sum is fixed,
    and (pooled records) the canary's Poisson inclusion is independent of it, which
    is exactly the subsampled Gaussian mechanism the accountant analyses; in
    clients, the canary's batch is fixed by its position and the release is the
    plain Gaussian mechanism ``epsilon_record`` composes.

  Each bound is computed at ``significance / 2``, so both hold together with
  probability at least ``1 - significance``.

What the audit does not check: the canaries' gradients are clipped by construction,
so a bug in the clipping of real records' gradients is invisible to it; a bug in
the noise (too little, or noise correlated with the data) or in the sampling
shows. ``audit.planted_noise_factor`` plants too little noise, as a control.
"""

from __future__ import annotations

import math

import numpy as np

from dpfed.audit.base import CanaryAuditBase
from dpfed.audit.estimators import one_run_audit
from dpfed.errors import ConfigError, check
from dpfed.privacy.accounting import DEFAULT_DELTA
from dpfed.privacy.noise import stream_key

COLUMNS = ("audit/canaries", "audit/epsilon_lower", "audit/epsilon_lower_iterates")


class GradientCanaryAudit(CanaryAuditBase):
    """``audit=canary_gradients`` (args: `dpfed.audit.GradientCanaryAuditConfig`).

    It is also the probe DP-SGD calls: `dpfed.federated.pooled.CentralizedProcess`
    at every step (`step_gradient`, `observe`), the vectorized client backend in every
    round (`placements` of each client's canaries, `observe_round`).

    Args:
        run_seed: the run's seed (the canaries' when ``seed`` is None).
        dp_delta: the run's delta (the bound's when ``delta`` is None).
    """

    columns = COLUMNS

    def __init__(
        self,
        canaries: int = 1000,
        delta: float | None = None,
        significance: float = 0.05,
        seed: int | None = None,
        planted_noise_factor: float = 1.0,
        run_seed: int = 0,
        dp_delta: float = DEFAULT_DELTA,
    ):
        check(canaries >= 2, "canaries", canaries, ">= 2")
        super().__init__(delta, significance, seed, planted_noise_factor, run_seed, dp_delta)
        self.canaries = int(canaries)
        # numpy's generators take non-negative entropy; stream keys are signed int64
        self._key = int(np.int64(stream_key(self.seed, "audit/canary_gradients")).view(np.uint64))
        rng = np.random.default_rng([self._key, 0])
        self.included = rng.random(self.canaries) < 0.5  # each independently, probability 1/2
        self._residual = np.zeros(self.canaries)  # the iterates' statistic, summed over steps
        self.in_clients = False  # set by `wrap`: DP-SGD inside federated clients
        self._count = 0

    # ------------------------------------------------------------------ plan and build
    def check(self, plan) -> None:
        in_clients = plan.sampler.unit != "record"  # pooled records: always Poisson batches
        if in_clients and getattr(plan.mechanism, "record_sampling", "shuffle") == "poisson":
            raise ConfigError(
                "audit",
                "canary_gradients",
                "none with dp.record_sampling="
                "poisson (canary records are placed in one batch per local "
                "epoch, as shuffled batches hold every record)",
                absolute=True,
            )

    def mechanism_plan(self, plan):
        return plan  # the planted bug scales the example-level noise alone (`wrap`)

    def wrap(self, parts, plan, model):
        from dataclasses import replace

        if parts.example_dp is None:
            raise ConfigError(
                "audit",
                "canary_gradients",
                f"none with dp={plan.label}: canary "
                "records audit DP-SGD (dp=dpsgd, or dp=gaussian with "
                "strategy=centralized); for a non-private control use "
                "dp.noise_multiplier=0",
                absolute=True,
            )
        sizes = [int(np.prod(w.shape)) for w in model.keras_model().trainable_weights]
        self.dim = sum(sizes)
        allowed = f"<= {self.dim}, the model's trainable weights (one coordinate per canary)"
        check(self.canaries <= self.dim, "canaries", self.canaries, allowed)
        rng = np.random.default_rng([self._key, 1])
        self.coordinates = np.sort(rng.choice(self.dim, self.canaries, replace=False))
        self.clip = float(parts.example_dp.clip)
        # what an included canary adds on its coordinate (an excluded one: the zero record)
        self.values = np.where(self.included, self.clip, 0.0).astype(np.float32)
        self.in_clients = plan.sampler.unit != "record"
        if self.in_clients:  # each canary record belongs to one real client
            owners = np.random.default_rng([self._key, 4]).integers(
                plan.population.num_clients, size=self.canaries
            )
            self._owned = {int(c): np.flatnonzero(owners == c) for c in np.unique(owners)}
        else:
            self.q = float(plan.sampler.q)
        noise = parts.example_dp.noise_multiplier * self.planted_noise_factor
        return replace(
            parts, example_dp=replace(parts.example_dp, noise_multiplier=noise, probe=self)
        )

    # ------------------------------------------------------------------ in clients
    def placements(
        self, round_num: int, client: int, batches_per_epoch: int, epochs: int
    ) -> list[tuple[int, int]]:
        """``(step, canary)`` for each canary record of ``client`` in round ``round_num``.

        Each canary sits in one of the client's ``batches_per_epoch`` batches in every
        local epoch, drawn from the position (round, client) alone, as each of the
        client's records is in exactly one batch per epoch. Counts the included ones
        placed into the round's ``audit/canaries`` (reset by `before_round`).
        """
        owned = self._owned.get(int(client), ())
        if not len(owned) or batches_per_epoch < 1:
            return []
        rng = np.random.default_rng([self._key, 3, round_num, int(client)])
        batches = rng.integers(batches_per_epoch, size=(epochs, len(owned)))
        self._count += int(self.included[owned].sum()) * epochs
        return [
            (epoch * batches_per_epoch + int(batch), int(canary))
            for epoch in range(epochs)
            for batch, canary in zip(batches[epoch], owned, strict=True)
        ]

    def observe_round(self, client_work: dict) -> None:
        """Adds the round's residual per canary (summed by the clients) to the statistic."""
        residual = client_work.get("audit_residual")
        if residual is not None:
            self._residual += np.asarray(residual, np.float64)

    # ------------------------------------------------------------------ DP-SGD steps
    def step_gradient(self, round_num: int, step: int) -> np.ndarray:
        """The included canaries' clipped gradients in step ``step`` of round ``round_num``.

        Each included canary is in the step's Poisson batch with probability q, drawn
        from the step's position alone; returns the flat float32 sum over the model.
        """
        rng = np.random.default_rng([self._key, 2, round_num, step])
        sampled = self.included & (rng.random(self.canaries) < self.q)
        self._count += int(sampled.sum())
        extra = np.zeros(self.dim, np.float32)
        extra[self.coordinates[sampled]] = self.clip
        return extra

    def observe(self, residual: np.ndarray) -> None:
        """Adds a step's noised sum minus the real records' clipped sum (flat) to the statistic."""
        self._residual += np.asarray(residual, np.float64)[self.coordinates]

    # ------------------------------------------------------------------ run
    def start(self, process, state) -> None:
        self.process = process
        self.initial = self._weights(state)

    def before_round(self, state, canaries: list[int]):
        self._count = 0
        return state

    def after_round(self, state, round_num: int, evaluate: bool) -> dict:
        row = {"audit/canaries": self._count}
        if evaluate:
            row.update(self.estimates(self._weights(state)))
        return row

    def estimates(self, weights: np.ndarray) -> dict:
        """The two lower bounds for a model with ``weights`` (after the steps seen so far)."""
        final = -(weights - self.initial)[self.coordinates]
        alpha = self.significance / 2
        out = {}
        one_sided = self.included.all() or not self.included.any()  # no in (or out) scores
        for column, scores in (
            ("audit/epsilon_lower", final),
            ("audit/epsilon_lower_iterates", self._residual),
        ):
            if one_sided or not np.all(np.isfinite(scores)) or not np.any(scores):
                out[column] = math.nan  # no test to make, or nothing moved these coordinates
                continue
            out[column] = one_run_audit(
                scores[self.included], scores[~self.included], self.delta, alpha
            )
        return out

    def warnings(self, plan) -> tuple[str, ...]:
        """See `relation_warnings` (DP-SGD's default with shuffled batches is replace-one;
        with Poisson batches, add/remove)."""
        in_clients = plan.sampler.unit != "record"  # as `wrap` decides
        column = "epsilon_record" if in_clients else "epsilon"
        return self.relation_warnings(plan, column, "a canary's gradient")

    def describe(self) -> dict:
        return {
            "audit": "canary_gradients (one-run auditing, Steinke et al. 2023, Dirac canaries)",
            "audit_canaries": self.canaries,
            "audit_included": int(self.included.sum()),
            "audit_neighboring": "zero_out (a canary's gradient present or zero)",
            # the accountant's epsilon the bounds are lower bounds on
            "audit_bounds": "epsilon_record" if self.in_clients else "epsilon",
            **self.describe_settings(),
        }

    def statistics(self) -> dict[str, np.ndarray]:
        return {"residual": self._residual}
