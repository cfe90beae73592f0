"""TFF's federated Stack Overflow (next-word prediction), read lazily from a pre-filled cache.

``tff.simulation.datasets.stackoverflow.load_data`` downloads
``stackoverflow.sqlite`` (and ``load_word_counts`` a word-count file) on first
use. This loader only reads them from ``cache_dir`` and refuses to start a
download: both files are checked before TFF is called. The population is
large (342,477 training clients), so a client's sentences are read from the
SQLite file and tokenized only when the client is sampled.

Tokens, as in TFF's Stack Overflow tasks (Reddi et al., ICLR 2021): the
``vocab_size`` most frequent words get ids 1..V, 0 is padding, V+1 an
out-of-vocabulary word, V+2 and V+3 begin and end of sentence. Each sentence
becomes ``[BOS, words..., EOS]`` cut or padded to ``seq_len + 1``; ``x`` is
that without its last token and ``y`` without its first.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from dpfed.data.base import FederatedDataset
from dpfed.data.client_data import ArraySpec, LazyClientData
from dpfed.errors import ConfigError, check

DATABASE = "stackoverflow.sqlite"
WORD_COUNTS = "stackoverflow.word_count"


def read_vocabulary(path: Path, vocab_size: int) -> dict[str, int]:
    """The ``vocab_size`` most frequent words of TFF's word-count file (``word count`` lines)."""
    vocabulary = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            word = line.split()[0] if line.strip() else None
            if word is not None and word not in vocabulary:
                vocabulary[word] = len(vocabulary) + 1
            if len(vocabulary) >= vocab_size:
                break
    return vocabulary


class TFFStackOverflow(FederatedDataset):
    """TFF's Stack Overflow, client = user, train and eval = TFF's train and test splits.

    Args:
        cache_dir: directory holding ``stackoverflow.sqlite`` and the extracted
            ``stackoverflow.word_count`` (directly or in ``datasets/``, where
            Keras' ``get_file`` extracts it).
        vocab_size: words with their own id.
        seq_len: tokens per example.
        max_examples: at most this many sentences per client and split.
        num_clients: keep a seeded subset of this many training clients (null: all).
        seed: seed of the subset.
        examples_mean, eval_fraction: accepted for ``debug=smoke``; TFF fixes the
            split and ``max_examples`` caps clients.
        labels: ``every_step`` (the next word).
    """

    task = "classification"
    labels = "every_step"
    num_features = None

    def __init__(
        self,
        cache_dir: str,
        vocab_size: int = 10_000,
        seq_len: int = 20,
        max_examples: int = 128,
        num_clients: int | None = None,
        seed: int = 0,
        examples_mean: float | None = None,
        eval_fraction: float = 0.2,
        labels: str = "every_step",
    ):
        check(labels == "every_step", "labels", labels, "every_step (the next word)")
        check(vocab_size >= 1, "vocab_size", vocab_size, ">= 1")
        check(seq_len >= 2, "seq_len", seq_len, ">= 2")
        check(max_examples >= 1, "max_examples", max_examples, ">= 1")
        root = Path(cache_dir).expanduser()
        database = root / DATABASE
        counts = next(
            (p for p in (root / WORD_COUNTS, root / "datasets" / WORD_COUNTS) if p.is_file()), None
        )
        if not database.is_file() or counts is None:
            missing = DATABASE if not database.is_file() else WORD_COUNTS
            raise ConfigError(
                "cache_dir",
                cache_dir,
                f"a directory that already holds "
                f"{DATABASE} and {WORD_COUNTS} ({missing} is not in {root}); fill "
                "it once on a machine with network access with TFF's "
                "stackoverflow.load_data and load_word_counts(cache_dir=...), "
                "dpfed never downloads",
            )
        self.seq_len, self.max_examples = seq_len, max_examples
        self.vocab = read_vocabulary(counts, vocab_size)
        v = len(self.vocab)
        self.pad, self.oov, self.bos, self.eos = 0, v + 1, v + 2, v + 3
        self.vocab_size = self.num_classes = v + 4

        from dpfed.runtime import tff

        # Both files exist (checked above), so TFF opens the cache and downloads nothing.
        self._train, _, self._test = tff.simulation.datasets.stackoverflow.load_data(
            cache_dir=str(root)
        )
        ids = sorted(self._train.client_ids)
        if num_clients is not None:
            check(num_clients >= 1, "num_clients", num_clients, "null or >= 1")
            if num_clients < len(ids):
                keep = np.random.default_rng([seed, 61]).choice(len(ids), num_clients, False)
                ids = [ids[i] for i in np.sort(keep)]
        self.client_names = ids
        self._test_ids = set(self._test.client_ids)
        self.num_clients = len(ids)
        spec = (ArraySpec((seq_len,), "int32"), ArraySpec((seq_len,), "int32"))
        self.train = LazyClientData(self.num_clients, lambda i: self._arrays(self._train, i), spec)
        self.eval = LazyClientData(self.num_clients, lambda i: self._arrays(self._test, i), spec)

    def tokenize(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``x, y`` int32 ``[n, seq_len]``: each sentence as BOS, word ids, EOS, padded or cut."""
        rows = np.zeros((len(sentences), self.seq_len + 1), np.int32)
        for r, sentence in enumerate(sentences):
            ids = [self.bos, *(self.vocab.get(w, self.oov) for w in sentence.split()), self.eos]
            ids = ids[: self.seq_len + 1]
            rows[r, : len(ids)] = ids
        return rows[:, :-1], rows[:, 1:]

    @functools.lru_cache(maxsize=256)  # noqa: B019 (per-instance cache of small arrays)
    def _arrays(self, split, index: int):
        cid = self.client_names[index]
        sentences = []
        if split is self._train or cid in self._test_ids:
            dataset = split.create_tf_dataset_for_client(cid).take(self.max_examples)
            sentences = [e["tokens"].decode("utf-8") for e in dataset.as_numpy_iterator()]
        return self.tokenize(sentences)
