"""DP-SGD inside clients: per-example clipping and noise, equal to a per-example loop."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from dpfed.data.synthetic import Finance, SmartHome
from dpfed.models.gru import GRUModel
from dpfed.privacy.dpsgd import noisy_clipped_mean_gradient
from tests.data.test_synthetic import make


def loop_reference(keras_model, loss_fn, x, y, clip, batch_size):
    """The clipped, summed gradient computed one example at a time (noise 0)."""
    total = [tf.zeros_like(v) for v in keras_model.trainable_variables]
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(y[i : i + 1], keras_model(x[i : i + 1], training=True)))
        grads = tape.gradient(loss, keras_model.trainable_variables)
        norm = tf.linalg.global_norm(grads)
        total = [t + g * tf.minimum(1.0, clip / norm) for t, g in zip(total, grads, strict=True)]
    return [t / batch_size for t in total]


@pytest.mark.parametrize(
    "data,units,clip",
    [
        (make(SmartHome, seq_len=10), [16], 0.05),
        (make(SmartHome, seq_len=6, labels="every_step"), [8, 8], 0.5),
        (make(Finance, seq_len=7, target="return"), [12], 1e3),  # clip inactive
    ],
)
def test_vectorized_clipped_gradient_equals_per_example_loop(data, units, clip):
    model = GRUModel(units, outputs=data.labels).bind(data)
    tf.keras.utils.set_random_seed(1)
    keras = model.keras_model(unroll=True)
    x, y = data.train.arrays(0)
    x, y = tf.constant(x[:9]), tf.constant(y[:9])
    seed = tf.constant([1, 2], tf.int64)
    fast = noisy_clipped_mean_gradient(keras, model.loss("none"), x, y, clip, 0.0, 16.0, seed)
    slow = loop_reference(keras, model.loss("none"), x, y, clip, 16.0)
    for f, s in zip(fast, slow, strict=True):
        np.testing.assert_allclose(f.numpy(), s.numpy(), rtol=1e-5, atol=1e-7)


def test_noise_std_over_batch_size_is_added_to_the_clipped_sum():
    data = make(SmartHome, seq_len=5)
    model = GRUModel([8], outputs="last").bind(data)
    keras = model.keras_model(unroll=True)
    x, y = data.train.arrays(0)
    grads = noisy_clipped_mean_gradient(
        keras,
        model.loss("none"),
        tf.constant(x[:4]),
        tf.constant(y[:4]),
        1e-6,
        2.0,
        16.0,
        tf.constant([3, 4], tf.int64),
    )
    flat = np.concatenate([g.numpy().ravel() for g in grads])
    assert flat.std() == pytest.approx(2.0 / 16.0, rel=0.1)  # signal: 4 * 1e-6 / 16 at most
