"""Common base of the loaders of recorded (non-synthetic) federated datasets.

A loader turns files into per-client train and eval arrays; this base then
keeps a seeded subset of clients (``num_clients``), optionally thins every
client's examples to a target mean (``examples_mean``, which is how
``debug=smoke`` shrinks real data too) and exposes the dataset contract the
model and strategies read (`dpfed.data.synthetic.SyntheticDataset` has the same).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from dpfed.data.base import FederatedDataset
from dpfed.data.client_data import ArraySpec, ClientArrays, LazyClientData
from dpfed.errors import ConfigError, check

STANDARDIZE = ("none", "client", "window")


def package_file(package: str, *parts: str) -> Path:
    """Path of a data file shipped inside an installed package, without importing it.

    Args:
        package: top-level package name, e.g. ``seglearn``.
        *parts: path inside the package.

    Returns:
        The file's path.

    Raises:
        ConfigError: the package or the file is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("_target_", package, f"a dataset whose package {package} is installed")
    path = Path(spec.submodule_search_locations[0], *parts)
    if not path.exists():
        raise ConfigError("_target_", str(path), f"a data file shipped with {package}")
    return path


def sliding_windows(n: int, length: int, stride: int) -> np.ndarray:
    """Start indices of the windows of ``length`` steps, ``stride`` apart, in ``range(n)``."""
    if n < length:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n - length + 1, stride, dtype=np.int64)


def standardize_windows(train: np.ndarray, evals: np.ndarray, mode: str):
    """Standardizes ``[n, steps, features]`` windows without looking at eval data.

    ``client``: per-feature mean and std of the client's own training windows,
    applied to its train and eval windows (what a device can compute
    locally). ``window``: every window by its own per-feature statistics.
    ``none``: unchanged.
    """
    if mode == "none":
        return train, evals
    if mode == "window":

        def own(w):
            mean = w.mean(axis=1, keepdims=True)
            return (w - mean) / (w.std(axis=1, keepdims=True) + 1e-6)

        return own(train), own(evals)
    mean = train.mean(axis=(0, 1))
    std = train.std(axis=(0, 1)) + 1e-6
    return (train - mean) / std, (evals - mean) / std


class RecordedDataset(FederatedDataset):
    """Base class: client selection, example thinning, specs and ClientData.

    Subclasses set ``task``, ``num_classes``, ``labels``, ``num_features``
    (``None`` for token inputs, which then set ``vocab_size``) and implement
    `_load`, returning every natural client's name and (train, eval) arrays.

    Args:
        seq_len: time steps (or characters) per example.
        num_clients: keep this many clients, a seeded subset, when the data
            has more; ``None`` keeps all. (Partitioned datasets read it as the
            number of partitions instead.)
        examples_mean: thin every client's train and eval examples by one
            common factor so the mean examples per client is at most this
            (seeded subsets; every split keeps at least one example); ``None``
            keeps all.
        eval_fraction: share of each client's data held out for evaluation.
        seed: seed of client selection and thinning.

    Attributes:
        train: ClientData of the clients' training splits.
        eval: ClientData of the clients' held-out splits.
        client_names: what each client is (e.g. ``hamlet/HAMLET``), by index.
        task: ``classification`` or ``regression``.
        num_classes: classes of a classification task (1 for regression).
        labels: ``last`` or ``every_step``.
        vocab_size: token vocabulary size of text datasets, else ``None``.
    """

    def __init__(
        self,
        seq_len: int,
        num_clients: int | None,
        examples_mean: float | None,
        eval_fraction: float,
        seed: int,
    ):
        check(seq_len >= 2, "seq_len", seq_len, ">= 2")
        check(num_clients is None or num_clients >= 1, "num_clients", num_clients, "null or >= 1")
        check(
            examples_mean is None or examples_mean >= 2,
            "examples_mean",
            examples_mean,
            "null or >= 2 (one train, one eval example)",
        )
        check(0 < eval_fraction < 1, "eval_fraction", eval_fraction, "in (0, 1)")
        self.seq_len, self.eval_fraction, self.seed = seq_len, eval_fraction, seed
        self.max_clients, self.examples_mean = num_clients, examples_mean

    def _load(self) -> list[tuple[str, ClientArrays, ClientArrays]]:
        """Returns ``(name, (x_train, y_train), (x_eval, y_eval))`` of every natural client."""
        raise NotImplementedError

    def _finish(self, cap_clients: bool = True) -> None:
        """Loads, selects and thins the clients, then builds the ClientData.

        Args:
            cap_clients: read ``num_clients`` as a cap on the natural clients
                (False when the loader already made exactly that many).
        """
        clients = [c for c in self._load() if len(c[1][0]) and len(c[2][0])]
        check(bool(clients), "seq_len", self.seq_len, "short enough that clients have examples")
        if cap_clients and self.max_clients is not None and self.max_clients < len(clients):
            rng = np.random.default_rng([self.seed, 201])
            keep = np.sort(rng.choice(len(clients), self.max_clients, replace=False))
            clients = [clients[i] for i in keep]
        if self.examples_mean is not None:
            mean = np.mean([len(t[0]) + len(e[0]) for _, t, e in clients])
            factor = min(1.0, self.examples_mean / mean)
            clients = [
                (name, self._thin(t, factor, i, 0), self._thin(e, factor, i, 1))
                for i, (name, t, e) in enumerate(clients)
            ]
        self.client_names = [name for name, _, _ in clients]
        self._train = [t for _, t, _ in clients]
        self._eval = [e for _, _, e in clients]
        self.num_clients = len(clients)
        x, y = self._train[0]
        spec = (ArraySpec.of(x), ArraySpec.of(y))
        self.train = LazyClientData(self.num_clients, self._train.__getitem__, spec)
        self.eval = LazyClientData(self.num_clients, self._eval.__getitem__, spec)

    def _thin(self, arrays: ClientArrays, factor: float, index: int, split: int) -> ClientArrays:
        x, y = arrays
        keep = max(1, int(round(len(x) * factor)))
        if keep >= len(x):
            return arrays
        rng = np.random.default_rng([self.seed, 202, index, split])
        chosen = np.sort(rng.choice(len(x), keep, replace=False))
        return x[chosen], y[chosen]

    def num_examples(self, index: int) -> int:
        """Total (train + eval) examples of client ``index``."""
        return len(self._train[index][0]) + len(self._eval[index][0])

    def train_records(self, clients) -> int:
        return int(sum(len(self._train[int(i)][0]) for i in clients))


def chronological_split(n: int, eval_fraction: float, length: int, stride: int):
    """Window starts of a series of ``n`` steps, split in time without overlap.

    The last ``eval_fraction`` of the steps (at least ``length``) is the eval
    part; train windows end before it starts, so no step is in both splits.

    Returns:
        ``(train_starts, eval_starts)``.
    """
    n_eval = max(length, int(round(n * eval_fraction)))
    cut = n - n_eval
    train = sliding_windows(cut, length, stride)
    evals = cut + sliding_windows(n_eval, length, stride)
    return train, evals
