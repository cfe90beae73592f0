"""The privacy plan of a run: what is released, how it is accounted, and the run's ledger.

`dpfed.build.build_privacy` turns a composed config into a frozen `PrivacyPlan`
(no TensorFlow involved): the mechanism, the sampler, the neighbouring relation,
the calibrated noise multiplier and one `Account` per reported epsilon. Runs,
``python -m dpfed.privacy``, the reports and ``scripts/recompute_epsilon.py``
all build their epsilon from it, so they cannot disagree. During a run, a
`PrivacyLedger` made from the plan composes what each round really released.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dp_accounting

from dpfed.data.base import Population
from dpfed.errors import ConfigError
from dpfed.privacy.accounting import DEFAULT_DELTA, Accountant, UnsupportedEventError
from dpfed.privacy.calibration import calibrate_noise_multiplier
from dpfed.privacy.neighboring import RELATION_NAMES, UNSAMPLED, Neighboring, Relation
from dpfed.privacy.noise import stream_key


@dataclass(frozen=True)
class Settings:
    """How events are composed and reported: the ``dp.accountant`` family of keys."""

    accountant: str = "rdp"
    delta: float = DEFAULT_DELTA
    orders: tuple[float, ...] | None = None
    conversion: str = "improved"
    pld_discretization: float = 1e-4

    def validate(self) -> None:
        """Checks every setting's range (the accountant's constructor does)."""
        self.accountant_for(Relation.ADD_OR_REMOVE_ONE)

    def accountant_for(self, relation: Relation) -> Accountant:
        """A new, empty accountant with these settings under ``relation``."""
        orders = None if self.orders is None else list(self.orders)
        return Accountant(
            self.accountant, self.delta, relation, orders, self.conversion, self.pld_discretization
        )


@dataclass(frozen=True)
class PlanContext:
    """What a mechanism's accounting depends on besides its own settings.

    Attributes:
        sampler: how cohorts (or record batches) are drawn (`dpfed.privacy.sampling`).
        neighboring: the configured relation, None for each account's strict default.
        rounds: rounds planned.
        local_epochs: passes over its data a client makes per round.
        population: the dataset's public sizes.
        batch_size: a client's (expected) batch size, None where clients do not batch.
    """

    sampler: object
    neighboring: Neighboring | None
    rounds: int
    local_epochs: int
    population: Population
    batch_size: int | None = None

    @functools.cached_property
    def mean_client_records(self) -> float:
        """The mean training records of the clients that hold any (computed once)."""
        return self.population.mean_client_records()


@dataclass(frozen=True)
class Account:
    """One reported epsilon: its unit of privacy, relation and the events behind it.

    Attributes:
        column: metrics.csv column (``epsilon``, ``epsilon_record``).
        unit: what two neighbouring datasets differ in (``user``, ``record``, ...).
        neighboring: the relation (`dpfed.privacy.neighboring`).
        relation: dp-accounting's relation the events are composed under.
        per_participation: composed once per participation of the client that
            took part most often (no sampling credited), else once per round.
        event: round number (or, per participation, participation number) ->
            the DP event released then.
        noise_multiplier: noise std / clip of the releases.
        sensitivity: how many clips one unit moves a release by.
        amplification: what sampling of its units the events credit, in words, where
            that is not the cohort sampler's (per-participation accounts).
    """

    column: str
    unit: str
    neighboring: Neighboring
    relation: Relation
    per_participation: bool
    event: Callable[[int], dp_accounting.DpEvent] = field(repr=False)
    noise_multiplier: float = 0.0
    sensitivity: float = 1.0
    amplification: str = "no amplification credited"

    @property
    def private(self) -> bool:
        return self.noise_multiplier > 0

    def describe(self) -> dict:
        return {
            "column": self.column,
            "unit": self.unit,
            "neighboring": str(self.neighboring),
            "accounting_relation": RELATION_NAMES[self.relation],
            "per": "participation" if self.per_participation else "round",
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
            "accounted_noise_multiplier": self.noise_multiplier / self.sensitivity,
        }


def participation_neighboring(ctx: PlanContext, unit: str) -> Neighboring:
    """The relation of an account that credits no sampling (local DP, records in clients).

    Raises:
        ConfigError: ``add_remove``, which such releases cannot satisfy (whether a
            client's (record's) release exists at all is visible).
    """
    neighboring = ctx.neighboring or Neighboring.replace_one
    if neighboring not in UNSAMPLED:
        raise ConfigError(
            "neighboring",
            str(neighboring),
            f"replace_one or zero_out for {unit}-level privacy without sampling "
            "amplification (adding or removing a unit changes what is released "
            "visibly)",
        )
    return neighboring


def participation_account(
    ctx: PlanContext,
    column: str,
    unit: str,
    noise_multiplier: float,
    release: Callable[[float], dp_accounting.DpEvent],
) -> Account:
    """An account composing ``release(accounted noise multiplier)`` once per participation."""
    neighboring = participation_neighboring(ctx, unit)
    factor = 2.0 if neighboring == Neighboring.replace_one else 1.0
    event = (
        dp_accounting.NonPrivateDpEvent()
        if noise_multiplier == 0
        else release(noise_multiplier / factor)
    )
    return Account(
        column,
        unit,
        neighboring,
        UNSAMPLED[neighboring],
        True,
        lambda _: event,
        noise_multiplier,
        factor,
    )


@dataclass(frozen=True)
class PrivacyPlan:
    """Everything about a run's privacy that is fixed before training (frozen).

    Attributes:
        mechanism: the DP mechanism (`dpfed.privacy.mechanisms.base.Mechanism`).
        label: the mechanism's name, for logs and tables.
        sampler: the cohort (or record batch) sampler.
        accounts: one per reported epsilon; the first private one is the budget's.
        settings: accountant, delta, orders, conversion, PLD discretization.
        noise_multiplier: the mechanism's noise multiplier as used (calibrated
            when ``target_epsilon`` is set).
        rounds: rounds planned.
        local_epochs: a client's passes over its data per round.
        population: the dataset's public sizes.
        target_epsilon: what ``noise_multiplier`` was calibrated to, if anything.
        max_epsilon: the budget that stops a run, if any.
        dp_seed: the seed of every noise draw (`dpfed.privacy.noise`).
        secret_seed: ``dp_seed`` was drawn from OS entropy and must not be written out.
        batch_size: a client's (expected) batch size, None where clients do not batch.
    """

    mechanism: object
    label: str
    sampler: object
    accounts: tuple[Account, ...]
    settings: Settings
    noise_multiplier: float
    rounds: int
    local_epochs: int
    population: Population
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    dp_seed: int = 0
    secret_seed: bool = False
    batch_size: int | None = None

    # ------------------------------------------------------------------ accounts
    @functools.cached_property
    def context(self) -> PlanContext:
        """The context the accounts were built in (relation: the headline's; built once)."""
        return PlanContext(
            self.sampler,
            self.headline.neighboring,
            self.rounds,
            self.local_epochs,
            self.population,
            self.batch_size,
        )

    @property
    def headline(self) -> Account:
        """The account reported as ``epsilon``."""
        return self.accounts[0]

    @property
    def budget_account(self) -> Account | None:
        """The account ``target_epsilon`` and ``max_epsilon`` apply to: the first private one."""
        return next((a for a in self.accounts if a.private), None)

    def account(self, column: str) -> Account:
        return next(a for a in self.accounts if a.column == column)

    def accountant(self, account: Account) -> Accountant:
        """A new, empty accountant for ``account``."""
        return self.settings.accountant_for(account.relation)

    def planned_events(
        self, account: Account, rounds: int | None = None, participations: int | None = None
    ) -> list[dp_accounting.DpEvent]:
        """The events ``account`` composes over ``rounds`` rounds (default: the plan's).

        Per-participation accounts compose ``participations`` releases, by default
        the most the sampler allows one client in those rounds.
        """
        rounds = self.rounds if rounds is None else rounds
        if account.per_participation:
            if participations is None:
                participations = self.sampler.max_participations(rounds)
            return [account.event(k) for k in range(1, participations + 1)]
        return [account.event(r) for r in range(1, rounds + 1)]

    def epsilon(
        self,
        account: Account | str | None = None,
        rounds: int | None = None,
        participations: int | None = None,
    ) -> float:
        """Epsilon of ``account`` (default: the headline) after ``rounds`` rounds."""
        if isinstance(account, str):
            account = self.account(account)
        account = account or self.headline
        events = self.planned_events(account, rounds, participations)
        return self.accountant(account).planned_epsilon(events)

    def epsilons(self, rounds: int | None = None, participations: int | None = None) -> dict:
        """Every account's planned epsilon, by column."""
        return {a.column: self.epsilon(a, rounds, participations) for a in self.accounts}

    # ------------------------------------------------------------------ noise
    def stream_key(self, stream: str) -> int:
        """The 64-bit key of noise stream ``stream`` of this run (`dpfed.privacy.noise`)."""
        return stream_key(self.dp_seed, stream)

    @property
    def client_key(self) -> int:
        """Key of the per-(round, client) seeds attached to clients' data."""
        return self.stream_key("client")

    def new_ledger(self) -> PrivacyLedger:
        return PrivacyLedger(self)

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict:
        """Flat summary.json fields: everything needed to recompute every epsilon."""
        head = self.headline
        out = {
            "mechanism": self.label,
            "unit": head.unit,
            "neighboring": str(head.neighboring),
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": head.sensitivity,
            "accounted_noise_multiplier": head.noise_multiplier / head.sensitivity,
            "target_epsilon": self.target_epsilon,
            "max_epsilon": self.max_epsilon,
            "dp_seed": "secret (drawn from OS entropy)" if self.secret_seed else self.dp_seed,
            **{k: v for k, v in self.settings.__dict__.items() if k != "orders"},
            "orders": None if self.settings.orders is None else list(self.settings.orders),
            "accounting_relation": RELATION_NAMES[head.relation],
            "record_size": self.population.record_size,
            "coupled_records": self.population.coupled_records,
            **self.sampler.describe(),
            **self.mechanism.describe(self),
        }
        if self.settings.accountant != "rdp":
            out["conversion"] = None
        if self.settings.accountant != "pld":
            out["pld_discretization"] = None
        return out

    def warnings(self) -> tuple[str, ...]:
        """Settings the mechanism allows but that are probably not meant (logged by a run)."""
        out = self.mechanism.warnings(self)
        users = self.population.num_clients
        delta = self.settings.delta
        user_level = any(a.private and a.unit == "user" for a in self.accounts)
        if user_level and self.settings.accountant != "pure" and delta * users >= 1:
            out += (
                f"dp.delta={delta:g} is not below 1 / population (1/{users}): releasing one "
                "random user's data in full meets (0, 1/population)-DP, so this guarantee "
                "allows it; take delta well below 1/population (McMahan et al. 2018 use "
                f"population^-1.1: {users**-1.1:.3g})",
            )
        return out

    def describe_line(self) -> str:
        """One log line: mechanism, sampling, relation, accountant and planned epsilon."""
        budget = self.budget_account
        if budget is None:
            return f"{self.label}: not private (epsilon is infinite)"
        note = (
            f"noise multiplier {self.noise_multiplier:.6g} calibrated to target epsilon "
            f"{self.target_epsilon:g}; "
            if self.target_epsilon
            else ""
        )
        eps = self.epsilon(budget)
        sampling = f"{self.sampler.describe()['sampling']} sampling"
        if budget.per_participation:  # the cohort's sampler, whose amplification is not credited
            sampling = (
                f"{sampling} of clients, {budget.amplification}: every participation "
                "of a client composed"
            )
        return (
            f"{note}{self.label} ({budget.unit}-level, {budget.neighboring} adjacency, "
            f"{sampling}, {self.settings.accountant} "
            f"accountant): planned {budget.column} after {self.rounds} rounds {eps:.4g} at "
            f"delta {self.settings.delta:g}"
        )


def check_accountable(plan: PrivacyPlan) -> None:
    """Every account's events can be composed by the configured accountant.

    Raises:
        ConfigError: naming ``accountant`` (relative to ``dp``).
    """
    for account in plan.accounts:
        accountant = plan.accountant(account)
        for event in {*plan.planned_events(account, participations=1), account.event(1)}:
            try:
                accountant.check(event)
            except UnsupportedEventError as err:
                raise ConfigError(
                    "accountant",
                    plan.settings.accountant,
                    f"one that can compose {plan.label}'s releases for "
                    f"{account.column} ({err}); rdp composes every release "
                    "dpfed makes",
                ) from None


def calibrate(
    plan_with: Callable[[float], PrivacyPlan],
    target_epsilon: float,
    limit: tuple[float, str] | None = None,
) -> PrivacyPlan:
    """The plan whose budget epsilon after all rounds is at most ``target_epsilon`` (within 0.5%).

    Args:
        plan_with: noise multiplier -> the plan built with it.
        target_epsilon: > 0.
        limit: the mechanism's `noise_limit`: (the noise multiplier must stay below it, why).

    Raises:
        ConfigError: the mechanism releases nothing private, or no noise reaches the target.
    """
    probe = plan_with(1.0 if limit is None else min(1.0, limit[0] / 2))
    if probe.budget_account is None:
        raise ConfigError(
            "target_epsilon", target_epsilon, "null with a mechanism that releases nothing private"
        )

    def events_for(z):
        plan = plan_with(z)
        return plan.planned_events(plan.budget_account)

    z, _ = calibrate_noise_multiplier(
        events_for, probe.accountant(probe.budget_account), target_epsilon, limit=limit
    )
    return plan_with(z)


class PrivacyLedger:
    """What a run released so far: one accountant per account, and participation counts.

    `preview` says what a round would add without changing anything, so a
    budget can stop the run before a release that would exceed it; `record`
    then commits the round.

    Args:
        plan: the run's privacy plan.
    """

    def __init__(self, plan: PrivacyPlan):
        self.plan = plan
        self.accountants = {a.column: plan.accountant(a) for a in plan.accounts}
        self.participations: dict[str, int] = {}
        self.max_participations = 0
        self.rounds = 0

    def preview(self, round_num: int, cohort: Sequence[str]) -> dict:
        """The event each account composes if round ``round_num`` runs with ``cohort``."""
        most = max((self.participations.get(c, 0) + 1 for c in cohort), default=0)
        events = {}
        for account in self.plan.accounts:
            if not account.per_participation:
                events[account.column] = account.event(round_num)
            elif most > self.max_participations:
                events[account.column] = account.event(most)
            else:
                events[account.column] = dp_accounting.NoOpDpEvent()
        return events

    def over_budget(self, events: dict) -> str | None:
        """Why a round with ``events`` must not run under ``max_epsilon``, if it must not."""
        budget, account = self.plan.max_epsilon, self.plan.budget_account
        if budget is None or account is None:
            return None
        after = self.accountants[account.column].peek(events[account.column])
        if after <= budget:
            return None
        return (
            f"round {self.rounds + 1} would raise {account.column} to {after:.6g}, above "
            f"dp.max_epsilon={budget:g}"
        )

    def record(self, round_num: int, cohort: Sequence[str], events: dict) -> dict:
        """Commits round ``round_num``; returns every epsilon so far, by column."""
        for client in cohort:
            self.participations[client] = self.participations.get(client, 0) + 1
        self.max_participations = max(
            self.max_participations, max((self.participations[c] for c in cohort), default=0)
        )
        for column, event in events.items():
            self.accountants[column].record(event)
        self.rounds = round_num
        return self.epsilons

    @property
    def epsilons(self) -> dict:
        return {column: a.epsilon for column, a in self.accountants.items()}

    @property
    def epsilon(self) -> float:
        return self.accountants[self.plan.headline.column].epsilon

    def describe(self) -> dict:
        """summary.json fields: every account with its composed events and epsilon."""
        accounts = []
        for account in self.plan.accounts:
            accountant = self.accountants[account.column]
            accounts.append(
                {
                    **account.describe(),
                    "epsilon": accountant.epsilon,
                    "dp_events": accountant.events(),
                }
            )
        head = self.accountants[self.plan.headline.column]
        return {
            **self.epsilons,
            "dp_events": head.events(),
            "accounts": accounts,
            "max_participations": self.max_participations,
        }

    def state_dict(self) -> dict:
        """Participation counts and every accountant's events, JSON-ready (for checkpoints)."""
        return {
            "participations": self.participations,
            "rounds": self.rounds,
            "max_participations": self.max_participations,
            "accountants": {c: a.state_dict() for c, a in self.accountants.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.participations = dict(state["participations"])
        self.max_participations, self.rounds = state["max_participations"], state["rounds"]
        for column, accountant in self.accountants.items():
            accountant.load_state_dict(state["accountants"][column])
