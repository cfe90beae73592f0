"""Client samplers; each knows the neighbouring relation its accounting needs."""

from __future__ import annotations

import dp_accounting
import numpy as np

from dpfed.errors import check
from dpfed.federated.runtime import tff


class FixedSizeSampler:
    """Uniform fixed-size cohorts without replacement, independently each round.

    This is TFF's ``build_uniform_sampling_fn(replace=False)``. The population
    size is public and every cohort has exactly ``clients_per_round`` clients,
    so privacy is accounted under replace-one adjacency with dp-accounting's
    ``SampledWithoutReplacementDpEvent`` (Wang, Balle, Kasiviswanathan 2019),
    never as Poisson sampling.

    Args:
        population: number of clients to draw from.
        clients_per_round: cohort size, in [1, population].
        seed: sampling seed.
    """

    name = "fixed"
    neighboring_relation = dp_accounting.NeighboringRelation.REPLACE_ONE

    def __init__(self, population: int, clients_per_round: int, seed: int):
        check(
            1 <= clients_per_round <= population,
            "clients_per_round",
            clients_per_round,
            f"in [1, {population}] (the dataset has {population} clients)",
        )
        self.population, self.clients_per_round = population, clients_per_round
        self._sample = tff.simulation.build_uniform_sampling_fn(
            np.arange(population), replace=False, random_seed=seed
        )

    def sample(self, round_num: int) -> list[str]:
        """Returns the ids of the clients taking part in round ``round_num``."""
        return [str(i) for i in self._sample(round_num, self.clients_per_round)]

    def subsampled(self, event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        """The DP event of ``event`` run on one cohort drawn by this sampler."""
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.clients_per_round, event
        )

    def describe(self) -> dict:
        return {
            "sampling": self.name,
            "num_clients": self.population,
            "clients_per_round": self.clients_per_round,
        }


SAMPLERS = {FixedSizeSampler.name: FixedSizeSampler}
