"""Matrix-factorization DP-FTRL: banded (optionally amplified), buffered-linear-Toeplitz (BLT)
and square-root factors.

Choquette-Choo et al., "(Amplified) Banded Matrix Factorization", NeurIPS 2023 and
"Multi-epoch matrix factorization mechanisms", ICML 2023; Dvijotham et al. 2024 and
McMahan et al., "Don't use tree aggregation, use BLTs", 2024. The strategy matrix
is computed in numpy/scipy (`dpfed.privacy.factorization`) when the privacy plan
is built; the server's TF Privacy query streams its correlated noise.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass

import dp_accounting
import numpy as np

from dpfed.errors import ConfigError, check
from dpfed.privacy import factorization as mf
from dpfed.privacy.mechanisms.base import (
    Mechanism,
    MechanismParts,
    NoisyConfig,
    central_parts,
    check_clip,
    check_noise,
    finite_clip,
    prefix_sum_errors,
)
from dpfed.privacy.neighboring import Neighboring, sensitivity_factor
from dpfed.privacy.plan import Account


class Factorization(enum.StrEnum):
    """The strategy matrix ``C`` of ``dp=bandmf`` (``dp.factorization``)."""

    banded = "banded"  # b-banded Toeplitz, optimised for the participation pattern
    blt = "blt"  # buffered-linear-Toeplitz with ``buffers`` buffers, optimised likewise
    sqrt_toeplitz = "sqrt_toeplitz"  # the optimal single-epoch factor, C = A^(1/2)


@dataclass(frozen=True)
class Strategy:
    """A Toeplitz strategy matrix and how its correlated noise is streamed.

    Attributes:
        coefficients: the first column of ``C`` over the planned rounds.
        stream: ``banded`` (forward substitution over ``len(mix)`` past solutions)
            or ``blt`` (``len(mix)`` geometrically decaying buffers).
        scale: ``c_0`` (banded; 1 for blt).
        mix: banded: ``c_1 .. c_{b-1}``; blt: the buffers' output weights.
        decay: blt: the buffers' decays (banded: empty).
    """

    coefficients: np.ndarray
    stream: str
    scale: float
    mix: np.ndarray
    decay: np.ndarray

    @property
    def state_size(self) -> int:
        """Noise vectors the server keeps (b - 1 past solutions, or d buffers)."""
        return int(self.mix.size)


@functools.lru_cache(maxsize=32)
def build_strategy(
    factorization: str,
    rounds: int,
    bands: int,
    buffers: int,
    participations: int,
    min_separation: int,
) -> Strategy:
    """The strategy for ``rounds`` rounds, optimised for the participation pattern (cached).

    Banded coefficients are optimised for ``participations`` separated by
    ``min_separation`` where the banded sensitivity is exact for that pattern
    (one participation, or separation >= bands), else for one participation
    (the sensitivity is then computed for the real pattern all the same).
    """
    if factorization == Factorization.blt:
        blt = mf.optimize_blt(rounds, buffers, participations, min_separation)
        return Strategy(blt.coefficients(rounds), "blt", 1.0, blt.weights, blt.thetas)
    if factorization == Factorization.sqrt_toeplitz:
        coefficients = mf.sqrt_toeplitz_coefficients(rounds)
    else:
        exact = participations == 1 or min_separation >= bands
        coefficients = mf.optimize_banded_toeplitz(
            rounds, bands, participations if exact else 1, min_separation if exact else 1
        )
    padded = np.zeros(rounds)
    padded[: coefficients.size] = coefficients
    return Strategy(padded, "banded", float(coefficients[0]), coefficients[1:], np.zeros(0))


def prefix_sensitivity(
    coefficients: np.ndarray, rounds: int, participations: int, min_separation: int
) -> float:
    """L2 sensitivity of the first ``rounds`` releases of ``C x`` (``C`` lower-triangular Toeplitz).

    A client takes part at most ``participations`` times in those rounds, at least
    ``min_separation`` apart, each contribution of norm <= 1. Exact for the
    min-separation pattern (`dpfed.privacy.factorization.sensitivity`).
    """
    head = np.asarray(coefficients[:rounds], dtype=np.float64)
    try:
        return math.sqrt(
            mf.toeplitz_sensitivity_squared(head, rounds, participations, min_separation)
        )
    except ValueError:  # negative or increasing coefficients: the general (exact) methods
        return mf.sensitivity(mf.toeplitz(head, rounds), participations, min_separation)


class BandMFMechanism(Mechanism):
    """DP-FTRL with a matrix factorization ``A = B C`` of the prefix-sum workload.

    Clients' updates are clipped to ``clip``; the server releases ``C x + z``
    with ``z ~ N(0, (noise_multiplier * clip)^2)`` per coordinate, which the
    model sees as round ``t``'s clipped sum plus the correlated noise
    ``(C^-1 z)_t``. ``C`` is Toeplitz: ``banded`` (``bands`` coefficients,
    optimised for the participation pattern; the server keeps ``bands - 1``
    past noise vectors), ``blt`` (``buffers`` decaying buffers) or
    ``sqrt_toeplitz`` (``C = A^(1/2)``, every past noise vector kept).

    Cohorts come in epochs: ``cyclic`` (a client returns exactly every
    ``rounds_per_epoch`` rounds, the b-min-separation pattern of the banded
    paper; needs ``bands <= rounds_per_epoch`` when clients return) or
    ``shuffle`` (once per epoch, possibly in back-to-back rounds, so the
    sensitivity is that of participations 1 round apart: valid, looser). No
    sampling amplification is credited. The release up to round ``t`` is one
    Gaussian mechanism of sensitivity ``sens_t = sens(C[:t, :t])`` times one
    clip (two under replace-one); each epoch's first round accounts the
    epoch in full as the Gaussian increment ``z / sqrt(sens_e^2 -
    sens_(e-1)^2)``, so the composition after epoch ``e`` is exactly the
    Gaussian of ``z / sens_e`` (RDP and PLD compose Gaussians exactly).

    Amplified (``strategy.sampling=min_sep_poisson``, Choquette-Choo et al. 2023,
    Section 4): groups of clients take turns and each round Poisson-samples its
    group, so a client's rounds are ``sampling_groups`` apart; with at most that
    many bands its participations touch disjoint rows of ``C x``, and each is a
    Poisson-sampled Gaussian of noise ``z / max_i ||C e_i||`` (`_amplified_account`).

    Args:
        noise_multiplier: std of ``z`` divided by ``clip``, >= 0.
        clip: L2 clipping norm of client updates, > 0.
        factorization: ``banded``, ``blt`` or ``sqrt_toeplitz``.
        bands: banded: number of bands; null takes ``min(rounds_per_epoch, rounds)``.
        buffers: blt: number of buffers, >= 1.
    """

    label = "bandmf"

    def __init__(
        self,
        noise_multiplier: float,
        clip: float,
        factorization: str = "banded",
        bands: int | None = None,
        buffers: int = 4,
    ):
        check_noise(noise_multiplier)
        check_clip(clip, noise_multiplier)
        options = [f.value for f in Factorization]
        check(
            str(factorization) in options,
            "factorization",
            factorization,
            f"one of {', '.join(options)}",
        )
        check(bands is None or bands >= 1, "bands", bands, "null or >= 1")
        check(buffers >= 1, "buffers", buffers, ">= 1")
        self.noise_multiplier, self.clip = noise_multiplier, clip
        self.factorization = Factorization(str(factorization))
        self.bands, self.buffers = bands, buffers

    # ------------------------------------------------------------------ the pattern
    def pattern(self, ctx) -> tuple[int, int, int]:
        """(rounds per epoch, participations, minimum separation) of ``ctx``'s sampling.

        Raises:
            ConfigError: a sampling without epochs.
        """
        sampler = ctx.sampler
        if sampler.separated_poisson:  # amplified: a client's rounds are >= groups apart
            return (
                sampler.min_separation,
                sampler.max_participations(ctx.rounds),
                (sampler.min_separation),
            )
        if not sampler.epochs:
            raise ConfigError(
                "strategy.sampling",
                sampler.label,
                "cyclic or shuffle with dp=bandmf (matrix factorizations "
                "account each client once per epoch), or min_sep_poisson "
                "(amplified banded)",
                absolute=True,
            )
        return (
            sampler.rounds_per_epoch,
            sampler.max_participations(ctx.rounds),
            (sampler.min_separation),
        )

    def bands_for(self, ctx) -> int:
        """The number of bands of a banded ``C`` (``rounds`` for sqrt_toeplitz)."""
        per_epoch, participations, separation = self.pattern(ctx)
        if ctx.sampler.separated_poisson and self.factorization != Factorization.banded:
            raise ConfigError(
                "factorization",
                str(self.factorization),
                "banded with strategy.sampling=min_sep_poisson (amplification "
                "needs at most sampling_groups bands)",
            )
        if self.factorization == Factorization.sqrt_toeplitz:
            return ctx.rounds
        bands = min(self.bands or per_epoch, ctx.rounds)
        if self.factorization == Factorization.banded and self.bands and self.bands > ctx.rounds:
            raise ConfigError("bands", self.bands, f"<= rounds={ctx.rounds}")
        if ctx.sampler.separated_poisson and bands > separation:
            raise ConfigError(
                "bands",
                bands,
                f"<= {separation} (strategy.sampling_groups: with min_sep_poisson "
                "sampling a client's rounds are that far apart; more bands make "
                "them interact and void the amplification)",
            )
        # a sampling that keeps a client's rounds apart (cyclic) is worth it only with at most
        # that many bands; one that can bring it back at once (shuffle) is accounted as such
        if (
            self.factorization == Factorization.banded
            and participations > 1
            and separation > 1
            and bands > separation
        ):
            raise ConfigError(
                "bands",
                bands,
                f"<= {separation} (strategy.sampling={ctx.sampler.label} brings a "
                f"client back every {separation} rounds; more bands make its "
                "participations interact)",
            )
        return bands

    def strategy(self, ctx) -> Strategy:
        """The optimised strategy for ``ctx`` (cached across calls)."""
        _, participations, separation = self.pattern(ctx)
        return build_strategy(
            str(self.factorization),
            ctx.rounds,
            self.bands_for(ctx),
            self.buffers,
            participations,
            separation,
        )

    def epoch_sensitivities(self, ctx, rounds: int | None = None) -> np.ndarray:
        """``sens_e`` of the releases up to the end of each epoch (``[0]`` is 0, no epoch)."""
        per_epoch, _, separation = self.pattern(ctx)
        rounds = max(rounds or ctx.rounds, ctx.rounds)
        coefficients = self.strategy(ctx).coefficients
        if rounds > coefficients.size:
            coefficients = np.concatenate([coefficients, np.zeros(rounds - coefficients.size)])
            if self.factorization == Factorization.blt:
                strategy = self.strategy(ctx)
                coefficients = mf.blt_coefficients(strategy.mix, strategy.decay, rounds)
        epochs = math.ceil(rounds / per_epoch)
        return _epoch_sensitivities(tuple(coefficients), per_epoch, separation, epochs, rounds)

    def column_norm(self, ctx) -> float:
        """The largest column norm of ``C`` over the planned rounds (one participation's
        sensitivity, in clips)."""
        return prefix_sensitivity(self.strategy(ctx).coefficients, ctx.rounds, 1, 1)

    # ------------------------------------------------------------------ the mechanism
    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        sampler = ctx.sampler
        if sampler.separated_poisson:
            return (self._amplified_account(ctx, noise_multiplier),)
        per_epoch, participations, separation = self.pattern(ctx)
        neighboring = ctx.neighboring or Neighboring.replace_one
        if neighboring not in sampler.relations:
            raise ConfigError(
                "neighboring",
                str(neighboring),
                "replace_one or zero_out with dp=bandmf (epochs have a fixed cohort size)",
            )
        factor = sensitivity_factor(neighboring)
        sens = self.epoch_sensitivities(ctx)

        def event(round_num):
            if noise_multiplier == 0:
                return dp_accounting.NonPrivateDpEvent()
            epoch, index = sampler.position(round_num)
            if index != 0:
                return dp_accounting.NoOpDpEvent()
            table = sens if epoch + 1 < sens.size else self.epoch_sensitivities(ctx, round_num)
            increment = table[epoch + 1] ** 2 - table[epoch] ** 2
            if increment <= 0:
                return dp_accounting.NoOpDpEvent()
            return dp_accounting.GaussianDpEvent(noise_multiplier / (factor * math.sqrt(increment)))

        return (
            Account(
                "epsilon",
                "user",
                neighboring,
                sampler.relations[neighboring],
                False,
                event,
                noise_multiplier,
                factor * float(sens[-1]),
            ),
        )

    def _amplified_account(self, ctx, noise_multiplier: float) -> Account:
        """Amplified banded MF (Choquette-Choo et al. 2023, Section 4): with at most
        ``sampling_groups`` bands, a client's participations touch disjoint rows of ``C x``,
        and the release is the composition of one Poisson-sampled Gaussian of noise
        ``z / ||C e_i||`` per round of its group: ``sampler.round_event`` of that Gaussian."""
        sampler = ctx.sampler
        self.bands_for(ctx)  # refuses more bands than groups, and other factorizations
        neighboring = sampler.neighboring(ctx.neighboring, private=noise_multiplier > 0)
        norm = self.column_norm(ctx)

        def event(round_num):
            if noise_multiplier == 0:
                return dp_accounting.NonPrivateDpEvent()
            return sampler.round_event(
                round_num, dp_accounting.GaussianDpEvent(noise_multiplier / norm)
            )

        return Account(
            "epsilon",
            "user",
            neighboring,
            sampler.relations[neighboring],
            False,
            event,
            noise_multiplier,
            norm,
        )

    def setup(self, plan, model) -> MechanismParts:
        from dpfed.privacy.queries import FactorizedGaussianSumQuery

        ctx = plan.context
        strategy = self.strategy(ctx)
        clip = finite_clip(self.clip)
        query = FactorizedGaussianSumQuery(
            clip,
            clip * plan.noise_multiplier,
            plan.stream_key("bandmf"),
            model.trainable_weight_specs(),
            strategy.stream,
            strategy.scale,
            strategy.mix,
            strategy.decay,
        )
        return central_parts(query, plan)

    def describe(self, plan) -> dict:
        ctx = plan.context
        per_epoch, participations, separation = self.pattern(ctx)
        strategy = self.strategy(ctx)
        amplified = ctx.sampler.separated_poisson
        sens = self.column_norm(ctx) if amplified else float(self.epoch_sensitivities(ctx)[-1])

        def unit_error(kind: str) -> float:
            return mf.toeplitz_prefix_sum_error(strategy.coefficients, ctx.rounds, kind)

        rmse = unit_error("rmse")
        return {
            "clip": self.clip,
            "factorization": str(self.factorization),
            "bands": self.bands_for(ctx) if strategy.stream == "banded" else None,
            "buffers": strategy.state_size if strategy.stream == "blt" else None,
            "noise_state_vectors": strategy.state_size,
            "participations": participations,
            "min_separation": separation,
            "rounds_per_epoch": None if amplified else per_epoch,
            "amplified": amplified,
            "factorization_sensitivity": sens,
            "prefix_sum_rmse_per_noise_multiplier": sens * rmse,
            **prefix_sum_errors(plan.noise_multiplier, unit_error),
        }


@functools.lru_cache(maxsize=64)
def _epoch_sensitivities(
    coefficients: tuple, per_epoch: int, separation: int, epochs: int, rounds: int
) -> np.ndarray:
    c = np.asarray(coefficients)
    out = [0.0]
    for epoch in range(1, epochs + 1):
        seen = min(epoch * per_epoch, rounds)
        out.append(prefix_sensitivity(c, seen, epoch, separation))
    return np.asarray(out)


@dataclass
class BandMFConfig(NoisyConfig):
    """Matrix-factorization DP-FTRL (banded, BLT or square-root Toeplitz strategy).

    Needs epochs of cohorts: selecting ``dp=bandmf`` sets ``strategy.sampling=cyclic``.

    Attributes:
        clip: L2 bound on each client's update.
        factorization: ``banded``, ``blt`` or ``sqrt_toeplitz``.
        bands: banded: number of bands; null: the rounds of an epoch (capped at ``rounds``).
        buffers: blt: number of buffers.
    """

    _target_: str = "dpfed.privacy.mechanisms.bandmf.BandMFMechanism"
    clip: float = 1.0
    factorization: Factorization = Factorization.banded
    bands: int | None = None
    buffers: int = 4


CONFIGS = {"bandmf": BandMFConfig}
