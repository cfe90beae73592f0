"""Smartwatch exercise recognition, one client per subject (seglearn's watch data set).

Burns et al. 2018, "Shoulder physiotherapy exercise recognition: machine
learning the inertial signals from a smartwatch" (Physiological Measurement),
as shipped in ``seglearn/data/watch_dataset.npy``: 140 recordings of 6-axis
inertial signals (accelerometer and gyroscope) at 50 Hz from 10 subjects, each
doing 7 shoulder exercises with both arms.
"""

from __future__ import annotations

import numpy as np

from dpfed.data.base import window_coupling
from dpfed.data.recorded import (
    STANDARDIZE,
    RecordedDataset,
    chronological_split,
    package_file,
    standardize_windows,
)
from dpfed.errors import check


class Watch(RecordedDataset):
    """Windows of smartwatch signals; predict the exercise (7 classes). Client = subject.

    Every recording is cut into windows of ``seq_len`` steps, ``stride``
    apart. The split is in time within every recording: its last
    ``eval_fraction`` (at least one window) is held out and no training window
    overlaps it. Features are standardized per ``standardize``: ``client``
    uses the mean and std of the client's own training windows (no eval data,
    nothing shared between clients), ``window`` each window's own statistics.

    Args:
        stride: steps between window starts (>= 1).
        standardize: ``client``, ``window`` or ``none``.
        labels: ``last`` (the only mode).
        **kwargs: see `RecordedDataset`.
    """

    num_classes = 7
    num_features = 6
    labels = "last"

    def __init__(
        self, stride: int = 25, standardize: str = "client", labels: str = "last", **kwargs
    ):
        check(stride >= 1, "stride", stride, ">= 1")
        check(labels == "last", "labels", labels, "last (one exercise per window)")
        check(
            standardize in STANDARDIZE,
            "standardize",
            standardize,
            f"one of {', '.join(STANDARDIZE)}",
        )
        super().__init__(**kwargs)
        self.stride, self.standardize = stride, standardize
        self._finish()

    def coupled_records(self) -> str | None:
        return window_coupling(self.seq_len, self.stride, self.standardize)

    @staticmethod
    def raw() -> dict:
        """The data set's dict: ``X`` (list of [T, 6]), ``y``, ``subject``, ``side``, labels."""
        path = package_file("seglearn", "data", "watch_dataset.npy")
        return np.load(path, allow_pickle=True).item()

    def _load(self):
        data = self.raw()
        self.class_names = list(data["y_labels"])
        length = self.seq_len
        clients = []
        for subject in sorted(np.unique(data["subject"])):
            parts = {"train": ([], []), "eval": ([], [])}
            for k in np.flatnonzero(data["subject"] == subject):
                series = np.asarray(data["X"][k], dtype=np.float32)
                starts = chronological_split(len(series), self.eval_fraction, length, self.stride)
                for split, idx in zip(("train", "eval"), starts, strict=True):
                    parts[split][0].extend(series[s : s + length] for s in idx)
                    parts[split][1].extend([int(data["y"][k])] * len(idx))

            def stack(xs, ys):
                if not xs:
                    return np.zeros((0, length, 6), np.float32), np.zeros(0, np.int32)
                return np.stack(xs).astype(np.float32), np.asarray(ys, np.int32)

            train, evals = stack(*parts["train"]), stack(*parts["eval"])
            if len(train[0]) and len(evals[0]):
                xt, xe = standardize_windows(train[0], evals[0], self.standardize)
                train, evals = (xt.astype(np.float32), train[1]), (xe.astype(np.float32), evals[1])
            clients.append((f"subject_{int(subject)}", train, evals))
        return clients
