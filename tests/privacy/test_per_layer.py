"""Per-layer clipping (McMahan et al. 2018): each layer within its share of the flat clip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpfed.privacy.mechanisms.per_layer import PerLayerMechanism
from tests.helpers import first_rounds

# Run by `pytest -m slow` (and CI), not by default: the by-size split (the equal split runs by
# default).
SLOW_CASES = {
    "test_each_layer_of_a_clients_update_is_clipped_to_its_share[size]",
}


@pytest.mark.parametrize("split", ["equal", "size"])
def test_layer_clips_split_the_flat_clip(split):
    sizes = [6 * 96, 32 * 96, 2 * 96, 32 * 2, 2]
    clips = PerLayerMechanism(1.0, clip=2.0, split=split).layer_clips(sizes)
    assert math.sqrt(sum(c * c for c in clips)) == pytest.approx(2.0)
    if split == "equal":
        assert len(set(clips)) == 1
    else:
        assert clips[1] > clips[0] > clips[2] > clips[4]  # bigger layers get more


@pytest.mark.parametrize("split", ["equal", "size"])
def test_each_layer_of_a_clients_update_is_clipped_to_its_share(runtime, split):
    clip = 1e-3  # far below every layer's update in one smoke round
    run = first_rounds(
        "dp=per_layer",
        "dp.noise_multiplier=0",
        f"dp.clip={clip}",
        f"dp.split={split}",
        "strategy.sampling=fixed",
        "strategy.clients_per_round=1",
    )
    deltas = [b - a for a, b in zip(run[0], run[1], strict=True)]
    sizes = [d.size for d in deltas]
    for delta, layer_clip in zip(
        deltas, PerLayerMechanism(0, clip, split).layer_clips(sizes), strict=True
    ):
        assert np.linalg.norm(delta) == pytest.approx(layer_clip, rel=1e-3)  # binding: on the ball


@pytest.mark.slow
def test_noise_has_the_flat_clips_scale_on_every_layer(runtime):
    z, clip = 2.0, 1e-3
    run = first_rounds(
        "dp=per_layer",
        f"dp.noise_multiplier={z}",
        f"dp.clip={clip}",
        "strategy.sampling=fixed",
        "strategy.clients_per_round=5",
    )
    for a, b in zip(run[0], run[1], strict=True):
        if a.size > 500:
            assert np.std(b - a) == pytest.approx(z * clip / 5, rel=0.15)
