"""What every DP mechanism provides, the parts it builds, and the settings every one has.

A mechanism is a class, a schema (a dataclass extending `PrivacyConfig`), a YAML
file under ``conf/dp/`` and a test. Its module lists its schemas in
``CONFIGS = {"<option>": <schema>}``; `dpfed.privacy.mechanisms` finds them.

A mechanism is configuration only: it never changes after construction. Two
pure methods describe it:

- `Mechanism.accounts` says what it releases, as DP events, for a given noise
  multiplier and sampling (`dpfed.privacy.plan.Account`);
- `Mechanism.setup` builds its TensorFlow parts (`MechanismParts`) from the
  finished `dpfed.privacy.plan.PrivacyPlan` (which holds the calibrated noise).

Capabilities are declared as data (``pooled_records``; the parts'
``example_dp``/``local``) and the strategies and client backends check those,
never a mechanism's name or type.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import dp_accounting
from omegaconf import MISSING

from dpfed.errors import ConfigError, check
from dpfed.privacy.accounting import DEFAULT_DELTA, AccountantKind, Conversion
from dpfed.privacy.neighboring import Neighboring, sensitivity_factor
from dpfed.privacy.plan import Account, PlanContext

NO_CLIP = 1e30  # what clip=inf becomes in TF ops (inf / inf is NaN there; this scales by 1)


# --------------------------------------------------------------------------- schemas
@dataclass
class PrivacyConfig:
    """Settings of the privacy analysis every ``dp`` option has (read by the privacy plan).

    Attributes:
        neighboring: ``replace_one``, ``zero_out`` or ``add_remove``
            (`dpfed.privacy.neighboring`); null takes the strict default of the
            sampling (replace_one for fixed and shuffled cohorts, add_remove for
            Poisson) and replace_one where no sampling is credited.
        accountant: ``rdp`` (dp-accounting's RdpAccountant), ``pld`` or ``pure``
            (basic composition of Laplace releases).
        delta: target delta of the reported (epsilon, delta).
        orders: RDP orders; null uses dp-accounting's defaults.
        conversion: RDP to (epsilon, delta): ``improved`` (dp-accounting's
            default) or ``classic`` (Mironov 2017, as in 2016-2019 papers).
        pld_discretization: PLD value discretization interval.
        target_epsilon: solve for the noise multiplier that reaches this epsilon
            after ``rounds`` (overrides the noise multiplier).
        max_epsilon: stop before the first round that would exceed this epsilon.
        seed: seed of every DP noise draw; null draws a secret one from OS
            entropy (what a run meant to protect anything must do).
    """

    _target_: str = MISSING
    neighboring: Neighboring | None = None
    accountant: AccountantKind = AccountantKind.rdp
    delta: float = DEFAULT_DELTA
    orders: list[float] | None = None
    conversion: Conversion = Conversion.improved
    pld_discretization: float = 1e-4
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    seed: int | None = "${seed}"  # type: ignore[assignment]


# keys of the privacy analysis; the rest of a dp node are the mechanism's constructor arguments
PLAN_KEYS = (
    "neighboring",
    "accountant",
    "delta",
    "orders",
    "conversion",
    "pld_discretization",
    "target_epsilon",
    "max_epsilon",
    "seed",
)


@dataclass
class NoisyConfig(PrivacyConfig):
    """A mechanism that adds noise.

    Attributes:
        noise_multiplier: noise std (Laplace: scale) divided by the clip; >= 0.
    """

    noise_multiplier: float = 1.0


# --------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class ExampleDP:
    """Example-level DP-SGD (Abadi et al. 2016): per-example clip and noise multiplier.

    ``probe`` is an audit's hook into every step (`dpfed.audit.records.GradientCanaryAudit`):
    ``step_gradient(round, step)`` adds canary records' clipped gradients (flat) to the
    clipped sum before the noise, and ``observe(flat)`` receives the noised sum minus the
    real records' clipped sum. None (no audit) leaves DP-SGD as it is.
    ``poisson_batches`` is ``(q, steps per local epoch)`` where clients draw Poisson batches
    (`dpfed.privacy.mechanisms.dpsgd.DPSGDMechanism`), None where they shuffle.
    """

    clip: float
    noise_multiplier: float
    probe: Any = None
    poisson_batches: tuple[float, int] | None = None


@dataclass(frozen=True)
class LocalRandomizer:
    """A client's randomizer of its own update: clip in ``norm`` to ``clip``, add noise.

    Attributes:
        norm: ``l1`` or ``l2``.
        clip: the clipping bound.
        noise: ``laplace`` (scale b) or ``gaussian`` (standard deviation).
        scale: the noise scale, in the update's units.
    """

    norm: str
    clip: float
    noise: str
    scale: float


@dataclass(frozen=True)
class MechanismParts:
    """What a mechanism contributes to a run's TensorFlow side (frozen).

    Attributes:
        aggregator: TFF aggregation factory of client updates; None is the mean.
        query: the TF Privacy DP query inside ``aggregator``, for client
            backends that aggregate several users per TFF client.
        example_dp: example-level DP-SGD inside clients (or on pooled records).
        local: a randomizer each client applies to its own update.
        transform: replaces the dataset's training data (input perturbation).
        metric_columns: extra metrics.csv columns filled by ``round_metrics``.
        round_metrics: the aggregator's measurements of a round -> those columns.
    """

    aggregator: Any = None
    query: Any = None
    example_dp: ExampleDP | None = None
    local: LocalRandomizer | None = None
    transform: Callable | None = None
    metric_columns: tuple[str, ...] = ()
    round_metrics: Callable[[dict], dict] = field(default=lambda measurements: {})

    @property
    def client_side(self) -> bool:
        """Whether clients themselves randomize (DP-SGD steps or a local randomizer)."""
        return self.example_dp is not None or self.local is not None

    @property
    def poisson_batches(self) -> tuple[float, int] | None:
        """DP-SGD's ``(q, steps per local epoch)`` where clients draw Poisson batches, else None."""
        return None if self.example_dp is None else self.example_dp.poisson_batches


# --------------------------------------------------------------------------- base class
class Mechanism(abc.ABC):
    """A DP mechanism: what it releases (pure) and the parts it adds to a run.

    Attributes:
        label: the mechanism's name in logs and tables (never dispatched on).
        pooled_records: it also applies to ``strategy=centralized``, as DP-SGD
            on pooled records.
        noise_multiplier: the configured noise multiplier (the privacy plan's
            ``noise_multiplier`` is the one used, possibly calibrated).
    """

    label: ClassVar[str]
    pooled_records: ClassVar[bool] = False
    noise_multiplier: float = 0.0

    @property
    def tunable_noise(self) -> float:
        """The noise multiplier ``target_epsilon`` calibrates (default: ``noise_multiplier``)."""
        return self.noise_multiplier

    def noise_limit(self, ctx: PlanContext) -> tuple[float, str] | None:
        """The tunable noise multiplier must stay below this (and why), or None: no limit."""
        return None

    @abc.abstractmethod
    def accounts(self, ctx: PlanContext, noise_multiplier: float) -> tuple[Account, ...]:
        """What the mechanism releases with ``noise_multiplier`` under ``ctx``'s sampling (pure).

        Raises:
            ConfigError: the mechanism cannot be accounted with this sampling,
                relation or data; the key is relative to ``dp``.
        """

    @abc.abstractmethod
    def setup(self, plan, model) -> MechanismParts:
        """Builds the mechanism's TensorFlow parts for a finished privacy plan.

        Args:
            plan: the run's `dpfed.privacy.plan.PrivacyPlan` (calibrated noise, noise keys).
            model: the bound `dpfed.models.gru.GRUModel`.
        """

    def metric_columns(self) -> tuple[str, ...]:
        """Columns `MechanismParts.round_metrics` fills (known before the parts are built)."""
        return ()

    def describe(self, plan) -> dict:
        """The mechanism's settings for summary.json (beyond what the plan records)."""
        return {}

    def warnings(self, plan) -> tuple[str, ...]:
        """Allowed settings probably not meant (logged by a run, printed by the calculator)."""
        return ()


# --------------------------------------------------------------------------- helpers
def check_noise(noise_multiplier: float, key: str = "noise_multiplier") -> None:
    """A noise multiplier is a finite number >= 0 (0: no noise, no privacy)."""
    check(0 <= noise_multiplier < math.inf, key, noise_multiplier, "a finite number >= 0")


def check_clip(clip: float, noise_multiplier: float, key: str = "clip") -> None:
    """A clip is a number > 0; inf (no clipping) only with noise_multiplier=0."""
    check(
        clip > 0 and (math.isfinite(clip) or noise_multiplier == 0),
        key,
        clip,
        "a finite number > 0 (inf only with noise_multiplier=0)",
    )


def finite_clip(clip: float) -> float:
    """``clip`` for TensorFlow: inf (no clipping, allowed only without noise) becomes NO_CLIP."""
    return NO_CLIP if math.isinf(clip) else clip


def central_account(ctx: PlanContext, noise_multiplier: float, column: str = "epsilon") -> Account:
    """The account of a Gaussian release on the sum of clipped contributions, every round.

    The release adds noise of std ``noise_multiplier * clip``; under the
    relation's sensitivity (one or two clips) dp-accounting sees the noise
    multiplier ``noise_multiplier / sensitivity``; the sampler wraps it into
    the round's event. Its unit is the sampler's (users, or pooled records).
    """
    sampler = ctx.sampler
    neighboring = sampler.neighboring(ctx.neighboring, private=noise_multiplier > 0)
    factor = sensitivity_factor(neighboring)
    unit = "record" if sampler.unit == "record" else "user"
    if noise_multiplier == 0:

        def event(_):
            return dp_accounting.NonPrivateDpEvent()
    else:
        release = dp_accounting.GaussianDpEvent(noise_multiplier / factor)

        def event(round_num):
            return sampler.round_event(round_num, release)

    return Account(
        column,
        unit,
        neighboring,
        sampler.relations[neighboring],
        False,
        event,
        noise_multiplier,
        factor,
    )


def prefix_sum_errors(noise_multiplier: float, unit_error: Callable[[str], float]) -> dict:
    """The noise of the released prefix sums, per coordinate in units of the clip.

    ``unit_error(kind)`` is the error for unit noise, ``kind`` ``rmse`` (over
    rounds) or ``max``; the mechanism's noise std is ``noise_multiplier * clip``.
    Comparable across mechanisms at equal epsilon (the ``mf_error`` experiment).
    """
    return {
        "prefix_sum_rmse": noise_multiplier * unit_error("rmse"),
        "prefix_sum_max_error": noise_multiplier * unit_error("max"),
    }


def central_parts(query, plan, **parts) -> MechanismParts:
    """Parts of a mechanism whose release is ``query``'s sum divided by the expected cohort.

    The aggregator is TFF's ``DifferentiallyPrivateFactory`` over that normalized
    query (what ``gaussian_fixed`` and ``gaussian_adaptive`` build); ``parts.query``
    is the same normalized query, for backends that apply it to several users
    per TFF client.
    """
    import tensorflow_privacy as tfp

    from dpfed.runtime import tff

    normalized = tfp.NormalizedQuery(query, denominator=float(plan.sampler.expected_cohort))
    return MechanismParts(
        aggregator=tff.aggregators.DifferentiallyPrivateFactory(normalized),
        query=normalized,
        **parts,
    )


def reject_pooled(label: str) -> ConfigError:
    """The error for a federated-only mechanism under ``strategy=centralized``."""
    return ConfigError(
        "dp",
        label,
        "none, gaussian or dpsgd with strategy=centralized (on pooled "
        "records they mean DP-SGD; there are no clients for user-level or local "
        "mechanisms)",
        absolute=True,
    )
