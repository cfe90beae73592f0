"""The privacy cost of tuning: releasing the best of a random number of runs.

Papernot and Steinke, "Hyperparameter tuning with Renyi differential privacy"
(ICLR 2022, https://arxiv.org/abs/2110.03620): run a random number K of trials,
each with hyperparameters drawn independently, and release only the best one.
If every trial is (lambda, eps(lambda))-RDP, the released best is RDP with the
bound of their Theorem 2 (K truncated negative binomial: geometric, logarithmic)
or Theorem 6 (K Poisson), which grows with log E[K], not with E[K]. A sweep that
picks its best run on private data pays this, not one run's epsilon; a sweep with
a fixed, non-random number of runs is not covered by the theorem (run a random
number of trials to claim it).

The per-trial RDP is the largest, order by order, over the runs' recorded events
(each trial may be any of the runs), composed with dp-accounting's RDP accountant;
the bound itself is dp-accounting's implementation of both theorems
(``RepeatAndSelectDpEvent``), applied to that curve.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import dp_accounting
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

DISTRIBUTIONS = {"poisson": math.inf, "geometric": 1.0, "logarithmic": 0.0}


def draw_trials(mean: float, distribution: str = "poisson", seed: int | None = None) -> int:
    """K, the number of trials of a private random search with ``E[K] = mean``.

    Poisson(mean), which may be 0 (the search then releases nothing), or the
    truncated negative binomial on 1, 2, ... of the paper with shape 1
    (geometric) or 0 (logarithmic), its gamma solved from the mean as
    dp-accounting does. The theorems need K to stay secret: ``seed`` None
    draws from the operating system; a seeded draw is reproducible, and whoever
    knows the seed knows K.

    Raises:
        ValueError: a bad distribution or a mean below 1.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution must be one of {sorted(DISTRIBUTIONS)}, got {distribution!r}"
        )
    if not mean >= 1:
        raise ValueError(f"the mean number of trials must be >= 1, got {mean}")
    rng = np.random.default_rng(seed)
    if distribution == "poisson":
        return int(rng.poisson(mean))
    if mean == 1:
        return 1
    gamma = rdp_lib._gamma_truncated_negative_binomial(DISTRIBUTIONS[distribution], mean)  # noqa: SLF001
    if distribution == "geometric":  # P(K = k) = gamma (1 - gamma)^(k - 1), k >= 1
        return int(rng.geometric(gamma))
    return int(rng.logseries(1 - gamma))  # P(K = k) proportional to (1 - gamma)^k / k, k >= 1


def random_trials(mean, distribution: str = "poisson", seed=None) -> int:
    """``${dpfed.random_trials:mean,distribution[,seed]}``: `draw_trials` for a search's
    ``hydra.sweeper.n_trials`` (``hparams_search``), so that releasing its best run costs
    `tuning_epsilon` (``make_table.py --tuning <distribution> --tuning-mean <mean>``).

    Raises:
        ValueError: the draw is 0 (Poisson): the search releases nothing and must not run.
    """
    trials = draw_trials(float(mean), str(distribution), None if seed is None else int(seed))
    if trials == 0:
        raise ValueError(
            "the private random search drew 0 trials (Poisson): it releases "
            "nothing, by Papernot & Steinke's analysis; do not rerun it to get "
            "a run (that changes the distribution the bound is for)"
        )
    return trials


def run_rdp(events: Sequence[tuple[dp_accounting.DpEvent, int]], relation, orders) -> np.ndarray:
    """The RDP curve at ``orders`` of one run's composed ``(event, count)`` releases."""
    accountant = dp_accounting.rdp.RdpAccountant(list(orders), relation)
    for event, count in events:
        accountant.compose(event, count)
    return np.asarray(accountant._rdp, dtype=np.float64)  # noqa: SLF001 (no public getter)


def composed_epsilon(
    events: Sequence[tuple[dp_accounting.DpEvent, int]], relation, delta: float
) -> float:
    """Epsilon at ``delta`` of ``(event, count)`` releases composed (dp-accounting's RDP
    accountant, its orders and conversion): one trial's, whose seeds' runs all compose."""
    accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    for event, count in events:
        accountant.compose(event, count)
    eps = accountant.get_epsilon(delta)
    return math.inf if eps is None or math.isnan(eps) else float(eps)


def tuning_epsilon(
    runs: Sequence[Sequence[tuple[dp_accounting.DpEvent, int]]],
    relation,
    delta: float,
    mean: float | None = None,
    distribution: str = "poisson",
    orders: Sequence[float] | None = None,
) -> float:
    """Epsilon at ``delta`` of releasing the best of K trials, each one of ``runs``.

    Args:
        runs: per run, its composed ``(event, count)`` releases (one account's).
        relation: the dp-accounting neighbouring relation they compose under.
        delta: target delta, in (0, 1).
        mean: E[K], the mean number of trials (default: the number of runs), >= 1.
        distribution: ``poisson``, ``geometric`` or ``logarithmic`` (K's law).
        orders: RDP orders (default: dp-accounting's).

    Returns:
        The epsilon; inf if any run is not private.

    Raises:
        ValueError: no runs, a bad distribution, mean < 1 or delta outside (0, 1).
    """
    if not runs:
        raise ValueError("tuning_epsilon needs at least one run")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"distribution must be one of {sorted(DISTRIBUTIONS)}, got {distribution!r}"
        )
    mean = float(len(runs) if mean is None else mean)
    if not mean >= 1:
        raise ValueError(f"the mean number of trials must be >= 1, got {mean}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    orders = list(rdp_lib.DEFAULT_RDP_ORDERS if orders is None else orders)
    worst = np.max([run_rdp(events, relation, orders) for events in runs], axis=0)
    if not np.all(np.isfinite(worst)):
        return math.inf
    best_of = rdp_lib._compute_rdp_repeat_and_select(  # noqa: SLF001
        orders, worst, mean, DISTRIBUTIONS[distribution]
    )
    eps, _ = rdp_lib.compute_epsilon(orders, best_of, delta)
    return math.inf if eps is None or math.isnan(eps) else float(eps)
