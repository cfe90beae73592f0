"""TF Privacy DP queries whose noise is seeded: local randomizers and central Gaussian sums.

A `LocalRandomizerQuery` is a TF Privacy ``DPQuery`` whose ``preprocess_record``
(run by TFF on each client) clips the update to an L1 or L2 ball and adds
Laplace or Gaussian noise; the server only sums and averages what arrives, so
it adds nothing. TFF's ``DifferentiallyPrivateFactory`` runs it like any other
DP query.

TF Privacy's ``GaussianSumQuery`` draws its noise from an unseeded
``tf.random_normal_initializer``, so two runs with one seed differ and a
resumed run cannot continue the noise of an interrupted one. The queries here
draw every noise tensor with ``tf.random.stateless_*`` from a seed pair
``(key, counter)`` kept in the query's global state: the noise is fixed by the
run seed, different in every round (the counter advances once per release),
and saved and restored with the TFF learning-process state. The noise
distribution (and so the accounting) is exactly that of the unseeded queries.
"""

from __future__ import annotations

import collections

import dp_accounting
import numpy as np
import tensorflow as tf
import tensorflow_privacy as tfp

# Independent noise streams per run seed, so that no two releases share noise.
STREAMS = {"sum": 1, "clipped_count": 2, "local": 3, "tree": 4, "dpsgd": 5}


def noise_key(seed: int, stream: str) -> int:
    """A 32-bit key for noise stream ``stream`` of run seed ``seed`` (mixed by SeedSequence)."""
    return int(np.random.SeedSequence([seed, STREAMS[stream]]).generate_state(1, np.uint32)[0])


def initial_seed(key: int) -> tf.Tensor:
    """The seed pair of a query's first release: ``(key, counter=0)``."""
    return tf.constant([key, 0], tf.int64)


def next_seed(seed: tf.Tensor) -> tf.Tensor:
    """The seed pair of the following release (the counter advances by one)."""
    return seed + tf.constant([0, 1], tf.int64)


def _leaf_seeds(seed: tf.Tensor, count: int) -> list[tf.Tensor]:
    # One independent seed per tensor of the structure, derived from the release's seed.
    return [tf.random.experimental.stateless_fold_in(seed, i) for i in range(count)]


def seeded_normal(shape, seed, stddev, dtype) -> tf.Tensor:
    """N(0, stddev^2) noise of ``shape`` fixed by ``seed``, drawn in float32 as TF Privacy does."""
    return tf.cast(tf.random.stateless_normal(shape, seed=seed, stddev=stddev), dtype)


class SeededGaussianSumQuery(tfp.GaussianSumQuery):
    """TF Privacy's ``GaussianSumQuery`` with seeded noise whose seed lives in the global state.

    Clips each record to L2 norm ``l2_norm_clip`` and adds N(0, stddev^2) to
    every coordinate of the sum, as the parent does (McMahan et al. 2018); only
    the source of randomness differs.

    Args:
        l2_norm_clip: clipping norm of each record.
        stddev: standard deviation of the noise on the sum.
        key: noise key (`noise_key`); the counter starts at 0.
    """

    _GlobalState = collections.namedtuple("_GlobalState", ["l2_norm_clip", "stddev", "seed"])

    def __init__(self, l2_norm_clip, stddev, key: int):
        super().__init__(l2_norm_clip, stddev)
        self._key = key

    def make_global_state(self, l2_norm_clip, stddev, seed=None):
        """A global state; ``seed`` None starts the noise stream at its first release."""
        seed = initial_seed(self._key) if seed is None else tf.cast(seed, tf.int64)
        return self._GlobalState(tf.cast(l2_norm_clip, tf.float32), tf.cast(stddev, tf.float32),
                                 seed)  # fmt: skip

    def get_noised_result(self, sample_state, global_state):
        leaves = tf.nest.flatten(sample_state)
        seeds = _leaf_seeds(global_state.seed, len(leaves))
        noised = [v + seeded_normal(tf.shape(v), s, global_state.stddev, v.dtype)
                  for v, s in zip(leaves, seeds, strict=True)]  # fmt: skip
        event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
        new_state = global_state._replace(seed=next_seed(global_state.seed))
        return tf.nest.pack_sequence_as(sample_state, noised), new_state, event


class SeededQuantileEstimatorQuery(tfp.QuantileEstimatorQuery):
    """TF Privacy's quantile estimator (Andrew et al. 2021) with a seeded noisy count.

    Args:
        key: noise key of the clipped-count noise.
        *args, **kwargs: as for ``tfp.QuantileEstimatorQuery``.
    """

    def __init__(self, *args, key: int, **kwargs):
        self._key = key  # read by _construct_below_estimate_query, which the parent calls
        super().__init__(*args, **kwargs)

    def _construct_below_estimate_query(self, below_estimate_stddev, expected_num_records):
        # As the parent: counts shifted by -0.5, so the sensitivity (clip) is 0.5.
        return tfp.NormalizedQuery(
            SeededGaussianSumQuery(0.5, below_estimate_stddev, self._key),
            denominator=expected_num_records,
        )


class SeededQuantileAdaptiveClipSumQuery(tfp.QuantileAdaptiveClipSumQuery):
    """TF Privacy's adaptive-clip Gaussian sum (Andrew et al., NeurIPS 2021), noise seeded.

    Both releases of a round, the noised sum of clipped records and the noised
    count of unclipped ones, draw from their own seeded stream.

    Args:
        initial_l2_norm_clip, noise_multiplier, target_unclipped_quantile,
        learning_rate, clipped_count_stddev, expected_num_records,
        geometric_update: as for ``tfp.QuantileAdaptiveClipSumQuery``.
        sum_key: noise key of the sum.
        count_key: noise key of the clipped count.
    """

    def __init__(self, initial_l2_norm_clip, noise_multiplier, target_unclipped_quantile,
                 learning_rate, clipped_count_stddev, expected_num_records,
                 geometric_update=True, *, sum_key: int, count_key: int):  # fmt: skip
        super().__init__(initial_l2_norm_clip, noise_multiplier, target_unclipped_quantile,
                         learning_rate, clipped_count_stddev, expected_num_records,
                         geometric_update)  # fmt: skip
        self._quantile_estimator_query = SeededQuantileEstimatorQuery(
            initial_l2_norm_clip, target_unclipped_quantile, learning_rate,
            clipped_count_stddev, expected_num_records, geometric_update, key=count_key,
        )  # fmt: skip
        self._sum_query = SeededGaussianSumQuery(
            initial_l2_norm_clip, noise_multiplier * initial_l2_norm_clip, sum_key
        )

    def get_noised_result(self, sample_state, global_state):
        # The parent rebuilds the sum's state for the new clip, which would
        # restart its noise stream; carry the advanced seed over instead.
        result, new_state, event = super().get_noised_result(sample_state, global_state)
        sum_state = new_state.sum_state._replace(seed=next_seed(global_state.sum_state.seed))
        return result, new_state._replace(sum_state=sum_state), event


class LocalRandomizerQuery(tfp.SumAggregationDPQuery):
    """Clips each record to ``norm`` <= ``clip`` and adds noise of scale ``scale`` on its owner.

    The noise is seeded: the round's seed pair (in the global state, advanced
    every round) is folded with a fingerprint of the client's own update, so
    clients draw different noise, reproducibly. A deployment would draw fresh
    device entropy instead; clients whose updates are bit-identical (e.g. all
    zero) draw identical noise here.

    Args:
        norm: ``l1`` or ``l2``: the norm the record is clipped in.
        clip: the clipping bound.
        noise: ``laplace`` (scale b) or ``gaussian`` (standard deviation).
        scale: the noise scale, in the record's units.
        key: noise key (`noise_key`).
    """

    _GlobalState = collections.namedtuple("_GlobalState", ["clip", "scale", "seed"])

    def __init__(self, norm: str, clip: float, noise: str, scale: float, key: int = 0):
        self._norm, self._noise = norm, noise
        self._clip, self._scale, self._key = clip, scale, key

    def initial_global_state(self):
        return self._GlobalState(tf.constant(self._clip, tf.float32),
                                 tf.constant(self._scale, tf.float32),
                                 initial_seed(self._key))  # fmt: skip

    def derive_sample_params(self, global_state):
        return global_state

    def _clipped(self, values, clip):
        if self._norm == "l2":
            return tf.clip_by_global_norm(values, clip)[0]
        l1 = tf.add_n([tf.reduce_sum(tf.abs(v)) for v in values])
        factor = tf.minimum(1.0, clip / tf.maximum(l1, 1e-30))
        return [v * tf.cast(factor, v.dtype) for v in values]

    def _noise_like(self, v, scale, seed):
        if self._noise == "gaussian":
            return seeded_normal(tf.shape(v), seed, scale, v.dtype)
        # Laplace(0, b) by inverse CDF of a uniform on (-1/2, 1/2)
        u = tf.random.stateless_uniform(tf.shape(v), seed, -0.5, 0.5, dtype=v.dtype)
        tiny = tf.constant(1e-12, v.dtype)
        return (
            -tf.cast(scale, v.dtype) * tf.sign(u) * tf.math.log(tf.maximum(1 - 2 * tf.abs(u), tiny))
        )

    def _client_seed(self, seed, values):
        # The aggregator does not know which client it runs on; the update's
        # own bytes tell clients apart.
        flat = tf.concat([tf.reshape(tf.cast(v, tf.float32), [-1]) for v in values], 0)
        fingerprint = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(flat), 2**31 - 1)
        return tf.random.experimental.stateless_fold_in(seed, fingerprint)

    def preprocess_record(self, params, record):
        values = tf.nest.flatten(record)
        seeds = _leaf_seeds(self._client_seed(params.seed, values), len(values))
        clipped = self._clipped(values, params.clip)
        noised = [v + self._noise_like(v, params.scale, s)
                  for v, s in zip(clipped, seeds, strict=True)]  # fmt: skip
        return tf.nest.pack_sequence_as(record, noised)

    def get_noised_result(self, sample_state, global_state):
        # Records arrive already randomized; the server's release adds no noise.
        new_state = global_state._replace(seed=next_seed(global_state.seed))
        return sample_state, new_state, dp_accounting.NoOpDpEvent()
