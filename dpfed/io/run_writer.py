"""Writes a run's metrics.csv row by row and keeps summary.json current."""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from pathlib import Path

from dpfed.jobs import write_summary_json


class RunWriter:
    """Appends one flushed CSV row per finished round; rewrites summary.json atomically.

    Nothing is created until the first call, so a run rejected during building
    leaves no metrics.csv behind.

    Args:
        output_dir: the run's directory (Hydra's output dir).
        columns: metrics.csv header, in order.
        tensorboard: also write each numeric column as a TensorBoard scalar
            (step = round) to ``output_dir/tensorboard``.
    """

    def __init__(
        self, output_dir: str | os.PathLike, columns: list[str], tensorboard: bool = False
    ):
        self.dir = Path(output_dir)
        self.columns = columns
        self.tensorboard = tensorboard
        self._file = None
        self._csv = None
        self._tb = None

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def summary_path(self) -> Path:
        return self.dir / "summary.json"

    def write_round(self, row: dict) -> None:
        if self._file is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.metrics_path, "w", newline="")  # noqa: SIM115
            self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")
            self._csv.writeheader()
        self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
        self._file.flush()
        if self.tensorboard:
            self._write_scalars(row)

    def resume(self, rounds: int) -> None:
        """Continues an interrupted run's metrics.csv after its first ``rounds`` rows.

        Rows written after the checkpoint (they are recomputed) and a row cut
        short by a kill are dropped; the file is replaced atomically. TensorBoard
        scalars are rewritten from the kept rows, so neither sink holds a
        round twice.

        Raises:
            ValueError: metrics.csv lacks one of rounds 1..``rounds`` or has other columns.
        """
        with open(self.metrics_path, newline="") as f:
            lines = f.readlines()
        reader = csv.reader(lines)
        header = next(reader, None)
        if header != self.columns:
            raise ValueError(f"{self.metrics_path} has columns {header}, expected {self.columns}")
        kept = lines[1 : rounds + 1]
        numbers = [row[0] for row in csv.reader(kept)]
        if numbers != [str(r) for r in range(1, rounds + 1)]:
            raise ValueError(f"{self.metrics_path} lacks rows of rounds 1..{rounds}: has {numbers}")
        tmp = self.metrics_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            f.writelines([lines[0], *kept])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics_path)
        self._file = open(self.metrics_path, "a", newline="")  # noqa: SIM115
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")
        if self.tensorboard:
            shutil.rmtree(self.dir / "tensorboard", ignore_errors=True)
            for row in csv.DictReader(io.StringIO(lines[0] + "".join(kept))):
                self._write_scalars({k: float(v) for k, v in row.items() if v != ""})

    def sync(self) -> None:
        """Makes the rows written so far durable (before a checkpoint that counts them)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def _write_scalars(self, row: dict) -> None:
        import tensorflow as tf

        if self._tb is None:
            self._tb = tf.summary.create_file_writer(str(self.dir / "tensorboard"))
        with self._tb.as_default(step=int(row["round"])):
            for key, value in row.items():
                if key != "round" and value is not None and math.isfinite(value):
                    tf.summary.scalar(key, value)
        self._tb.flush()

    def write_summary(self, summary: dict) -> None:
        """Writes summary.json (`write_summary_json`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_summary_json(self.summary_path, summary)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
