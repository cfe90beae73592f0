"""Seeded partitioners that split a pooled dataset into simulated clients.

Pure numpy: each takes the number of examples (or their labels) and returns one
sorted index array per client. Every index is used exactly once and every
client gets at least ``min_examples``. The non-IID schemes follow the
label-distribution and quantity skews of Hsu, Qi and Brown 2019 ("Measuring
the effects of non-identical data distribution for federated visual
classification") and Li, Diao, Chen and He 2022 (NIID-Bench, ICDE).
"""

from __future__ import annotations

import numpy as np

from dpfed.errors import check

PARTITIONS = ("iid", "dirichlet", "quantity")


def _check_sizes(n: int, num_clients: int, min_examples: int) -> None:
    check(num_clients >= 1, "num_clients", num_clients, ">= 1")
    check(min_examples >= 1, "min_examples", min_examples, ">= 1")
    check(
        n >= num_clients * min_examples,
        "num_clients",
        num_clients,
        f"<= {n // min_examples} (there are {n} examples and each client needs "
        f"min_examples={min_examples})",
    )


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(n: int, num_clients: int, seed: int, min_examples: int = 1) -> list[np.ndarray]:
    """Shuffles ``range(n)`` and cuts it into ``num_clients`` near-equal parts.

    Args:
        n: number of examples.
        num_clients: number of parts.
        seed: seed of the shuffle.
        min_examples: smallest allowed part.

    Returns:
        ``num_clients`` sorted index arrays that together hold ``range(n)`` once.
    """
    _check_sizes(n, num_clients, min_examples)
    order = np.random.default_rng([seed, 101]).permutation(n)
    return _finish(np.array_split(order, num_clients))


def quantity(
    n: int, num_clients: int, alpha: float, seed: int, min_examples: int = 1
) -> list[np.ndarray]:
    """Quantity skew: client shares drawn from a symmetric Dirichlet(alpha).

    NIID-Bench's quantity-skew partition (Li et al. 2022): sizes are
    ``min_examples`` plus a multinomial split of the rest with
    Dirichlet(alpha) proportions; small ``alpha`` gives a few large clients
    and many small ones, large ``alpha`` near-equal sizes. Which examples a
    client gets is uniform.

    Args:
        n: number of examples.
        num_clients: number of clients.
        alpha: Dirichlet concentration, > 0.
        seed: seed of the draw.
        min_examples: smallest allowed client.

    Returns:
        ``num_clients`` sorted index arrays that together hold ``range(n)`` once.
    """
    _check_sizes(n, num_clients, min_examples)
    check(alpha > 0, "alpha", alpha, "> 0")
    rng = np.random.default_rng([seed, 102])
    shares = rng.dirichlet(np.full(num_clients, float(alpha)))
    sizes = min_examples + rng.multinomial(n - num_clients * min_examples, shares)
    order = rng.permutation(n)
    return _finish(np.split(order, np.cumsum(sizes)[:-1]))


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_examples: int = 1
) -> list[np.ndarray]:
    """Label skew: each class is spread over clients with Dirichlet(alpha) shares.

    Hsu et al. 2019: for every class, proportions over clients are drawn from
    a symmetric Dirichlet(alpha) and that class's examples are dealt out
    accordingly. Small ``alpha`` gives clients few classes, large ``alpha``
    approaches IID. Clients left with fewer than ``min_examples`` are then
    topped up with random examples of the currently largest client (NIID-Bench
    redraws instead, which need not terminate for tiny ``alpha``).

    Args:
        labels: integer label of each example, shape ``[n]``.
        num_clients: number of clients.
        alpha: Dirichlet concentration, > 0.
        seed: seed of the draw.
        min_examples: smallest allowed client.

    Returns:
        ``num_clients`` sorted index arrays that together hold ``range(n)`` once.
    """
    labels = np.asarray(labels)
    n = len(labels)
    _check_sizes(n, num_clients, min_examples)
    check(alpha > 0, "alpha", alpha, "> 0")
    rng = np.random.default_rng([seed, 103])
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_clients, float(alpha)))
        counts = rng.multinomial(len(members), shares)
        for client, chunk in enumerate(np.split(members, np.cumsum(counts)[:-1])):
            parts[client].extend(chunk.tolist())
    for client in range(num_clients):
        while len(parts[client]) < min_examples:
            donor = max(range(num_clients), key=lambda c: len(parts[c]))
            take = rng.integers(len(parts[donor]))
            parts[client].append(parts[donor].pop(take))
    return _finish(parts)


def partition(
    method: str,
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int,
    min_examples: int = 1,
) -> list[np.ndarray]:
    """Dispatches to `iid`, `dirichlet` or `quantity`.

    Args:
        method: ``iid``, ``dirichlet`` or ``quantity``.
        labels: label of each example (only ``dirichlet`` reads the values).
        num_clients: number of clients.
        alpha: concentration of the non-IID schemes.
        seed: seed of the split.
        min_examples: smallest allowed client.

    Returns:
        One sorted index array per client.
    """
    check(method in PARTITIONS, "partition", method, f"one of {', '.join(PARTITIONS)}")
    if method == "iid":
        return iid(len(labels), num_clients, seed, min_examples)
    if method == "quantity":
        return quantity(len(labels), num_clients, alpha, seed, min_examples)
    return dirichlet(labels, num_clients, alpha, seed, min_examples)
