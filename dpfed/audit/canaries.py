"""Canary clients: a measured epsilon beside the accountant's bound (``audit=canaries``).

One-shot empirical privacy estimation (Andrew, Chien, Thakkar, et al., "One-shot
empirical privacy estimation for federated learning", ICLR 2024; reference code
google-research/federated, ``one_shot_epe/``), built into the run:

- ``audit.inserted`` canary clients join the population the sampler draws from
  (so the accountant sees ``num_clients + inserted`` clients). A sampled canary
  sends its own fixed random direction, scaled beyond any clip, through the
  mechanism's own DP query: the query clips it to the clip and adds it to the
  sum before the noise, as it would a real client's update. Canaries never
  train and never enter the utility metrics.
- ``audit.held_out`` canaries are never sampled: their statistics are the null.
- After each evaluation round the audit scores every canary by the cosine
  between its direction and minus the model's change (TFF applies updates as
  pseudo-gradients, ``w -= lr * update``): over the whole run so far (the final
  model's view) and the largest over rounds (an adversary who sees every
  iterate), and reports

  * ``audit/epsilon_lower``: a lower bound on epsilon that holds with probability
    at least ``1 - audit.significance``: threshold tests on the final-model
    statistic, the false-negative rate bounded by a one-sided Clopper-Pearson
    interval (exact; the reference's Jeffreys interval can undercover), the
    false-positive rate from the null of a random direction's cosine with a fixed
    vector (N(0, 1/d), whose tail is heavier than the exact one for d >= 1000),
    and a Bonferroni correction over the ``inserted`` thresholds tried (the
    reference code makes none). The binomial interval treats the canaries'
    scores as independent; they share the model's noise and, with fixed or
    shuffled cohorts, weakly coupled participation, which the bound ignores;
  * ``audit/epsilon_estimate``: the paper's one-shot estimate from the final
    model, a Gaussian fit to the inserted canaries' cosines against that exact null;
  * ``audit/epsilon_estimate_iterates``: the one-shot estimate from all iterates,
    against a Gaussian fit to the held-out canaries' statistics.

The bound is what one specific attack (a canary's direction in the model) proves
about the run: a lower bound on its true epsilon, not a proof of privacy. The
estimates are not bounds: they assume Gaussian statistics, which short runs
where most canaries take part in no round or once (a mixture) do not give, and
then they can exceed the accountant's epsilon; they are what the paper reports,
for comparison. A mechanism that adds less noise than its accountant assumes
shows a bound above the accountant's epsilon (``audit.planted_noise_factor``
plants exactly that bug, as a control).
"""

from __future__ import annotations

import collections
import math
from dataclasses import replace

import numpy as np

from dpfed.audit.base import CanaryAuditBase, flat_weights
from dpfed.audit.estimators import canary_cosines, one_shot_epsilon, threshold_epsilon_lower_bound
from dpfed.errors import ConfigError, check
from dpfed.privacy.accounting import DEFAULT_DELTA
from dpfed.privacy.noise import position_seed, stream_key

# A canary's update norm before the query clips it: beyond any clip a run uses, so the
# query's own clipping makes it exactly a clip long.
CANARY_NORM = 1e3

COLUMNS = (
    "audit/canaries",
    "audit/epsilon_lower",
    "audit/epsilon_estimate",
    "audit/epsilon_estimate_iterates",
)


def canary_direction(seed, shapes) -> list:
    """The unit direction of one canary as tensors of ``shapes`` (a function of ``seed`` only).

    Args:
        seed: the canary's int64[2] stateless seed.
        shapes: the shapes of the model's trainable weights, in order.
    """
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    leaves = [
        tf.random.stateless_normal(shape, tf.random.experimental.stateless_fold_in(seed, j))
        for j, shape in enumerate(shapes)
    ]
    norm = tf.linalg.global_norm(leaves)
    return [leaf / norm for leaf in leaves]


def canary_query(query, seeds: np.ndarray, shapes):
    """``query`` with the sampled canaries' records accumulated before its noised result.

    The global state is ``(inner, inserted)``: ``inserted`` (bool, one per
    inserted canary) is set by the simulation before each round to the canaries
    the sampler drew, and reset to all False by the release.

    Args:
        query: the mechanism's ``tfp.SumAggregationDPQuery`` (the normalized sum).
        seeds: the inserted canaries' seeds, ``int64[m, 2]``.
        shapes: the model's trainable weight shapes.
    """
    import tensorflow as tf
    import tensorflow_privacy as tfp

    class CanaryQuery(tfp.SumAggregationDPQuery):
        """Adds sampled canary clients' updates to ``query``'s sum, then releases it."""

        _State = collections.namedtuple("_CanaryState", ["inner", "inserted"])

        def __init__(self):
            self._query, self._template = query, None

        def initial_global_state(self):
            return self._State(self._query.initial_global_state(), tf.zeros([len(seeds)], tf.bool))

        def derive_sample_params(self, global_state):
            return self._query.derive_sample_params(global_state.inner)

        def initial_sample_state(self, template=None):
            self._template = template  # the structure of one client's update
            return self._query.initial_sample_state(template)

        def preprocess_record(self, params, record):
            return self._query.preprocess_record(params, record)

        def accumulate_preprocessed_record(self, sample_state, preprocessed_record):
            return self._query.accumulate_preprocessed_record(sample_state, preprocessed_record)

        def merge_sample_states(self, sample_state_1, sample_state_2):
            return self._query.merge_sample_states(sample_state_1, sample_state_2)

        def get_noised_result(self, sample_state, global_state):
            params = self._query.derive_sample_params(global_state.inner)
            table = tf.constant(seeds, tf.int64)
            ids = tf.reshape(tf.where(global_state.inserted), [-1])

            def body(k, state):
                leaves = [CANARY_NORM * d for d in canary_direction(table[ids[k]], shapes)]
                record = (
                    leaves
                    if self._template is None
                    else tf.nest.pack_sequence_as(self._template, leaves)
                )
                return k + 1, self._query.accumulate_record(params, state, record)

            _, total = tf.while_loop(
                lambda k, _: k < tf.size(ids, out_type=tf.int64),
                body,
                (tf.constant(0, tf.int64), sample_state),
            )
            result, inner, event = self._query.get_noised_result(total, global_state.inner)
            return result, self._State(inner, tf.zeros_like(global_state.inserted)), event

        def derive_metrics(self, global_state):
            return self._query.derive_metrics(global_state.inner)

    return CanaryQuery()


def _estimate(estimator, *args, **kwargs) -> float:
    """An estimator's value; NaN where the statistics allow none (e.g. a model that never moved)."""
    try:
        return float(estimator(*args, **kwargs))
    except ValueError:
        return math.nan


class CanaryAudit(CanaryAuditBase):
    """``audit=canaries`` (args: `dpfed.audit.CanaryAuditConfig`).

    Args:
        run_seed: the run's seed (the canaries' when ``seed`` is None).
        dp_delta: the run's delta (the estimates' when ``delta`` is None).
    """

    columns = COLUMNS

    def __init__(
        self,
        inserted: int = 100,
        held_out: int = 100,
        delta: float | None = None,
        significance: float = 0.05,
        seed: int | None = None,
        planted_noise_factor: float = 1.0,
        run_seed: int = 0,
        dp_delta: float = DEFAULT_DELTA,
    ):
        check(inserted >= 2, "inserted", inserted, ">= 2 (a Gaussian is fit to their statistics)")
        check(held_out >= 2, "held_out", held_out, ">= 2 (a Gaussian is fit to their statistics)")
        super().__init__(delta, significance, seed, planted_noise_factor, run_seed, dp_delta)
        self.inserted, self.held_out = inserted, held_out
        key = stream_key(self.seed, "audit/canaries")
        self.seeds = np.stack([position_seed(key, i) for i in range(inserted + held_out)])
        self.first_canary = None  # client id of the first canary (set by `wrap`)
        self._max_cosines = np.full(inserted + held_out, -np.inf)
        self._count = 0

    # ------------------------------------------------------------------ plan and build
    def population(self, population):
        real, records = population.num_clients, population.train_records
        if records is not None:  # canary clients hold no records (they send crafted updates)

            def train_records(clients):
                return records([c for c in clients if int(c) < real])

        return replace(
            population,
            num_clients=real + self.inserted,
            train_records=None if records is None else train_records,
        )

    def check(self, plan) -> None:
        if plan.sampler.unit == "record":
            raise ConfigError(
                "audit",
                "canaries",
                "canary_gradients with strategy=centralized "
                "(canary clients audit federated runs; canary records audit "
                "DP-SGD on pooled records)",
                absolute=True,
            )

    def wrap(self, parts, plan, model):
        if parts.query is None or parts.local is not None:
            raise ConfigError(
                "audit",
                "canaries",
                f"none with dp={plan.label}: canary clients "
                "audit a central noised sum of clipped client updates (gaussian, "
                "adaptive, per_layer, tree, bandmf, dpsgd with user_noise_multiplier "
                "> 0); for a non-private control use dp.noise_multiplier=0",
                absolute=True,
            )
        from dpfed.runtime import tff

        self.first_canary = plan.population.num_clients - self.inserted
        self.shapes = [tuple(w.shape) for w in model.keras_model().trainable_weights]
        query = canary_query(parts.query, self.seeds[: self.inserted], self.shapes)
        return replace(
            parts, query=query, aggregator=tff.aggregators.DifferentiallyPrivateFactory(query)
        )

    # ------------------------------------------------------------------ run
    def start(self, process, state) -> None:
        import tensorflow as tf

        self.process = process
        leaves = tf.nest.flatten(state)
        found = [
            i
            for i, v in enumerate(leaves)
            if np.asarray(v).dtype == bool and np.asarray(v).shape == (self.inserted,)
        ]
        if len(found) != 1:
            raise RuntimeError(f"expected one canary mask in the process state, found {len(found)}")
        self._mask_leaf = found[0]
        directions = [flat_weights(canary_direction(s, self.shapes)) for s in self.seeds]
        self.directions = np.stack(directions)
        self.initial = self._weights(state)
        self.dim = self.initial.size

    def split(self, cohort: list[str]) -> tuple[list[str], list[int]]:
        real = [c for c in cohort if int(c) < self.first_canary]
        return real, [int(c) - self.first_canary for c in cohort if int(c) >= self.first_canary]

    def before_round(self, state, canaries: list[int]):
        import tensorflow as tf

        self._previous, self._count = self._weights(state), len(canaries)
        mask = np.zeros(self.inserted, bool)
        mask[canaries] = True
        leaves = tf.nest.flatten(state)
        leaves[self._mask_leaf] = mask
        return tf.nest.pack_sequence_as(state, leaves)

    def after_round(self, state, round_num: int, evaluate: bool) -> dict:
        weights = self._weights(state)
        step = canary_cosines(self.directions, weights - self._previous, negate=True)
        self._max_cosines = np.maximum(self._max_cosines, step)
        row = {"audit/canaries": self._count}
        if evaluate:
            row.update(self.estimates(weights))
        return row

    def estimates(self, weights: np.ndarray) -> dict:
        """The audit's epsilons for a model with ``weights`` (after the rounds seen so far)."""
        m = self.inserted
        moved = weights - self.initial
        if not np.any(moved):  # nothing released moved the model: no statistic to test
            return dict.fromkeys(COLUMNS[1:], math.nan)
        final = canary_cosines(self.directions[:m], moved, negate=True)
        iterates = self._max_cosines
        return {
            "audit/epsilon_lower": _estimate(
                threshold_epsilon_lower_bound,
                final,
                None,
                self.delta,
                self.significance / m,
                dim=self.dim,
                interval="clopper_pearson",
            ),
            "audit/epsilon_estimate": _estimate(
                one_shot_epsilon, final, None, self.delta, dim=self.dim
            ),
            "audit/epsilon_estimate_iterates": _estimate(
                one_shot_epsilon, iterates[:m], iterates[m:], self.delta
            ),
        }

    def warnings(self, plan) -> tuple[str, ...]:
        """See `relation_warnings` (a central mechanism's default with fixed-size, shuffled or
        cyclic cohorts is replace-one; with Poisson cohorts, add/remove)."""
        return self.relation_warnings(plan, "epsilon", "a canary client's update")

    def describe(self) -> dict:
        return {
            "audit": "canaries (one-shot empirical privacy estimation, Andrew et al. 2024)",
            "audit_inserted": self.inserted,
            "audit_held_out": self.held_out,
            "audit_neighboring": "zero_out (a canary client's update present or zero)",
            "audit_bounds": "epsilon",  # the accountant's epsilon the bound is a lower bound on
            **self.describe_settings(),
        }

    def statistics(self) -> dict[str, np.ndarray]:
        return {"max_cosines": self._max_cosines}
