"""Matrix-factorization DP-FTRL: square-root Toeplitz, banded, BLT and tree factorizations.

The workload is the prefix-sum matrix ``A`` (n x n, lower-triangular ones). A factorization
``A = B C`` releases ``C x + z`` with ``z ~ N(0, sigma^2 I)`` (per coordinate, per model
dimension); the model sees ``B (C x + z) = A x + B z``, i.e. round ``t`` adds the correlated noise
``(C^{-1} z)_t`` to that round's clipped sum. The privacy cost is that of a Gaussian mechanism
with noise multiplier ``sigma / sens(C)``.

Conventions used throughout:

* **Participation.** A user contributes to at most ``participations`` rounds, and two of its
  rounds ``i < j`` satisfy ``j - i >= min_separation`` (so ``min_separation=1`` allows
  consecutive rounds): the b-min-separation schema of [BANDED]. Each contribution has L2
  norm <= 1. ``participations=None`` means as many as the separation allows,
  ``ceil(n / min_separation)``.
* **Error.** ``prefix_sum_error`` is the standard deviation of the noise in the released prefix
  sums for unit noise (``sigma = 1``): the row norms of ``B = A C^{-1}``. "rmse" is the root of
  the mean over rounds of the squared row norms, "max" the largest row norm.
  ``..._per_noise_multiplier`` variants multiply by ``sens(C)``, i.e. they are the error at noise
  multiplier 1 (``sigma = sens(C)``), which compares factorizations at equal privacy.

References:
    [MEMF] Choquette-Choo, McMahan, Rush, Thakurta, "Multi-Epoch Matrix Factorization
        Mechanisms for Private Machine Learning", ICML 2023 (arXiv:2211.06530).
    [BANDED] Choquette-Choo, Ganesh, McKenna, McMahan, Rush, Thakurta, Xu, "(Amplified) Banded
        Matrix Factorization: A unified approach to private training", NeurIPS 2023
        (arXiv:2306.08153).
    [FHU] Fichtenberger, Henzinger, Upadhyay, "Constant Matters: Fine-grained Error Bound on
        Differentially Private Continual Observation", ICML 2023 (arXiv:2202.11205).
    [BSR] Kalinin, Lampert, "Banded Square Root Matrix Factorization for Differentially Private
        Model Training", NeurIPS 2024 (arXiv:2405.13763), Theorem 2.
    [BLT] Dvijotham, McMahan, Pillutla, Steinke, Thakurta, "Efficient and Near-Optimal Noise
        Generation for Streaming Differential Privacy", FOCS 2024 (arXiv:2404.16706).
    [HASSLE] McMahan, Xu, Zhang, "A Hassle-free Algorithm for Private Learning in Practice:
        Don't Use Tree Aggregation, Use BLTs", EMNLP Industry 2024 (arXiv:2408.08868).
    [INV] McMahan, Pillutla, "An Inversion Theorem for Buffered Linear Toeplitz (BLT) Matrices
        and Applications to Streaming Differential Privacy", 2025 (arXiv:2504.21413).
    [TREE] Kairouz, McMahan, Song, Thakkar, Thakurta, Xu, "Practical and Private (Deep) Learning
        without Sampling or Shuffling", ICML 2021 (arXiv:2103.00039); Honaker, "Efficient Use of
        Differentially Private Binary Trees", 2015.

The reference implementations these follow are google-deepmind/jax_privacy
(``jax_privacy/matrix_factorization/``) and google-research/federated
(``multi_epoch_dp_matrix_factorization/``); this module is an independent numpy/scipy version.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.signal

KINDS = ("rmse", "max")
DEFAULT_MAX_PATTERNS = 1_000_000
_CHUNK = 4096
_MONOTONE_RTOL = 1e-12  # rounding-level increases tolerated in "non-increasing" coefficients


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def _check_vector(name: str, values, allow_empty: bool = False) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}")
    if array.size == 0 and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _check_matrix(name: str, matrix, square: bool = False) -> np.ndarray:
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {array.shape}")
    if square and array.shape[0] != array.shape[1]:
        raise ValueError(f"{name} must be square, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _check_participation(participations, min_separation) -> tuple[int | None, int]:
    if participations is not None:
        participations = _check_int("participations", participations, 1)
    return participations, _check_int("min_separation", min_separation, 1)


def _pad(coefficients: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n)
    m = min(n, coefficients.size)
    out[:m] = coefficients[:m]
    return out


def _impulse(n: int) -> np.ndarray:
    delta = np.zeros(n)
    delta[0] = 1.0
    return delta


# --------------------------------------------------------------------------- coefficients


def sqrt_toeplitz_coefficients(n: int) -> np.ndarray:
    """Coefficients of the lower-triangular Toeplitz square root ``C`` of the prefix-sum matrix.

    ``C @ C = A``; the coefficients are those of ``(1 - x)^(-1/2)``: 1, 1/2, 3/8, 5/16, 35/128,
    ..., i.e. ``binom(2k, k) / 4^k``. This ``C`` is the optimal Toeplitz factorization for max
    error under single participation ([FHU]; optimality shown in [BLT]). Computed by the
    recurrence ``c_k = c_{k-1} (2k - 1) / (2k)``, which is exact in floating point while the
    (dyadic) values fit in 53 bits.

    Args:
        n: number of coefficients, >= 1.

    Returns:
        Array of length ``n``.

    Raises:
        ValueError: if ``n`` is not an integer >= 1.
    """
    n = _check_int("n", n, 1)
    out = np.empty(n)
    value = 1.0
    out[0] = value
    for k in range(1, n):
        value = value * (2 * k - 1) / (2 * k)
        out[k] = value
    return out


def sqrt_toeplitz_inverse_coefficients(n: int) -> np.ndarray:
    """Coefficients of ``C^{-1}`` for the square-root factorization ([FHU]).

    These are the coefficients of ``(1 - x)^(1/2)``: 1, -1/2, -1/8, -1/16, -5/128, ..., by the
    recurrence ``r_k = r_{k-1} (2k - 3) / (2k)``.

    Args:
        n: number of coefficients, >= 1.

    Returns:
        Array of length ``n``.

    Raises:
        ValueError: if ``n`` is not an integer >= 1.
    """
    n = _check_int("n", n, 1)
    out = np.empty(n)
    value = 1.0
    out[0] = value
    for k in range(1, n):
        value = value * (2 * k - 3) / (2 * k)
        out[k] = value
    return out


def prefix_sum_matrix(n: int) -> np.ndarray:
    """The prefix-sum workload ``A``: n x n lower-triangular ones ([MEMF], Section 2).

    Args:
        n: number of rounds, >= 1.

    Returns:
        The n x n matrix.

    Raises:
        ValueError: if ``n`` is not an integer >= 1.
    """
    n = _check_int("n", n, 1)
    return np.tri(n)


def toeplitz(coefficients, n: int) -> np.ndarray:
    """The n x n lower-triangular Toeplitz matrix with first column ``coefficients``.

    Follows ``toeplitz.materialize_lower_triangular`` of jax_privacy: missing coefficients are
    zero, extra ones are dropped.

    Args:
        coefficients: the leading entries of the first column.
        n: matrix size, >= 1.

    Returns:
        The n x n matrix.

    Raises:
        ValueError: on a non-1-D or non-finite ``coefficients`` or a bad ``n``.
    """
    n = _check_int("n", n, 1)
    column = _pad(_check_vector("coefficients", coefficients), n)
    return scipy.linalg.toeplitz(column, np.zeros(n))


def banded_toeplitz(coefficients, bands: int, n: int) -> np.ndarray:
    """The n x n lower-triangular Toeplitz matrix truncated to ``bands`` bands ([BANDED]).

    Only ``coefficients[:bands]`` are used, so ``C[i, j] = 0`` for ``i - j >= bands``.

    Args:
        coefficients: the leading entries of the first column.
        bands: number of non-zero diagonals (the main one included), in ``[1, n]``.
        n: matrix size, >= 1.

    Returns:
        The n x n banded matrix.

    Raises:
        ValueError: on bad arguments.
    """
    n = _check_int("n", n, 1)
    bands = _check_int("bands", bands, 1)
    if bands > n:
        raise ValueError(f"bands must be <= n={n}, got {bands}")
    return toeplitz(_check_vector("coefficients", coefficients)[:bands], n)


def banded_column_norms(coefficients, n: int) -> np.ndarray:
    """Column L2 norms of the n x n banded Toeplitz matrix with these coefficients.

    Column ``j`` keeps ``min(len(coefficients), n - j)`` entries, so only the last columns are
    shorter. Used to column-normalize a banded strategy ([BANDED], Section 4; jax_privacy
    ``toeplitz.inverse_as_streaming_matrix(column_normalize_for_n=n)``).

    Args:
        coefficients: the banded Toeplitz coefficients.
        n: matrix size, >= 1.

    Returns:
        Array of length ``n``.

    Raises:
        ValueError: on bad arguments.
    """
    n = _check_int("n", n, 1)
    c = _pad(_check_vector("coefficients", coefficients), n)
    return np.sqrt(np.cumsum(c**2))[::-1].copy()


def column_normalize(C) -> np.ndarray:
    """Scales every column of ``C`` to unit L2 norm ([BANDED], Section 4).

    For banded ``C`` and ``min_separation >= bands`` this makes the sensitivity exactly
    ``sqrt(max participations)``.

    Args:
        C: a matrix with no zero column.

    Returns:
        The column-normalized copy.

    Raises:
        ValueError: if ``C`` is not a finite matrix or has a zero column.
    """
    C = _check_matrix("C", C)
    norms = np.linalg.norm(C, axis=0)
    if np.any(norms == 0):
        raise ValueError("C has a zero column, which cannot be normalized")
    return C / norms


def toeplitz_inverse_coefficients(coefficients, n: int) -> np.ndarray:
    """Toeplitz coefficients of ``C^{-1}`` for lower-triangular Toeplitz ``C``.

    The inverse of a lower-triangular Toeplitz matrix is lower-triangular Toeplitz, with the
    power-series reciprocal as coefficients (jax_privacy ``toeplitz.inverse_coef``). Computed by
    forward substitution, O(n * len(coefficients)).

    Args:
        coefficients: coefficients of ``C``; ``coefficients[0]`` must be non-zero.
        n: number of coefficients to return, >= 1.

    Returns:
        Array of length ``n``.

    Raises:
        ValueError: on bad arguments or ``coefficients[0] == 0``.
    """
    n = _check_int("n", n, 1)
    c = _check_vector("coefficients", coefficients)[:n]
    if c[0] == 0:
        raise ValueError("coefficients[0] must be non-zero for C to be invertible")
    return scipy.signal.lfilter([1.0], c, _impulse(n))


# --------------------------------------------------------------------------- sensitivity


def max_participations(n: int, participations: int | None, min_separation: int) -> int:
    """How many times a user can really participate in ``n`` rounds.

    ``min(participations, ceil(n / min_separation))`` (jax_privacy
    ``sensitivity.minsep_true_max_participations``).

    Args:
        n: number of rounds, >= 1.
        participations: the cap, or None for no cap.
        min_separation: minimum distance between two participations, >= 1.

    Returns:
        The effective number of participations.

    Raises:
        ValueError: on bad arguments.
    """
    n = _check_int("n", n, 1)
    participations, min_separation = _check_participation(participations, min_separation)
    fit = -(-n // min_separation)
    return fit if participations is None else min(participations, fit)


def max_participation_sum(values, participations: int | None, min_separation: int) -> float:
    """``max sum_{i in pattern} values[i]`` over allowed participation patterns.

    Dynamic programme over rounds, O(n * participations): Algorithm 3 (VecSens) of [BANDED].
    The empty pattern counts, so the result is >= 0.

    Args:
        values: one value per round.
        participations: maximum participations (None: as many as fit).
        min_separation: minimum distance between two participations.

    Returns:
        The maximum.

    Raises:
        ValueError: on bad arguments.
    """
    x = _check_vector("values", values)
    n = x.size
    k = max_participations(n, participations, min_separation)
    best = np.zeros(n + min_separation)
    for _ in range(k):
        best[:n] = x + best[min_separation : min_separation + n]
        best = np.maximum.accumulate(best[::-1])[::-1]
    return float(best[0])


def _pattern_count(n: int, k: int, sep: int) -> int:
    total = 0
    for m in range(1, k + 1):
        free = n - (m - 1) * (sep - 1)
        if free < m:
            break
        total += math.comb(free, m)
    return total


def _patterns(n: int, k: int, sep: int) -> Iterator[np.ndarray]:
    """All allowed patterns, as (count, m) index arrays, in chunks.

    A pattern of m rounds with gaps >= sep is ``c + (0, sep-1, 2(sep-1), ...)`` for a
    combination ``c`` of m elements of ``range(n - (m-1)(sep-1))``.
    """
    for m in range(1, k + 1):
        free = n - (m - 1) * (sep - 1)
        if free < m:
            break
        offsets = np.arange(m) * (sep - 1)
        combos = itertools.combinations(range(free), m)
        while True:
            flat = np.fromiter(
                itertools.chain.from_iterable(itertools.islice(combos, _CHUNK)), dtype=np.intp
            )
            if flat.size == 0:
                break
            yield flat.reshape(-1, m) + offsets


def sensitivity_squared(
    C,
    participations: int | None,
    min_separation: int,
    *,
    max_patterns: int = DEFAULT_MAX_PATTERNS,
) -> float:
    """Squared L2 sensitivity of ``x -> C x`` by brute force over participation patterns.

    ``max_{pattern} sum_{i, j in pattern} |X_ij|`` with ``X = C^T C`` ([MEMF], Section 2;
    [BANDED], Eq. (5)). When every ``X_ij`` within every pattern is >= 0 (e.g. non-negative
    ``C``, or columns of a pattern orthogonal) this is exactly
    ``max_{pattern} ||sum_{i in pattern} C[:, i]||^2``, the sensitivity for vector-valued
    contributions of norm <= 1. Otherwise it is the standard upper bound, safe for accounting.

    Args:
        C: the strategy matrix (any shape; columns are rounds).
        participations: maximum participations of a user (None: as many as fit).
        min_separation: minimum distance between two participations, >= 1.
        max_patterns: refuse (ValueError) when there are more patterns than this.

    Returns:
        The squared sensitivity.

    Raises:
        ValueError: on bad arguments or too many patterns for brute force.
    """
    C = _check_matrix("C", C)
    max_patterns = _check_int("max_patterns", max_patterns, 1)
    n = C.shape[1]
    k = max_participations(n, participations, min_separation)
    count = _pattern_count(n, k, min_separation)
    if count > max_patterns:
        raise ValueError(
            f"brute-force sensitivity needs {count} participation patterns for n={n}, "
            f"participations={k}, min_separation={min_separation} (limit max_patterns="
            f"{max_patterns}); use a banded C with min_separation >= bands, or a Toeplitz C "
            "with non-negative non-increasing coefficients, for which `sensitivity` is exact "
            "and fast"
        )
    X = np.abs(C.T @ C)
    best = 0.0
    for chunk in _patterns(n, k, min_separation):
        values = X[chunk[:, :, None], chunk[:, None, :]].sum(axis=(1, 2))
        best = max(best, float(values.max()))
    return best


def banded_sensitivity_squared(C, participations: int | None, min_separation: int) -> float:
    """Exact squared sensitivity when columns ``min_separation`` or more apart are orthogonal.

    This holds for lower-triangular ``C`` with at most ``min_separation`` bands. A pattern's
    cross terms then vanish and the sensitivity is the best pattern sum of squared column norms,
    found by `max_participation_sum` ([BANDED], Theorem 2; jax_privacy
    ``sensitivity.get_sensitivity_banded``). Exact whatever the signs of ``C``.

    Args:
        C: the strategy matrix.
        participations: maximum participations (None: as many as fit).
        min_separation: minimum distance between two participations.

    Returns:
        The squared sensitivity.

    Raises:
        ValueError: on bad arguments, or if some columns ``>= min_separation`` apart are not
            orthogonal.
    """
    C = _check_matrix("C", C)
    participations, min_separation = _check_participation(participations, min_separation)
    if not _far_columns_orthogonal(C, min_separation):
        raise ValueError(
            "columns of C that are min_separation or more apart must be orthogonal (e.g. C "
            f"lower-triangular with at most min_separation={min_separation} bands)"
        )
    squared_norms = np.sum(C * C, axis=0)
    return max_participation_sum(squared_norms, participations, min_separation)


def _far_columns_orthogonal(C: np.ndarray, sep: int) -> bool:
    """Whether ``C[:, i] . C[:, j] == 0`` whenever ``|i - j| >= sep``."""
    n = C.shape[1]
    if sep >= n:
        return True
    nonzero = C != 0
    has = nonzero.any(axis=0)
    first = np.where(has, nonzero.argmax(axis=0), C.shape[0])
    last = np.where(has, C.shape[0] - 1 - nonzero[::-1].argmax(axis=0), -1)
    # Disjoint row supports for every pair i <= j - sep suffice.
    last_before = np.maximum.accumulate(last)[: n - sep]
    if np.all(last_before < first[sep:]):
        return True
    X = C.T @ C
    far = np.abs(np.subtract.outer(np.arange(n), np.arange(n))) >= sep
    return bool(np.all(X[far] == 0))


def toeplitz_sensitivity_squared(
    coefficients, n: int, participations: int | None, min_separation: int
) -> float:
    """Exact squared sensitivity of a Toeplitz ``C`` with non-negative non-increasing coefficients.

    The worst pattern is then the earliest one, ``{0, b, 2b, ...}`` with ``b = min_separation``
    ([BSR], Theorem 2; jax_privacy ``toeplitz.minsep_sensitivity_squared``). O(n * k).

    Args:
        coefficients: coefficients of ``C`` (non-negative, non-increasing; increases at the
            rounding level, relative 1e-12, are tolerated).
        n: number of rounds, >= 1.
        participations: maximum participations (None: as many as fit).
        min_separation: minimum distance between two participations.

    Returns:
        The squared sensitivity.

    Raises:
        ValueError: on bad arguments or coefficients that are negative or increasing.
    """
    n = _check_int("n", n, 1)
    c = _pad(_check_vector("coefficients", coefficients), n)
    k = max_participations(n, participations, min_separation)
    _check_non_increasing(c)
    column_sum = _shift_sum(c, k, min_separation)
    return float(column_sum @ column_sum)


def _check_non_increasing(c: np.ndarray) -> None:
    if np.any(c < 0):
        raise ValueError(f"coefficients must be non-negative, found minimum {c.min()}")
    tolerance = _MONOTONE_RTOL * max(abs(c[0]), 1e-300)
    increase = np.diff(c)
    if increase.size and increase.max() > tolerance:
        raise ValueError(
            f"coefficients must be non-increasing, found an increase of {increase.max()} at "
            f"index {int(increase.argmax()) + 1}"
        )


def _shift_sum(c: np.ndarray, k: int, sep: int) -> np.ndarray:
    """``sum_{m < k} c`` shifted down by ``m * sep`` (the column sum of pattern {0, sep, ...})."""
    n = c.size
    out = np.zeros(n)
    for m in range(k):
        shift = m * sep
        if shift >= n:
            break
        out[shift:] += c[: n - shift]
    return out


def _shift_sum_adjoint(v: np.ndarray, k: int, sep: int) -> np.ndarray:
    n = v.size
    out = np.zeros(n)
    for m in range(k):
        shift = m * sep
        if shift >= n:
            break
        out[: n - shift] += v[shift:]
    return out


def _lower_toeplitz_column(C: np.ndarray) -> np.ndarray | None:
    """The first column if square ``C`` is exactly lower-triangular Toeplitz, else None."""
    if C.shape[0] != C.shape[1]:
        return None
    column = C[:, 0]
    if np.array_equal(C, scipy.linalg.toeplitz(column, np.zeros(C.shape[0]))):
        return column.copy()
    return None


def sensitivity(
    C,
    participations: int | None,
    min_separation: int,
    *,
    max_patterns: int = DEFAULT_MAX_PATTERNS,
) -> float:
    """L2 sensitivity of ``x -> C x``, by the fastest method that is provably exact.

    In order: a single participation (largest column norm); lower-triangular Toeplitz ``C`` with
    non-negative non-increasing coefficients (`toeplitz_sensitivity_squared`, [BSR]); columns
    ``min_separation`` or more apart orthogonal, e.g. b-banded ``C`` with
    ``min_separation >= b`` (`banded_sensitivity_squared`, [BANDED]); otherwise brute force
    (`sensitivity_squared`, exact when ``C^T C >= 0`` on every pattern, an upper bound
    otherwise), which is refused past ``max_patterns`` patterns.

    Args:
        C: the strategy matrix (columns are rounds).
        participations: maximum participations (None: as many as fit).
        min_separation: minimum distance between two participations, >= 1.
        max_patterns: brute-force limit.

    Returns:
        The sensitivity (not squared).

    Raises:
        ValueError: on bad arguments or when brute force would be needed past the limit.
    """
    C = _check_matrix("C", C)
    n = C.shape[1]
    k = max_participations(n, participations, min_separation)
    if k == 1:
        return float(np.linalg.norm(C, axis=0).max())
    column = _lower_toeplitz_column(C)
    if column is not None:
        try:
            return math.sqrt(toeplitz_sensitivity_squared(column, n, k, min_separation))
        except ValueError:
            pass  # negative or increasing coefficients: try the other methods
    if _far_columns_orthogonal(C, min_separation):
        return math.sqrt(banded_sensitivity_squared(C, k, min_separation))
    return math.sqrt(sensitivity_squared(C, k, min_separation, max_patterns=max_patterns))


# --------------------------------------------------------------------------- error


def _reduce(squared_row_norms: np.ndarray, kind: str) -> float:
    if kind == "rmse":
        return float(math.sqrt(np.mean(squared_row_norms)))
    return float(math.sqrt(np.max(squared_row_norms)))


def prefix_sum_error(C, kind: str = "rmse", *, B=None) -> float:
    """Noise std of the released prefix sums for unit noise (``sigma = 1``).

    With ``B = A C^{-1}`` (or the given decoder ``B``, which must satisfy ``B C = A``), round
    ``t``'s prefix sum carries noise of std ``||B[t]||``. ``"rmse"`` is
    ``sqrt(mean_t ||B[t]||^2)``, ``"max"`` is ``max_t ||B[t]||`` ([MEMF], Section 2; jax_privacy
    ``dense.per_query_error``). This is *not* scaled by sensitivity: see
    `prefix_sum_error_per_noise_multiplier` to compare factorizations at equal privacy.

    Args:
        C: strategy matrix; square and invertible unless ``B`` is given.
        kind: ``"rmse"`` or ``"max"``.
        B: optional decoder (n x m for m x n ``C``), e.g. the tree's.

    Returns:
        The error.

    Raises:
        ValueError: on bad arguments, a singular ``C``, or ``B C != A``.
    """
    kind = _check_kind(kind)
    if B is None:
        C = _check_matrix("C", C, square=True)
        n = C.shape[0]
        A = np.tri(n)
        if np.array_equal(C, np.tril(C)):
            diagonal = np.diag(C)
            if np.any(diagonal == 0):
                raise ValueError("C is singular (zero on the diagonal)")
            B = scipy.linalg.solve_triangular(C.T, A.T, lower=False).T
        else:
            try:
                B = np.linalg.solve(C.T, A.T).T
            except np.linalg.LinAlgError as err:
                raise ValueError("C is singular") from err
    else:
        C = _check_matrix("C", C)
        B = _check_matrix("B", B)
        n = C.shape[1]
        if B.shape != (n, C.shape[0]):
            raise ValueError(f"B must have shape {(n, C.shape[0])}, got {B.shape}")
        if not np.allclose(B @ C, np.tri(n), atol=1e-9):
            raise ValueError("B @ C must equal the prefix-sum matrix A")
    return _reduce(np.sum(B * B, axis=1), kind)


def prefix_sum_error_per_noise_multiplier(
    C,
    kind: str = "rmse",
    participations: int | None = 1,
    min_separation: int = 1,
    *,
    B=None,
) -> float:
    """Prefix-sum error at noise multiplier 1, i.e. ``sens(C) * prefix_sum_error(C)``.

    With noise multiplier ``m`` the noise std is ``sigma = m * sens(C)``, so the error is
    ``m`` times this value: it compares factorizations at equal privacy ([MEMF], Eq. (2);
    jax_privacy's ``loss`` is its square).

    Args:
        C: strategy matrix.
        kind: ``"rmse"`` or ``"max"``.
        participations: maximum participations (None: as many as fit).
        min_separation: minimum distance between two participations.
        B: optional decoder, as in `prefix_sum_error`.

    Returns:
        The error per unit noise multiplier.

    Raises:
        ValueError: on bad arguments (see `sensitivity` and `prefix_sum_error`).
    """
    return sensitivity(C, participations, min_separation) * prefix_sum_error(C, kind, B=B)


def _prefix_weights(n: int, kind: str) -> np.ndarray:
    """Weights w with total (kind=rmse) or last-row (kind=max) squared error = sum w g^2."""
    return np.arange(n, 0, -1, dtype=np.float64) if kind == "rmse" else np.ones(n)


def toeplitz_prefix_sum_error(coefficients, n: int, kind: str = "rmse") -> float:
    """`prefix_sum_error` for a lower-triangular Toeplitz ``C``, from its coefficients.

    ``B = A C^{-1}`` is Toeplitz with coefficients ``g = cumsum(C^{-1} coefficients)``; row ``t``
    has squared norm ``sum_{s <= t} g_s^2``, so the largest is the last (jax_privacy
    ``toeplitz.per_query_error``). Unit noise, not scaled by sensitivity.

    Args:
        coefficients: coefficients of ``C`` (``coefficients[0] != 0``).
        n: number of rounds, >= 1.
        kind: ``"rmse"`` or ``"max"``.

    Returns:
        The error.

    Raises:
        ValueError: on bad arguments.
    """
    kind = _check_kind(kind)
    g = np.cumsum(toeplitz_inverse_coefficients(coefficients, n))
    return float(math.sqrt(_prefix_weights(n, kind) @ g**2 / (n if kind == "rmse" else 1)))


# --------------------------------------------------------------------------- banded optimizer


def _column_counts(n: int, bands: int, k: int, sep: int) -> np.ndarray:
    """counts[i] = #{m < k : m * sep + i < n}: how often c_i^2 enters sens^2 (sep >= bands)."""
    i = np.arange(bands)
    return np.array([sum(1 for m in range(k) if m * sep + j < n) for j in i], dtype=np.float64)


def _banded_log_loss(tail: np.ndarray, n: int, weights: np.ndarray, counts: np.ndarray):
    c = np.concatenate([[1.0], tail])
    h = scipy.signal.lfilter([1.0], c, _impulse(n))
    g = np.cumsum(h)
    error = weights @ g**2
    sens2 = counts @ c**2
    loss = error * sens2
    if not np.isfinite(loss) or loss <= 0:
        return np.inf, np.zeros_like(tail)
    g2 = np.cumsum(scipy.signal.convolve(h, h)[:n])
    wg = weights * g
    # dE/dc_j = -2 sum_{s >= j} wg[s] g2[s - j]
    corr = scipy.signal.convolve(wg[::-1], g2)[:n][::-1]
    d_error = -2.0 * corr[1 : c.size]
    d_sens2 = 2.0 * c[1:] * counts[1:]
    return math.log(loss), d_error / error + d_sens2 / sens2


def optimize_banded_toeplitz(
    n: int,
    bands: int,
    participations: int | None = 1,
    min_separation: int = 1,
    *,
    kind: str = "rmse",
    max_iterations: int = 1000,
) -> np.ndarray:
    """Banded Toeplitz strategy coefficients minimizing error times sensitivity.

    Minimizes ``error(C)^2 * sens(C)^2`` over the ``bands`` coefficients of a banded Toeplitz
    ``C`` (error: total squared error ``n * RMSE^2`` for ``kind="rmse"``, the last-row squared
    error ``MAX^2`` for ``kind="max"``; the objective is scale invariant, so ``c_0`` is fixed at
    1). L-BFGS-B with analytic gradients, started at the truncated square-root coefficients
    ([BANDED], Section 4; jax_privacy ``toeplitz.optimize_banded_toeplitz``). The sensitivity is
    exact (columns of a pattern are orthogonal) when a user participates once or
    ``min_separation >= bands``; other settings are refused.

    Args:
        n: number of rounds, >= 1.
        bands: number of bands, in ``[1, n]``.
        participations: maximum participations (None: as many as fit).
        min_separation: minimum distance between two participations.
        kind: ``"rmse"`` or ``"max"``.
        max_iterations: L-BFGS iteration limit.

    Returns:
        The ``bands`` coefficients, scaled to unit L2 norm (so a column-normalized strategy and
        the plain one share them; the full columns have norm 1).

    Raises:
        ValueError: on bad arguments, or several participations closer than ``bands``.
    """
    n = _check_int("n", n, 1)
    bands = _check_int("bands", bands, 1)
    if bands > n:
        raise ValueError(f"bands must be <= n={n}, got {bands}")
    kind = _check_kind(kind)
    max_iterations = _check_int("max_iterations", max_iterations, 1)
    k = max_participations(n, participations, min_separation)
    if k > 1 and min_separation < bands:
        raise ValueError(
            f"with {k} participations min_separation ({min_separation}) must be >= bands "
            f"({bands}) for the banded sensitivity to hold"
        )
    start = sqrt_toeplitz_coefficients(bands)
    if bands > 1:
        weights = _prefix_weights(n, kind)
        counts = _column_counts(n, bands, k, min_separation)
        result = scipy.optimize.minimize(
            _banded_log_loss,
            start[1:],
            args=(n, weights, counts),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iterations, "ftol": 1e-15, "gtol": 1e-10},
        )
        start_loss = _banded_log_loss(start[1:], n, weights, counts)[0]
        if np.isfinite(result.fun) and result.fun <= start_loss:
            start = np.concatenate([[1.0], result.x])
    return start / np.linalg.norm(start)


# --------------------------------------------------------------------------- streaming noise


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int | np.integer):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as err:
        raise ValueError(f"shape must be a tuple of non-negative ints, got {shape!r}") from err
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must be a tuple of non-negative ints, got {shape!r}")
    return shape


class BandedNoise:
    """Streams ``(C^{-1} z)_t`` for a banded Toeplitz (optionally column-normalized) ``C``.

    Round ``t`` solves ``sum_{j < b} c_j y_{t-j} = z_t`` for ``y_t`` by forward substitution
    from the last ``b - 1`` values of ``y``, so memory is ``(b - 1) * prod(shape)``. For a
    column-normalized ``C = T diag(1 / norms)`` the output is ``norms[t] * y_t`` ([BANDED],
    Algorithm 9; jax_privacy ``toeplitz.inverse_as_streaming_matrix``). The state (round and
    history) can be exported and restored with `state_dict` / `load_state_dict`.

    Args:
        coefficients: the ``b`` banded coefficients of ``C`` (``coefficients[0] != 0``).
        shape: shape of one round's noise (the model update).
        normalize_columns_for_n: if given, ``C`` is the n x n banded Toeplitz matrix with its
            columns scaled to unit norm, and at most n rounds can be drawn.

    Raises:
        ValueError: on bad arguments.
    """

    def __init__(self, coefficients, shape=(), *, normalize_columns_for_n: int | None = None):
        c = _check_vector("coefficients", coefficients)
        if c[0] == 0:
            raise ValueError("coefficients[0] must be non-zero for C to be invertible")
        self.coefficients = c
        self.shape = _check_shape(shape)
        self.n = None
        self.scale = None
        if normalize_columns_for_n is not None:
            self.n = _check_int("normalize_columns_for_n", normalize_columns_for_n, 1)
            self.scale = banded_column_norms(c, self.n)
        self.round = 0
        self.history = np.zeros((c.size - 1, *self.shape))  # y_{t-1}, y_{t-2}, ...

    def step(self, z) -> np.ndarray:
        """Returns round ``t``'s noise ``(C^{-1} z)_t`` given the fresh Gaussian draw ``z_t``.

        Args:
            z: array of ``shape`` (``N(0, sigma^2)`` per coordinate for DP).

        Returns:
            The correlated noise for this round, of ``shape``.

        Raises:
            ValueError: on a wrong shape, or past ``normalize_columns_for_n`` rounds.
        """
        z = np.asarray(z, dtype=np.float64)
        if z.shape != self.shape:
            raise ValueError(f"z must have shape {self.shape}, got {z.shape}")
        if self.n is not None and self.round >= self.n:
            raise ValueError(f"the column-normalized C has only n={self.n} rounds")
        c = self.coefficients
        inner = np.tensordot(c[1:], self.history, axes=1) if c.size > 1 else 0.0
        y = (z - inner) / c[0]
        if c.size > 1:
            self.history = np.roll(self.history, 1, axis=0)
            self.history[0] = y
        out = y * self.scale[self.round] if self.scale is not None else y
        self.round += 1
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as numpy arrays (``round``; ``history``: the last ``b - 1`` solutions)."""
        return {"round": np.asarray(self.round, dtype=np.int64), "history": self.history.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restores what `state_dict` returned.

        Raises:
            ValueError: if the arrays do not fit this generator.
        """
        history = np.asarray(state["history"], dtype=np.float64)
        if history.shape != self.history.shape:
            raise ValueError(f"history must have shape {self.history.shape}, got {history.shape}")
        self.round = _check_int("round", int(np.asarray(state["round"])), 0)
        self.history = history.copy()


# --------------------------------------------------------------------------- BLT


def blt_coefficients(weights, thetas, n: int) -> np.ndarray:
    """Toeplitz coefficients of a buffered-linear-Toeplitz (BLT) matrix.

    ``c_0 = 1`` and ``c_k = sum_i weights_i * thetas_i^(k-1)`` for ``k >= 1`` ([BLT],
    Definition 1.1; jax_privacy ``BufferedToeplitz.toeplitz_coefs`` with
    ``output_scale = weights`` and ``buf_decay = thetas``). Zero buffers give the identity.

    Args:
        weights: output scales (omega), one per buffer.
        thetas: buffer decays (theta), one per buffer.
        n: number of coefficients, >= 1.

    Returns:
        Array of length ``n``.

    Raises:
        ValueError: on bad arguments.
    """
    n = _check_int("n", n, 1)
    w = _check_vector("weights", weights, allow_empty=True)
    th = _check_vector("thetas", thetas, allow_empty=True)
    if w.shape != th.shape:
        raise ValueError(f"weights and thetas must have the same length, got {w.size}, {th.size}")
    out = np.zeros(n)
    out[0] = 1.0
    if n > 1 and w.size:
        powers = np.power(th[None, :], np.arange(n - 1)[:, None])
        out[1:] = powers @ w
    return out


def _poly_ascending(roots: np.ndarray) -> np.ndarray:
    """Ascending coefficients of prod_i (1 - roots_i x)."""
    return np.poly(roots) if roots.size else np.ones(1)


@dataclass(frozen=True)
class BLT:
    """A BLT strategy matrix ``C`` with ``c_0 = 1``, ``c_k = sum_i w_i theta_i^(k-1)``.

    Its generating function is ``1 + sum_i w_i x / (1 - theta_i x) = P(x) / Q(x)`` with
    ``Q(x) = prod_i (1 - theta_i x)``; ``C^{-1}`` is the BLT of ``Q / P`` ([BLT], Lemma 5.2;
    [INV]). This follows jax_privacy's ``BufferedToeplitz`` (strategy parameterization).

    Attributes:
        weights: output scales (omega), shape (d,).
        thetas: buffer decays (theta), shape (d,).
    """

    weights: np.ndarray
    thetas: np.ndarray

    def __post_init__(self):
        """Checks the weights and thetas (finite, of one length)."""
        w = _check_vector("weights", self.weights, allow_empty=True)
        th = _check_vector("thetas", self.thetas, allow_empty=True)
        if w.shape != th.shape:
            raise ValueError("weights and thetas must have the same length")
        object.__setattr__(self, "weights", w)
        object.__setattr__(self, "thetas", th)

    @property
    def buffers(self) -> int:
        """Number of buffers d."""
        return int(self.thetas.size)

    def coefficients(self, n: int) -> np.ndarray:
        """The first ``n`` Toeplitz coefficients of ``C`` (see `blt_coefficients`)."""
        return blt_coefficients(self.weights, self.thetas, n)

    def numerator(self) -> np.ndarray:
        """Ascending coefficients of ``P(x) = Q(x) C(x)``, a polynomial of degree d."""
        q = _poly_ascending(self.thetas)
        p = q.copy()
        for i in range(self.buffers):
            others = _poly_ascending(np.delete(self.thetas, i))
            p[1 : 1 + others.size] += self.weights[i] * others
        return p

    def inverse_coefficients(self, n: int) -> np.ndarray:
        """The first ``n`` Toeplitz coefficients of ``C^{-1}`` (those of ``Q / P``)."""
        n = _check_int("n", n, 1)
        return scipy.signal.lfilter(_poly_ascending(self.thetas), self.numerator(), _impulse(n))

    def prefix_sum_error(self, n: int, kind: str = "rmse") -> float:
        """`toeplitz_prefix_sum_error` of this ``C`` in O(n * d), from `inverse_coefficients`.

        Unit noise, not scaled by sensitivity.

        Raises:
            ValueError: on bad arguments.
        """
        kind = _check_kind(kind)
        g = np.cumsum(self.inverse_coefficients(n))
        return float(math.sqrt(_prefix_weights(n, kind) @ g**2 / (n if kind == "rmse" else 1)))

    def inverse(self) -> BLT:
        """The BLT parameters of ``C^{-1}``: thetas are the roots of ``x^d P(1/x)``.

        Raises:
            ValueError: if those roots are not real (then ``C^{-1}`` is no real BLT).
        """
        if self.buffers == 0:
            return BLT(np.zeros(0), np.zeros(0))
        roots = np.roots(self.numerator())
        if np.any(np.abs(roots.imag) > 1e-9 * np.maximum(1.0, np.abs(roots))):
            raise ValueError(f"C^{{-1}} is not a real BLT: its buffer decays are {roots}")
        inverse_thetas = np.sort(roots.real)[::-1]
        return BLT(_blt_weights(inverse_thetas, self.thetas), inverse_thetas)

    def noise(self, shape=()) -> BLTNoise:
        """A streaming generator of ``C^{-1} z`` (see `BLTNoise`)."""
        return BLTNoise(self.weights, self.thetas, shape)


def _blt_weights(thetas: np.ndarray, zeros: np.ndarray) -> np.ndarray:
    """w_i = prod_j (th_i - zeros_j) / prod_{j != i} (th_i - th_j): partial fractions of P/Q."""
    d = thetas.size
    w = np.empty(d)
    for i in range(d):
        others = np.delete(thetas, i)
        w[i] = np.prod(thetas[i] - zeros) / np.prod(thetas[i] - others)
    return w


def blt_from_thetas(thetas, inverse_thetas) -> BLT:
    """The BLT ``C`` whose buffer decays are ``thetas`` and whose inverse's are ``inverse_thetas``.

    ``C(x) = prod_j (1 - inverse_thetas_j x) / prod_i (1 - thetas_i x)``, with weights from the
    partial fractions ([BLT], Lemma 5.2; [INV], Theorem 2; jax_privacy
    ``blt_pair_from_theta_pair``). If the two sets interlace,
    ``0 < hat_1 < theta_1 < hat_2 < ... < theta_d < 1``, all weights are positive and
    ``sum(weights) < 1``, so the coefficients are positive and non-increasing.

    Args:
        thetas: buffer decays of ``C``, distinct.
        inverse_thetas: buffer decays of ``C^{-1}``, same length.

    Returns:
        The BLT.

    Raises:
        ValueError: on bad arguments or repeated thetas.
    """
    th = _check_vector("thetas", thetas, allow_empty=True)
    hat = _check_vector("inverse_thetas", inverse_thetas, allow_empty=True)
    if th.shape != hat.shape:
        raise ValueError("thetas and inverse_thetas must have the same length")
    if th.size > 1 and np.min(np.diff(np.sort(th))) <= 0:
        raise ValueError("thetas must be distinct")
    return BLT(_blt_weights(th, hat), th)


class BLTNoise:
    """Streams ``(C^{-1} z)_t`` for a BLT ``C`` with ``d`` buffers, memory ``d * prod(shape)``.

    ``x_t = z_t - sum_i w_i buf_i`` then ``buf_i <- theta_i buf_i + x_t`` ([HASSLE],
    Algorithm 3; jax_privacy ``StreamingMatrixBuilder.build_inverse``): each buffer holds
    ``sum_{k >= 1} theta_i^(k-1) x_{t-k}``. The state can be exported as numpy arrays.

    Args:
        weights: BLT output scales of ``C``.
        thetas: BLT buffer decays of ``C``.
        shape: shape of one round's noise.

    Raises:
        ValueError: on bad arguments.
    """

    def __init__(self, weights, thetas, shape=()):
        blt = BLT(weights, thetas)
        self.weights, self.thetas = blt.weights, blt.thetas
        self.shape = _check_shape(shape)
        self.round = 0
        self.buffers = np.zeros((self.thetas.size, *self.shape))

    def step(self, z) -> np.ndarray:
        """Returns round ``t``'s noise ``(C^{-1} z)_t`` given the fresh Gaussian draw ``z_t``.

        Raises:
            ValueError: on a wrong shape.
        """
        z = np.asarray(z, dtype=np.float64)
        if z.shape != self.shape:
            raise ValueError(f"z must have shape {self.shape}, got {z.shape}")
        if self.thetas.size:
            x = z - np.tensordot(self.weights, self.buffers, axes=1)
            decay = self.thetas.reshape((-1,) + (1,) * len(self.shape))
            self.buffers = decay * self.buffers + x
        else:
            x = z.copy()
        self.round += 1
        return x

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as numpy arrays (``round``; ``buffers`` of shape ``(d, *shape)``)."""
        return {"round": np.asarray(self.round, dtype=np.int64), "buffers": self.buffers.copy()}

    def load_state_dict(self, state: dict) -> None:
        """Restores what `state_dict` returned.

        Raises:
            ValueError: if the arrays do not fit this generator.
        """
        buffers = np.asarray(state["buffers"], dtype=np.float64)
        if buffers.shape != self.buffers.shape:
            raise ValueError(f"buffers must have shape {self.buffers.shape}, got {buffers.shape}")
        self.round = _check_int("round", int(np.asarray(state["round"])), 0)
        self.buffers = buffers.copy()


def _thetas_from_logits(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interlaced 0 < a_1 < ... < a_2d < 1 from 2d free logits (the last logit is fixed at 0)."""
    logits = np.append(u, 0.0)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return np.cumsum(p)[:-1], p


def _logits_from_thetas(a: np.ndarray) -> np.ndarray:
    gaps = np.diff(np.concatenate([[0.0], a, [1.0]]))
    return np.log(gaps[:-1]) - np.log(gaps[-1])


# The optimizer's filters get this floor added to their inputs: a fast-decaying response would
# otherwise get stuck at the smallest subnormal value, which is ~10x slower to process. It moves
# the loss by O(1e-150 * n^2), far below rounding.
_FLOOR = 1e-150


def _cascade(zeros: np.ndarray, poles: np.ndarray, n: int) -> np.ndarray:
    """Impulse response of prod (1 - zeros_i x) / (1 - poles_i x), one first-order section at a
    time (numerically stable for decays near 1, unlike the expanded polynomials)."""
    y = _impulse(n) + _FLOOR
    for zero, pole in zip(zeros, poles, strict=True):
        y = scipy.signal.lfilter([1.0, -zero], [1.0, -pole], y)
    return y


def _geometric_filter(theta: float, y: np.ndarray) -> np.ndarray:
    """Coefficients of y(x) * x / (1 - theta x)."""
    return scipy.signal.lfilter([0.0, 1.0], [1.0, -theta], y + _FLOOR)


def _blt_log_loss(u, n, weights, k, sep):
    a, p = _thetas_from_logits(u)
    hat, th = a[0::2], a[1::2]
    c = _cascade(hat, th, n)
    g = np.cumsum(_cascade(th, hat, n))
    error = weights @ g**2
    column_sum = _shift_sum(c, k, sep)
    sens2 = column_sum @ column_sum
    loss = error * sens2
    if not np.isfinite(loss) or loss <= 0:
        return np.inf, np.zeros_like(u)
    wg = weights * g
    r = _shift_sum_adjoint(column_sum, k, sep)
    grad_a = np.empty(a.size)
    for index, theta in enumerate(a):
        sign = 1.0 if index % 2 else -1.0  # +1 for a pole (theta), -1 for a zero (theta hat)
        d_error = -sign * 2.0 * (wg @ _geometric_filter(theta, g))
        d_sens2 = sign * 2.0 * (r @ _geometric_filter(theta, c))
        grad_a[index] = d_error / error + d_sens2 / sens2
    # a_k = sum_{l <= k} p_l with p = softmax(u, 0): d a_k / d u_m = p_m ([m <= k] - a_k).
    tail = np.cumsum(grad_a[::-1])[::-1]
    grad_u = p[:-1] * (tail - grad_a @ a)
    return math.log(loss), grad_u


def _initial_thetas(low: float, buffers: int, spread: float) -> np.ndarray:
    """Interlaced decays from a rational approximation of (1-x)^(-1/2): the poles and zeros
    ``(1 - a) / a`` of its factors are log-spaced between ``low`` and ``spread`` (at least 4x
    apart, so that they are distinct and ordered)."""
    e = np.geomspace(max(spread, 4.0 * low), low, 2 * buffers)
    return 1.0 / (1.0 + e)


def _cancel_pairs(a: np.ndarray, tolerance: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Poles (odd entries) and zeros (even entries) of interlaced ``a``, without the adjacent
    pole-zero pairs that (nearly) cancel: such a buffer has a (nearly) zero weight."""
    kinds = [index % 2 for index in range(a.size)]  # 1: pole (theta), 0: zero (theta hat)
    values = list(a)
    changed = True
    while changed:
        changed = False
        for index in range(len(values) - 1):
            if kinds[index] != kinds[index + 1] and values[index + 1] - values[index] < tolerance:
                del values[index : index + 2], kinds[index : index + 2]
                changed = True
                break
    poles = np.array([v for v, kind in zip(values, kinds, strict=True) if kind])
    zeros = np.array([v for v, kind in zip(values, kinds, strict=True) if not kind])
    return poles, zeros


def optimize_blt(
    n: int,
    buffers: int,
    participations: int | None = 1,
    min_separation: int = 1,
    *,
    kind: str = "rmse",
    max_iterations: int = 2000,
) -> BLT:
    """A BLT strategy with at most ``buffers`` buffers minimizing error times sensitivity.

    Minimizes the same objective as `optimize_banded_toeplitz` (``error^2 * sens^2``, error as
    given by ``kind``) for the min-separation participation schema. The BLT is parameterized by
    its and its inverse's buffer decays, kept interlaced in [0, 1] through a softmax (a decay of
    exactly 1, a constant tail, can result), so every iterate has positive non-increasing
    coefficients and positive weights: the Toeplitz
    sensitivity (`toeplitz_sensitivity_squared`) is then exact. This is the feasible set that
    jax_privacy's ``buffered_toeplitz.optimize`` enforces with penalties ([INV], Theorem 1;
    [HASSLE], Section 3; [BLT], Lemma 5.2). L-BFGS-B with analytic gradients, O(n * buffers)
    per evaluation, from several rational-approximation starts. Buffers whose decay meets its
    inverse's (zero weight, e.g. when the identity is optimal) are dropped, so the result can
    have fewer buffers.

    Args:
        n: number of rounds, >= 1.
        buffers: number of buffers d, >= 0 (0 gives the identity).
        participations: maximum participations (None: as many as fit).
        min_separation: minimum distance between two participations.
        kind: ``"rmse"`` or ``"max"``.
        max_iterations: L-BFGS iteration limit per start.

    Returns:
        The optimized `BLT`.

    Raises:
        ValueError: on bad arguments.
    """
    n = _check_int("n", n, 1)
    buffers = _check_int("buffers", buffers, 0)
    kind = _check_kind(kind)
    max_iterations = _check_int("max_iterations", max_iterations, 1)
    k = max_participations(n, participations, min_separation)
    if buffers == 0:
        return BLT(np.zeros(0), np.zeros(0))
    weights = _prefix_weights(n, kind)
    lows = {1.0 / n}
    if k > 1:
        lows.add(1.0 / min(n, min_separation))
    best_value, best_a = np.inf, None
    for low in sorted(lows):
        for spread in (0.25, 1.0, 4.0, 16.0):
            u0 = _logits_from_thetas(_initial_thetas(low, buffers, spread))
            result = scipy.optimize.minimize(
                _blt_log_loss,
                u0,
                args=(n, weights, k, min_separation),
                jac=True,
                method="L-BFGS-B",
                options={"maxiter": max_iterations, "maxcor": 20, "ftol": 1e-12, "gtol": 1e-9},
            )
            if np.isfinite(result.fun) and result.fun < best_value:
                best_value, best_a = result.fun, _thetas_from_logits(result.x)[0]
    if best_a is None:
        raise ValueError(f"BLT optimization failed for n={n}, buffers={buffers}")
    poles, zeros = _cancel_pairs(best_a)
    order = np.argsort(poles)[::-1]
    return blt_from_thetas(poles[order], zeros[order])


# --------------------------------------------------------------------------- tree aggregation


def _tree_nodes(n: int) -> list[tuple[int, int]]:
    """Dyadic intervals (start, level) inside [0, n), in the order they complete."""
    nodes = []
    for end in range(n):
        level = 0
        while True:
            size = 1 << level
            start = end + 1 - size
            if start < 0 or start % size:
                break
            nodes.append((start, level))
            level += 1
    return nodes


def _decomposition(length: int) -> list[tuple[int, int]]:
    """The dyadic nodes (start, level) whose union is [0, length), largest first."""
    out, start = [], 0
    for level in range(length.bit_length() - 1, -1, -1):
        if length >> level & 1:
            out.append((start, level))
            start += 1 << level
    return out


def _single_tree(n: int, efficient: bool) -> tuple[np.ndarray, np.ndarray]:
    nodes = _tree_nodes(n)
    index = {node: row for row, node in enumerate(nodes)}
    C = np.zeros((len(nodes), n))
    for row, (start, level) in enumerate(nodes):
        C[row, start : start + (1 << level)] = 1.0
    B = np.zeros((n, len(nodes)))
    for t in range(n):
        for start, level in _decomposition(t + 1):
            if not efficient:
                B[t, index[(start, level)]] = 1.0
                continue
            weight = 1.0 / (2.0 - 0.5**level)
            for depth in range(level + 1):  # descendants `depth` levels below, weight 2^-depth
                size = 1 << (level - depth)
                for child in range(start, start + (1 << level), size):
                    B[t, index[(child, level - depth)]] += weight * 0.5**depth
    return B, C


def _check_tree_args(n, participations) -> tuple[int, int, int]:
    n = _check_int("n", n, 1)
    k = _check_int("participations", participations, 1)
    if n % k:
        raise ValueError(f"participations ({k}) must divide n ({n}): one tree per epoch")
    return n, k, n // k


def tree_aggregation_matrices(
    n: int, participations: int = 1, *, efficient: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The tree-aggregation mechanism as a factorization ``A = B C`` (dense; for small n).

    ``C`` has one row per node of the online binary tree (dyadic intervals inside each epoch, in
    the order they complete, as google-research/federated ``binary_tree_matrix``); each node gets
    ``N(0, sigma^2)``. Row ``t`` of ``B`` adds the nodes of the binary decomposition of ``t + 1``
    (TF Privacy ``TreeAggregator``), or with ``efficient=True`` Honaker's variance-reduced
    combination of each such node with its descendants (TF Privacy ``EfficientTreeAggregator``).
    With ``participations = k`` the tree restarts every ``n / k`` rounds, one participation per
    epoch, and the prefix sum adds the estimated totals of the finished epochs ([TREE]).

    Args:
        n: number of rounds, >= 1.
        participations: number of epochs k (must divide n).
        efficient: use Honaker's estimator.

    Returns:
        ``(B, C)``.

    Raises:
        ValueError: on bad arguments.
    """
    n, k, length = _check_tree_args(n, participations)
    B1, C1 = _single_tree(length, efficient)
    rows = C1.shape[0]
    C = scipy.linalg.block_diag(*[C1] * k)
    B = np.zeros((n, rows * k))
    for t in range(n):
        epoch, position = divmod(t, length)
        for previous in range(epoch):
            B[t, previous * rows : (previous + 1) * rows] = B1[length - 1]
        B[t, epoch * rows : (epoch + 1) * rows] = B1[position]
    return B, C


def tree_sensitivity_squared(n: int, participations: int = 1) -> int:
    """Squared sensitivity of tree aggregation with a restart every ``n / k`` rounds.

    A leaf of a tree over ``L`` rounds lies in ``ceil(log2(L + 1))`` released nodes (the
    ``depth + 1`` of google-research/federated's binary tree when ``L`` is a power of 2; the
    value dp_accounting uses for ``SingleEpochTreeAggregationDpEvent``); one participation per
    tree, so ``k`` trees give ``k`` times that ([TREE], Appendix D).

    Args:
        n: number of rounds, >= 1.
        participations: number of epochs k (must divide n).

    Returns:
        The squared sensitivity.

    Raises:
        ValueError: on bad arguments.
    """
    _, k, length = _check_tree_args(n, participations)
    return k * length.bit_length()


def _tree_variance(lengths: np.ndarray, efficient: bool) -> np.ndarray:
    """Noise variance (unit sigma) of the tree estimate of a prefix of each length."""
    out = np.zeros(lengths.size)
    for level in range(int(lengths.max()).bit_length()):
        bit = (lengths >> level) & 1
        out += bit * (1.0 / (2.0 - 0.5**level) if efficient else 1.0)
    return out


def tree_prefix_sum_error(
    n: int, kind: str = "rmse", participations: int = 1, *, efficient: bool = False
) -> float:
    """Tree-aggregation prefix-sum error per unit noise multiplier (comparable to MF errors).

    ``sqrt(tree_sensitivity_squared) * `` the noise std for unit node noise: round ``t`` (epoch
    ``e``, position ``p`` within it) has variance ``e * v(L) + v(p)``, with ``v(m)`` the number
    of nodes in the binary decomposition of ``m`` (``popcount(m)``), or with ``efficient=True``
    ``sum_{levels l of m's bits} 1 / (2 - 2^-l)`` (Honaker). Same scale as
    `prefix_sum_error_per_noise_multiplier`; divide by ``sqrt(tree_sensitivity_squared(n, k))``
    for the unit-noise error.

    Args:
        n: number of rounds, >= 1.
        kind: ``"rmse"`` or ``"max"``.
        participations: number of epochs k (must divide n); the tree restarts each epoch.
        efficient: use Honaker's estimator.

    Returns:
        The error per unit noise multiplier.

    Raises:
        ValueError: on bad arguments.
    """
    kind = _check_kind(kind)
    n, k, length = _check_tree_args(n, participations)
    t = np.arange(n)
    epoch, position = np.divmod(t, length)
    full = _tree_variance(np.array([length]), efficient)[0]
    variance = epoch * full + _tree_variance(position + 1, efficient)
    return math.sqrt(tree_sensitivity_squared(n, k)) * _reduce(variance, kind)
