"""Privacy accounting with dp-accounting, composed round by round.

A `PrivacyLedger` composes the DP event of every round that actually ran, with
dp-accounting's RDP accountant, and reports epsilon at the configured delta. The
neighbouring relation comes from the client sampler (fixed-size cohorts need
replace-one adjacency), so a sampler and an accountant that disagree cannot be
put together.
"""

from __future__ import annotations

import math

import attr
import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant, compute_epsilon

from dpfed.errors import check

ACCOUNTANTS = ("rdp",)

RELATION_NAMES = {
    dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE: "add_or_remove_one",
    dp_accounting.NeighboringRelation.REPLACE_ONE: "replace_one",
}


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


class PrivacyLedger:
    """Composes one DP event per completed round and reports (epsilon, delta).

    Args:
        accountant: ``rdp``.
        delta: target delta, in (0, 1).
        neighboring_relation: dp-accounting relation the sampler requires.
        orders: RDP orders; None uses dp-accounting's defaults.
    """

    def __init__(self, accountant: str, delta: float, neighboring_relation, orders=None):
        check(
            accountant in ACCOUNTANTS, "accountant", accountant, f"one of {', '.join(ACCOUNTANTS)}"
        )
        check(0 < delta < 1, "delta", delta, "in (0, 1)")
        if orders is not None:
            orders = [float(o) for o in orders]
            check(
                len(orders) > 0 and all(o > 1 for o in orders),
                "orders",
                orders,
                "null or a non-empty list of numbers > 1",
            )
        self.kind, self.delta, self.orders = accountant, delta, orders
        self.neighboring_relation = neighboring_relation
        self._rdp_of_event: dict[dp_accounting.DpEvent, np.ndarray] = {}
        self._rdp = None  # RDP of all recorded rounds, one value per order
        self.rounds = 0

    def _new(self) -> RdpAccountant:
        return RdpAccountant(orders=self.orders, neighboring_relation=self.neighboring_relation)

    def _event_rdp(self, event: dp_accounting.DpEvent) -> np.ndarray:
        # A round's RDP is computed once by dp-accounting and then added up per
        # round, exactly as RdpAccountant.compose does, so per-round epsilon
        # stays cheap for long runs.
        if event not in self._rdp_of_event:
            accountant = self._new()
            accountant.compose(event)
            self._rdp_of_event[event] = accountant.rdp
        return self._rdp_of_event[event]

    def _epsilon(self, rdp: np.ndarray) -> float:
        orders = self._new().orders
        eps = compute_epsilon(orders, rdp, self.delta)[0]
        return math.inf if eps is None or math.isnan(eps) else float(eps)

    def planned_epsilon(self, event: dp_accounting.DpEvent, rounds: int) -> float:
        """Epsilon after ``rounds`` rounds of ``event``, computed before training."""
        return self._epsilon(rounds * self._event_rdp(event))

    def record(self, event: dp_accounting.DpEvent) -> float:
        """Composes one completed round's event; returns epsilon so far."""
        rdp = self._event_rdp(event)
        self._rdp = rdp.copy() if self._rdp is None else self._rdp + rdp
        self.rounds += 1
        return self.epsilon

    @property
    def epsilon(self) -> float:
        return self._epsilon(self._rdp) if self.rounds else 0.0

    def describe(self) -> dict:
        """Everything an independent recomputation needs besides the event."""
        return {
            "accountant": self.kind,
            "delta": self.delta,
            "orders": self.orders,
            "neighboring_relation": RELATION_NAMES[self.neighboring_relation],
        }
