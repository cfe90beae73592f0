"""Japanese Vowels: speaker recognition or next-frame regression on LPC coefficient series.

Kudo, Toyama and Shimbo 1999, "Multidimensional curve classification using
passing-through regions" (Pattern Recognition Letters), UCI's Japanese Vowels
as sktime ships it in its ``.ts`` format: 640 utterances of /ae/ by 9 male
speakers, each 7-29 frames of 12 LPC cepstrum coefficients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpfed.data.partition import PARTITIONS, partition
from dpfed.data.recorded import RecordedDataset, package_file
from dpfed.errors import ConfigError, check

TASKS = ("speaker", "next_frame")
NUM_COEFFICIENTS = 12


def parse_ts(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Reads a multivariate, unequal-length sktime ``.ts`` file with class labels.

    After the ``@data`` line every line is one series: dimensions separated
    by ``:``, values within a dimension by ``,``, the class label last.

    Args:
        path: the ``.ts`` file.

    Returns:
        ``(series, labels)``: a list of ``[T, dims]`` float32 arrays and the
        labels as strings.
    """
    series, labels, in_data = [], [], False
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            in_data = line.lower() == "@data"
            continue
        *dims, label = line.split(":")
        try:
            values = [np.array(d.split(","), dtype=np.float32) for d in dims]
        except ValueError as err:
            raise ConfigError(
                "path", str(path), f"a valid .ts file (line {number}: {err})"
            ) from None
        if len({len(v) for v in values}) != 1:
            raise ConfigError(
                "path", str(path), f"a valid .ts file (line {number}: dimensions differ in length)"
            )
        series.append(np.stack(values, axis=-1))
        labels.append(label.strip())
    return series, np.asarray(labels)


def pad_front(frames: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` frames, zero-padded in front to ``length`` (the last step is real)."""
    frames = frames[:length]
    out = np.zeros((length, frames.shape[1]), dtype=np.float32)
    out[length - len(frames) :] = frames
    return out


class Vowels(RecordedDataset):
    """Japanese Vowels as a federated sequence task.

    ``task: speaker``: classify the speaker (9 classes) from one utterance,
    cropped to its first ``seq_len`` frames and zero-padded in front. The 640
    utterances (sktime's train and test files pooled) are dealt to
    ``num_clients`` clients by a partitioner (`dpfed.data.partition`:
    ``iid``, ``dirichlet`` label skew or ``quantity`` skew, concentration
    ``alpha``); each client holds out a seeded ``eval_fraction`` of its own.

    ``task: next_frame``: regress coefficient ``coefficient`` of the next
    frame from up to ``seq_len`` preceding frames (zero-padded in front), one
    example per frame after the first. The GRU's regression head has one
    output, hence one coefficient. Client = speaker (9 clients); sktime's
    training utterances train and its test utterances evaluate.

    Args:
        task: ``speaker`` or ``next_frame``.
        partition: partitioner of the speaker task.
        alpha: Dirichlet concentration of ``dirichlet`` and ``quantity``.
        min_examples: smallest client of the speaker task (>= 2).
        coefficient: which LPC coefficient (0-11) ``next_frame`` predicts.
        labels: ``last`` (the only mode: one target per example).
        **kwargs: see `RecordedDataset`; ``num_clients`` is the number of
            partitions for ``speaker`` and a cap for ``next_frame``.
    """

    num_features = NUM_COEFFICIENTS

    def __init__(
        self,
        task: str = "speaker",
        partition: str = "dirichlet",
        alpha: float = 0.5,
        min_examples: int = 2,
        coefficient: int = 0,
        labels: str = "last",
        **kwargs,
    ):
        check(task in TASKS, "task", task, f"one of {', '.join(TASKS)}")
        check(partition in PARTITIONS, "partition", partition, f"one of {', '.join(PARTITIONS)}")
        check(alpha > 0, "alpha", alpha, "> 0")
        check(min_examples >= 2, "min_examples", min_examples, ">= 2 (one train, one eval)")
        check(0 <= coefficient < NUM_COEFFICIENTS, "coefficient", coefficient, "in [0, 11]")
        check(labels == "last", "labels", labels, "last (one target per utterance or frame)")
        super().__init__(**kwargs)
        self.task_name, self.partition, self.alpha = task, partition, alpha
        self.min_examples, self.coefficient = min_examples, coefficient
        if task == "speaker":
            check(
                self.max_clients is not None,
                "num_clients",
                None,
                "an integer: the number of partitions of task=speaker",
            )
            self.task, self.num_classes = "classification", 9
        else:
            self.task, self.num_classes = "regression", 1
        self._finish(cap_clients=task == "next_frame")

    def coupled_records(self) -> str | None:
        if self.task_name == "next_frame":
            return "next-frame examples are overlapping windows of one utterance"
        return None

    @staticmethod
    def raw() -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
        """sktime's ``TRAIN`` and ``TEST`` splits: series and 0-based speaker ids."""
        out = {}
        for split in ("TRAIN", "TEST"):
            path = package_file(
                "sktime", "datasets", "data", "JapaneseVowels", f"JapaneseVowels_{split}.ts"
            )
            series, labels = parse_ts(path)
            out[split] = series, labels.astype(np.int64) - 1
        return out

    def _load(self):
        raw = self.raw()
        return self._speakers(raw) if self.task_name == "speaker" else self._next_frames(raw)

    def _speakers(self, raw):
        series = raw["TRAIN"][0] + raw["TEST"][0]
        labels = np.concatenate([raw["TRAIN"][1], raw["TEST"][1]]).astype(np.int32)
        x = np.stack([pad_front(s, self.seq_len) for s in series])
        parts = partition(
            self.partition, labels, self.max_clients, self.alpha, self.seed, self.min_examples
        )
        clients = []
        for k, idx in enumerate(parts):
            idx = np.random.default_rng([self.seed, 301, k]).permutation(idx)
            n_eval = min(len(idx) - 1, max(1, int(round(len(idx) * self.eval_fraction))))
            train, evals = np.sort(idx[:-n_eval]), np.sort(idx[-n_eval:])
            clients.append((f"client_{k}", (x[train], labels[train]), (x[evals], labels[evals])))
        return clients

    def _frames(self, series: list[np.ndarray]):
        xs, ys = [], []
        for s in series:
            for c in range(1, len(s)):
                xs.append(pad_front(s[max(0, c - self.seq_len) : c], self.seq_len))
                ys.append(s[c, self.coefficient])
        return np.stack(xs).astype(np.float32), np.asarray(ys, np.float32)

    def _next_frames(self, raw):
        clients = []
        for speaker in range(9):
            splits = [
                self._frames([s for s, y in zip(*raw[split], strict=True) if y == speaker])
                for split in ("TRAIN", "TEST")
            ]
            clients.append((f"speaker_{speaker + 1}", *splits))
        return clients
