"""Local DP: the randomizer each client applies to its own update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from dpfed.privacy.noise import position_seed
from dpfed.privacy.queries import laplace_noise, local_randomize

SEED = tf.constant(position_seed(11, 1, 2), tf.int64)


def randomize(norm, noise, clip, scale, record, seed=SEED):
    return [np.asarray(v) for v in local_randomize(record, norm, clip, noise, scale, seed)]


def test_clipping_in_l1_and_l2_without_noise():
    record = [tf.constant([3.0, -4.0]), tf.constant([[12.0]])]  # L1 = 19, L2 = 13
    l1 = randomize("l1", "laplace", 1.9, 0.0, record)
    assert sum(np.abs(v).sum() for v in l1) == pytest.approx(1.9, rel=1e-5)
    l2 = randomize("l2", "gaussian", 1.3, 0.0, record)
    assert math.sqrt(sum((v**2).sum() for v in l2)) == pytest.approx(1.3, rel=1e-5)
    np.testing.assert_allclose(l2[0], [0.3, -0.4], rtol=1e-5)  # direction kept
    small = randomize("l2", "gaussian", 100.0, 0.0, record)
    np.testing.assert_allclose(small[1], [[12.0]])  # inside the ball: untouched


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_noise_has_the_configured_scale_and_depends_on_the_seed_only(noise):
    norm = "l2" if noise == "gaussian" else "l1"
    out = randomize(norm, noise, 1e-9, 2.0, [tf.zeros([200_000])])[0]
    assert abs(out.mean()) < 0.03
    if noise == "laplace":
        assert np.abs(out).mean() == pytest.approx(2.0, rel=0.02)  # E|X| = b
        assert np.mean(out > 0) == pytest.approx(0.5, abs=0.01)  # symmetric
    else:
        assert out.std() == pytest.approx(2.0, rel=0.02)
    again = randomize(norm, noise, 1e-9, 2.0, [tf.ones([200_000])])[0]
    np.testing.assert_allclose(again, out, atol=1e-6)  # clipped data moves it by <= 1e-9
    other = randomize(
        norm,
        noise,
        1e-9,
        2.0,
        [tf.zeros([200_000])],
        tf.constant(position_seed(11, 1, 3), tf.int64),
    )[0]
    assert not np.allclose(other, out)


def test_laplace_draws_follow_the_distribution_into_the_tails():
    """Drawn in float64: P(|X| > t) = exp(-t) holds far out (float32's inverse CDF stops at 15)."""
    draws = laplace_noise([4_000_000], SEED, 1.0, tf.float32).numpy()
    assert np.isfinite(draws).all() and np.abs(draws).max() > 12
    for t, rel in ((2, 0.01), (5, 0.05), (10, 0.3)):
        assert np.mean(np.abs(draws) > t) == pytest.approx(np.exp(-t), rel=rel)
