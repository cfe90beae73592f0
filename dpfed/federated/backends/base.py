"""What a client backend provides: each client's data for a round, and the learning process."""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from dpfed.errors import check
from dpfed.privacy.noise import position_seed, stream_id


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

    def pack(self, strategy, clients: list[ClientRound], seeds: list | None = None,
             canaries: list | None = None):  # fmt: skip
        """The process's client data from each client's shuffled epochs.

        Here one batched ``tf.data`` dataset per client, as TFF's client work reads
        it (`client_dataset`).

        Args:
            strategy: the strategy.
            clients: one `ClientRound` per client.
            seeds: per client, its batches' noise seeds ``[batches, 2]`` (or None).
            canaries: per client, its canary records' ``(step, canary)`` (or None; a
                backend that runs them says so in `check`).
        """
        batch = strategy.client_update.batch_size
        return [client_dataset(c, batch, s if self.seeds_in_data else None)
                for c, s in zip(clients, seeds or [None] * len(clients), strict=True)]  # fmt: skip

    def cohort_data(self, strategy, client_data, cohort: list[str], round_num: int, seed: int,
                    noise_key: int | None = None, probe=None):  # fmt: skip
        """Each client's shuffled, batched data for the round, packed for the process.

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
        clients, seeds = [], [] if noise_key is not None else None
        canaries = [] if probe is not None else None
        for cid in ids:
            index = -1 if cid is None else int(cid)
            x, y = client_data.arrays(cid if cid is not None else 0)
            if cid is None:
                x, y = x[:0], y[:0]
            batches = batch_count(len(x), update)
            if probe is not None:
                per_epoch = batches // update.local_epochs
                canaries.append(probe.placements(round_num, index, per_epoch, update.local_epochs))
            if noise_key is not None:
                seeds.append(batch_seeds(noise_key, round_num, index + 1, batches))
            clients.append(ClientRound.shuffled(x, y, update, seed, round_num, index + 1))
        return self.pack(strategy, clients, seeds, canaries)


class ClientRound:
    """One client's examples in a round, reordered for each local epoch.

    ``epochs[e]`` is ``(x, y)`` in epoch e's order; its batches are consecutive
    slices of ``batch_size`` (the last one partial), so every record is in
    exactly one batch per local epoch, as record-level DP-SGD's accounting
    assumes, and a batch never spans two epochs.
    """

    def __init__(self, epochs: list[tuple[np.ndarray, np.ndarray]]):
        self.epochs = epochs

    @classmethod
    def shuffled(cls, x, y, update, seed: int, round_num: int, client: int) -> ClientRound:
        """Epochs in orders drawn from the position ``(seed, round, client)`` alone.

        Args:
            x, y: the client's examples.
            update: the strategy's `ClientUpdate` (local epochs).
            seed: the run seed.
            round_num: the round.
            client: the client's index + 1 (0 for the data-less stand-in of an empty cohort).
        """
        rng = np.random.default_rng([seed, stream_id("shuffle"), round_num, client])
        orders = (rng.permutation(len(x)) for _ in range(update.local_epochs))
        return cls([(x[order], y[order]) for order in orders])

    def batches(self, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every step's ``(x, y)``, epoch after epoch."""
        check(batch_size >= 1, "batch_size", batch_size, ">= 1")
        return [(x[i : i + batch_size], y[i : i + batch_size]) for x, y in self.epochs
                for i in range(0, len(x), batch_size)]  # fmt: skip


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


def client_dataset(client: ClientRound, batch_size: int, seeds: np.ndarray | None = None):
    """One client's round as TFF's client work reads it: its batches, epoch after epoch.

    Args:
        client: the client's epochs.
        batch_size: the batch size.
        seeds: the batches' noise seeds ``[batches, 2]``; each element is then
            ``((x, y), seed)``.
    """
    import tensorflow as tf

    check(batch_size >= 1, "batch_size", batch_size, ">= 1")
    epochs = [tf.data.Dataset.from_tensor_slices(epoch).batch(batch_size)
              for epoch in client.epochs]  # fmt: skip
    ds = epochs[0]
    for more in epochs[1:]:
        ds = ds.concatenate(more)
    if seeds is None:
        return ds
    return tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(seeds)))
