"""Example-level DP-SGD inside TFF clients (Abadi et al., CCS 2016).

Each example's gradient is clipped to L2 norm ``clip`` and Gaussian noise of
std ``noise_multiplier * clip`` is added to their sum, divided by the
configured batch size. The clipped sum comes from `dpfed.privacy.ghost` (one
forward and one backward pass, no per-example gradients); the reference path,
``method="vectorized"``, materialises per-example gradients with
``tf.vectorized_map`` over unrolled GRUs and is what the fast path is tested
against. The noise of every step is drawn from the step's seed pair, which the
server derives from the run's DP seed and the step's position (round, client,
batch) and attaches to the batch (`dpfed.privacy.noise`), never from the data.
"""

from __future__ import annotations

import tensorflow as tf

from dpfed.privacy.ghost import GhostClipper, per_example_loss
from dpfed.privacy.queries import seeded_normal


def per_example_gradients(keras_model, example_loss, x, y):
    """Gradients of each example's loss, stacked on a leading batch axis, one per variable.

    Args:
        keras_model: the model.
        example_loss: ``(y, predictions) -> [batch]`` (`dpfed.privacy.ghost.per_example_loss`).
        x: one batch.
        y: its labels.
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
        x: one batch.
        y: their labels.
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
    return [
        s
        + seeded_normal(
            tf.shape(s), tf.random.experimental.stateless_fold_in(seed, i), noise_std, s.dtype
        )
        for i, s in enumerate(summed)
    ]


def noisy_clipped_mean_gradient(
    keras_model, loss, x, y, clip, noise_std, batch_size, seed, method: str = "ghost"
):
    """DP-SGD gradient: (sum of per-example gradients clipped to ``clip`` + noise) / batch_size.

    Args:
        keras_model: the model, as for `clipped_gradient_sum`.
        loss: its Keras loss with ``reduction="none"``.
        x: one batch.
        y: its labels.
        clip: the per-example L2 bound.
        noise_std: the noise's standard deviation (noise multiplier x ``clip``).
        batch_size: the divisor (the expected batch size with Poisson batches).
        seed: the step's seed pair (``int64[2]``); the noise is a function of it alone.
        method: as for `clipped_gradient_sum`.
    """
    summed = clipped_gradient_sum(keras_model, loss, x, y, clip, method)
    noisy = add_seeded_noise(summed, noise_std, seed)
    return [s / batch_size for s in noisy]
