"""Input perturbation: clipped features, noise of the stated scale, drawn once per record."""

from __future__ import annotations

import numpy as np
import pytest

from dpfed.build import build_privacy
from dpfed.config import compose
from dpfed.data.synthetic import Health
from tests.data.test_synthetic import make


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
@pytest.mark.parametrize("neighboring", ["replace_one", "zero_out"])
def test_noise_scale_is_the_noise_multiplier_times_the_records_clip(noise, neighboring):
    data = make(Health, seq_len=10, num_features=5, examples_mean=400, examples_spread=0.0)
    clean_x, clean_y = data.train.arrays(0)
    cfg = compose(
        "dp=input_noise",
        f"dp.noise={noise}",
        "dp.noise_multiplier=0.01",
        "dp.bound=0.5",
        "dp.accountant=rdp",
        f"dp.neighboring={neighboring}",
    )
    plan = build_privacy(cfg, data.population())
    noisy = plan.mechanism.setup(plan, None).transform(data)
    x, y = noisy.train.arrays(0)
    n = 10 * 5
    clip = 0.5 * (n if noise == "laplace" else np.sqrt(n))  # the L1 (L2) norm of a clipped record
    assert plan.describe()["clip"] == pytest.approx(clip)
    residual = x - np.clip(clean_x, -0.5, 0.5)
    spread = np.abs(residual).mean() if noise == "laplace" else residual.std()  # E|Laplace| = b
    assert spread == pytest.approx(0.01 * clip, rel=0.03)
    np.testing.assert_array_equal(noisy.train.arrays(0)[0], x)  # drawn once: no fresh noise
    np.testing.assert_array_equal(y, clean_y)  # labels untouched
    assert noisy.eval.arrays(0)[0].max() > 0.5  # evaluation stays clean
    sensitivity = 2 * clip if neighboring == "replace_one" else clip
    assert plan.headline.noise_multiplier / plan.headline.sensitivity == pytest.approx(
        0.01 * clip / sensitivity
    )


def test_input_noise_is_refused_for_text_and_for_coupled_windows():
    from dpfed.errors import ConfigError

    with pytest.raises(ConfigError, match="dp='input_noise' is not allowed.*text dataset"):
        build_privacy(compose("dp=input_noise"), _population(record_size=None))
    with pytest.raises(ConfigError, match="overlap"):
        build_privacy(compose("dp=input_noise"), _population(coupled="windows overlap"))


def _population(record_size=24, coupled=None):
    from dpfed.data.base import Population

    return Population(1000, None, record_size, coupled)
