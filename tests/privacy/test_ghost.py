"""Ghost clipping equals TF Privacy's microbatched DP-SGD (noise 0) and the per-example reference."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_privacy.privacy.optimizers.dp_optimizer_keras import DPKerasSGDOptimizer

from dpfed.privacy.dpsgd import clipped_gradient_sum
from dpfed.privacy.ghost import GhostClipper, per_example_loss

# Run by `pytest -m slow` (and CI), not by default: the two-layer GRU(128) textbook model, the
# slowest to trace (the other models run by default).
SLOW_CASES = {
    "test_ghost_clipped_sum_equals_tf_privacy_microbatches[tiny-textbook_shape]",
    "test_ghost_clipped_sum_equals_tf_privacy_microbatches[median-textbook_shape]",
    "test_ghost_clipped_sum_equals_tf_privacy_microbatches[huge-textbook_shape]",
    "test_ghost_covers_every_model_the_configs_build[overrides1]",
}

CCE = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
MSE = tf.keras.losses.MeanSquaredError(reduction="none")


def gru_stack(seq_len, features, units, outputs, head, vocab=None, regression=False, unroll=False):
    """The layer shapes `GRUModel` builds (built by hand so text and every head are covered)."""
    tf.keras.utils.set_random_seed(7)
    inputs = tf.keras.Input(
        (seq_len,) if vocab else (seq_len, features), dtype=tf.int32 if vocab else tf.float32
    )
    x = tf.keras.layers.Embedding(vocab, features, name="embedding")(inputs) if vocab else inputs
    for i, u in enumerate(units):
        last = i == len(units) - 1
        x = tf.keras.layers.GRU(
            u, return_sequences=not last or outputs == "every_step", unroll=unroll, name=f"gru_{i}"
        )(x)
    out = tf.keras.layers.Dense(head, name="head")(x)
    if regression:
        out = tf.keras.layers.Lambda(lambda t: tf.squeeze(t, -1), name="squeeze")(out)
    return tf.keras.Model(inputs, out)


def batch(rng, n, seq_len, features, outputs, head, vocab=None, regression=False):
    if vocab:
        x = rng.integers(0, vocab, (n, seq_len)).astype(np.int32)
    else:
        x = rng.normal(size=(n, seq_len, features)).astype(np.float32)
    y_shape = (n, seq_len) if outputs == "every_step" else (n,)
    y = (
        rng.normal(size=y_shape).astype(np.float32)
        if regression
        else rng.integers(0, head, y_shape)
    )
    return tf.constant(x), tf.constant(y)


CASES = {
    # name: (seq_len, features, units, outputs, head, vocab, regression)
    "textbook_shape": (12, 10, [16, 16], "last", 10, None, False),
    "every_step": (6, 4, [8], "every_step", 3, None, False),
    "regression_last": (7, 5, [6], "last", 1, None, True),
    "regression_every_step": (5, 3, [4, 5], "every_step", 1, None, True),
    "text": (9, 6, [12], "every_step", 17, 17, False),  # Embedding(17, 6): repeated tokens
}


def tf_privacy_clipped_sum(model, loss, x, y, clip):
    """TF Privacy 0.9's microbatched DP-SGD, one microbatch per example, noise 0, times B."""
    n = int(x.shape[0])
    optimizer = DPKerasSGDOptimizer(
        l2_norm_clip=clip, noise_multiplier=0.0, num_microbatches=n, learning_rate=1.0
    )
    with tf.GradientTape(persistent=True) as tape:
        losses = per_example_loss(loss)(y, model(x, training=True))
    grads_and_vars = optimizer._compute_gradients(losses, model.trainable_variables, tape=tape)
    return [g * n for g, _ in grads_and_vars]


def assert_close(actual, expected, rtol=1e-5):
    """Equal within ``rtol`` relative to the largest entry of the whole gradient.

    (Per tensor, a 1-element bias whose clipped contributions nearly cancel
    would compare float32 rounding noise with a tiny value.)
    """
    a = np.concatenate([np.ravel(t) for t in actual])
    e = np.concatenate([np.ravel(t) for t in expected])
    assert a.shape == e.shape
    scale = np.abs(e).max()
    assert np.abs(a - e).max() <= rtol * scale + 1e-9, (np.abs(a - e).max(), scale)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("clip", ["tiny", "median", "huge"])  # every example clipped, half, none
def test_ghost_clipped_sum_equals_tf_privacy_microbatches(name, clip):
    seq_len, features, units, outputs, head, vocab, regression = CASES[name]
    model = gru_stack(seq_len, features, units, outputs, head, vocab, regression)
    loss = MSE if regression else CCE
    x, y = batch(
        np.random.default_rng(zlib.crc32(name.encode())),
        11,
        seq_len,
        features,
        outputs,
        head,
        vocab,
        regression,
    )
    clipper = GhostClipper(model, loss)
    norms = clipper(x, y, 1.0)[1].numpy()
    clip = {"tiny": norms.min() / 10, "median": float(np.median(norms)), "huge": norms.max() * 10}[
        clip
    ]
    ghost, _, _, _ = clipper(x, y, clip)
    assert_close(ghost, tf_privacy_clipped_sum(model, loss, x, y, clip))


@pytest.mark.parametrize("name", ["textbook_shape", "text", "regression_last"])
def test_ghost_norms_and_losses_equal_per_example_computation(name):
    seq_len, features, units, outputs, head, vocab, regression = CASES[name]
    model = gru_stack(seq_len, features, units, outputs, head, vocab, regression)
    loss = MSE if regression else CCE
    x, y = batch(np.random.default_rng(3), 5, seq_len, features, outputs, head, vocab, regression)
    _, norms, losses, predictions = GhostClipper(model, loss)(x, y, 1.0)
    np.testing.assert_allclose(predictions, model(x), rtol=1e-5, atol=1e-6)
    example_loss = per_example_loss(loss)
    for i in range(5):
        with tf.GradientTape() as tape:
            value = example_loss(y[i : i + 1], model(x[i : i + 1]))[0]
        # dense: an embedding's IndexedSlices repeat rows for repeated tokens
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(value, model.trainable_variables)]
        assert float(norms[i]) == pytest.approx(float(tf.linalg.global_norm(grads)), rel=1e-5)
        assert float(losses[i]) == pytest.approx(float(value), rel=1e-5)


def test_ghost_equals_vectorized_reference_on_unrolled_model():
    model = gru_stack(8, 4, [8, 6], "every_step", 5)
    unrolled = gru_stack(8, 4, [8, 6], "every_step", 5, unroll=True)
    unrolled.set_weights(model.get_weights())
    x, y = batch(np.random.default_rng(5), 7, 8, 4, "every_step", 5)
    fast = clipped_gradient_sum(model, CCE, x, y, 0.2, method="ghost")
    reference = clipped_gradient_sum(unrolled, CCE, x, y, 0.2, method="vectorized")
    assert_close(fast, reference)


def test_ghost_rejects_layers_it_does_not_cover_and_dpsgd_falls_back():
    inputs = tf.keras.Input((5, 3))
    x = tf.keras.layers.LSTM(4, unroll=True)(inputs)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(x))
    with pytest.raises(ValueError, match="lstm"):
        GhostClipper(model, CCE)
    x, y = batch(np.random.default_rng(0), 4, 5, 3, "last", 2)
    fallback = clipped_gradient_sum(model, CCE, x, y, 0.5, method="ghost")
    reference = clipped_gradient_sum(model, CCE, x, y, 0.5, method="vectorized")
    assert_close(fallback, reference)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=gru", "dataset=smart_home"],
        ["model=textbook", "dataset=health"],
        ["model=gru", "dataset=finance", "dataset.target=return", "dataset.labels=every_step"],
        ["model=gru", "dataset=shakespeare", "model.dropout=0.0"],
        ["model=gru", "dataset=watch", "model.units=[8,8]"],
    ],
)
def test_ghost_covers_every_model_the_configs_build(overrides):
    """The configured GRU stacks (embedding, GRUs, head) as `GRUModel` builds them."""
    from hydra.utils import instantiate

    from dpfed.build import build_dataset
    from tests.conftest import compose_config

    cfg = compose_config(*overrides, "debug=smoke")
    dataset = build_dataset(cfg)
    model = instantiate(cfg.model).bind(dataset)
    keras, loss = model.keras_model(), model.loss("none")
    x, y = dataset.train.arrays(dataset.train.client_ids[0])
    x, y = tf.constant(x[:4]), tf.constant(y[:4])
    clipper = GhostClipper(keras, loss)
    clip = float(np.median(clipper(x, y, 1.0)[1]))
    assert_close(clipper(x, y, clip)[0], tf_privacy_clipped_sum(keras, loss, x, y, clip))
