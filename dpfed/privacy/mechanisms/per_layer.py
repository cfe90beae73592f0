"""DP-FedAvg with per-layer clipping (McMahan et al., ICLR 2018, Section 3)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from dpfed.privacy.mechanisms.base import (
    Mechanism,
    MechanismParts,
    NoisyConfig,
    central_account,
    central_parts,
    check_clip,
    check_noise,
    finite_clip,
)
from dpfed.privacy.plan import Account


class ClipSplit(enum.StrEnum):
    """How the flat clip is split across layers (``sum_l clip_l^2 = clip^2`` either way)."""

    equal = "equal"  # clip_l = clip / sqrt(L)
    size = "size"  # clip_l = clip * sqrt(d_l / d): proportional to the layer's share of weights


class PerLayerMechanism(Mechanism):
    """User-level DP-FedAvg whose clip applies to each layer's update separately.

    McMahan et al. (ICLR 2018) clip each layer of the model update to its own
    bound ``clip_l``, with the flat clip split so that ``sum_l clip_l^2 =
    clip^2``; the clipped update then has L2 norm at most ``clip``, so Gaussian
    noise of std ``noise_multiplier * clip`` on every coordinate of the sum is
    the same release, and the same accounting, as `GaussianMechanism`. Layers
    here are the model's weight tensors (a GRU's kernel, recurrent kernel and
    bias are three). Each layer's noise is seeded from its own stream.

    Args:
        noise_multiplier: noise std / clip, >= 0.
        clip: the flat L2 bound of a client's whole update, > 0.
        split: ``equal`` or ``size`` (`ClipSplit`).
    """

    label = "per_layer"

    def __init__(self, noise_multiplier: float, clip: float, split: str = "equal"):
        check_noise(noise_multiplier)
        check_clip(clip, noise_multiplier)
        self.noise_multiplier, self.clip, self.split = noise_multiplier, clip, ClipSplit(split)

    def layer_clips(self, sizes: list[int]) -> list[float]:
        """Each layer's clip, from the layers' numbers of weights."""
        if self.split == ClipSplit.equal:
            return [self.clip / math.sqrt(len(sizes))] * len(sizes)
        total = sum(sizes)
        return [self.clip * math.sqrt(size / total) for size in sizes]

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        return (central_account(ctx, noise_multiplier),)

    def setup(self, plan, model) -> MechanismParts:
        from tensorflow_privacy.privacy.dp_query.nested_query import NestedSumQuery

        from dpfed.privacy.queries import SeededGaussianSumQuery

        specs = model.trainable_weight_specs()
        clips = [finite_clip(c) for c in self.layer_clips([s.shape.num_elements() for s in specs])]
        stddev = plan.noise_multiplier * finite_clip(self.clip)
        query = NestedSumQuery(
            [
                SeededGaussianSumQuery(c, stddev, plan.stream_key(f"sum/layer{i}"))
                for i, c in enumerate(clips)
            ]
        )
        return central_parts(query, plan)

    def describe(self, plan) -> dict:
        return {"clip": self.clip, "clip_split": str(self.split)}


@dataclass
class PerLayerConfig(NoisyConfig):
    """DP-FedAvg with per-layer clipping (McMahan et al. 2018).

    Attributes:
        clip: the flat L2 bound of a client's update, split across layers.
        split: ``equal`` (clip / sqrt(L) each) or ``size`` (by the layers' numbers of weights).
    """

    _target_: str = "dpfed.privacy.mechanisms.per_layer.PerLayerMechanism"
    clip: float = 1.0
    split: ClipSplit = ClipSplit.equal


CONFIGS = {"per_layer": PerLayerConfig}
