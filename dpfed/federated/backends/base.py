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

    # the batches a process reads carry their noise seeds (else `pack` receives them apart)
    seeds_in_data: ClassVar[bool] = True

    def pack(self, strategy, datasets: list, seeds: list | None = None,
             canaries: list | None = None):  # fmt: skip
        """The process's client data from one batched dataset per client (identity here).

        Args:
            strategy: the strategy.
            datasets: one batched dataset per client.
            seeds: per client, its batches' noise seeds ``[batches, 2]`` (or None).
            canaries: per client, its canary records' ``(step, canary)`` (or None; a
                backend that runs them says so in `check`).
        """
        return datasets

    def cohort_data(self, strategy, client_data, cohort: list[str], round_num: int, seed: int,
                    noise_key: int | None = None, probe=None):  # fmt: skip
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
            noise_key: the plan's client noise key; when given, every batch has a
                seed pair that is a function of (key, round, client, batch) alone.
            probe: an audit's canary records in DP-SGD (``ExampleDP.probe``), or None.
        """
        update = strategy.client_update
        ids = cohort or [None]
        datasets, seeds = [], [] if noise_key is not None else None
        canaries = [] if probe is not None else None
        for cid in ids:
            index = -1 if cid is None else int(cid)
            ds = client_data.create_tf_dataset_for_client(cid if cid is not None else "0")
            if cid is None:
                ds = ds.take(0)
            batches = batch_count(int(ds.cardinality()), update)
            if probe is not None:
                per_epoch = batches // update.local_epochs
                canaries.append(probe.placements(round_num, index, per_epoch, update.local_epochs))
            client_seeds = None
            if noise_key is not None:
                client_seeds = batch_seeds(noise_key, round_num, index + 1, batches)
                seeds.append(client_seeds)
            shuffle_seed = seed * 1_000_003 + round_num * 7919 + index
            datasets.append(client_dataset(ds, update, shuffle_seed,
                                           client_seeds if self.seeds_in_data else None))  # fmt: skip
        return self.pack(strategy, datasets, seeds, canaries)


def batch_count(examples: int, update) -> int:
    """Steps of a client with ``examples`` records: whole batches per local epoch, every epoch."""
    return -(-examples // update.batch_size) * update.local_epochs


def batch_seeds(noise_key: int, round_num: int, client: int, batches: int) -> np.ndarray:
    """The noise seed pairs ``[batches, 2]`` of a client's batches in a round.

    Drawn from a generator seeded by the position ``(key, round, client)``, so
    they depend on nothing but the position and the batch index.
    """
    rng = np.random.default_rng(position_seed(noise_key, round_num, client).view(np.uint64))
    return rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=(batches, 2),
                        dtype=np.int64, endpoint=True)  # fmt: skip


def client_dataset(dataset, update, shuffle_seed: int, seeds: np.ndarray | None = None):
    """One client's data for a round: shuffled, batched within each local epoch, repeated.

    Batching before repeating keeps every record in exactly one batch per local
    epoch (a batch never spans two epochs, so no record appears twice in one
    batch), which is what record-level DP-SGD's accounting assumes.

    Args:
        dataset: the client's (x, y) examples.
        update: the strategy's `ClientUpdate` (batch size, local epochs).
        shuffle_seed: the shuffling seed.
        seeds: the batches' noise seeds ``[batches, 2]``; each element is then
            ``((x, y), seed)``.
    """
    import tensorflow as tf

    check(update.batch_size >= 1, "batch_size", update.batch_size, ">= 1")
    ds = (dataset.shuffle(1024, seed=shuffle_seed, reshuffle_each_iteration=True)
          .batch(update.batch_size).repeat(update.local_epochs))  # fmt: skip
    if seeds is None:
        return ds
    return tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(seeds)))
