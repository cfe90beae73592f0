"""Run-level schemas, the schema registry of every config group, and the one compose helper.

Every option of every group has a dataclass schema, kept beside the code it
configures: datasets in `dpfed.data.schemas`, models in `dpfed.models.schemas`,
mechanisms in their modules under `dpfed.privacy.mechanisms`, strategies in
`dpfed.federated.strategy`, client backends in `dpfed.federated.backends`.
Each YAML option under ``conf/<group>/`` starts its defaults list with its
schema, registered here as ``/schema/<group>/<option>@_here_``; Hydra then
rejects unknown keys, wrong types and unknown enum values at compose time.
Range checks live in the components' constructors, which `dpfed.build` calls
before any training starts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

CONF = Path(__file__).resolve().parent.parent / "conf"


# --------------------------------------------------------------------------- optimizer
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


# --------------------------------------------------------------------------- sim
class Device(enum.StrEnum):
    """Where TensorFlow runs."""

    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


@dataclass
class SimConfig:
    """Where the simulation runs.

    Attributes:
        device: ``cpu``, ``gpu`` or ``auto`` (a GPU when TensorFlow sees one).
    """

    device: Device = Device.auto


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
    """Top-level run settings and the component groups.

    Attributes:
        seed: seeds data generation, model initialisation, client sampling and
            (through ``dp.seed``) the DP noise.
        rounds: federated rounds to run (>= 1).
        resume: continue the interrupted run in ``hydra.run.dir`` from its last
            checkpoint (same config required).
        checkpoint_every: checkpoint every k rounds (and after the last); 0
            writes only the final checkpoint.
        optimized_metric: a numeric key of summary.json (``eval/accuracy``,
            ``eval/loss``, ...) that ``run.py`` returns instead of the summary,
            for a hyperparameter search to optimise (``hparams_search``);
            ``null`` returns the summary.
        optimized_seeds: with ``optimized_metric``, the seeds each call (a search's
            trial) runs, ``seed`` to ``seed + n - 1``, each in ``seed_<s>/`` of the
            trial's folder; the trial scores their mean, so that a search does not pick
            settings that only its one seed's draw favoured (>= 1; 1: one run, in the
            trial's folder).
    """

    seed: int = 0
    rounds: int = 20
    resume: bool = False
    checkpoint_every: int = 1
    optimized_metric: str | None = None
    optimized_seeds: int = 1
    dataset: Any = MISSING
    model: Any = MISSING
    dp: Any = MISSING
    strategy: Any = MISSING
    backend: Any = MISSING
    audit: Any = MISSING
    sim: SimConfig = field(default_factory=SimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def schemas() -> dict[str, dict[str, type]]:
    """Every group's options and their schemas."""
    from dpfed.audit import SCHEMAS as AUDITS
    from dpfed.data.schemas import SCHEMAS as DATASETS
    from dpfed.federated.backends import SCHEMAS as BACKENDS
    from dpfed.federated.strategy import SCHEMAS as STRATEGIES
    from dpfed.models.schemas import SCHEMAS as MODELS
    from dpfed.privacy.mechanisms import SCHEMAS as MECHANISMS

    return {
        "dataset": DATASETS,
        "model": MODELS,
        "dp": MECHANISMS,
        "strategy": STRATEGIES,
        "backend": BACKENDS,
        "audit": AUDITS,
        "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "yogi": YogiConfig},
        "sim": {"local": SimConfig},
        "logger": {"default": LoggerConfig},
    }


def _random_trials(*args) -> int:
    from dpfed.privacy.tuning import random_trials  # imported when a search draws, not before

    return random_trials(*args)


def register_configs() -> None:
    """Registers every schema with Hydra's ConfigStore as ``schema/<group>/<option>``, and the
    resolvers: `dpfed.jobs.register_resolvers` and ``${dpfed.random_trials:mean,law[,seed]}``
    for a private search's ``hydra.sweeper.n_trials`` (`dpfed.privacy.tuning.random_trials`;
    drawn once, cached)."""
    from dpfed.jobs import register_resolvers

    if not OmegaConf.has_resolver("dpfed.random_trials"):
        OmegaConf.register_new_resolver("dpfed.random_trials", _random_trials, use_cache=True)

    store = ConfigStore.instance()
    store.store(group="schema", name="config", node=RunConfig)
    for group, options in schemas().items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)
    # The launcher plugins' own schemas, extended by conf/hydra/launcher/*.yaml.
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    store.store(group="schema/hydra/launcher", name="joblib", node=JobLibLauncherConf)
    store.store(group="schema/hydra/launcher", name="submitit_slurm", node=SlurmQueueConf)
    register_resolvers()  # names sweep job folders (hydra.sweep.subdir)


_composing = {"ready": False}


def release_compose() -> None:
    """Undoes `compose`'s initialization of Hydra (before a Hydra app starts in this process)."""
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    _composing["ready"] = False


def compose(*overrides: str, return_hydra_config: bool = False):
    """Composes ``conf/config.yaml`` with ``overrides``, as ``run.py`` would (no run starts).

    The one compose helper of the project: tests, benchmarks, the privacy
    calculator and the experiment tables use it. Hydra is initialized with
    ``conf/`` on the first call and kept for the next ones.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    hydra = GlobalHydra.instance()
    if not (_composing["ready"] and hydra.is_initialized()):
        register_configs()
        hydra.clear()
        initialize_config_dir(config_dir=str(CONF), version_base="1.3")  # stays initialized
        _composing["ready"] = True
    return hydra_compose(
        config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config
    )
