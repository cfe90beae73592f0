"""What a client backend provides: each client's data for a round, and the learning process."""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from dpfed.errors import check
from dpfed.privacy.noise import position_seed


class ClientBackend(abc.ABC):
    """Runs a strategy's `ClientUpdate` for a cohort: TFF's client work, or users in lockstep.

    Attributes:
        lockstep: one TFF client trains several simulated users at once.
    """

    lockstep: ClassVar[bool] = False

    @abc.abstractmethod
    def check(self, strategy, parts, model) -> None:
        """Refuses what this backend cannot run exactly, naming the setting (before training).

        Raises:
            ConfigError: with the full Hydra key of the setting to change.
        """

    @abc.abstractmethod
    def build_process(self, strategy, model, parts):
        """The TFF learning process of ``strategy``'s client work with the mechanism's ``parts``.

        Call `check` first: building assumes the combination is supported.
        """

    def pack(self, strategy, datasets: list):
        """The process's client data from one batched dataset per client (identity here)."""
        return datasets

    def cohort_data(self, strategy, client_data, cohort: list[str], round_num: int, seed: int,
                    noise_key: int | None = None):  # fmt: skip
        """One shuffled, batched dataset per client of the cohort, packed for the process.

        An empty cohort (possible with Poisson sampling) gets one client without
        data, so the round still runs and its aggregator releases its noise: the
        mechanism `PoissonSampledDpEvent` analyses releases noise whether or not
        anyone was sampled.

        Args:
            strategy: the strategy (its `ClientUpdate` says how to batch).
            client_data: the training ClientData.
            cohort: the client ids of the round.
            round_num: the round.
            seed: the run seed (data shuffling).
            noise_key: the plan's client noise key; when given, every batch
                carries its seed pair, a function of (key, round, client, batch).
        """
        update = strategy.client_update
        ids = cohort or [None]
        datasets = []
        for cid in ids:
            index = -1 if cid is None else int(cid)
            ds = client_data.create_tf_dataset_for_client(cid if cid is not None else "0")
            if cid is None:
                ds = ds.take(0)
            keys = None if noise_key is None else position_seed(noise_key, round_num, index + 1)
            shuffle_seed = seed * 1_000_003 + round_num * 7919 + index
            datasets.append(client_dataset(ds, update, shuffle_seed, keys))
        return self.pack(strategy, datasets)


def client_dataset(dataset, update, shuffle_seed: int, noise_seed: np.ndarray | None = None):
    """One client's data for a round: shuffled, batched within each local epoch, repeated.

    Batching before repeating keeps every record in exactly one batch per local
    epoch (a batch never spans two epochs, so no record appears twice in one
    batch), which is what record-level DP-SGD's accounting assumes.

    Args:
        dataset: the client's (x, y) examples.
        update: the strategy's `ClientUpdate` (batch size, local epochs).
        shuffle_seed: the shuffling seed.
        noise_seed: the client's seed pair for the round; each batch then
            carries ``stateless_fold_in(noise_seed, batch index)`` as a third element.
    """
    import tensorflow as tf

    check(update.batch_size >= 1, "batch_size", update.batch_size, ">= 1")
    ds = (dataset.shuffle(1024, seed=shuffle_seed, reshuffle_each_iteration=True)
          .batch(update.batch_size).repeat(update.local_epochs))  # fmt: skip
    if noise_seed is None:
        return ds
    key = tf.constant(noise_seed, tf.int64)
    return ds.enumerate().map(
        lambda i, batch: (*batch, tf.random.experimental.stateless_fold_in(key, i))
    )
