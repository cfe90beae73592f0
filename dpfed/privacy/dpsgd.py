"""Example-level DP-SGD inside TFF clients (Abadi et al., CCS 2016).

Each example's gradient is clipped to L2 norm ``clip`` and Gaussian noise of
std ``noise_multiplier * clip`` is added to their sum, divided by the
configured batch size. The clipped sum comes from `dpfed.privacy.ghost` (one
forward and one backward pass, no per-example gradients); the reference path,
``method="vectorized"``, materialises per-example gradients with
``tf.vectorized_map`` over unrolled GRUs and is what the fast path is tested
against. The result reaches TFF's unchanged client loop through a surrogate
loss whose gradient is exactly that noisy clipped mean, so every strategy and
aggregator works with it.
"""

from __future__ import annotations

import tensorflow as tf

from dpfed.federated.runtime import tff
from dpfed.privacy.ghost import GhostClipper, per_example_loss
from dpfed.privacy.local import seeded_normal


def per_example_gradients(keras_model, example_loss, x, y):
    """Gradients of each example's loss, stacked on a leading batch axis, one per variable.

    Args:
        example_loss: ``(y, predictions) -> [batch]`` (`dpfed.privacy.ghost.per_example_loss`).
    """
    variables = keras_model.trainable_variables

    def one(example):
        xi, yi = example
        with tf.GradientTape() as tape:
            loss = example_loss(yi[None], keras_model(xi[None], training=True))[0]
        return tape.gradient(loss, variables)

    return tf.vectorized_map(one, (x, y))


METHODS = ("ghost", "vectorized")


def clipped_gradient_sum(keras_model, loss, x, y, clip, method: str = "ghost"):
    """Sum over the batch of each example's gradient clipped to L2 norm ``clip``.

    Args:
        keras_model: the model (``method="vectorized"`` needs unrolled GRUs).
        loss: its Keras loss with ``reduction="none"``.
        x, y: one batch.
        clip: the per-example L2 bound.
        method: ``ghost`` (`dpfed.privacy.ghost.GhostClipper`; models it does
            not cover fall back to ``vectorized``) or ``vectorized`` (the
            reference: per-example gradients from ``tf.vectorized_map``).

    Returns:
        One tensor per trainable variable.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if method == "ghost":
        try:
            clipper = GhostClipper(keras_model, loss)
        except ValueError:
            clipper = None
        if clipper is not None:
            return clipper(x, y, clip)[0]
    grads = per_example_gradients(keras_model, per_example_loss(loss), x, y)
    squared = tf.add_n(
        [tf.reduce_sum(tf.reshape(g, [tf.shape(g)[0], -1]) ** 2, axis=1) for g in grads]
    )
    factor = tf.minimum(1.0, clip / tf.maximum(tf.sqrt(squared), 1e-12))
    return [tf.tensordot(factor, g, axes=1) for g in grads]


def add_seeded_noise(summed, noise_std, seed):
    """``summed`` plus N(0, noise_std^2) per coordinate, drawn from the seed pair ``seed``."""
    return [s + seeded_normal(tf.shape(s), tf.random.experimental.stateless_fold_in(seed, i),
                              noise_std, s.dtype)
            for i, s in enumerate(summed)]  # fmt: skip


def fingerprint_seed(key: int, tensors) -> tf.Tensor:
    """A seed pair from ``key`` and the bytes of ``tensors``.

    TFF's client work gives a model no round or client number, so DP-SGD's
    noise is keyed by the clipped gradient sum itself: it differs from step to
    step and client to client, and a rerun (or a resumed run) draws the same
    noise. A deployment would draw fresh entropy instead.
    """
    flat = tf.concat([tf.reshape(t, [-1]) for t in tensors], 0)
    bucket = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(flat), 2**31 - 1)
    return tf.random.experimental.stateless_fold_in(tf.constant([key, 0], tf.int64), bucket)


def noisy_clipped_mean_gradient(keras_model, loss, x, y, clip, noise_std, batch_size,
                                method: str = "ghost", key: int = 0):  # fmt: skip
    """DP-SGD gradient: (sum of per-example gradients clipped to ``clip`` + noise) / batch_size.

    The noise is seeded by ``key`` and the clipped sum (`fingerprint_seed`).
    """
    summed = clipped_gradient_sum(keras_model, loss, x, y, clip, method)
    noisy = add_seeded_noise(summed, noise_std, fingerprint_seed(key, summed))
    return [s / batch_size for s in noisy]


class DPSGDModel(tff.learning.models.VariableModel):
    """A TFF model whose training loss has the DP-SGD gradient; otherwise the wrapped model.

    The returned loss keeps the true batch loss as its value (metrics are the
    wrapped model's), while its gradient with respect to the trainable
    variables is `noisy_clipped_mean_gradient`.

    Args:
        base: the TFF model built from ``keras_model``.
        keras_model: its Keras model.
        loss: the loss with ``reduction="none"``.
        clip: per-example L2 clipping norm.
        noise_multiplier: noise std / clip.
        batch_size: the configured batch size (the DP-SGD denominator).
        key: noise key (`dpfed.privacy.local.noise_key`).
    """

    def __init__(self, base, keras_model, loss, clip, noise_multiplier, batch_size, key=0):
        self._base, self._keras, self._key = base, keras_model, key
        self._loss, self._clip = loss, clip
        self._noise_std, self._batch_size = noise_multiplier * clip, float(batch_size)

    trainable_variables = property(lambda self: self._base.trainable_variables)
    non_trainable_variables = property(lambda self: self._base.non_trainable_variables)
    local_variables = property(lambda self: self._base.local_variables)
    input_spec = property(lambda self: self._base.input_spec)

    @tf.function
    def forward_pass(self, batch_input, training=True):
        output = self._base.forward_pass(batch_input, training=training)
        if not training:
            return output
        x, y = batch_input
        grads = noisy_clipped_mean_gradient(self._keras, self._loss, x, y, self._clip,
                                            self._noise_std, self._batch_size,
                                            key=self._key)  # fmt: skip
        variables = self._keras.trainable_variables
        surrogate = tf.add_n([tf.reduce_sum(tf.stop_gradient(g) * v)
                              for g, v in zip(grads, variables, strict=True)])  # fmt: skip
        loss = tf.stop_gradient(output.loss) + surrogate - tf.stop_gradient(surrogate)
        return tff.learning.models.BatchOutput(
            loss=loss, predictions=output.predictions, num_examples=output.num_examples
        )

    @tf.function
    def predict_on_batch(self, batch_input, training=True):
        return self._base.predict_on_batch(batch_input, training=training)

    @tf.function
    def report_local_unfinalized_metrics(self):
        return self._base.report_local_unfinalized_metrics()

    def metric_finalizers(self):
        return self._base.metric_finalizers()

    @tf.function
    def reset_metrics(self):
        return self._base.reset_metrics()
