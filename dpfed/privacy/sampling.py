"""Samplers: who takes part in each round, and what that means for the accounting.

The accounting of a round depends on how its cohort was drawn, so a sampler,
not the mechanism, wraps a mechanism's release into the round's DP event, says
under which neighbouring relations that event can be accounted (and with which
dp-accounting relation), and how often one client can take part.
"""

from __future__ import annotations

import abc
import enum
import math
from typing import ClassVar

import dp_accounting
import numpy as np

from dpfed.errors import ConfigError, check
from dpfed.privacy.neighboring import Neighboring, Relation


class Sampling(enum.StrEnum):
    """How a federated strategy draws its cohorts (``strategy.sampling``)."""

    fixed = "fixed"
    poisson = "poisson"
    shuffle = "shuffle"
    cyclic = "cyclic"
    min_sep_poisson = "min_sep_poisson"


class RecordSampling(enum.StrEnum):
    """How ``strategy=centralized`` draws batches of pooled records (``strategy.sampling``)."""

    records = "records"


class Sampler(abc.ABC):
    """Draws each round's participants and wraps a release into that round's DP event.

    Attributes:
        label: the ``strategy.sampling`` value.
        unit: what is sampled: ``client`` cohorts, or ``record`` batches.
        default_neighboring: the strict relation used when ``dp.neighboring`` is null.
        relations: the relations this sampling can be accounted under, each
            with the dp-accounting relation its events are composed under.
        epochs: cohorts come in epochs in which every client takes part at most
            once (what tree aggregation and matrix factorizations need).
        separated_poisson: Poisson cohorts from groups of clients taking turns, so a
            client's rounds are at least ``min_separation`` apart (what amplified
            banded matrix factorizations need).
    """

    label: ClassVar[str]
    unit: ClassVar[str] = "client"
    epochs: ClassVar[bool] = False
    separated_poisson: ClassVar[bool] = False
    default_neighboring: ClassVar[Neighboring]
    relations: ClassVar[dict[Neighboring, Relation]]

    def neighboring(self, configured: Neighboring | None, private: bool = True) -> Neighboring:
        """The relation a central release is accounted under (``configured`` or the default).

        Args:
            configured: ``dp.neighboring`` (None: this sampling's strict default).
            private: the release adds noise; a non-private one (epsilon infinite
                under every relation) takes the default where ``configured`` is
                not analysed for this sampling.

        Raises:
            ConfigError: ``configured`` cannot be accounted with this sampling.
        """
        neighboring = self.default_neighboring if configured is None else Neighboring(configured)
        if neighboring not in self.relations and not private:
            return self.default_neighboring
        if neighboring not in self.relations:
            allowed = " or ".join(str(n) for n in self.relations)
            raise ConfigError(
                "neighboring",
                str(neighboring),
                f"{allowed} with {self.label} sampling ({self.why_not})",
            )
        return neighboring

    why_not: ClassVar[str] = ""

    @abc.abstractmethod
    def sample(self, round_num: int) -> list[str]:
        """The ids of the clients taking part in round ``round_num``."""

    @abc.abstractmethod
    def round_event(self, round_num: int, release: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        """The DP event of ``release`` run on the participants of round ``round_num``."""

    @abc.abstractmethod
    def max_participations(self, rounds: int) -> int:
        """The most rounds of ``1..rounds`` one client can take part in."""

    @property
    @abc.abstractmethod
    def expected_cohort(self) -> float:
        """Expected number of participants per round (the DP mean's denominator)."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """summary.json fields."""

    def state_dict(self) -> dict:
        """The sampler's random state, JSON-ready, for checkpoints.

        Every sampler here draws round ``r`` from a generator seeded by
        ``(seed, r)`` alone (counter-based, like TFF's uniform sampling), so the
        settings are the whole state: a resumed run draws the same later rounds
        as an uninterrupted one.
        """
        return {**self.describe(), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Checks that a checkpoint's sampler is this one (there is no stream state to set).

        Raises:
            ValueError: the checkpoint was written by a different sampler.
        """
        if state != self.state_dict():
            raise ValueError(f"checkpoint sampler {state} differs from {self.state_dict()}")


class CohortSampler(Sampler):
    """A population and a cohort size; subclasses draw the cohorts.

    Args:
        population: number of clients to draw from.
        clients_per_round: cohort size (expected size for Poisson), in [1, population].
        seed: sampling seed.
    """

    def __init__(self, population: int, clients_per_round: int, seed: int):
        check(
            1 <= clients_per_round <= population,
            "clients_per_round",
            clients_per_round,
            f"in [1, {population}] (the dataset has {population} clients)",
        )
        self.population, self.clients_per_round, self.seed = population, clients_per_round, seed

    @property
    def expected_cohort(self) -> float:
        return float(self.clients_per_round)

    def max_participations(self, rounds: int) -> int:
        return rounds

    def describe(self) -> dict:
        return {
            "sampling": self.label,
            "num_clients": self.population,
            "clients_per_round": self.clients_per_round,
        }


class FixedSizeSampler(CohortSampler):
    """Uniform fixed-size cohorts without replacement, independently each round.

    This is TFF's ``build_uniform_sampling_fn(replace=False)``. Every cohort has
    exactly ``clients_per_round`` clients, so adding or removing a client is
    visible; the release is accounted with dp-accounting's
    ``SampledWithoutReplacementDpEvent`` (Wang, Balle, Kasiviswanathan 2019),
    which composes under its replace-one relation: with ``replace_one`` the
    release's sensitivity is two clips, with ``zero_out`` (replacing a client by
    one that contributes nothing) one clip. RDP only.
    """

    label = "fixed"
    default_neighboring = Neighboring.replace_one
    relations = {
        Neighboring.replace_one: Relation.REPLACE_ONE,
        Neighboring.zero_out: Relation.REPLACE_ONE,
    }
    why_not = "fixed-size cohorts reveal the population size, so add/remove is not analysed"
    _sample = None

    def sample(self, round_num: int) -> list[str]:
        if self._sample is None:
            from dpfed.runtime import tff

            self._sample = tff.simulation.build_uniform_sampling_fn(
                np.arange(self.population), replace=False, random_seed=self.seed % 2**32
            )
        return [str(i) for i in self._sample(round_num, self.clients_per_round)]

    def round_event(self, round_num: int, release: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        return dp_accounting.SampledWithoutReplacementDpEvent(
            self.population, self.clients_per_round, release
        )


class PoissonSampler(CohortSampler):
    """Poisson cohorts: every client joins each round independently with probability q.

    ``q = clients_per_round / population``, so ``clients_per_round`` is the
    expected cohort size and real cohorts vary (possibly empty: the round still
    releases its noise). Accounted with ``PoissonSampledDpEvent`` (Abadi et al.
    2016; Mironov et al. 2019) under add/remove adjacency, which ``zero_out``
    equals here (a client contributing nothing is a client left out).
    """

    label = "poisson"
    default_neighboring = Neighboring.add_remove
    relations = {
        Neighboring.add_remove: Relation.ADD_OR_REMOVE_ONE,
        Neighboring.zero_out: Relation.ADD_OR_REMOVE_ONE,
    }
    why_not = (
        "dp-accounting analyses Poisson sampling under add/remove only; replacing a "
        "client is one removal and one addition, so use zero_out or add_remove"
    )

    def __init__(self, population: int, clients_per_round: int, seed: int):
        super().__init__(population, clients_per_round, seed)
        self.q = clients_per_round / population

    def sample(self, round_num: int) -> list[str]:
        joins = np.random.default_rng([self.seed, round_num, 17]).random(self.population) < self.q
        return [str(i) for i in np.flatnonzero(joins)]

    def round_event(self, round_num: int, release: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        return dp_accounting.PoissonSampledDpEvent(self.q, release)

    def describe(self) -> dict:
        return {**super().describe(), "sampling_probability": self.q}


class ShuffleSampler(CohortSampler):
    """Shuffled epochs without sampling: each epoch, a fresh permutation is cut into cohorts.

    An epoch has ``population // clients_per_round`` rounds; the clients left
    over by the cut sit that epoch out. Every client takes part at most once
    per epoch, so its privacy loss is one (unamplified) release per epoch: the
    first round of each epoch carries the mechanism's release, the other rounds
    of the epoch a no-op, and a started epoch counts in full.
    """

    label = "shuffle"
    epochs = True
    default_neighboring = Neighboring.replace_one
    relations = {
        Neighboring.replace_one: Relation.REPLACE_ONE,
        Neighboring.zero_out: Relation.REPLACE_SPECIAL,
    }
    why_not = "cohorts have a fixed size, so add/remove is not analysed"

    def __init__(self, population: int, clients_per_round: int, seed: int):
        super().__init__(population, clients_per_round, seed)
        self.rounds_per_epoch = population // clients_per_round

    def position(self, round_num: int) -> tuple[int, int]:
        """(epoch, round within the epoch) of ``round_num``, both from 0."""
        return divmod(round_num - 1, self.rounds_per_epoch)

    def sample(self, round_num: int) -> list[str]:
        epoch, index = self.position(round_num)
        order = np.random.default_rng([self.seed, epoch, 23]).permutation(self.population)
        cohort = order[index * self.clients_per_round : (index + 1) * self.clients_per_round]
        return [str(i) for i in cohort]

    def round_event(self, round_num: int, release: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        return release if self.position(round_num)[1] == 0 else dp_accounting.NoOpDpEvent()

    def epoch_rounds(self, round_num: int, rounds: int) -> int:
        """Rounds of ``round_num``'s epoch that fall within ``1..rounds``."""
        epoch, _ = self.position(round_num)
        start = epoch * self.rounds_per_epoch + 1
        return max(0, min(self.rounds_per_epoch, rounds - start + 1))

    def max_participations(self, rounds: int) -> int:
        return math.ceil(rounds / self.rounds_per_epoch)

    @property
    def min_separation(self) -> int:
        """The fewest rounds between two participations of one client (1: back to back)."""
        return 1  # the last round of one epoch and the first of the next

    def describe(self) -> dict:
        return {
            **super().describe(),
            "rounds_per_epoch": self.rounds_per_epoch,
            "min_separation": self.min_separation,
        }


class CyclicSampler(ShuffleSampler):
    """One seeded permutation cut into cohorts, visited in the same order every epoch.

    As `ShuffleSampler`, but the permutation is drawn once: a client takes part
    exactly every ``rounds_per_epoch`` rounds, the b-min-separation
    participation of banded matrix factorizations (Choquette-Choo et al.,
    NeurIPS 2023), which lets ``dp=bandmf`` use that separation in its
    sensitivity. Clients left over by the cut never take part.
    """

    label = "cyclic"

    def sample(self, round_num: int) -> list[str]:
        _, index = self.position(round_num)
        order = np.random.default_rng([self.seed, 0, 23]).permutation(self.population)
        cohort = order[index * self.clients_per_round : (index + 1) * self.clients_per_round]
        return [str(i) for i in cohort]

    @property
    def min_separation(self) -> int:
        return self.rounds_per_epoch


class MinSepPoissonSampler(CohortSampler):
    """Poisson cohorts from groups taking turns: b-min-separation Poisson sampling.

    Every client is assigned to one of ``groups`` groups by a seeded draw of its
    own (a function of the seed and its id alone, so adding or removing a client
    moves no other client); round ``t`` draws from group ``(t - 1) mod groups``
    only, each of its clients independently with probability
    ``q = clients_per_round * groups / population`` (its own coin, keyed by the
    round and its id), so cohorts average ``clients_per_round``. A client's
    rounds are therefore at least ``groups`` apart, and it can take part in at
    most ``ceil(rounds / groups)`` of them, each Poisson-sampled: the sampling of
    amplified banded matrix factorization (Choquette-Choo et al., "(Amplified)
    Banded Matrix Factorization", NeurIPS 2023, Section 4), and for mechanisms
    whose rounds are independent releases, DP-SGD-style amplification over fewer
    rounds. The first group's rounds (the most of any group) carry
    ``PoissonSampledDpEvent(q, release)``, every other round a no-op, under
    add/remove adjacency (``zero_out`` equals it here).

    Args:
        population: number of clients.
        clients_per_round: expected cohort size, in [1, population / groups].
        seed: sampling seed (the groups and each round's draw).
        groups: ``strategy.sampling_groups``, in [1, population].
    """

    label = "min_sep_poisson"
    separated_poisson = True
    default_neighboring = PoissonSampler.default_neighboring
    relations = PoissonSampler.relations
    why_not = PoissonSampler.why_not

    def __init__(self, population: int, clients_per_round: int, seed: int, groups: int):
        check(
            1 <= groups <= population,
            "sampling_groups",
            groups,
            f"in [1, {population}] with strategy.sampling=min_sep_poisson "
            "(the clients are split into this many groups taking turns)",
        )
        self.groups = int(groups)
        limit = population // self.groups
        check(
            1 <= clients_per_round <= limit,
            "clients_per_round",
            clients_per_round,
            f"in [1, {limit}] ({population} clients in {self.groups} groups: a group "
            "averages that many)",
        )
        super().__init__(population, clients_per_round, seed)
        self.q = clients_per_round * self.groups / population
        self._assignment = np.random.default_rng([seed, 0, 29]).integers(
            0, self.groups, size=population
        )

    @property
    def min_separation(self) -> int:
        """The fewest rounds between two participations of one client."""
        return self.groups

    def group(self, round_num: int) -> int:
        """The group drawn from in round ``round_num`` (from 0)."""
        return (round_num - 1) % self.groups

    def members(self, group: int) -> np.ndarray:
        """The clients of ``group``."""
        return np.flatnonzero(self._assignment == group)

    def sample(self, round_num: int) -> list[str]:
        coins = np.random.default_rng([self.seed, round_num, 19]).random(self.population)
        joins = (self._assignment == self.group(round_num)) & (coins < self.q)
        return [str(i) for i in np.flatnonzero(joins)]

    def round_event(self, round_num: int, release: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        if self.group(round_num) != 0:
            return dp_accounting.NoOpDpEvent()
        return dp_accounting.PoissonSampledDpEvent(self.q, release)

    def max_participations(self, rounds: int) -> int:
        return math.ceil(rounds / self.groups)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "sampling_probability": self.q,
            "sampling_groups": self.groups,
            "min_separation": self.min_separation,
        }


class RecordPoissonSampler(Sampler):
    """Pooled records (``strategy=centralized``): Poisson batches, every record independently.

    The pool is ``clients_per_round`` seeded random clients (all when null);
    every round is one epoch of ``ceil(r * n / b) - ceil((r - 1) * n / b)``
    steps, so ``rounds`` epochs take ``ceil(rounds * n / b)`` steps in all, as
    TF Privacy's ``compute_dp_sgd_privacy`` counts them. Each step draws every
    record with probability ``q = batch_size / n`` (Abadi et al. 2016).

    Args:
        population: the dataset's public sizes (`dpfed.privacy.plan.Population`).
        clients_per_round: clients whose records are pooled; None pools all.
        batch_size: expected batch size, in [1, n].
        seed: seed of the pool and of the batches.
    """

    label = "records"
    unit = "record"
    default_neighboring = Neighboring.add_remove
    relations = PoissonSampler.relations
    why_not = PoissonSampler.why_not

    def __init__(self, population, clients_per_round: int | None, batch_size: int, seed: int):
        n = population.num_clients
        m = n if clients_per_round is None else clients_per_round
        check(
            1 <= m <= n,
            "clients_per_round",
            m,
            f"null or in [1, {n}] (the dataset has {n} clients)",
        )
        self.population, self.seed, self.batch_size = n, seed, batch_size
        self.clients = np.sort(np.random.default_rng([seed, 43]).choice(n, m, replace=False))
        check(
            population.train_records is not None,
            "sampling",
            "records",
            "a sampling of clients: this dataset cannot say how many records it holds",
        )
        self.num_records = int(population.train_records(self.clients))
        check(
            1 <= batch_size <= self.num_records,
            "batch_size",
            batch_size,
            f"in [1, {self.num_records}] (the pooled training records)",
        )
        self.q = batch_size / self.num_records

    @property
    def expected_cohort(self) -> float:
        return float(self.batch_size)

    def steps(self, round_num: int) -> int:
        per_epoch = self.num_records / self.batch_size
        return math.ceil(round_num * per_epoch) - math.ceil((round_num - 1) * per_epoch)

    def sample(self, round_num: int) -> list[str]:
        return [str(i) for i in self.clients]  # every pooled client, every round

    def round_event(self, round_num: int, release: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(self.q, release), self.steps(round_num)
        )

    def max_participations(self, rounds: int) -> int:
        return rounds

    def describe(self) -> dict:
        return {
            "sampling": self.label,
            "num_clients": self.population,
            "clients_per_round": len(self.clients),
            "num_records": self.num_records,
            "sampling_probability": self.q,
        }


SAMPLERS = {
    Sampling.fixed: FixedSizeSampler,
    Sampling.poisson: PoissonSampler,
    Sampling.shuffle: ShuffleSampler,
    Sampling.cyclic: CyclicSampler,
}


def build_sampler(strategy_cfg, population, seed: int) -> Sampler:
    """The sampler a strategy's config asks for (``strategy.sampling``).

    Args:
        strategy_cfg: the ``strategy`` config node (``sampling``,
            ``clients_per_round``, and ``batch_size`` for pooled records).
        population: the dataset's public sizes.
        seed: the sampling seed: the run seed, or one as secret as the DP seed
            (`dpfed.privacy.noise.sampling_seed`).
    """
    sampling = strategy_cfg.sampling
    if str(sampling) == RecordSampling.records:
        return RecordPoissonSampler(
            population, strategy_cfg.clients_per_round, strategy_cfg.batch_size, seed
        )
    groups = strategy_cfg.get("sampling_groups")
    if str(sampling) == Sampling.min_sep_poisson:
        check(
            groups is not None,
            "sampling_groups",
            groups,
            ">= 1 with strategy.sampling=min_sep_poisson",
        )
        return MinSepPoissonSampler(
            population.num_clients, strategy_cfg.clients_per_round, seed, groups
        )
    check(
        groups is None, "sampling_groups", groups, "null unless strategy.sampling=min_sep_poisson"
    )
    return SAMPLERS[Sampling(str(sampling))](
        population.num_clients, strategy_cfg.clients_per_round, seed
    )
