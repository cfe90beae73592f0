"""Input perturbation: clipped features, noise of the stated scale, drawn once per record."""

from __future__ import annotations

import numpy as np
import pytest

from dpfed.data.synthetic import Health
from dpfed.errors import ConfigError
from dpfed.federated.sampling import FixedSizeSampler
from dpfed.privacy.mechanisms import InputNoiseMechanism
from tests.test_data import make


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_noise_scale_matches_the_per_record_sensitivity(noise):
    data = make(Health, seq_len=10, num_features=5, examples_mean=400, examples_spread=0.0)
    clean_x = data.train.arrays(0)[0]
    mech = InputNoiseMechanism(noise, noise_multiplier=0.01, bound=0.5, seed=1)
    noisy = mech.wrap_dataset(data)
    x, y = noisy.train.arrays(0)
    n = 10 * 5
    expected = 2 * 0.5 * (n if noise == "laplace" else np.sqrt(n)) * 0.01
    residual = x - np.clip(clean_x, -0.5, 0.5)
    spread = np.abs(residual).mean() if noise == "laplace" else residual.std()  # E|Laplace| = b
    assert spread == pytest.approx(expected, rel=0.03)
    np.testing.assert_array_equal(noisy.train.arrays(0)[0], x)  # drawn once: no fresh noise
    np.testing.assert_array_equal(y, data.train.arrays(0)[1])  # labels untouched
    assert noisy.eval.arrays(0)[0].max() > 0.5  # evaluation stays clean


def test_epsilon_is_one_pure_release_per_record_regardless_of_rounds():
    mech = InputNoiseMechanism("laplace", noise_multiplier=0.25, bound=1.0)
    sampler = FixedSizeSampler(10, 2, seed=0)
    ledger = mech.ledger(sampler)
    eps = [ledger.record(mech.round_event(sampler, r)) for r in range(1, 5)]
    assert eps == pytest.approx([4.0] * 4)


def test_gaussian_input_noise_needs_an_approximate_dp_accountant():
    with pytest.raises(ConfigError, match="accountant"):
        InputNoiseMechanism("gaussian", 1.0, 1.0, accountant="pure").ledger(
            FixedSizeSampler(10, 2, 0)
        )


def test_input_noise_rejects_text_datasets():
    from dpfed.build import build_simulation
    from dpfed.errors import ConfigError
    from tests.conftest import compose_config

    cfg = compose_config("dp=input_noise", "dataset=shakespeare", "debug=smoke")
    with pytest.raises(ConfigError, match="dp='input_noise' is not allowed.*text dataset"):
        build_simulation(cfg)
