"""What every federated dataset provides to models, strategies and the privacy plan."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dpfed.errors import check

LABEL_MODES = ("last", "every_step")  # the label of a window's last step, or of every step


@dataclass(frozen=True)
class Population:
    """What the accounting needs to know about a dataset (all public quantities).

    Attributes:
        num_clients: clients (users) in the population.
        train_records: the number of training records the given clients hold
            (what ``strategy=centralized`` pools); None where unknown.
        record_size: feature values in one record (``seq_len * num_features``);
            None for token (text) data, whose inputs are not bounded reals.
        coupled_records: why one record's raw data reaches other records
            (overlapping windows, per-client standardization), or None when
            records are independent; record-level guarantees then protect a
            record (a window) as released, not the raw measurements behind it.
        client_records_mean: the mean records of a client holding any, where it is
            given rather than counted (a recorded run's, the calculator's).
    """

    num_clients: int
    train_records: Callable[[Sequence[int]], int] | None = None
    record_size: int | None = None
    coupled_records: str | None = None
    client_records_mean: float | None = None

    @classmethod
    def with_mean_records(
        cls, num_clients: int, mean: float, record_size: int | None = None
    ) -> Population:
        """A population whose clients hold ``mean`` records on average: what the accounting
        of a run's recorded ``client_records_mean`` sees (Poisson record batches)."""
        return cls(num_clients, None, record_size, client_records_mean=float(mean))

    def mean_client_records(self) -> float:
        """The mean number of training records of the clients that hold any.

        Raises:
            ValueError: the sizes are unknown, or no client holds a record.
        """
        if self.client_records_mean is not None:
            return self.client_records_mean
        if self.train_records is None:
            raise ValueError("the clients' numbers of records are unknown")
        sizes = [n for n in (self.train_records([i]) for i in range(self.num_clients)) if n > 0]
        if not sizes:
            raise ValueError("no client holds a training record")
        return sum(sizes) / len(sizes)


class FederatedDataset:
    """The contract of a dataset: per-client train and eval data, shapes and task.

    Subclasses set, in their constructor, ``train`` and ``eval`` (ClientData
    with an ``arrays(index)`` method, `dpfed.data.client_data.LazyClientData`),
    ``num_clients``, ``seq_len``, ``task`` (``classification`` or
    ``regression``), ``num_classes``, ``labels`` (``last`` or ``every_step``)
    and ``num_features`` (None for token inputs, which set ``vocab_size``).

    Attributes:
        vocab_size: token vocabulary size of text datasets, else None.
    """

    task = "classification"
    num_classes = 2
    labels = "last"
    num_features: int | None = None
    vocab_size: int | None = None

    def _check_labels(self, labels: str) -> None:
        """Checks ``labels`` (one of `LABEL_MODES`) and sets it."""
        check(labels in LABEL_MODES, "labels", labels, f"one of {', '.join(LABEL_MODES)}")
        self.labels = labels

    @property
    def element_spec(self):
        return self.train.element_type_structure

    def train_records(self, clients: Sequence[int]) -> int:
        """Training records held by ``clients`` (overridden where that is cheaper to know)."""
        return int(sum(len(self.train.arrays(int(i))[0]) for i in clients))

    def coupled_records(self) -> str | None:
        """Why one record's raw data also reaches other records, or None if they are independent."""
        return None

    def last_value(self, x: np.ndarray) -> np.ndarray | None:
        """The naive forecast of a forecasting task: each target predicted by the current value
        of what it forecasts, read from the inputs ``x`` (shaped like the targets), or None
        where the inputs hold no such value (the default)."""
        return None

    def oracle_forecast(self, index: int, x: np.ndarray) -> np.ndarray | None:
        """The Bayes-optimal forecast of client ``index``'s targets from its inputs ``x``, by a
        predictor that knows the parameters the data were generated from (an upper bound no
        model can beat in expectation), or None where it is not known (the default)."""
        return None

    def _input_channel(self, x: np.ndarray, channel: int) -> np.ndarray:
        """Input ``channel`` at the last step (``labels=last``) or at every step."""
        return x[:, -1, channel] if self.labels == "last" else x[:, :, channel]

    def population(self) -> Population:
        """The public sizes the privacy plan needs."""
        size = None if self.vocab_size else self.seq_len * self.num_features
        return Population(self.num_clients, self.train_records, size, self.coupled_records())

    def map_train(self, fn: Callable[[int, np.ndarray, np.ndarray], tuple]) -> FederatedDataset:
        """Replaces the training data: client ``i``'s arrays become ``fn(i, x, y)`` (lazily)."""
        from dpfed.data.client_data import LazyClientData

        clean = self.train

        def mapped(index: int):
            return fn(index, *clean.arrays(index))

        self.train = LazyClientData(clean.num_clients, mapped, clean.array_spec)
        return self


def window_coupling(seq_len: int, stride: int, standardize: str) -> str | None:
    """The coupling of windows cut from one series, or None when they are independent."""
    reasons = []
    if stride < seq_len:
        reasons.append(f"windows overlap (stride {stride} < seq_len {seq_len})")
    if standardize == "client":
        reasons.append("features are standardized with each client's own statistics")
    return "; ".join(reasons) or None
