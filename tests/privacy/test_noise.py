"""DP noise is keyed by position (seed, stream, round, client, step), never by the data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from dpfed.config import compose
from dpfed.privacy.noise import position_seed, stream_key
from tests.helpers import first_rounds

# Run by `pytest -m slow` (and CI), not by default: the vectorized backend (the reference one runs
# by default).
SLOW_CASES = {
    "test_clients_with_bit_identical_updates_draw_independent_local_noise[vectorized]",
}

ROOT = Path(__file__).resolve().parents[2]


def test_no_noise_key_is_derived_from_data_bytes():
    """The first version seeded local-DP and DP-SGD noise from a 31-bit hash of the update."""
    hashing = re.compile(r"to_hash_bucket|serialize_tensor|fingerprint")
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "dpfed").rglob("*.py")
        if hashing.search(p.read_text())
    ]
    assert offenders == []


def test_keys_are_64_bit_and_differ_by_seed_stream_and_position():
    keys = {stream_key(seed, stream) for seed in (0, 1, 2**100) for stream in ("sum", "tree")}
    assert len(keys) == 6 and any(abs(k) > 2**40 for k in keys)
    key = next(iter(keys))
    seeds = {tuple(position_seed(key, r, c)) for r in range(20) for c in range(20)}
    assert len(seeds) == 400
    again = stream_key(0, "sum")
    np.testing.assert_array_equal(position_seed(again, 3, 4), position_seed(again, 3, 4))
    assert position_seed(again, 3, 4).dtype == np.int64


def test_batches_carry_their_own_seed_per_client_round_and_step():
    from dpfed.federated.backends.base import ClientBackend
    from dpfed.federated.backends.reference import ReferenceBackend

    cfg = compose("debug=smoke", "dp=dpsgd", "strategy.local_epochs=2")
    from hydra.utils import instantiate

    from dpfed.build import build_dataset

    dataset = build_dataset(cfg)
    strategy = instantiate(cfg.strategy)
    backend: ClientBackend = ReferenceBackend()
    key = stream_key(0, "client")
    seen = []
    for round_num in (1, 2):
        for ds in backend.cohort_data(strategy, dataset.train, ["3", "7"], round_num, 0, key):
            batches = list(ds.as_numpy_iterator())
            assert all(len(b) == 2 and len(b[0]) == 2 for b in batches)  # ((x, y), seed)
            seen += [tuple(b[1]) for b in batches]
    assert len(seen) == len(set(seen)) >= 8  # every (round, client, step) has its own seed
    again = backend.cohort_data(strategy, dataset.train, ["3"], 1, 0, key)[0]
    assert [tuple(b[1]) for b in again.as_numpy_iterator()] == seen[: len(seen) // 4]


def test_dp_sgd_noise_is_a_function_of_the_seed_alone():
    from dpfed.privacy.dpsgd import add_seeded_noise

    zeros = [tf.zeros([50]), tf.zeros([3, 4])]
    data = [tf.ones([50]), tf.ones([3, 4])]
    seed_a, seed_b = (tf.constant(position_seed(7, 1, c), tf.int64) for c in (1, 2))
    a = add_seeded_noise(zeros, 1.0, seed_a)
    again = add_seeded_noise(zeros, 1.0, seed_a)
    b = add_seeded_noise(zeros, 1.0, seed_b)
    shifted = add_seeded_noise(data, 1.0, seed_a)
    for x, y, z, s, d in zip(a, again, b, shifted, data, strict=True):
        np.testing.assert_array_equal(x, y)
        assert not np.allclose(x, z)
        np.testing.assert_allclose(s - d, x, atol=1e-6)  # the data does not change the noise


@pytest.mark.parametrize("backend", ["reference", "vectorized"])
def test_clients_with_bit_identical_updates_draw_independent_local_noise(runtime, backend):
    """With learning rate 0 every update is exactly zero; their noise must still be independent.

    Identical noise (keyed by the update's bytes) would make the cohort mean as
    noisy as one client's noise; independent noise averages down by sqrt(cohort).
    """
    scale = 0.01
    run = first_rounds(
        "dp=gaussian_local",
        f"dp.noise_multiplier={scale / 1e-3}",
        "dp.clip=1e-3",
        "strategy.client_optimizer.learning_rate=0",
        "strategy.sampling=fixed",
        f"backend={backend}",
    )
    delta = np.concatenate([np.ravel(b - a) for a, b in zip(run[0], run[1], strict=True)])
    cohort = 5
    assert np.std(delta) == pytest.approx(scale / np.sqrt(cohort), rel=0.1)
