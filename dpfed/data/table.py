"""The user's own federated sequence data from one CSV or Parquet table.

One row per time step: a client column, an order (time) column, feature
columns and a target column. Every client's rows, in order, are cut into
windows of ``seq_len`` consecutive rows. Malformed files are rejected before
training with a `ConfigError` that names the file, the line (CSV, 1-based,
the header is line 1) or row (Parquet, 1-based) and the column at fault.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpfed.data.base import window_coupling
from dpfed.data.partition import PARTITIONS, partition
from dpfed.data.recorded import (
    STANDARDIZE,
    RecordedDataset,
    sliding_windows,
    standardize_windows,
)
from dpfed.errors import ConfigError, check

TASKS = ("classification", "regression")
CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")


class Table(RecordedDataset):
    """Windows of ``seq_len`` consecutive rows per client from a CSV or Parquet file.

    Rows of a client are sorted by ``order_column`` (numbers or dates; file
    order when null). A window's target is the ``target_column`` of its last
    row (``labels: last``) or of every row (``every_step``), so a column that
    holds the *next* value must be made in the file. Within each client the
    last ``eval_fraction`` of its rows (at least ``seq_len``) evaluate and
    training windows end before them, so a client needs ``2 * seq_len`` rows.

    Classification targets are integers >= 0 (``num_classes`` is the largest
    plus one) or text, mapped to ``0..k-1`` in sorted order (``class_names``).
    With ``client_column: null`` the whole table is one series whose windows a
    partitioner (``partition``, ``alpha``) deals to ``num_clients`` clients.

    Args:
        path: the CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet file.
        feature_columns: numeric input columns.
        target_column: the column to predict (not a feature).
        client_column: the column naming each row's client, or null.
        order_column: the column that orders a client's rows, or null.
        task: ``classification`` or ``regression``.
        labels: ``last`` or ``every_step``.
        stride: rows between window starts.
        standardize: ``client`` (each client's training rows), ``window`` or ``none``.
        partition: partitioner when ``client_column`` is null.
        alpha: its concentration.
        **kwargs: see `RecordedDataset`.
    """

    def __init__(
        self,
        path: str,
        feature_columns,
        target_column: str,
        client_column: str | None = None,
        order_column: str | None = None,
        task: str = "classification",
        labels: str = "last",
        stride: int = 1,
        standardize: str = "client",
        partition: str = "iid",
        alpha: float = 0.5,
        **kwargs,
    ):
        feature_columns = list(feature_columns)
        check(task in TASKS, "task", task, f"one of {', '.join(TASKS)}")
        check(stride >= 1, "stride", stride, ">= 1")
        check(
            standardize in STANDARDIZE,
            "standardize",
            standardize,
            f"one of {', '.join(STANDARDIZE)}",
        )
        check(partition in PARTITIONS, "partition", partition, f"one of {', '.join(PARTITIONS)}")
        check(bool(feature_columns), "feature_columns", feature_columns, "a non-empty list")
        check(
            target_column not in feature_columns,
            "target_column",
            target_column,
            "a column that is not among feature_columns (it would leak the answer)",
        )
        check(
            partition != "dirichlet" or task == "classification",
            "partition",
            partition,
            "iid or quantity for regression (dirichlet skews class labels)",
        )
        super().__init__(**kwargs)
        self._check_labels(labels)
        if not Path(path).expanduser().is_file():
            raise ConfigError("path", str(path), "an existing CSV or Parquet file")
        if client_column is None:
            check(
                self.max_clients is not None,
                "num_clients",
                None,
                "an integer (the number of partitions) when client_column is null",
            )
        self.path = Path(path).expanduser()
        self.feature_columns, self.target_column = feature_columns, target_column
        self.client_column, self.order_column = client_column, order_column
        self.task = task
        if task == "regression":
            self.num_classes = 1
        self.stride, self.standardize = stride, standardize
        self.partition, self.alpha = partition, alpha
        self.num_features = len(feature_columns)
        self._finish(cap_clients=client_column is not None)

    # ------------------------------------------------------------------ reading

    def coupled_records(self) -> str | None:
        return window_coupling(self.seq_len, self.stride, self.standardize)

    def _where(self, index: int) -> str:
        """Where row ``index`` (0-based, data rows) is in the file, for messages."""
        if self._csv:
            return f"{self.path}, line {index + 2}"  # line 1 is the header
        return f"{self.path}, row {index + 1}"

    def _bad(self, what: str, key: str = "path", value=None) -> ConfigError:
        return ConfigError(key, str(self.path) if value is None else value, what)

    def _read(self) -> pd.DataFrame:
        name = self.path.name.lower()
        if not self.path.is_file():
            raise ConfigError("path", str(self.path), "an existing CSV or Parquet file")
        self._csv = not name.endswith(PARQUET_SUFFIXES)
        if self._csv and not name.endswith(CSV_SUFFIXES):
            raise self._bad(f"a file ending in one of {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}")
        try:
            if self._csv:
                # Strings, no NA guessing, blank lines kept: row i is line i + 2 of the file.
                return pd.read_csv(
                    self.path,
                    dtype=str,
                    keep_default_na=False,
                    skip_blank_lines=False,
                    sep="\t" if name.endswith(".tsv") else ",",
                )
            return pd.read_parquet(self.path)
        except Exception as err:  # noqa: BLE001 (any reader failure is a bad file)
            raise self._bad(
                f"a readable {'CSV' if self._csv else 'Parquet'} file ({err})"
            ) from None

    def _numeric(self, frame: pd.DataFrame, column: str) -> np.ndarray:
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            i = bad[0]
            cell = raw.iloc[i]
            missing = cell is None or (isinstance(cell, str) and cell.strip() == "")
            missing = missing or (not isinstance(cell, str) and pd.isna(cell))
            text = str(cell).strip().lower() if isinstance(cell, str) else ""
            if missing:
                problem = "is empty"
            elif text in ("nan", "na", "n/a", "null", "none") or (
                not isinstance(cell, str) and np.isnan(float(cell))
            ):
                problem = f"is NaN ({cell!r})"
            elif np.isinf(pd.to_numeric(pd.Series([cell]), errors="coerce")[0]):
                problem = f"is infinite ({cell!r})"
            else:
                problem = f"is not a number ({cell!r})"
            raise self._bad(
                f"a table whose column {column!r} holds finite numbers: "
                f"{self._where(i)}, column {column!r} {problem}"
            )
        return values

    def _order_keys(self, frame: pd.DataFrame) -> np.ndarray:
        column = self.order_column
        raw = frame[column]
        numbers = pd.to_numeric(raw, errors="coerce")
        if numbers.notna().all():
            return numbers.to_numpy()
        dates = pd.to_datetime(raw, errors="coerce", format="mixed")
        if dates.notna().all():
            return dates.to_numpy()
        # Report against whichever reading most cells follow.
        failed = numbers.isna() if numbers.notna().sum() >= dates.notna().sum() else dates.isna()
        bad = np.flatnonzero(failed.to_numpy())
        if len(bad):
            i = bad[0]
            raise self._bad(
                f"a table whose order column {column!r} holds numbers or dates: "
                f"{self._where(i)}, column {column!r} has {raw.iloc[i]!r}"
            )
        return dates.to_numpy()

    def _targets(self, frame: pd.DataFrame) -> np.ndarray:
        column = self.target_column
        if self.task == "regression":
            return self._numeric(frame, column).astype(np.float32)
        raw = frame[column]
        numbers = pd.to_numeric(raw, errors="coerce")
        if numbers.notna().all():
            values = numbers.to_numpy(dtype=np.float64)
            bad = np.flatnonzero((values < 0) | (values != np.round(values)))
            if len(bad):
                i = bad[0]
                raise self._bad(
                    f"a table whose class column {column!r} holds integers >= 0 or names: "
                    f"{self._where(i)}, column {column!r} has {raw.iloc[i]!r}"
                )
            self.class_names = None
            self.num_classes = max(2, int(values.max()) + 1)
            return values.astype(np.int32)
        text = raw.astype(str).str.strip()
        empty = np.flatnonzero(((text == "") | raw.isna()).to_numpy())
        if len(empty):
            raise self._bad(
                f"a table without empty class labels: {self._where(empty[0])}, "
                f"column {column!r} is empty"
            )
        self.class_names = sorted(text.unique())
        self.num_classes = max(2, len(self.class_names))
        return text.map({c: k for k, c in enumerate(self.class_names)}).to_numpy(np.int32)

    # ------------------------------------------------------------------ clients
    def _load(self):
        frame = self._read()
        columns = [self.target_column, *self.feature_columns]
        keys = ["target_column", *["feature_columns"] * len(self.feature_columns)]
        for key, column in zip(
            ["client_column", "order_column", *keys],
            [self.client_column, self.order_column, *columns],
            strict=True,
        ):
            if column is not None and column not in frame.columns:
                raise ConfigError(
                    key,
                    column,
                    f"a column of {self.path} (it has {', '.join(map(str, frame.columns))})",
                )
        check(len(frame) > 0, "path", str(self.path), "a table with at least one data row")
        features = np.stack([self._numeric(frame, c) for c in self.feature_columns], axis=1)
        targets = self._targets(frame)
        order = np.arange(len(frame))
        if self.order_column is not None:
            order = np.lexsort((np.arange(len(frame)), self._order_keys(frame)))
        if self.client_column is None:
            return self._partitioned(features[order], targets[order])
        owners = frame[self.client_column].astype(str).to_numpy()[order]
        clients = []
        for name in sorted(set(owners)):
            rows = order[owners == name]
            n = len(rows)
            if n < 2 * self.seq_len:
                raise ConfigError(
                    "seq_len",
                    self.seq_len,
                    f"<= {n // 2}: every client needs 2 * seq_len rows (seq_len for training, "
                    f"seq_len held out), but client {name!r} of {self.path} has {n} rows "
                    f"(first at {self._where(int(rows.min())).split(', ', 1)[1]})",
                )
            clients.append((name, *self._windows(features[rows], targets[rows])))
        return clients

    def _windows(self, feats: np.ndarray, targets: np.ndarray):
        n, length = len(feats), self.seq_len
        n_eval = max(length, int(round(n * self.eval_fraction)))
        train = sliding_windows(n - n_eval, length, self.stride)
        evals = n - n_eval + sliding_windows(n_eval, length, self.stride)
        xt, yt = self._cut(feats, targets, train)
        xe, ye = self._cut(feats, targets, evals)
        xt, xe = standardize_windows(xt, xe, self.standardize)
        return (xt.astype(np.float32), yt), (xe.astype(np.float32), ye)

    def _cut(self, feats, targets, starts):
        x = np.stack([feats[s : s + self.seq_len] for s in starts])
        steps = np.stack([targets[s : s + self.seq_len] for s in starts])
        return x, (steps[:, -1] if self.labels == "last" else steps)

    def _partitioned(self, feats: np.ndarray, targets: np.ndarray):
        starts = sliding_windows(len(feats), self.seq_len, self.stride)
        check(
            len(starts) >= 2 * self.max_clients,
            "num_clients",
            self.max_clients,
            f"<= {len(starts) // 2}: {self.path} gives {len(starts)} windows of seq_len rows "
            "and every client needs two",
        )
        x, y = self._cut(feats, targets, starts)
        last = y if y.ndim == 1 else y[:, -1]
        parts = partition(self.partition, last, self.max_clients, self.alpha, self.seed, 2)
        clients = []
        for k, idx in enumerate(parts):
            n_eval = min(len(idx) - 1, max(1, int(round(len(idx) * self.eval_fraction))))
            train, evals = idx[:-n_eval], idx[-n_eval:]  # later windows evaluate
            xt, xe = standardize_windows(x[train], x[evals], self.standardize)
            clients.append(
                (
                    f"client_{k}",
                    (xt.astype(np.float32), y[train]),
                    (xe.astype(np.float32), y[evals]),
                )
            )
        return clients
