"""Solve for the noise multiplier that reaches a target epsilon, with the training accountant."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import dp_accounting

from dpfed.errors import ConfigError
from dpfed.privacy.accounting import Accountant, PLDRefused

MAX_NOISE_MULTIPLIER = 1e4


def calibrate_noise_multiplier(
    events_for: Callable[[float], Iterable[dp_accounting.DpEvent]],
    ledger: Accountant,
    target_epsilon: float,
    rel_tol: float = 0.005,
    limit: tuple[float, str] | None = None,
) -> tuple[float, float]:
    """Smallest noise multiplier (to ``rel_tol``) whose planned epsilon is <= the target.

    Bisection in log space over ``ledger.planned_epsilon(events_for(z))``, the
    same computation the run reports, so the calibrated run ends at most
    ``target_epsilon`` and within ``rel_tol`` below it.

    Args:
        events_for: noise multiplier -> the DP events of every planned round.
        ledger: an empty accountant with the run's settings.
        target_epsilon: epsilon to reach at the ledger's delta, > 0.
        rel_tol: how far below the target the result may land.
        limit: (bound, why): the mechanism allows noise multipliers below the bound only.

    Returns:
        (noise multiplier, planned epsilon with it).

    Raises:
        ConfigError: no noise multiplier up to 1e4 (or the mechanism's limit) reaches the target.
    """

    def eps(z: float) -> float:
        return ledger.planned_epsilon(events_for(z))

    refused: list[PLDRefused] = []

    def eps_or_inf(z: float) -> float:
        """eps(z); inf where the accountant refuses so little noise (PLD's size limit): less
        noise never costs less, so z is then too small, and the search looks above it."""
        try:
            return eps(z)
        except PLDRefused as err:
            refused.append(err)
            return math.inf

    top, why = MAX_NOISE_MULTIPLIER, None
    if limit is not None and limit[0] * (1 - 1e-9) < top:
        top, why = limit[0] * (1 - 1e-9), limit[1]
    high = min(1.0, top)
    while eps_or_inf(high) > target_epsilon:
        if high >= top:
            reason = f"{why}, and" if why else "even"
            raise ConfigError(
                "target_epsilon",
                target_epsilon,
                f"reachable: {reason} noise_multiplier={top:.6g} gives epsilon {eps(top):.4g}",
            )
        high = min(high * 4, top)

    low = high / 4
    while eps_or_inf(low) <= target_epsilon and low > 1e-3:
        high, low = low, low / 4
    eps_high = eps(high)
    while eps_high < target_epsilon * (1 - rel_tol) and high / low > 1 + 1e-9:
        mid = math.sqrt(low * high)
        eps_mid = eps_or_inf(mid)
        if eps_mid <= target_epsilon:
            high, eps_high = mid, eps_mid
        else:
            low = mid
    if refused and eps_high < target_epsilon * (1 - rel_tol):
        # the noise the target needs is below what the accountant accepts: say so rather than
        # return more noise than asked for (a review found epsilon 13 for a target of 30.9)
        raise refused[-1]
    return high, eps_high
