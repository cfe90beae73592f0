"""Local DP: every client clips and noises its own update before it leaves the device.

A `LocalRandomizerQuery` is a TF Privacy ``DPQuery`` whose ``preprocess_record``
(run by TFF on each client) clips the update to an L1 or L2 ball and adds
Laplace or Gaussian noise; the server only sums and averages what arrives, so
it adds nothing. TFF's ``DifferentiallyPrivateFactory`` runs it like any other
DP query.
"""

from __future__ import annotations

import collections

import tensorflow as tf
import tensorflow_privacy as tfp


class LocalRandomizerQuery(tfp.SumAggregationDPQuery):
    """Clips each record to ``norm`` <= ``clip`` and adds noise of scale ``scale`` on its owner.

    Args:
        norm: ``l1`` or ``l2``: the norm the record is clipped in.
        clip: the clipping bound.
        noise: ``laplace`` (scale b) or ``gaussian`` (standard deviation).
        scale: the noise scale, in the record's units.
    """

    _GlobalState = collections.namedtuple("_GlobalState", ["clip", "scale"])

    def __init__(self, norm: str, clip: float, noise: str, scale: float):
        self._norm, self._noise = norm, noise
        self._clip, self._scale = clip, scale

    def initial_global_state(self):
        return self._GlobalState(tf.constant(self._clip, tf.float32),
                                 tf.constant(self._scale, tf.float32))  # fmt: skip

    def derive_sample_params(self, global_state):
        return global_state

    def _clipped(self, values, clip):
        if self._norm == "l2":
            return tf.clip_by_global_norm(values, clip)[0]
        l1 = tf.add_n([tf.reduce_sum(tf.abs(v)) for v in values])
        factor = tf.minimum(1.0, clip / tf.maximum(l1, 1e-30))
        return [v * tf.cast(factor, v.dtype) for v in values]

    def _noise_like(self, v, scale):
        if self._noise == "gaussian":
            return tf.random.normal(tf.shape(v), stddev=tf.cast(scale, v.dtype), dtype=v.dtype)
        # Laplace(0, b) by inverse CDF of a uniform on (-1/2, 1/2)
        u = tf.random.uniform(tf.shape(v), -0.5, 0.5, dtype=v.dtype)
        tiny = tf.constant(1e-12, v.dtype)
        return (
            -tf.cast(scale, v.dtype) * tf.sign(u) * tf.math.log(tf.maximum(1 - 2 * tf.abs(u), tiny))
        )

    def preprocess_record(self, params, record):
        values = tf.nest.flatten(record)
        noised = [v + self._noise_like(v, params.scale) for v in self._clipped(values, params.clip)]
        return tf.nest.pack_sequence_as(record, noised)

    def get_noised_result(self, sample_state, global_state):
        # Records arrive already randomized; the server's release adds no noise.
        import dp_accounting

        return sample_state, global_state, dp_accounting.NoOpDpEvent()
