"""The one place that turns a composed config into built components."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import tensorflow as tf
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dpfed.errors import ConfigError, check
from dpfed.federated.simulation import Simulation
from dpfed.io.checkpoint import Checkpoints
from dpfed.io.run_writer import RunWriter

DEVICES = ("auto", "cpu", "gpu")
PACKAGES = (
    "tensorflow",
    "tensorflow-federated",
    "tensorflow-privacy",
    "dp-accounting",
    "hydra-core",
)


@contextlib.contextmanager
def config_group(group: str) -> Iterator[None]:
    """Re-raises errors from building ``group`` with keys named ``group.<key>``."""
    try:
        yield
    except ConfigError as err:
        raise err.under(group) from None
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ConfigError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause.under(group) from None


def _build(group: str, node: DictConfig, **kwargs):
    with config_group(group):
        return instantiate(node, **kwargs)


def configure_device(device: str) -> None:
    """Makes TensorFlow use the CPU, a GPU, or whatever it finds (``auto``)."""
    if device not in DEVICES:
        raise ConfigError("sim.device", device, f"one of {', '.join(DEVICES)}")
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise ConfigError("sim.device", device, "cpu or auto: TensorFlow sees no GPU here")
    if device == "cpu":
        # TFF runs client work in its worker process, which inherits the environment.
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
        if gpus:
            with contextlib.suppress(RuntimeError):  # already initialised in this process
                tf.config.set_visible_devices([], "GPU")


def build_simulation(cfg: DictConfig, checkpoints: Checkpoints | None = None) -> Simulation:
    """Builds and validates every component of a run, before any training.

    Args:
        cfg: the composed run config (`dpfed.config.RunConfig`).
        checkpoints: the run's checkpoints (`build_checkpoints`); None writes none.

    Returns:
        A ready-to-run `Simulation`.

    Raises:
        ConfigError: a setting is out of range; the message names its key.
    """
    check(cfg.rounds >= 1, "rounds", cfg.rounds, ">= 1")
    check(cfg.seed >= 0, "seed", cfg.seed, ">= 0")
    check(cfg.checkpoint_every >= 0, "checkpoint_every", cfg.checkpoint_every,
          ">= 0 (0: only after the last round)")  # fmt: skip
    configure_device(cfg.sim.device)
    tf.keras.backend.clear_session()  # each job of a sweep starts from a clean TF state
    tf.keras.utils.set_random_seed(cfg.seed)
    dataset = _build("dataset", cfg.dataset)
    with config_group("model"):
        model = instantiate(cfg.model).bind(dataset)
    mechanism = _build("dp", cfg.dp)
    dataset = mechanism.wrap_dataset(dataset)  # input perturbation alters the training data
    strategy = _build("strategy", cfg.strategy)
    with config_group("strategy"):
        sampler = strategy.sampler(dataset.num_clients, cfg.seed, dataset.train)
    with config_group("dp"):
        ledger = mechanism.ledger(sampler)
        mechanism.prepare(sampler, ledger, cfg.rounds)  # e.g. calibrate noise to a target epsilon
        aggregator = mechanism.aggregator(strategy.clients_per_round, model)
        model_fn = mechanism.model_fn(model, strategy)  # what clients train (e.g. DP-SGD)
    with config_group("sim"):  # None: TFF's client work; else shards of users in lockstep
        from dpfed.federated.vectorized import client_backend

        strategy.client_backend = client_backend(
            cfg.sim.client_backend, cfg.sim.users_per_shard, strategy, mechanism, model
        )
    # The initial model must depend on the seed only, not on what was built before it.
    tf.keras.utils.set_random_seed(cfg.seed)
    with config_group("strategy"):
        process = strategy.build_process(model, mechanism, model_fn, aggregator, cfg.seed)
    return Simulation(
        dataset,
        model,
        mechanism,
        strategy,
        sampler,
        ledger,
        process,
        rounds=cfg.rounds,
        seed=cfg.seed,
        progress=cfg.logger.progress,
        checkpoints=checkpoints,
    )


def build_checkpoints(cfg: DictConfig, output_dir: str, multirun: bool = False) -> Checkpoints:
    """The run's checkpoints in ``output_dir``; with ``resume=true``, the one to continue from.

    Cheap (no TensorFlow work), so a bad resumption fails before anything is built.
    In a sweep (``multirun``), a job that never started is started afresh.

    Raises:
        ConfigError: ``resume=true`` without a checkpoint in ``output_dir`` or
            with a config that differs from it.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    return Checkpoints(output_dir, cfg.checkpoint_every, config, resume=cfg.resume,
                       fresh_if_empty=multirun)  # fmt: skip


def build_writer(cfg: DictConfig, output_dir: str, simulation: Simulation) -> RunWriter:
    """The run's sinks: metrics.csv and summary.json, plus TensorBoard if configured."""
    return RunWriter(output_dir, simulation.columns, tensorboard=cfg.logger.tensorboard)


def provenance(cfg: DictConfig, choices: dict | None = None) -> dict:
    """Versions, git commit, config choices and the resolved config, for summary.json."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "seed": cfg.seed,
        "choices": choices or {},
        "versions": {p: metadata.version(p) for p in PACKAGES},
        "git_commit": commit,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
