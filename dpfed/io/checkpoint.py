"""Atomic checkpoints of a run, so that ``resume=true`` continues it from its last completed round.

A checkpoint is one file, ``<run dir>/checkpoint/checkpoint.npz``: the learning
process's state flattened to numpy arrays (``tf.nest`` order of the structure
``process.initialize()`` returns, so it is restored by packing into that
structure; no pickles of framework objects), plus one JSON document (the
``meta`` entry) with the round, the resolved config, the sampler's, ledger's
and mechanism's state and the run summary so far. It is written to a temporary
file in the same directory, fsynced and moved over the previous checkpoint with
``os.replace``: a kill at any moment leaves either the old or the new
checkpoint, never a broken one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from dpfed.errors import ConfigError
from dpfed.jobs import interrupts_deferred

log = logging.getLogger(__name__)

FORMAT = 1
DIRNAME = "checkpoint"
FILENAME = "checkpoint.npz"
META = "meta"
# Keys that may differ between an interrupted run and its resumption: they
# change neither what is computed nor what is written (optimized_metric and
# optimized_seeds pick what run.py returns to a search; a seed of a trial resumes alone).
IGNORED_KEYS = (
    "resume",
    "checkpoint_every",
    "logger.progress",
    "optimized_metric",
    "optimized_seeds",
)
# Hydra rewrites these on every call, a refused resumption included; the
# checkpoint keeps the first call's, so the run dir keeps its true record.
HYDRA_FILES = (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml")


class CheckpointError(ValueError):
    """A checkpoint cannot be restored into this run (it was written by a different one)."""


def _to_array(leaf) -> np.ndarray:
    return np.asarray(leaf)  # bytes become a 'S' array, which np.load reads without pickle


def _like(template, array: np.ndarray, index: int):
    """``array`` as the Python/numpy type of the ``template`` leaf, after checking it fits."""
    if isinstance(template, bytes):
        return array.item()
    expected = np.asarray(template)
    if array.shape != expected.shape or array.dtype != expected.dtype:
        raise CheckpointError(
            f"state leaf {index}: checkpoint has {array.dtype}{array.shape}, "
            f"this run's model needs {expected.dtype}{expected.shape}"
        )
    if isinstance(template, np.ndarray):
        return array
    if isinstance(template, np.generic):
        return array[()]
    return type(template)(array.item())  # a plain Python scalar


class TFFStateCodec:
    """Flattens a TFF learning process's state to arrays and packs arrays back into it.

    Args:
        process: a ``tff.learning.templates.LearningProcess``.
    """

    def __init__(self, process):
        self.process = process

    def state_to_arrays(self, state) -> dict[str, np.ndarray]:
        """Every leaf of ``state`` (model, optimizer and aggregator states), by position."""
        import tensorflow as tf

        return {f"state_{i:05d}": _to_array(v) for i, v in enumerate(tf.nest.flatten(state))}

    def restore_from_arrays(self, arrays: dict[str, np.ndarray]):
        """The state ``state_to_arrays`` saved, in the structure of ``process.initialize()``.

        Raises:
            CheckpointError: the arrays do not fit this process's state.
        """
        import tensorflow as tf

        template = self.process.initialize()
        leaves = tf.nest.flatten(template)
        names = sorted(k for k in arrays if k.startswith("state_"))
        if len(names) != len(leaves):
            raise CheckpointError(
                f"checkpoint has {len(names)} state tensors, this run's process has {len(leaves)}"
            )
        restored = [
            _like(t, arrays[n], i) for i, (t, n) in enumerate(zip(leaves, names, strict=True))
        ]
        return tf.nest.pack_sequence_as(template, restored)


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def first_difference(saved: dict, current: dict) -> tuple[str, object, object] | None:
    """The first dotted key (in config order) whose value differs, with (saved, current)."""
    missing = object()
    a, b = _flat(saved), _flat(current)
    for key in [*b, *(k for k in a if k not in b)]:
        if key in IGNORED_KEYS:
            continue
        if a.get(key, missing) != b.get(key, missing):
            return key, a.get(key, "<absent>"), b.get(key, "<absent>")
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """Where a run's checkpoint lives, when it is written, and what a resumption starts from.

    Args:
        run_dir: the run's directory (Hydra's output dir).
        every: checkpoint every ``every`` rounds (and after the last); 0 only
            after the last.
        config: the resolved run config (plain containers), saved with every
            checkpoint and compared on resume.
        resume: continue from the checkpoint in ``run_dir``.
        fresh_if_empty: with ``resume``, start afresh if ``run_dir`` holds no
            output at all (a job of a killed sweep that never started) instead
            of refusing.
        option_hint: ``(key, saved value) -> override or None``: the override that
            selects the saved value, named when a resumption is refused over it.

    Raises:
        ConfigError: with ``resume``: no checkpoint in ``run_dir``, or it was
            written with a different config (the message names the first
            differing key).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        every: int = 1,
        config: dict | None = None,
        resume: bool = False,
        fresh_if_empty: bool = False,
        option_hint=None,
    ):
        self.option_hint = option_hint or (lambda key, saved: None)
        self.run_dir, self.dir = Path(run_dir), Path(run_dir) / DIRNAME
        self.every, self.config, self.resume = every, config or {}, resume
        self.meta: dict | None = None  # what a resumption starts from
        self.arrays: dict[str, np.ndarray] = {}
        self.hydra_files = {
            name: (self.run_dir / name).read_text()
            for name in HYDRA_FILES
            if (self.run_dir / name).exists()
        }
        never_ran = not any((self.run_dir / f).exists() for f in ("metrics.csv", "summary.json"))
        if resume and not (fresh_if_empty and never_ran and not self.path.exists()):
            self._open_for_resume()

    @property
    def path(self) -> Path:
        return self.dir / FILENAME

    def _open_for_resume(self) -> None:
        if not self.path.exists():
            if (record := self._completed_record()) is not None:
                self.meta = record  # finished: nothing to restore
                return
            raise ConfigError(
                "resume",
                True,
                f"false: {self.dir.parent} has no checkpoint to resume from (no "
                f"{DIRNAME}/{FILENAME}); set hydra.run.dir to the interrupted run's "
                "directory, or start a fresh run without resume=true",
            )
        self.arrays, self.meta = self.load()
        self.hydra_files = self.meta.get("hydra_files", {})
        self._restore_hydra_files()
        self._check_same_config(self.meta["config"])

    def _check_same_config(self, saved: dict) -> None:
        if diff := first_difference(saved, self.config):
            key, saved, current = diff
            option = self.option_hint(key, saved)
            raise ConfigError(
                key,
                current,
                f"{saved!r} as in the checkpointed run in {self.dir.parent}"
                + (f" ({option} selects it)" if option else "")
                + " (resume=true continues a run with the same config; start a new "
                "run in a new directory to change it)",
                absolute=True,
            )

    def _completed_record(self) -> dict | None:
        """A completed run kept as its record only (summary.json with its config, no checkpoint:
        the committed runs of a paper table) is finished, if its config is this one."""
        path = self.run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.exists() else {}
        if summary.get("status") != "completed" or "config" not in summary:
            return None
        self._check_same_config(summary["config"])
        return {
            "finished": True,
            "round": summary["rounds"],
            "summary": summary,
            "config": summary["config"],
        }

    def _restore_hydra_files(self) -> None:
        for name, text in self.hydra_files.items():
            path = self.run_dir / name
            if path.parent.is_dir():
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text)
                os.replace(tmp, path)

    # ------------------------------------------------------------------ resumption
    @property
    def round(self) -> int:
        """The last completed round of the checkpoint resumed from (0 for a fresh run)."""
        return self.meta["round"] if self.meta else 0

    @property
    def finished(self) -> bool:
        """The checkpoint resumed from is that of a run that ended (completed or stopped)."""
        return bool(self.meta and self.meta["finished"])

    @property
    def summary(self) -> dict:
        return self.meta["summary"] if self.meta else {}

    # ------------------------------------------------------------------ writing
    def due(self, round_num: int, rounds: int) -> bool:
        """Whether to checkpoint after ``round_num`` (the last round is saved when the run ends)."""
        return self.every > 0 and round_num % self.every == 0 and round_num < rounds

    def clear(self) -> None:
        """Removes a checkpoint left by an earlier run in this directory (a fresh run starts)."""
        if self.path.exists():
            log.warning("removing the checkpoint of an earlier run in %s (resume=false)", self.dir)
            self.path.unlink()
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        for tmp in self.dir.glob(f".{FILENAME}.tmp-*"):  # left by a kill during a write
            with contextlib.suppress(OSError):
                tmp.unlink()

    def save(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Atomically replaces the checkpoint by ``arrays`` and ``meta`` (JSON-able).

        The previous checkpoint stays in place until the new file is complete
        and on disk.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self._remove_temporaries()
        document = json.dumps(
            {"format": FORMAT, "config": self.config, "hydra_files": self.hydra_files, **meta},
            default=str,
        )
        tmp = self.dir / f".{FILENAME}.tmp-{os.getpid()}"
        with interrupts_deferred():  # SIGTERM / Ctrl-C wait until the checkpoint is in place
            with open(tmp, "wb") as f:
                np.savez(f, **arrays, **{META: np.array(document)})
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.dir)

    def load(self) -> tuple[dict[str, np.ndarray], dict]:
        """The arrays and the JSON document of the checkpoint (no pickles are read)."""
        with np.load(self.path, allow_pickle=False) as data:
            meta = json.loads(str(data[META]))
            arrays = {k: data[k] for k in data.files if k != META}
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.path}: format {meta.get('format')}, expected {FORMAT}")
        return arrays, meta
