"""TF Privacy DP queries with seeded noise, and the local randomizer clients apply.

TF Privacy's ``GaussianSumQuery`` draws its noise from an unseeded
``tf.random_normal_initializer``, so two runs with one seed differ and a
resumed run cannot continue the noise of an interrupted one. The queries here
draw every noise tensor with ``tf.random.stateless_*`` from a seed pair
``(stream key, release counter)`` kept in the query's global state
(`dpfed.privacy.noise`): the noise is fixed by the run's DP seed and the
release's position, never by the data, different in every round, and saved and
restored with the TFF learning-process state. The noise distribution (and so
the accounting) is exactly that of the unseeded queries.
"""

from __future__ import annotations

import collections

import dp_accounting
import tensorflow as tf
import tensorflow_privacy as tfp

from dpfed.privacy.noise import LOCAL_FOLD


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
        return self._GlobalState(
            tf.cast(l2_norm_clip, tf.float32), tf.cast(stddev, tf.float32), seed
        )

    def get_noised_result(self, sample_state, global_state):
        leaves = tf.nest.flatten(sample_state)
        seeds = _leaf_seeds(global_state.seed, len(leaves))
        noised = [
            v + seeded_normal(tf.shape(v), s, global_state.stddev, v.dtype)
            for v, s in zip(leaves, seeds, strict=True)
        ]
        event = dp_accounting.GaussianDpEvent(global_state.stddev / global_state.l2_norm_clip)
        new_state = global_state._replace(seed=next_seed(global_state.seed))
        return tf.nest.pack_sequence_as(sample_state, noised), new_state, event


class FactorizedGaussianSumQuery(SeededGaussianSumQuery):
    """Clipped sum plus the correlated noise ``(C^-1 z)_t`` of a Toeplitz factorization ``C``.

    ``z_t ~ N(0, stddev^2)`` is seeded as in `SeededGaussianSumQuery`; the
    solution ``y_t = (C^-1 z)_t`` is streamed from a state kept in the global
    state (so it is checkpointed with the TFF learning process), in float64:

    - ``banded``: ``y_t = (z_t - sum_j mix_j y_(t-j)) / scale`` with the last
      ``len(mix)`` solutions kept (``scale = c_0``, ``mix = c_1 .. c_(b-1)``);
    - ``blt``: ``y_t = z_t - sum_i mix_i buf_i``, then ``buf_i <- decay_i buf_i + y_t``
      (McMahan et al. 2024, Algorithm 3; ``C``'s BLT weights and decays).

    Args:
        l2_norm_clip: clipping norm of each record.
        stddev: standard deviation of ``z`` per coordinate.
        key: noise key (`dpfed.privacy.noise`).
        specs: the records' ``tf.TensorSpec`` structure (the model's trainable weights).
        stream: ``banded`` or ``blt``.
        scale: ``c_0`` (banded), 1 for blt.
        mix: banded: ``c_1 ..``; blt: the buffers' weights.
        decay: blt: the buffers' decays.
    """

    _GlobalState = collections.namedtuple(
        "_GlobalState", ["l2_norm_clip", "stddev", "seed", "noise_state"]
    )

    def __init__(
        self, l2_norm_clip, stddev, key: int, specs, stream: str, scale: float, mix, decay
    ):
        super().__init__(l2_norm_clip, stddev, key)
        self._specs = [tf.TensorSpec(s.shape, s.dtype) for s in tf.nest.flatten(specs)]
        self._stream, self._scale = stream, float(scale)
        self._mix = [float(m) for m in mix]
        self._decay = [float(d) for d in decay]

    def _zero_state(self):
        return tuple(tf.zeros((len(self._mix), *spec.shape), tf.float64) for spec in self._specs)

    def make_global_state(self, l2_norm_clip, stddev, seed=None, noise_state=None):
        seed = initial_seed(self._key) if seed is None else tf.cast(seed, tf.int64)
        noise_state = self._zero_state() if noise_state is None else noise_state
        return self._GlobalState(
            tf.cast(l2_norm_clip, tf.float32), tf.cast(stddev, tf.float32), seed, noise_state
        )

    def _correlate(self, z, state):
        """One step of the stream for one tensor: (``y_t``, the new state)."""
        if not self._mix:
            return z / self._scale, state
        mix = tf.constant(self._mix, tf.float64)
        inner = tf.tensordot(mix, state, axes=1)
        if self._stream == "banded":
            y = (z - inner) / self._scale
            return y, tf.concat([y[tf.newaxis], state[:-1]], axis=0)
        y = z - inner
        decay = tf.reshape(tf.constant(self._decay, tf.float64), [-1] + [1] * len(z.shape))
        return y, decay * state + y[tf.newaxis]

    def get_noised_result(self, sample_state, global_state):
        leaves = tf.nest.flatten(sample_state)
        seeds = _leaf_seeds(global_state.seed, len(leaves))
        noised, states = [], []
        for value, seed, state in zip(leaves, seeds, global_state.noise_state, strict=True):
            z = tf.random.stateless_normal(tf.shape(value), seed=seed, dtype=tf.float64) * (
                tf.cast(global_state.stddev, tf.float64)
            )
            y, new_state = self._correlate(z, state)
            noised.append(value + tf.cast(y, value.dtype))
            states.append(new_state)
        event = dp_accounting.UnsupportedDpEvent()  # accounted by the privacy plan, per epoch
        new_global = global_state._replace(
            seed=next_seed(global_state.seed), noise_state=tuple(states)
        )
        return tf.nest.pack_sequence_as(sample_state, noised), new_global, event


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

    def __init__(
        self,
        initial_l2_norm_clip,
        noise_multiplier,
        target_unclipped_quantile,
        learning_rate,
        clipped_count_stddev,
        expected_num_records,
        geometric_update=True,
        *,
        sum_key: int,
        count_key: int,
    ):
        super().__init__(
            initial_l2_norm_clip,
            noise_multiplier,
            target_unclipped_quantile,
            learning_rate,
            clipped_count_stddev,
            expected_num_records,
            geometric_update,
        )
        self._quantile_estimator_query = SeededQuantileEstimatorQuery(
            initial_l2_norm_clip,
            target_unclipped_quantile,
            learning_rate,
            clipped_count_stddev,
            expected_num_records,
            geometric_update,
            key=count_key,
        )
        self._sum_query = SeededGaussianSumQuery(
            initial_l2_norm_clip, noise_multiplier * initial_l2_norm_clip, sum_key
        )

    def get_noised_result(self, sample_state, global_state):
        # The parent rebuilds the sum's state for the new clip, which would
        # restart its noise stream; carry the advanced seed over instead.
        result, new_state, event = super().get_noised_result(sample_state, global_state)
        sum_state = new_state.sum_state._replace(seed=next_seed(global_state.sum_state.seed))
        return result, new_state._replace(sum_state=sum_state), event


def _clipped(values, norm: str, clip):
    if norm == "l2":
        return tf.clip_by_global_norm(values, clip)[0]
    l1 = tf.add_n([tf.reduce_sum(tf.abs(v)) for v in values])
    factor = tf.minimum(1.0, clip / tf.maximum(l1, 1e-30))
    return [v * tf.cast(factor, v.dtype) for v in values]


def laplace_noise(shape, seed, scale, dtype) -> tf.Tensor:
    """Laplace(0, ``scale``) noise fixed by ``seed``, drawn in float64.

    Inverse CDF of a float64 uniform on (-1/2, 1/2) with ``log1p``: the samples
    are floating-point numbers (a discrete set) and the tails are cut at about
    36.7 scales, instead of about 15 with float32 (Mironov 2012 on why
    floating-point Laplace noise is not exactly pure DP).
    """
    u = tf.random.stateless_uniform(shape, seed, -0.5, 0.5, dtype=tf.float64)
    tail = tf.math.log1p(-2.0 * tf.minimum(tf.abs(u), 0.5 - 2.0**-54))
    return tf.cast(-tf.cast(scale, tf.float64) * tf.sign(u) * tail, dtype)


def local_seed(first_batch_seed) -> tf.Tensor:
    """The seed pair of a client's local randomizer, from the seed of its first batch."""
    fold = tf.constant(LOCAL_FOLD, tf.int64)
    return tf.random.experimental.stateless_fold_in(tf.cast(first_batch_seed, tf.int64), fold)


def local_randomize(values, norm: str, clip, noise: str, scale, seed):
    """A client's local randomizer: clip ``values`` (a list of tensors) and add noise.

    Args:
        values: the client's update, one tensor per weight.
        norm: ``l1`` or ``l2``, the norm of the clip.
        clip: the clipping bound.
        noise: ``laplace`` (scale b) or ``gaussian`` (standard deviation).
        scale: the noise scale, in the update's units.
        seed: the client's seed pair for this release (`dpfed.privacy.noise`).

    Returns:
        The randomized update, tensor by tensor.
    """
    clipped = _clipped(list(values), norm, clip)
    seeds = _leaf_seeds(seed, len(clipped))
    draw = laplace_noise if noise == "laplace" else seeded_normal
    return [v + draw(tf.shape(v), s, scale, v.dtype) for v, s in zip(clipped, seeds, strict=True)]
