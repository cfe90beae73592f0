"""Empirical privacy estimators: one-run auditing and one-shot estimation from canary scores.

Two families of estimators, both plain functions of numpy arrays of canary scores:

* One-run auditing (Steinke, Nasr, Jagielski, "Privacy auditing with one (1) training run",
  NeurIPS 2023, https://arxiv.org/abs/2305.08846): a high-confidence *lower bound* on epsilon
  from the number of correct membership guesses on canaries that were each included in
  training or not. The choice of guesses follows the one-sided threshold search of
  google-deepmind/jax_privacy, ``jax_privacy/auditing.py``
  (``CanaryScoreAuditor.epsilon_one_run`` with its default Bonferroni threshold strategy).
* One-shot empirical privacy estimation (Andrew, Chien, Thakkar, et al., "One-shot empirical
  privacy estimation for federated learning", ICLR 2024, https://arxiv.org/abs/2302.03098):
  canary clients send random unit directions; the cosines between those directions and the
  model delta(s) are fit by Gaussians and turned into an epsilon *estimate* (not a bound).
  The closed forms follow google-research/federated,
  ``one_shot_epe/empirical_privacy_estimation_lib.py`` and ``one_shot_epe/dot_product_utils.py``.

No code is shared with either reference; the published values of their tests are reproduced
by ``tests/audit/test_estimators.py``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special, stats

__all__ = [
    "canary_cosines",
    "gaussian_pair_epsilon",
    "jeffreys_epsilon_lower_bound",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_shot_epsilon",
    "threshold_epsilon_lower_bound",
]

# Dimension from which the exact null distribution of the cosine between a fixed vector and a
# uniformly random unit vector is replaced by N(0, 1/dim), as in the reference; the two agree
# to ~1e-6 there and the Gaussian is cheaper and stabler in the far tail.
GAUSSIAN_NULL_MIN_DIM = 1000

# Points of the threshold grid of the exact-null estimate (the reference's resolution; the
# estimate depends on the grid, so changing it changes the reproduced values).
_CLOSED_FORM_GRID_POINTS = 10_000

# An epsilon search that has to go beyond this gives up and reports inf: the two score
# distributions are, numerically, perfectly separable.
_MAX_EPSILON = 1e12


# --------------------------------------------------------------------------------------------
# Argument checks


def _check_probability(value: float, name: str, upper: float = 1.0) -> float:
    """Returns ``value`` as a float if it lies in the open interval (0, upper)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, {upper:g}), got {value!r}.") from None
    if not 0.0 < value < upper:
        raise ValueError(f"{name} must be in (0, {upper:g}), got {value!r}.")
    return value


def _check_count(value: int, name: str) -> int:
    """Returns ``value`` as a Python int if it is a non-negative integer."""
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.") from None
    if count < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {count}.")
    return count


def _check_scores(scores: ArrayLike, name: str, min_size: int = 1) -> np.ndarray:
    """Returns ``scores`` as a finite 1-D float array with at least ``min_size`` entries."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of scores, got shape {arr.shape}.")
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} score(s), got {arr.size}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite values.")
    return arr


def _check_dim(dim: int) -> int:
    dim = _check_count(dim, "dim")
    if dim < 3:
        # The exact cosine density (1 - t^2)^((dim - 3) / 2) is not a proper density below 3.
        raise ValueError(f"dim must be at least 3, got {dim}.")
    return dim


# --------------------------------------------------------------------------------------------
# One-run auditing (Steinke, Nasr, Jagielski 2023)


def _one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """p-value of ``v`` or more correct guesses out of ``r`` under an (eps, delta)-DP null.

    Steinke et al. (2023), Theorem 3 / Algorithm 2 ("p-value with delta"): under the null,
    the number of correct guesses is dominated by Binomial(r, q) with q = e^eps / (1 + e^eps)
    up to a delta term, which is charged as ``2 m delta`` times the worst ratio
    P[v - i <= Binomial(r, q) < v] / i over i = 1..v.

    Args:
        m: total number of canaries (guessed or not).
        r: number of guesses (canaries not abstained on).
        v: number of correct guesses.
        eps: epsilon of the null hypothesis.
        delta: delta of the null hypothesis.

    Returns:
        The p-value, at most 1.
    """
    q = special.expit(eps)
    # Boost's binomial tail flags harmless underflows (q -> 1 at large eps) as divide-by-zero.
    with np.errstate(divide="ignore", over="ignore", under="ignore"):
        tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
        if delta == 0 or v == 0:
            return min(tail, 1.0)
        i = np.arange(1, v + 1)
        # P[v - i <= X < v] for all i at once; X's mass just below v is what delta can buy.
        ratios = (stats.binom.sf(v - 1 - i, r, q) - tail) / i
    return min(tail + 2.0 * m * delta * max(float(ratios.max()), 0.0), 1.0)


def _largest_rejected_epsilon(
    m: int, r: int, v: int, significance: float, delta: float, floor: float = 0.0
) -> float:
    """Largest eps >= ``floor`` whose (eps, delta)-DP claim the counts reject, else ``floor``.

    The p-value increases with eps, so the set of rejected eps is an interval [0, eps*]; this
    finds eps* by bracketing and Brent's method. ``floor`` lets a caller that already holds a
    bound skip guesses that cannot beat it.
    """
    if r == 0 or v == 0:
        return floor
    # Cheap exit: the delta term only raises the p-value, so if it fails without it, it fails.
    if _one_run_p_value(m, r, v, floor, 0.0) > significance:
        return floor

    def margin(eps: float) -> float:  # > 0 where the claim is rejected
        return significance - _one_run_p_value(m, r, v, eps, delta)

    if margin(floor) <= 0:
        return floor
    lo, hi = floor, max(1.0, 2.0 * floor)
    while margin(hi) > 0:
        lo, hi = hi, 2.0 * hi
    return float(optimize.brentq(margin, lo, hi, xtol=1e-9))


def one_run_epsilon_lower_bound(
    num_guesses: int,
    num_correct: int,
    delta: float,
    significance: float = 0.05,
    num_canaries: int | None = None,
) -> float:
    """Epsilon lower bound of a one-run audit from its guess counts.

    Steinke, Nasr, Jagielski, "Privacy auditing with one (1) training run" (NeurIPS 2023),
    Theorem 3 and Algorithm 2: the largest epsilon such that an (epsilon, delta)-DP training
    algorithm would produce at least ``num_correct`` correct guesses out of ``num_guesses``
    with probability at most ``significance``. The delta term (``2 * num_canaries * delta``
    times the worst per-step binomial mass) is charged exactly as in the paper's Algorithm 2
    and jax_privacy's ``_one_run_p_value`` (google-deepmind/jax_privacy,
    ``jax_privacy/auditing.py``).

    Args:
        num_guesses: guesses made (canaries not abstained on), r in the paper.
        num_correct: correct guesses, v in the paper.
        delta: delta of the DP claim under test, in (0, 1).
        significance: allowed probability that the bound is wrong, in (0, 1).
        num_canaries: all canaries of the audit, m in the paper, guessed or not. ``None``
            means every canary was guessed (m = ``num_guesses``); with abstentions, pass the
            true m, or the bound is too large, because the delta term grows with m.

    Returns:
        The epsilon lower bound; 0.0 if no epsilon >= 0 can be rejected.

    Raises:
        ValueError: if a count is negative or not an integer, ``num_correct > num_guesses``,
            ``num_guesses > num_canaries``, or ``delta``/``significance`` is outside (0, 1).
    """
    r = _check_count(num_guesses, "num_guesses")
    v = _check_count(num_correct, "num_correct")
    m = r if num_canaries is None else _check_count(num_canaries, "num_canaries")
    if v > r:
        raise ValueError(f"num_correct ({v}) cannot exceed num_guesses ({r}).")
    if r > m:
        raise ValueError(f"num_guesses ({r}) cannot exceed num_canaries ({m}).")
    delta = _check_probability(delta, "delta")
    significance = _check_probability(significance, "significance")
    return _largest_rejected_epsilon(m, r, v, significance, delta)


def _upper_hull(x: list[int], y: list[int]) -> list[int]:
    """Indices of the strict vertices of the upper convex hull of points sorted by x.

    Andrew's monotone chain: a point stays only where the chain turns strictly clockwise, so
    points on or below a segment between two others are dropped, endpoints always kept.
    """
    hull: list[int] = []
    for k in range(len(x)):
        while len(hull) >= 2:
            i, j = hull[-2], hull[-1]
            turn = (y[j] - y[i]) * (x[k] - x[j]) - (y[k] - y[j]) * (x[j] - x[i])
            if turn > 0:
                break
            hull.pop()
        hull.append(k)
    return hull


def _roc_frontier(
    in_scores: np.ndarray, out_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds on the ROC convex hull with their false- and true-negative counts.

    A canary is guessed "in" when its score is >= the threshold. Candidate thresholds are the
    distinct scores plus +inf (no guesses); only those on the upper convex hull of
    (false negatives, true negatives) are kept: the others are beaten by a mix of two hull
    thresholds, and each kept one costs a share of the Bonferroni-corrected significance, so
    the count must match the reference's exactly.
    """
    thresholds = np.append(np.union1d(in_scores, out_scores), np.inf)
    fn = np.searchsorted(np.sort(in_scores), thresholds, side="left")
    tn = np.searchsorted(np.sort(out_scores), thresholds, side="left")
    keep = _upper_hull(fn.tolist(), tn.tolist())
    return thresholds[keep], fn[keep], tn[keep]


def one_run_audit(
    in_scores: ArrayLike,
    out_scores: ArrayLike,
    delta: float,
    significance: float = 0.05,
    *,
    threshold: float | None = None,
) -> float:
    """Epsilon lower bound of a one-run audit from the scores of included/excluded canaries.

    Steinke, Nasr, Jagielski, "Privacy auditing with one (1) training run" (NeurIPS 2023),
    with the guessing rule of google-deepmind/jax_privacy, ``jax_privacy/auditing.py``,
    ``CanaryScoreAuditor.epsilon_one_run`` (default ``Bonferroni()`` threshold strategy):
    the auditor guesses "in" for every canary scoring >= a threshold and abstains on the rest
    (one-sided, k- = 0, the only mode the reference supports). Every threshold on the convex
    hull of the ROC curve is tried, each at significance ``significance / H`` for H hull
    thresholds (a Bonferroni correction that pays for picking the best one), with
    m = ``len(in_scores) + len(out_scores)`` canaries, and the largest bound is returned.

    With 10,000 in- and 10,000 out-scores at the normal quantiles
    ``norm.ppf(np.linspace(0, 1, n, endpoint=False) + 1 / (2 * n))``, the in-scores shifted
    by s, ``delta=1e-6`` and ``significance=0.05``, this gives 0, 1.13346, 2.311945 and
    4.395568 for s = 0, 1, 2, 4, the values asserted by jax_privacy's
    ``auditing_test.py::test_epsilon_one_run_close``.

    Args:
        in_scores: attack scores of canaries included in training; higher means "more
            likely included" (negate scores for which it is the other way round).
        out_scores: attack scores of canaries excluded from training.
        delta: delta of the DP claim under test, in (0, 1).
        significance: allowed probability that the bound is wrong, in (0, 1).
        threshold: if given, guess "in" exactly for scores >= this value and skip the search
            (and its Bonferroni correction); it must then be chosen without these scores.

    Returns:
        The epsilon lower bound; 0.0 if nothing can be rejected.

    Raises:
        ValueError: on empty or non-finite score arrays, ``delta`` or ``significance``
            outside (0, 1), or a NaN threshold.
    """
    in_arr = _check_scores(in_scores, "in_scores")
    out_arr = _check_scores(out_scores, "out_scores")
    delta = _check_probability(delta, "delta")
    significance = _check_probability(significance, "significance")
    m = in_arr.size + out_arr.size

    if threshold is not None:
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN.")
        tp = int(np.count_nonzero(in_arr >= threshold))
        fp = int(np.count_nonzero(out_arr >= threshold))
        return _largest_rejected_epsilon(m, tp + fp, tp, significance, delta)

    _, fn, tn = _roc_frontier(in_arr, out_arr)
    alpha = significance / len(fn)
    tp = in_arr.size - fn
    fp = out_arr.size - tn
    guesses = tp + fp

    # Visit thresholds from the most to the least confidently precise (Clopper-Pearson lower
    # bound on precision), so the best bound comes early and most later thresholds are
    # dismissed by the cheap checks below without a root search. Order affects speed only.
    with np.errstate(divide="ignore", invalid="ignore"):
        precision_lb = np.where(
            fp < guesses, 1.0 - stats.beta.ppf(1.0 - alpha, fp + 1, guesses - fp), 0.0
        )
    best = 0.0
    for idx in np.argsort(-precision_lb, kind="stable"):
        r, v = int(guesses[idx]), int(tp[idx])
        # A precision at or below the accuracy e^eps/(1+e^eps) of the current bound cannot
        # reject that bound at any significance below 1/2: skip it.
        if r == 0 or v / r <= special.expit(best):
            continue
        best = _largest_rejected_epsilon(m, r, v, alpha, delta, floor=best)
    return best


# --------------------------------------------------------------------------------------------
# One-shot empirical privacy estimation (Andrew et al. 2024)


def canary_cosines(directions: ArrayLike, deltas: ArrayLike, *, negate: bool = False) -> np.ndarray:
    """Cosines between canary directions and model delta(s), max over rounds if several.

    Andrew et al., "One-shot empirical privacy estimation for federated learning" (ICLR 2024),
    Sections 3-5: the statistic of a canary is the cosine between its direction and the final
    model delta, or, when the adversary sees every iterate, the maximum over rounds of the
    cosine with each round's model delta (google-research/federated,
    ``one_shot_epe/dot_product_utils.py`` and ``fed_avg_with_canaries.py``).

    Args:
        directions: canary directions, shape [m, d]; rows need not be normalised.
        deltas: model delta(s), shape [d] (final model) or [rounds, d] (all iterates).
        negate: score the cosine with minus the delta. Use it when updates are applied as
            pseudo-gradients (``weights -= lr * update``, TFF's convention), where a canary
            pushes the model *against* its direction; the reference negates for that reason.

    Returns:
        Float array of shape [m]. A zero-norm delta (rare: a round that changed nothing)
        gives cosine 0 for that round, as in the reference.

    Raises:
        ValueError: on shape mismatches, empty inputs, non-finite values or a zero direction.
    """
    dirs = np.asarray(directions, dtype=np.float64)
    steps = np.asarray(deltas, dtype=np.float64)
    if dirs.ndim != 2 or dirs.shape[0] == 0 or dirs.shape[1] == 0:
        raise ValueError(f"directions must have shape [m, d] with m, d >= 1, got {dirs.shape}.")
    if steps.ndim not in (1, 2) or steps.shape[-1] != dirs.shape[1] or steps.size == 0:
        raise ValueError(
            f"deltas must have shape [d] or [rounds, d] with d={dirs.shape[1]}, got {steps.shape}."
        )
    if not (np.all(np.isfinite(dirs)) and np.all(np.isfinite(steps))):
        raise ValueError("directions and deltas must contain only finite values.")
    dir_norms = np.linalg.norm(dirs, axis=1)
    if np.any(dir_norms == 0):
        raise ValueError("every canary direction must be non-zero.")
    steps = np.atleast_2d(steps)
    if negate:
        steps = -steps
    step_norms = np.linalg.norm(steps, axis=1)
    dots = (dirs / dir_norms[:, None]) @ steps.T  # [m, rounds]
    cosines = np.divide(
        dots, step_norms[None, :], out=np.zeros_like(dots), where=step_norms[None, :] > 0
    )
    return cosines.max(axis=1)


def _log_sub(x: float, y: float) -> float:
    """log(e^x - e^y) for x >= y, without leaving log space."""
    if y == -np.inf:
        return x
    if y >= x:
        return -np.inf
    return x + math.log1p(-math.exp(y - x))


def _log_normal_mass(lo: float, hi: float, mu: float, sigma: float) -> float:
    """log P[lo < Y < hi] for Y ~ N(mu, sigma^2), accurate in either tail."""
    if lo >= mu:  # both bounds in the upper tail: difference of survival functions
        return _log_sub(stats.norm.logsf(lo, mu, sigma), stats.norm.logsf(hi, mu, sigma))
    return _log_sub(stats.norm.logcdf(hi, mu, sigma), stats.norm.logcdf(lo, mu, sigma))


def _log_hockey_stick(mu_p: float, s_p: float, mu_q: float, s_q: float, eps: float) -> float:
    """log delta(eps) of P = N(mu_p, s_p^2) against Q = N(mu_q, s_q^2).

    delta(eps) = P[L > eps] - e^eps Q[L > eps] for the privacy loss L(y) = log p(y) / q(y),
    which for two Gaussians is the quadratic a y^2 + b y + c; the event {L > eps} is a
    half-line (a = 0), the outside (a > 0) or the inside (a < 0) of the quadratic's roots
    (Steinke, "Composition of differential privacy & privacy amplification by subsampling",
    2022, https://arxiv.org/abs/2210.00597, as used by the one-shot reference).
    """
    a = 0.5 * (s_q**-2 - s_p**-2)
    b = mu_p / s_p**2 - mu_q / s_q**2
    c = 0.5 * ((mu_q / s_q) ** 2 - (mu_p / s_p) ** 2) + math.log(s_q) - math.log(s_p)

    def log_mass(mu: float, s: float, lo: float, hi: float, inside: bool) -> float:
        if inside:
            return _log_normal_mass(lo, hi, mu, s)
        return float(np.logaddexp(stats.norm.logcdf(lo, mu, s), stats.norm.logsf(hi, mu, s)))

    if a == 0:
        if b == 0:  # identical distributions: no privacy loss at all
            return -np.inf
        cut = (eps - c) / b
        lo, hi, inside = (cut, np.inf, True) if b > 0 else (-np.inf, cut, True)
    else:
        disc = b * b - 4.0 * a * (c - eps)
        if disc <= 0:  # L - eps has one sign everywhere, and delta(eps) <= 0 either way
            return -np.inf
        # Numerically stable roots: avoid subtracting two nearly equal numbers when a -> 0.
        half = -0.5 * (b + math.copysign(math.sqrt(disc), b))
        lo, hi = sorted((half / a, (c - eps) / half))
        inside = a < 0
    log_p = log_mass(mu_p, s_p, lo, hi, inside)
    log_q = log_mass(mu_q, s_q, lo, hi, inside)
    if log_p == -np.inf or eps + log_q - log_p >= 0:
        return -np.inf  # delta(eps) <= 0: the bound is vacuous in this direction
    return log_p + math.log1p(-math.exp(eps + log_q - log_p))


def _solve_epsilon(log_delta_at: Callable[[float], float], delta: float) -> float:
    """Smallest eps >= 0 with log_delta_at(eps) <= log(delta), for a decreasing function."""
    target = math.log(delta)
    if log_delta_at(0.0) <= target:
        return 0.0
    lo, hi = 0.0, 1.0
    while log_delta_at(hi) > target:
        lo, hi = hi, 10.0 * hi
        if hi > _MAX_EPSILON:
            return math.inf
    return float(optimize.brentq(lambda e: log_delta_at(e) - target, lo, hi))


def gaussian_pair_epsilon(
    mu0: float, sigma0: float, mu1: float, sigma1: float, delta: float
) -> float:
    """Exact epsilon at ``delta`` of distinguishing N(mu0, sigma0^2) from N(mu1, sigma1^2).

    The smallest epsilon for which the pair is (epsilon, delta)-indistinguishable in both
    directions, from the closed form of the privacy loss of two Gaussians with possibly
    different variances (Steinke 2022, https://arxiv.org/abs/2210.00597). With equal sigmas
    this is the epsilon of the Gaussian mechanism with sensitivity |mu1 - mu0| and noise
    sigma. Follows ``epsilon_two_gaussians`` of google-research/federated,
    ``one_shot_epe/empirical_privacy_estimation_lib.py`` (Andrew et al., ICLR 2024).

    Args:
        mu0: mean of the first (null, e.g. unobserved canaries) distribution.
        sigma0: standard deviation of the first distribution, > 0.
        mu1: mean of the second (e.g. observed canaries) distribution.
        sigma1: standard deviation of the second distribution, > 0.
        delta: target delta, in (0, 1).

    Returns:
        Epsilon >= 0 (0.0 if the pair is already (0, delta)-indistinguishable; inf if the
        distributions are numerically perfectly separable).

    Raises:
        ValueError: on non-finite means, non-positive sigmas, or ``delta`` outside (0, 1).
    """
    params = [float(x) for x in (mu0, sigma0, mu1, sigma1)]
    if not all(math.isfinite(x) for x in params):
        raise ValueError(f"means and sigmas must be finite, got {params}.")
    mu0, sigma0, mu1, sigma1 = params
    if sigma0 <= 0 or sigma1 <= 0:
        raise ValueError(f"sigmas must be > 0, got sigma0={sigma0}, sigma1={sigma1}.")
    delta = _check_probability(delta, "delta")

    def log_delta_at(eps: float) -> float:
        return max(
            _log_hockey_stick(mu0, sigma0, mu1, sigma1, eps),
            _log_hockey_stick(mu1, sigma1, mu0, sigma0, eps),
        )

    return _solve_epsilon(log_delta_at, delta)


def _cosine_null_logsf(t: ArrayLike, dim: int) -> np.ndarray:
    """log P[X >= t] for the cosine X of a fixed vector and a uniform unit vector in R^dim.

    (1 + X) / 2 ~ Beta((dim - 1) / 2, (dim - 1) / 2), so the tail is a regularised incomplete
    beta function (the reference integrates the density numerically instead; same values).
    For dim >= GAUSSIAN_NULL_MIN_DIM the N(0, 1/dim) approximation is used, as there.
    """
    t = np.asarray(t, dtype=np.float64)
    if dim >= GAUSSIAN_NULL_MIN_DIM:
        return stats.norm.logsf(t, scale=dim**-0.5)
    half = (dim - 1) / 2
    # P[X >= t] = P[X <= -t] by symmetry; betainc is accurate in the lower tail.
    with np.errstate(divide="ignore"):
        return np.log(special.betainc(half, half, np.clip((1.0 - t) / 2.0, 0.0, 1.0)))


def _epsilon_from_rates(log_fpr: np.ndarray, fnr: np.ndarray, delta: float) -> float:
    """Largest epsilon the (FPR, FNR) pairs certify, over both error trade-offs, clipped at 0.

    An (eps, delta)-DP mechanism has FPR >= (1 - delta - FNR) e^-eps and the same with the
    roles swapped (Kairouz et al. 2015); invert both and keep the best valid one.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        via_fpr = np.log(1.0 - delta - fnr) - log_fpr
        via_fnr = np.log(1.0 - delta - np.exp(log_fpr)) - np.log(fnr)
    candidates = np.concatenate([via_fpr, via_fnr])
    candidates = candidates[~np.isnan(candidates)]
    return max(float(candidates.max(initial=-np.inf)), 0.0)


def _closed_form_null_epsilon(mu: float, sigma: float, dim: int, delta: float) -> float:
    """Epsilon of the exact cosine null against N(mu, sigma^2), on a threshold grid.

    Mirrors ``epsilon_closed_form_null_gaussian_alt`` of the one-shot reference for
    dim < GAUSSIAN_NULL_MIN_DIM: thresholds on a uniform grid of 10,000 points from where the
    null's FPR reaches 1 - delta to where the alternative's FNR does.
    """
    if mu <= 0:
        raise ValueError(
            f"the observed cosines must have a positive mean with the exact null, got {mu}."
        )
    half = (dim - 1) / 2
    lo = 2.0 * special.betaincinv(half, half, delta) - 1.0  # null ppf at delta
    hi = stats.norm.ppf(1.0 - delta, loc=mu, scale=sigma)
    grid = np.linspace(lo, hi, _CLOSED_FORM_GRID_POINTS)
    return _epsilon_from_rates(
        _cosine_null_logsf(grid, dim), stats.norm.cdf(grid, loc=mu, scale=sigma), delta
    )


def _fit_gaussian(values: np.ndarray, name: str) -> tuple[float, float]:
    mu, sigma = float(np.mean(values)), float(np.std(values))
    if not sigma > 0:
        raise ValueError(f"{name} have zero spread; cannot fit a Gaussian to them.")
    return mu, sigma


def one_shot_epsilon(
    observed_cosines: ArrayLike,
    unobserved_cosines: ArrayLike | None,
    delta: float,
    *,
    dim: int | None = None,
) -> float:
    """One-shot empirical epsilon estimate from canary cosines.

    Andrew, Chien, Thakkar, et al., "One-shot empirical privacy estimation for federated
    learning" (ICLR 2024), Algorithm 1: fit N(mu, sigma^2) to the observed (inserted)
    canaries' cosines and return the epsilon at ``delta`` of separating it from the null
    distribution of cosines of canaries that took no part in training. The null is either

    * fit as N(mu0, sigma0^2) to ``unobserved_cosines`` (held-out canaries; needed for the
      all-iterates statistic, whose null has no closed form), giving
      ``gaussian_pair_epsilon(mu0, sigma0, mu, sigma, delta)``; or
    * exact, when ``unobserved_cosines`` is None and ``dim`` (model dimension) is given: the
      cosine of a fixed vector with a uniform unit vector, N(0, 1/dim) for dim >= 1000 and the
      exact Beta-shaped law below (final-model statistic).

    Both follow google-research/federated, ``one_shot_epe/empirical_privacy_estimation_lib.py``
    (``epsilon_two_gaussians`` and ``epsilon_closed_form_null_gaussian_alt``). Gaussians are
    fit by maximum likelihood (mean and population standard deviation). This is an estimate,
    not a confidence bound; see ``jeffreys_epsilon_lower_bound`` for a bound.

    Args:
        observed_cosines: statistics of canaries inserted in training (at least 2).
        unobserved_cosines: statistics of held-out canaries (at least 2), or None to use the
            exact null of dimension ``dim``.
        delta: delta at which epsilon is computed, in (0, 1).
        dim: model dimension, only (and then required) when ``unobserved_cosines`` is None.

    Returns:
        The epsilon estimate, >= 0.

    Raises:
        ValueError: on too few or non-finite cosines, zero spread, ``delta`` outside (0, 1),
            a bad ``dim``, both or neither null given, or (exact null with dim < 1000) a
            non-positive mean of the observed cosines.
    """
    observed = _check_scores(observed_cosines, "observed_cosines", min_size=2)
    delta = _check_probability(delta, "delta")
    mu1, sigma1 = _fit_gaussian(observed, "observed_cosines")
    if unobserved_cosines is not None:
        if dim is not None:
            raise ValueError("give either unobserved_cosines or dim (exact null), not both.")
        unobserved = _check_scores(unobserved_cosines, "unobserved_cosines", min_size=2)
        mu0, sigma0 = _fit_gaussian(unobserved, "unobserved_cosines")
        return gaussian_pair_epsilon(mu0, sigma0, mu1, sigma1, delta)
    if dim is None:
        raise ValueError("without unobserved_cosines, dim is needed for the exact null.")
    dim = _check_dim(dim)
    if dim >= GAUSSIAN_NULL_MIN_DIM:
        return gaussian_pair_epsilon(0.0, dim**-0.5, mu1, sigma1, delta)
    return _closed_form_null_epsilon(mu1, sigma1, dim, delta)


def _jeffreys_upper(k: np.ndarray, n: int, significance: float) -> np.ndarray:
    """One-sided Jeffreys upper confidence bound on a binomial rate from k of n."""
    return stats.beta.ppf(1.0 - significance, k + 0.5, n - k + 0.5)


def _clopper_pearson_upper(k: np.ndarray, n: int, significance: float) -> np.ndarray:
    """One-sided Clopper-Pearson (exact) upper confidence bound on a binomial rate from k of n.

    Conservative: it covers with probability at least ``1 - significance`` for
    every rate, where Jeffreys' interval can undercover.
    """
    k = np.asarray(k)
    with np.errstate(invalid="ignore"):
        upper = stats.beta.ppf(1.0 - significance, k + 1, np.maximum(n - k, 1))
    return np.where(k >= n, 1.0, upper)


_UPPER_BOUNDS = {"jeffreys": _jeffreys_upper, "clopper_pearson": _clopper_pearson_upper}


def threshold_epsilon_lower_bound(
    observed_scores: ArrayLike,
    unobserved_scores: ArrayLike | None,
    delta: float,
    significance: float = 0.05,
    *,
    dim: int | None = None,
    interval: str = "jeffreys",
) -> float:
    """Epsilon lower bound from threshold tests on canary scores, with binomial intervals.

    The classic membership-test bound (Jagielski, Ullman, Oprea, "Auditing differentially
    private machine learning", NeurIPS 2020) as used by Andrew et al. (ICLR 2024) for
    comparison: at every threshold, upper-bound the false positive and false negative rates
    by one-sided Jeffreys intervals at level ``significance``, invert the DP hypothesis-test
    inequality both ways, and take the best threshold. Follows
    ``optimal_epsilon_lower_bound`` and ``optimal_epsilon_lower_bound_closed_form_null`` of
    google-research/federated, ``one_shot_epe/empirical_privacy_estimation_lib.py``, which
    (like this function) make no correction for choosing the best threshold.

    Args:
        observed_scores: scores of canaries inserted in training (higher = more exposed).
        unobserved_scores: scores of held-out canaries, or None to use the exact cosine null
            of dimension ``dim`` (then the FPR is known exactly and only the FNR is bounded).
        delta: delta of the DP claim under test, in (0, 1).
        significance: level of each one-sided interval, in (0, 0.5).
        dim: model dimension, only (and then required) when ``unobserved_scores`` is None.
        interval: ``jeffreys`` (the reference's; can undercover) or ``clopper_pearson``
            (exact, conservative: the bound then holds with probability at least
            ``1 - significance`` per threshold for independent scores).

    Returns:
        The epsilon lower bound; 0.0 if nothing can be certified.

    Raises:
        ValueError: on empty or non-finite scores, ``delta`` outside (0, 1),
            ``significance`` outside (0, 0.5), a bad ``dim``, or both or neither null given.
    """
    observed = _check_scores(observed_scores, "observed_scores")
    delta = _check_probability(delta, "delta")
    significance = _check_probability(significance, "significance", upper=0.5)
    if interval not in _UPPER_BOUNDS:
        raise ValueError(f"interval must be one of {sorted(_UPPER_BOUNDS)}, got {interval!r}.")
    upper = _UPPER_BOUNDS[interval]
    n_seen = observed.size

    if unobserved_scores is None:
        if dim is None:
            raise ValueError("without unobserved_scores, dim is needed for the exact null.")
        dim = _check_dim(dim)
        # The best threshold sits just below an observed score: test t = each score, counting
        # only the strictly smaller observed scores as false negatives.
        thresholds = np.sort(observed)
        log_fpr = _cosine_null_logsf(thresholds, dim)
        fnr = upper(np.arange(n_seen), n_seen, significance)
        return _epsilon_from_rates(log_fpr, fnr, delta)

    if dim is not None:
        raise ValueError("give either unobserved_scores or dim (exact null), not both.")
    unobserved = _check_scores(unobserved_scores, "unobserved_scores")
    n_unseen = unobserved.size
    # Sweep the threshold up through the pooled sorted scores; on ties the unobserved score
    # comes first, i.e. a tied observed canary is still guessed "in".
    pooled = np.concatenate([observed, unobserved])
    is_seen = np.concatenate([np.ones(n_seen, bool), np.zeros(n_unseen, bool)])
    order = np.lexsort((is_seen, pooled))
    seen_below = np.concatenate([[0], np.cumsum(is_seen[order])])
    unseen_below = np.arange(pooled.size + 1) - seen_below
    fpr = upper(n_unseen - unseen_below, n_unseen, significance)
    fnr = upper(seen_below, n_seen, significance)
    return _epsilon_from_rates(np.log(fpr), fnr, delta)


# The reference's name (Jeffreys intervals are its default).
jeffreys_epsilon_lower_bound = threshold_epsilon_lower_bound
