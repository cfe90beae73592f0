"""What a client backend provides: each client's data for a round, and the learning process."""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

import numpy as np

from dpfed.errors import check
from dpfed.privacy.noise import position_seed, stream_id


class ClientBackend(abc.ABC):
    """Runs a strategy's `ClientUpdate` for a cohort: TFF's client work, or users in lockstep.

    Attributes:
        lockstep: one TFF client trains several simulated users at once.
    """

    lockstep: ClassVar[bool] = False
    name: ClassVar[str]  # its option in the ``backend`` group

    def for_run(self, strategy, parts, model) -> ClientBackend:
        """The backend that runs ``strategy``: this one, once `check` accepts the setting."""
        self.check(strategy, parts, model)
        return self

    def describe(self) -> dict:
        """summary.json fields: the backend that ran."""
        return {"backend": self.name}

    @abc.abstractmethod
    def check(self, strategy, parts, model) -> None:
        """Refuses what this backend cannot run exactly, naming the setting (before training).

        A strategy without clients (``client_update`` None: centralized) has nothing for
        a client backend to run.

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

    def pack(
        self,
        strategy,
        clients: list[ClientRound],
        seeds: list | None = None,
        canaries: list | None = None,
    ):
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
        return [
            client_dataset(c, batch, s if self.seeds_in_data else None)
            for c, s in zip(clients, seeds or [None] * len(clients), strict=True)
        ]

    def cohort_data(
        self,
        strategy,
        client_data,
        cohort: list[str],
        round_num: int,
        seed: int,
        noise_key: int | None = None,
        probe=None,
        poisson: PoissonBatches | None = None,
    ):
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
            poisson: DP-SGD's Poisson record batches (`PoissonBatches`); None shuffles
                every epoch.
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
            if poisson is None:
                batches = batch_count(len(x), update)
                client = ClientRound.shuffled(x, y, update, seed, round_num, index + 1)
            else:  # every client the same steps; the empty cohort's stand-in none
                batches = 0 if cid is None else poisson.steps_per_epoch * update.local_epochs
                client = ClientRound.poisson(x, y, poisson, batches, round_num, index + 1)
            clients.append(client)
            if probe is not None:
                per_epoch = batches // update.local_epochs
                canaries.append(probe.placements(round_num, index, per_epoch, update.local_epochs))
            if noise_key is not None:
                seeds.append(batch_seeds(noise_key, round_num, index + 1, batches))
        return self.pack(strategy, clients, seeds, canaries)


class PoissonBatches(NamedTuple):
    """DP-SGD's Poisson record batches in clients (``dp.record_sampling=poisson``).

    Attributes:
        key: the plan's ``record_sampling`` stream key (`dpfed.privacy.noise.stream_key`).
        q: the probability that a step takes a record.
        steps_per_epoch: a client's steps per local epoch (the same for every client).
    """

    key: int
    q: float
    steps_per_epoch: int


class ClientRound:
    """One client's examples in a round, reordered for each local epoch.

    ``epochs[e]`` is ``(x, y)`` in epoch e's order; its batches are consecutive
    slices of ``batch_size`` (the last one partial), so every record is in
    exactly one batch per local epoch, as record-level DP-SGD's accounting
    assumes, and a batch never spans two epochs.
    """

    def __init__(
        self,
        epochs: list[tuple[np.ndarray, np.ndarray]],
        steps: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ):
        self.epochs = epochs
        self.steps = steps

    @classmethod
    def shuffled(cls, x, y, update, seed: int, round_num: int, client: int) -> ClientRound:
        """Epochs in orders drawn from the position ``(seed, round, client)`` alone.

        Args:
            x: the client's examples.
            y: their labels.
            update: the strategy's `ClientUpdate` (local epochs).
            seed: the run seed.
            round_num: the round.
            client: the client's index + 1 (0 for the data-less stand-in of an empty cohort).
        """
        rng = np.random.default_rng([seed, stream_id("shuffle"), round_num, client])
        orders = (rng.permutation(len(x)) for _ in range(update.local_epochs))
        return cls([(x[order], y[order]) for order in orders])

    @classmethod
    def poisson(
        cls, x, y, batches: PoissonBatches, steps: int, round_num: int, client: int
    ) -> ClientRound:
        """``steps`` Poisson batches (DP-SGD's record sampling), each taking every record
        independently with probability ``batches.q``.

        The draws are a function of the position ``(batches.key, round, client)`` alone;
        the key is the plan's record-sampling stream, secret when the DP seed is. A step
        may take no record (it still releases its noise); ``epochs`` holds the data in
        its order, for shapes.

        Args:
            x: the client's examples.
            y: their labels.
            batches: the plan's `PoissonBatches`.
            steps: how many batches to draw.
            round_num: the round.
            client: the client's index + 1 (0 for the data-less stand-in of an empty cohort).
        """
        rng = np.random.default_rng(position_seed(batches.key, round_num, client).view(np.uint64))
        taken = [np.flatnonzero(rng.random(len(x)) < batches.q) for _ in range(steps)]
        return cls([(x, y)], [(x[t], y[t]) for t in taken])

    def batches(self, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every step's ``(x, y)``, epoch after epoch (Poisson batches: as drawn)."""
        check(batch_size >= 1, "batch_size", batch_size, ">= 1")
        if self.steps is not None:
            return self.steps
        return [
            (x[i : i + batch_size], y[i : i + batch_size])
            for x, y in self.epochs
            for i in range(0, len(x), batch_size)
        ]


def batch_count(examples: int, update) -> int:
    """Steps of a client with ``examples`` records: whole batches per local epoch, every epoch."""
    return -(-examples // update.batch_size) * update.local_epochs


def batch_seeds(noise_key: int, round_num: int, client: int, batches: int) -> np.ndarray:
    """The noise seed pairs ``[batches, 2]`` of a client's batches in a round.

    Drawn from a generator seeded by the position ``(key, round, client)``, so
    they depend on nothing but the position and the batch index.
    """
    rng = np.random.default_rng(position_seed(noise_key, round_num, client).view(np.uint64))
    return rng.integers(
        np.iinfo(np.int64).min,
        np.iinfo(np.int64).max,
        size=(batches, 2),
        dtype=np.int64,
        endpoint=True,
    )


def padded_steps(client: ClientRound) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A client's Poisson batches as ``x [S, B, ...]``, ``y [S, B, ...]`` (zero-padded to the
    largest, B) and each step's number of records ``[S]``."""
    x0, y0 = client.epochs[0]
    counts = np.array([len(bx) for bx, _ in client.steps], np.int64)
    width = int(counts.max(initial=0))
    x = np.zeros([len(counts), width, *x0.shape[1:]], x0.dtype)
    y = np.zeros([len(counts), width, *y0.shape[1:]], y0.dtype)
    for s, (bx, by) in enumerate(client.steps):
        x[s, : len(bx)], y[s, : len(by)] = bx, by
    return x, y, counts


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
    if client.steps is not None:  # Poisson batches, each of its own size (possibly 0)
        x, y, counts = padded_steps(client)
        ds = tf.data.Dataset.from_tensor_slices((x, y, counts)).map(
            lambda bx, by, n: (bx[:n], by[:n])
        )
    else:
        epochs = [
            tf.data.Dataset.from_tensor_slices(epoch).batch(batch_size) for epoch in client.epochs
        ]
        ds = epochs[0]
        for more in epochs[1:]:
            ds = ds.concatenate(more)
    if seeds is None:
        return ds
    return tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(seeds)))
