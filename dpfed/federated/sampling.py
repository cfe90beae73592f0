"""Client samplers; each knows the neighbouring relation and DP event of what it draws.

The accounting of a round depends on how its cohort was drawn, so the sampler,
not the mechanism, wraps a mechanism's DP event into the round's event. This is
what keeps the accountant matched to the sampling the simulation performs.
"""

from __future__ import annotations

import dp_accounting
import numpy as np

from dpfed.errors import check

REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE
ADD_OR_REMOVE_ONE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


class CohortSampler:
    """What every client sampler shares: a population, a cohort size, a seed.

    Subclasses set ``name`` and ``neighboring_relation`` and implement
    ``sample``, ``round_event`` (the DP event of a mechanism's ``event`` run on
    one round's cohort) and ``participation_event`` (``event`` if one client
    may take part in that round again, else a no-op).

    Args:
        population: number of clients to draw from.
        clients_per_round: cohort size (expected size for Poisson), in [1, population].
        seed: sampling seed.
    """

    name = "cohort"

    def __init__(self, population: int, clients_per_round: int, seed: int):
        check(
            1 <= clients_per_round <= population,
            "clients_per_round",
            clients_per_round,
            f"in [1, {population}] (the dataset has {population} clients)",
        )
        self.population, self.clients_per_round, self.seed = population, clients_per_round, seed

    def participation_event(self, round_num: int, event):
        return event

    def state_dict(self) -> dict:
        """The sampler's random state, JSON-ready, for checkpoints.

        Every sampler here draws round ``r``'s cohort from a generator seeded
        by ``(seed, r)`` alone (counter-based, like TFF's uniform sampling), so
        the seed is the whole random state: a resumed run draws the same later
        cohorts as an uninterrupted one, whatever was drawn before.
        """
        return {"sampling": self.name, "seed": self.seed, "population": self.population,
                "clients_per_round": self.clients_per_round}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Checks that a checkpoint's sampler is this one (there is no stream state to set).

        Raises:
            ValueError: the checkpoint was written by a different sampler.
        """
        if state != self.state_dict():
            raise ValueError(f"checkpoint sampler {state} differs from {self.state_dict()}")

    def describe(self) -> dict:
        return {
            "sampling": self.name,
            "num_clients": self.population,
            "clients_per_round": self.clients_per_round,
        }


class FixedSizeSampler(CohortSampler):
    """Uniform fixed-size cohorts without replacement, independently each round.

    This is TFF's ``build_uniform_sampling_fn(replace=False)``. The population
    size is public and every cohort has exactly ``clients_per_round`` clients,
    so privacy is accounted under replace-one adjacency with dp-accounting's
    ``SampledWithoutReplacementDpEvent`` (Wang, Balle, Kasiviswanathan 2019),
    never as Poisson sampling. dp-accounting supports it with RDP only.

    Args:
        population: number of clients to draw from.
        clients_per_round: cohort size, in [1, population].
        seed: sampling seed.
    """

    name = "fixed"
    neighboring_relation = REPLACE_ONE
    _sample = None

    def sample(self, round_num: int) -> list[str]:
        """Returns the ids of the clients taking part in round ``round_num``."""
        if self._sample is None:
            from dpfed.federated.runtime import tff

            self._sample = tff.simulation.build_uniform_sampling_fn(
                np.arange(self.population), replace=False, random_seed=self.seed
            )
        return [str(i) for i in self._sample(round_num, self.clients_per_round)]

    def round_event(self, round_num: int, event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        """The DP event of ``event`` run on the cohort of round ``round_num``."""
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.clients_per_round, event
        )


class PoissonSampler(CohortSampler):
    """Poisson cohorts: every client joins each round independently with probability q.

    ``q = clients_per_round / population``, so ``clients_per_round`` is the
    expected cohort size and real cohorts vary (possibly empty). Accounted under
    add/remove adjacency with ``PoissonSampledDpEvent`` (Abadi et al. 2016;
    Mironov et al. 2019).

    Args:
        population: number of clients.
        clients_per_round: expected cohort size, in [1, population].
        seed: sampling seed.
    """

    name = "poisson"
    neighboring_relation = ADD_OR_REMOVE_ONE

    def __init__(self, population: int, clients_per_round: int, seed: int):
        super().__init__(population, clients_per_round, seed)
        self.q = clients_per_round / population

    @classmethod
    def with_probability(cls, q: float) -> PoissonSampler:
        """An accounting-only sampler for sampling probability ``q`` (no population)."""
        check(0 < q <= 1, "q", q, "in (0, 1]")
        sampler = cls.__new__(cls)
        sampler.population, sampler.clients_per_round, sampler.seed, sampler.q = None, None, 0, q
        return sampler

    def sample(self, round_num: int) -> list[str]:
        joins = np.random.default_rng([self.seed, round_num, 17]).random(self.population) < self.q
        return [str(i) for i in np.flatnonzero(joins)]

    def round_event(self, round_num: int, event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        return dp_accounting.PoissonSampledDpEvent(self.q, event)

    def describe(self) -> dict:
        return {**super().describe(), "sampling_probability": self.q}


class ShuffleSampler(CohortSampler):
    """Shuffled epochs without sampling: each epoch, a fresh permutation is cut into cohorts.

    An epoch has ``population // clients_per_round`` rounds; the clients left
    over by the cut sit that epoch out. Every client takes part at most once
    per epoch, so a user's privacy loss is one (unamplified) release per epoch:
    the first round of each epoch carries the mechanism's event, the other
    rounds of the epoch a no-op. Cohorts have a fixed size, so adjacency is
    replace-one. A started epoch counts in full.

    Args:
        population: number of clients.
        clients_per_round: cohort size, in [1, population].
        seed: shuffling seed.
    """

    name = "shuffle"
    neighboring_relation = REPLACE_ONE

    def __init__(self, population: int, clients_per_round: int, seed: int):
        super().__init__(population, clients_per_round, seed)
        self.rounds_per_epoch = population // clients_per_round

    def _position(self, round_num: int) -> tuple[int, int]:
        return divmod(round_num - 1, self.rounds_per_epoch)

    def sample(self, round_num: int) -> list[str]:
        epoch, index = self._position(round_num)
        order = np.random.default_rng([self.seed, epoch, 23]).permutation(self.population)
        cohort = order[index * self.clients_per_round : (index + 1) * self.clients_per_round]
        return [str(i) for i in cohort]

    def round_event(self, round_num: int, event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        return event if self._position(round_num)[1] == 0 else dp_accounting.NoOpDpEvent()

    participation_event = round_event  # a client takes part at most once per epoch

    def describe(self) -> dict:
        return {**super().describe(), "rounds_per_epoch": self.rounds_per_epoch}


class FullParticipation:
    """No sampling: every record takes part in every step (add/remove adjacency)."""

    name = "none"
    neighboring_relation = ADD_OR_REMOVE_ONE

    def round_event(self, round_num: int, event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        return event

    def describe(self) -> dict:
        return {"sampling": self.name}


SAMPLERS = {cls.name: cls for cls in (FixedSizeSampler, PoissonSampler, ShuffleSampler)}
