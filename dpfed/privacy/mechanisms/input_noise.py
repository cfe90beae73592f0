"""The textbook input-perturbation baseline: noise every training record's features once."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import dp_accounting
import numpy as np

from dpfed.errors import ConfigError, check
from dpfed.privacy.accounting import AccountantKind
from dpfed.privacy.mechanisms.base import Mechanism, MechanismParts, PrivacyConfig
from dpfed.privacy.neighboring import UNSAMPLED, sensitivity_factor
from dpfed.privacy.plan import Account, participation_neighboring


class InputNoise(enum.StrEnum):
    """The noise of input perturbation."""

    laplace = "laplace"
    gaussian = "gaussian"


class InputNoiseMechanism(Mechanism):
    """Input perturbation: clip every feature value and add noise to every record once.

    Each feature value is clipped to ``[-bound, bound]``, so a record of ``n =
    seq_len * num_features`` values has L1 norm at most ``bound * n`` and L2
    norm at most ``bound * sqrt(n)``: the record's "clip". Laplace (or
    Gaussian) noise of scale ``noise_multiplier`` times that clip is added to
    every value, so one record's release has noise multiplier ``z / 2`` under
    replace-one and ``z`` under zero-out, as for every other mechanism. The
    noisy copy is drawn once per client (seeded by position), so training on it
    again is post-processing: the reported epsilon is per record, for its
    features, and does not grow with rounds. Labels, the number of records and
    which client holds them are NOT protected; model updates are averaged as
    usual; evaluation uses clean data. Refused on data whose records share raw
    values (overlapping windows, per-client standardization), where one record's
    noise would not hide it.

    Args:
        noise: ``laplace`` or ``gaussian``.
        noise_multiplier: noise scale / the record's clip, > 0.
        bound: clipping bound of every feature value, > 0.
    """

    label = "input_noise"

    def __init__(self, noise: str, noise_multiplier: float, bound: float):
        choices = [n.value for n in InputNoise]
        check(str(noise) in choices, "noise", noise, f"one of {', '.join(choices)}")
        check(
            0 < noise_multiplier < math.inf,
            "noise_multiplier",
            noise_multiplier,
            "a finite number > 0",
        )
        check(0 < bound < math.inf, "bound", bound, "a finite number > 0")
        self.noise, self.noise_multiplier, self.bound = str(noise), noise_multiplier, bound

    def record_clip(self, record_size: int) -> float:
        """The norm bound of one clipped record: L1 for Laplace, L2 for Gaussian."""
        return self.bound * (record_size if self.noise == "laplace" else math.sqrt(record_size))

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        population = ctx.population
        if population.record_size is None:
            raise ConfigError(
                "dp",
                "input_noise",
                "a mechanism other than input_noise for a "
                "text dataset (its inputs are token ids, not bounded real "
                "values)",
                absolute=True,
            )
        if population.coupled_records:
            raise ConfigError(
                "dp",
                "input_noise",
                "a mechanism other than input_noise for this "
                f"dataset as configured: {population.coupled_records}; noising one "
                "record does not hide data that other records also carry",
                absolute=True,
            )
        neighboring = participation_neighboring(ctx, "record")
        factor = sensitivity_factor(neighboring)
        accounted = noise_multiplier / factor
        release = (
            dp_accounting.LaplaceDpEvent(accounted)
            if self.noise == "laplace"
            else dp_accounting.GaussianDpEvent(accounted)
        )

        def event(round_num):  # the one release (the noisy data) is accounted with round 1
            return release if round_num == 1 else dp_accounting.NoOpDpEvent()

        return (
            Account(
                "epsilon",
                "record (features)",
                neighboring,
                UNSAMPLED[neighboring],
                False,
                event,
                noise_multiplier,
                factor,
            ),
        )

    def setup(self, plan, model) -> MechanismParts:
        scale = plan.noise_multiplier * self.record_clip(plan.population.record_size)
        key, bound, laplace = plan.stream_key("input"), self.bound, self.noise == "laplace"

        def noisy(index: int, x: np.ndarray, y: np.ndarray):
            rng = np.random.default_rng([int(np.int64(key).view(np.uint64)), index])
            x = np.clip(x, -bound, bound)
            draw = rng.laplace if laplace else rng.normal
            return (x + draw(0.0, scale, size=x.shape)).astype(np.float32), y

        return MechanismParts(transform=lambda dataset: dataset.map_train(noisy))

    def describe(self, plan) -> dict:
        clip = self.record_clip(plan.population.record_size)
        return {
            "epsilon_scope": "per record, features only",
            "noise": self.noise,
            "bound": self.bound,
            "clip": clip,
        }


@dataclass
class InputNoiseConfig(PrivacyConfig):
    """Input perturbation baseline: clip every feature value and add noise once per record.

    Attributes:
        noise: ``laplace`` or ``gaussian``.
        noise_multiplier: noise scale / the record's norm bound (L1 for Laplace, L2 for Gaussian).
        bound: clipping bound of every feature value.
        accountant: ``pure`` (Laplace), ``rdp`` or ``pld``.
    """

    _target_: str = "dpfed.privacy.mechanisms.input_noise.InputNoiseMechanism"
    noise: InputNoise = InputNoise.laplace
    noise_multiplier: float = 1.0
    bound: float = 3.0
    accountant: AccountantKind = AccountantKind.pure


CONFIGS = {"input_noise": InputNoiseConfig}
