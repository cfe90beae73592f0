"""Privacy accounting with dp-accounting, composed round by round.

An `Accountant` composes the DP events a run released and reports epsilon at
the configured delta with dp-accounting's RDP or PLD accountant, or by basic
composition of pure epsilon-DP Laplace releases. It raises on any event it
cannot compose, so an epsilon is never computed from a part of what was released.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
from collections import Counter
from collections.abc import Iterable

import attr
import dp_accounting
import numpy as np
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant, compute_epsilon

from dpfed.errors import ConfigError, check
from dpfed.privacy.neighboring import RELATION_NAMES

DEFAULT_DELTA = 1e-5  # dp.delta unless set: every default delta in dpfed is this one


class AccountantKind(enum.StrEnum):
    """How DP events are composed (``dp.accountant``)."""

    rdp = "rdp"
    pld = "pld"
    pure = "pure"


class Conversion(enum.StrEnum):
    """RDP to (epsilon, delta) conversion (``dp.conversion``)."""

    improved = "improved"
    classic = "classic"


class UnsupportedEventError(ValueError):
    """An accountant was given a DP event it cannot compose."""


def event_to_dict(event: dp_accounting.DpEvent) -> dict:
    """Serializes a DpEvent to JSON-ready nested dicts that name each event class."""
    out = {"type": type(event).__name__}
    for name, value in attr.asdict(event, recurse=False).items():
        out[name] = event_to_dict(value) if isinstance(value, dp_accounting.DpEvent) else value
    return out


def event_from_dict(data: dict) -> dp_accounting.DpEvent:
    """Inverse of `event_to_dict`."""
    fields = {
        k: event_from_dict(v) if isinstance(v, dict) else v for k, v in data.items() if k != "type"
    }
    return getattr(dp_accounting, data["type"])(**fields)


def classic_rdp_to_epsilon(orders, rdp, delta: float) -> float:
    """Mironov (2017), Prop. 3: eps = min over orders of rdp + log(1/delta) / (order - 1).

    The conversion the 2016-2019 papers and TF Privacy's tutorials used; looser
    than dp-accounting's default (Balle et al. 2020), kept so published
    epsilons can be reproduced.
    """
    orders, rdp = np.asarray(orders, dtype=float), np.asarray(rdp, dtype=float)
    with np.errstate(invalid="ignore"):
        eps = rdp + math.log(1 / delta) / (orders - 1)
    eps = eps[np.isfinite(eps)]
    return float(eps.min()) if eps.size else math.inf


class IncrementalPLD:
    """A privacy loss distribution composed one event at a time, each event's PLD built once.

    dp-accounting's ``PLDAccountant.compose`` rebuilds an event's PLD on every
    call, which for a subsampled Gaussian dominates the cost of a round
    (hundreds of ms). Here each distinct event's PLD comes from a fresh
    ``PLDAccountant`` once, and rounds compose the cached distributions in the
    order they ran, the same sequence of ``PrivacyLossDistribution.compose``
    calls the accountant itself makes.

    Args:
        make_accountant: returns a new, empty ``PLDAccountant`` (relation, discretization).
        discretization: its value discretization interval (named when a PLD is too large).
    """

    def __init__(self, make_accountant, discretization: float):
        self._make_accountant, self._discretization = make_accountant, discretization
        self._of_event: dict = {}
        self._total = None
        self._non_private = False

    def _event_pld(self, event):
        if event not in self._of_event:
            accountant = self._make_accountant()
            with _fits_in_memory(self._discretization):
                accountant.compose(event)
            # the accountant's composed distribution; None when the event is non-private (private
            # fields of dp-accounting 0.4.3's PLDAccountant; tests/test_private_apis.py checks them)
            self._of_event[event] = None if accountant._contains_non_dp_event else accountant._pld
        return self._of_event[event]

    def _composed(self, total, event):
        pld = self._event_pld(event)
        if pld is None:
            return total, True
        return (pld if total is None else total.compose(pld)), False

    def compose(self, event) -> None:
        self._total, non_private = self._composed(self._total, event)
        self._non_private |= non_private

    def epsilon(self, delta: float, then=None) -> float:
        """Epsilon at ``delta`` so far, or after one more event ``then``."""
        total, non_private = self._total, self._non_private
        if then is not None:
            total, extra = self._composed(total, then)
            non_private |= extra
        if non_private:
            return math.inf
        if total is None:
            return 0.0
        eps = total.get_epsilon_for_delta(delta)
        return math.inf if eps is None or math.isnan(eps) else float(eps)


def _pure_epsilon(event: dp_accounting.DpEvent) -> float:
    """Basic composition of pure epsilon-DP releases (Laplace: 1 / noise multiplier)."""
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return 0.0
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return math.inf
    if isinstance(event, dp_accounting.LaplaceDpEvent):
        return math.inf if event.noise_multiplier == 0 else 1 / event.noise_multiplier
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return event.count * _pure_epsilon(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return sum(_pure_epsilon(e) for e in event.events)
    raise UnsupportedEventError(
        f"the pure accountant composes Laplace releases only, not {type(event).__name__}"
    )


@functools.lru_cache(maxsize=1024)
def _rdp_of(event: dp_accounting.DpEvent, orders: tuple | None, relation) -> np.ndarray:
    """dp-accounting's RDP of one event (shared by every accountant: sampled events are slow)."""
    accountant = RdpAccountant(
        orders=None if orders is None else list(orders), neighboring_relation=relation
    )
    accountant.compose(event)
    rdp = accountant.rdp
    rdp.setflags(write=False)
    return rdp


class PLDRefused(ConfigError):
    """The PLD accountant cannot account these releases (too little noise): use ``rdp``."""

    def __init__(self, why: str, discretization: float):
        allowed = (
            "rdp for releases with this little noise: their privacy loss distribution "
            f"{why} at pld_discretization={discretization:g}"
        )
        super().__init__("dp.accountant", "pld", allowed, absolute=True)


@contextlib.contextmanager
def _fits_in_memory(discretization: float):
    """Names the setting when dp-accounting cannot build a PLD (a noise multiplier near 0):
    too large for memory, larger than numpy can index, or numerically broken (dp-accounting
    0.4.3 raises "deltas are not in non-increasing order" for 10 Poisson releases at q 0.1 and
    noise multiplier 0.0625). A ValueError is only caught from the composition itself."""
    try:
        yield
    except MemoryError:
        why = "does not fit in memory"
    except ValueError as err:
        why = f"cannot be built by dp-accounting ({str(err).splitlines()[0][:120]})"
    else:
        return
    raise PLDRefused(why, discretization) from None


# The most points a privacy loss distribution may span before the PLD accountant is refused,
# at the default discretization (1e-4): one release (a Gaussian's noise multiplier near 0.02),
# and composed (`pld_points` over-counts sampled releases up to 10 x, so the limit is looser).
# Measured here: 10 Poisson-sampled releases at z = 0.05 took 43 s and 1.9 GB; at z = 0.01 the
# run swapped for over 10 minutes without a result; 5000 releases at q 0.1 and z 0.35 (1.2e7
# real points, 3.2e7 estimated) take 8 s.
PLD_MAX_POINTS = 3e7
PLD_MAX_COMPOSED_POINTS = 1e8
_TAIL_STDS = 8  # dp-accounting truncates tails of mass 1e-15: about 8 standard deviations


def _releases(event: dp_accounting.DpEvent, times: int = 1, q: float = 1.0):
    """``(kind, noise multiplier, times, q)`` of the Gaussian and Laplace releases in ``event``
    (sampled, composed): ``times`` how often each is composed, ``q`` its sampling rate."""
    if isinstance(event, dp_accounting.GaussianDpEvent | dp_accounting.LaplaceDpEvent):
        if event.noise_multiplier > 0:
            kind = "gaussian" if isinstance(event, dp_accounting.GaussianDpEvent) else "laplace"
            yield kind, event.noise_multiplier, times, q
    elif isinstance(event, dp_accounting.SelfComposedDpEvent):
        yield from _releases(event.event, times * event.count, q)
    elif isinstance(event, dp_accounting.PoissonSampledDpEvent):
        yield from _releases(event.event, times, q * event.sampling_probability)
    elif isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent):
        rate = event.sample_size / event.source_dataset_size
        yield from _releases(event.event, times, q * rate)
    elif isinstance(event, dp_accounting.ComposedDpEvent):
        for inner in event.events:
            yield from _releases(inner, times, q)


def pld_points(counts, discretization: float) -> tuple[float, float]:
    """About how many points a privacy loss distribution of ``(event, count)`` pairs spans, in
    steps of ``discretization``: ``(one release, composed)``, for the noisiest release.

    One Gaussian release of noise multiplier z has losses over about (1 + 2 t z) / z^2
    (outputs within t standard deviations), a Laplace of scale b over 2 / b. n compositions
    widen that n-fold at most, and by the central limit theorem to about 2 t sqrt(n)
    standard deviations of one loss: 1 / z (Laplace: 1 / b), which sampling at rate q shrinks
    to about q sqrt(exp(1 / z^2) - 1) (the likelihood ratio's spread); the smaller of the two.
    Measured against the distributions dp-accounting builds: a plain Gaussian 0.8 to 1 x,
    Laplace 1 to 1.3 x, sampled Gaussians over 5000 releases 3 to 10 x.
    """
    one_release, composed = 0.0, 0.0
    for event, count in counts:
        for kind, z, n, q in _releases(event, count):
            t = _TAIL_STDS
            one = (1 + 2 * t * z) / z**2 if kind == "gaussian" else 2 / z
            spread = 1 / z
            if kind == "gaussian" and q < 1:
                spread = min(spread, q * math.sqrt(math.expm1(min(1 / z**2, 700))))
            one_release = max(one_release, one)
            composed += min(n * one, 2 * t * math.sqrt(n) * spread)
    return one_release / discretization, max(one_release, composed) / discretization


@functools.lru_cache(maxsize=256)
def _pld_epsilon(counts: tuple, relation, discretization: float, delta: float) -> float:
    """A PLD accountant's epsilon of ``(event, count)`` pairs composed in their order.

    Shared by every accountant: a plan's epsilon after r rounds is the same multiset of
    events for every r within an epoch (DP-FTRL, BandMF), and its PLD is slow to build.

    Raises:
        PLDRefused: naming ``accountant``, where the releases have so little noise that
            their PLD would not fit in memory (or take long to find out: `PLD_MAX_POINTS`).
    """
    one, composed = pld_points(counts, discretization)
    for points, limit, what in (
        (one, PLD_MAX_POINTS, "one release"),
        (composed, PLD_MAX_COMPOSED_POINTS, "composed"),
    ):
        if points > limit:
            raise PLDRefused(
                f"would span about {points:.2g} points ({what}; at most {limit:.0e}: "
                "a larger pld_discretization is coarser and smaller)",
                discretization,
            )
    accountant = PLDAccountant(relation, discretization)
    with _fits_in_memory(discretization):
        for event, count in counts:
            accountant.compose(event, count)
    return accountant.get_epsilon(delta)


class Accountant:
    """Composes DP events with dp-accounting and reports (epsilon, delta).

    Args:
        kind: ``rdp``, ``pld``, or ``pure`` (basic composition of pure
            epsilon-DP Laplace releases; delta plays no part).
        delta: target delta, in (0, 1).
        relation: the dp-accounting neighbouring relation events are composed under.
        orders: RDP orders; None uses dp-accounting's defaults.
        conversion: RDP to (epsilon, delta) conversion, ``improved`` (dp-accounting's)
            or ``classic`` (Mironov 2017).
        pld_discretization: value discretization interval of the PLD accountant
            (its estimates stay pessimistic; smaller is tighter and slower).
    """

    def __init__(
        self,
        kind: str = "rdp",
        delta: float = DEFAULT_DELTA,
        relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        orders=None,
        conversion: str = "improved",
        pld_discretization: float = 1e-4,
    ):
        kinds = [k.value for k in AccountantKind]
        check(str(kind) in kinds, "accountant", kind, f"one of {', '.join(kinds)}")
        check(0 < delta < 1, "delta", delta, "in (0, 1)")
        conversions = [c.value for c in Conversion]
        check(
            str(conversion) in conversions,
            "conversion",
            conversion,
            f"one of {', '.join(conversions)}",
        )
        check(
            str(conversion) == Conversion.improved.value or str(kind) == "rdp",
            "conversion",
            conversion,
            "improved (the default) unless accountant=rdp: only RDP converts to "
            "(epsilon, delta) in more than one way",
        )
        check(
            0 < pld_discretization <= 0.1, "pld_discretization", pld_discretization, "in (0, 0.1]"
        )
        if orders is not None:
            orders = [float(o) for o in orders]
            check(
                len(orders) > 0 and all(o > 1 for o in orders),
                "orders",
                orders,
                "null or a non-empty list of numbers > 1",
            )
            check(
                str(kind) == "rdp",
                "orders",
                orders,
                "null unless accountant=rdp (only RDP has orders)",
            )
        self.kind, self.delta, self.orders = str(kind), delta, orders
        self.conversion = str(conversion)
        self.pld_discretization = pld_discretization
        self.relation = relation
        self.counts: Counter[dp_accounting.DpEvent] = Counter()
        # [event, run length] in the order recorded: replaying it restores even a
        # PLD accountant (whose rounding depends on the order) exactly
        self._history: list[list] = []
        self._rdp_of_event: dict[dp_accounting.DpEvent, np.ndarray] = {}
        # PLD composes event by event (RDP adds cached vectors instead)
        self._pld = self._new_pld()

    def empty(self) -> Accountant:
        """A new accountant with the same settings and nothing composed."""
        return Accountant(
            self.kind,
            self.delta,
            self.relation,
            self.orders,
            self.conversion,
            self.pld_discretization,
        )

    def _new_pld(self) -> IncrementalPLD | None:
        if self.kind != "pld":
            return None
        return IncrementalPLD(self._pld_accountant, self.pld_discretization)

    def _pld_accountant(self) -> PLDAccountant:
        return PLDAccountant(self.relation, self.pld_discretization)

    def _rdp_accountant(self) -> RdpAccountant:
        return RdpAccountant(orders=self.orders, neighboring_relation=self.relation)

    @property
    def releases(self) -> int:
        """How many events were composed."""
        return sum(self.counts.values())

    def supports(self, event: dp_accounting.DpEvent) -> bool:
        """Whether this accountant can compose ``event`` under its relation."""
        if self.kind == "pure":
            try:
                _pure_epsilon(event)
            except UnsupportedEventError:
                return False
            return True
        if self.kind == "rdp":
            return self._rdp_accountant().supports(event)
        return self._pld_accountant().supports(event)

    def check(self, event: dp_accounting.DpEvent) -> None:
        """Raises `UnsupportedEventError` unless ``event`` can be composed."""
        if not self.supports(event):
            relation = RELATION_NAMES[self.relation]
            raise UnsupportedEventError(
                f"the {self.kind} accountant cannot compose {type(event).__name__} "
                f"(under {relation} adjacency): {event}"
            )

    def _event_rdp(self, event: dp_accounting.DpEvent) -> np.ndarray:
        # A release's RDP is computed once by dp-accounting and then added up,
        # exactly as RdpAccountant.compose does, so per-round epsilon stays cheap.
        if event not in self._rdp_of_event:
            self.check(event)
            orders = None if self.orders is None else tuple(self.orders)
            self._rdp_of_event[event] = _rdp_of(event, orders, self.relation)
        return self._rdp_of_event[event]

    def epsilon_of(self, counts: Counter) -> float:
        """Epsilon at ``delta`` of a multiset of events.

        Raises:
            UnsupportedEventError: an event cannot be composed by this accountant.
        """
        counts = {e: c for e, c in counts.items() if c > 0}
        for event in counts:
            self.check(event)
        if not counts:
            return 0.0
        if self.kind == "pure":
            return float(sum(c * _pure_epsilon(e) for e, c in counts.items()))
        if self.kind == "pld":
            releases = tuple(
                (e, c) for e, c in counts.items() if not isinstance(e, dp_accounting.NoOpDpEvent)
            )
            eps = _pld_epsilon(releases, self.relation, self.pld_discretization, self.delta)
        else:
            rdp = sum(count * self._event_rdp(event) for event, count in counts.items())
            orders = self._rdp_accountant().orders
            if self.conversion == "classic":
                eps = classic_rdp_to_epsilon(orders, rdp, self.delta)
            else:
                eps = compute_epsilon(orders, rdp, self.delta)[0]
        return math.inf if eps is None or math.isnan(eps) else float(eps)

    def planned_epsilon(self, events: Iterable[dp_accounting.DpEvent]) -> float:
        """Epsilon after the given sequence of events, computed before training."""
        return self.epsilon_of(Counter(events))

    def peek(self, event: dp_accounting.DpEvent) -> float:
        """Epsilon if ``event`` were composed next (for budgets)."""
        self.check(event)
        if self._pld is not None:
            return self._pld.epsilon(self.delta, then=event)
        return self.epsilon_of(self.counts + Counter([event]))

    def record(self, event: dp_accounting.DpEvent) -> float:
        """Composes one released event; returns epsilon so far."""
        self.check(event)
        self._compose(event)
        return self.epsilon

    def _compose(self, event: dp_accounting.DpEvent) -> None:
        self.counts[event] += 1
        if self._history and self._history[-1][0] == event:
            self._history[-1][1] += 1
        else:
            self._history.append([event, 1])
        if self._pld is not None:
            self._pld.compose(event)

    def state_dict(self) -> dict:
        """The composed events in order (run-length encoded), JSON-ready, for checkpoints."""
        return {"history": [{"event": event_to_dict(e), "count": n} for e, n in self._history]}

    def load_state_dict(self, state: dict) -> None:
        """Replaces what was composed by `state_dict`'s events, replayed in their order."""
        self.counts, self._history = Counter(), []
        self._pld = self._new_pld()
        for item in state["history"]:
            event = event_from_dict(item["event"])
            for _ in range(item["count"]):
                self._compose(event)

    @property
    def epsilon(self) -> float:
        if self._pld is not None:
            return self._pld.epsilon(self.delta) if self.releases else 0.0
        return self.epsilon_of(self.counts)

    def events(self) -> list[dict]:
        """The composed events and how often each occurred, JSON-ready."""
        return [{"event": event_to_dict(e), "count": c} for e, c in self.counts.items()]

    def describe(self) -> dict:
        """Everything an independent recomputation needs besides the events."""
        return {
            "accountant": self.kind,
            "delta": self.delta,
            "orders": self.orders,
            "conversion": self.conversion if self.kind == "rdp" else None,
            "pld_discretization": self.pld_discretization if self.kind == "pld" else None,
            "accounting_relation": RELATION_NAMES[self.relation],
        }
