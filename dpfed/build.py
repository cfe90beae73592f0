"""The one place that turns a composed config into built components.

`build_privacy` builds a run's privacy plan without TensorFlow (runs, the
privacy calculator, the reports and ``scripts/recompute_epsilon.py`` all call
it); `build_simulation` builds everything a run needs, through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dpfed.errors import ConfigError, check


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


def check_run(cfg: DictConfig) -> None:
    """Run-level settings (``rounds``, ``seed``, ``checkpoint_every``)."""
    check(cfg.rounds >= 1, "rounds", cfg.rounds, ">= 1")
    check(cfg.seed >= 0, "seed", cfg.seed, ">= 0")
    check(
        cfg.get("checkpoint_every", 0) >= 0,
        "checkpoint_every",
        cfg.get("checkpoint_every"),
        ">= 0 (0: only after the last round)",
    )


# keys of the dataset node that configure the run, not the dataset object
RUN_LEVEL_DATASET_KEYS = ("default_cohort",)


def build_dataset(cfg: DictConfig):
    """The run's dataset (``dataset`` group), without its run-level keys."""
    node = OmegaConf.to_container(cfg.dataset, resolve=True)  # ${seed} resolves in the run
    for key in RUN_LEVEL_DATASET_KEYS:
        node.pop(key, None)
    return _build("dataset", OmegaConf.create(node))


def build_audit(cfg: DictConfig):
    """The run's audit (``audit`` group; `dpfed.audit.base.NoAudit` when the config has none)."""
    from dpfed.audit.base import NoAudit

    if cfg.get("audit") is None:
        return NoAudit()
    return _build("audit", cfg.audit, run_seed=int(cfg.seed), dp_delta=float(cfg.dp.delta))


def build_privacy(cfg: DictConfig, population, dp_seed: int | None = None):
    """The run's privacy plan: mechanism, sampler, relation, calibrated noise, accounts.

    Needs no TensorFlow and builds no model, so a bad privacy setting fails in
    a second, and the calculator and reports compute exactly what a run does.

    Args:
        cfg: the composed run config.
        population: the dataset's public sizes (`dpfed.privacy.plan.Population`);
            an audit's canary clients are added to it here.
        dp_seed: the DP seed to use when ``dp.seed`` is null (a resumed run's);
            None draws a secret one from OS entropy.

    Returns:
        A frozen `dpfed.privacy.plan.PrivacyPlan`.

    Raises:
        ConfigError: a setting is out of range or the combination cannot be
            accounted; the message names the key.
    """
    from dpfed.privacy.mechanisms.base import PLAN_KEYS
    from dpfed.privacy.neighboring import Neighboring
    from dpfed.privacy.noise import draw_secret_seed, sampling_seed
    from dpfed.privacy.plan import PlanContext, PrivacyPlan, Settings, calibrate, check_accountable
    from dpfed.privacy.sampling import build_sampler

    check_run(cfg)
    audit = build_audit(cfg)
    population = audit.population(population)
    dp = cfg.dp
    mechanism_keys = [k for k in dp if k not in PLAN_KEYS]
    with config_group("dp"):
        mechanism = instantiate(OmegaConf.masked_copy(dp, mechanism_keys))
        orders = None if dp.orders is None else tuple(float(o) for o in dp.orders)
        settings = Settings(
            str(dp.accountant),
            float(dp.delta),
            orders,
            str(dp.conversion),
            float(dp.pld_discretization),
        )
        settings.validate()
        check(
            dp.target_epsilon is None or dp.target_epsilon > 0,
            "target_epsilon",
            dp.target_epsilon,
            "null or > 0",
        )
        check(
            dp.max_epsilon is None or dp.max_epsilon > 0,
            "max_epsilon",
            dp.max_epsilon,
            "null or > 0",
        )
        check(dp.seed is None or dp.seed >= 0, "seed", dp.seed, "null (secret) or >= 0")
    secret = dp.seed is None
    seed = int(dp.seed) if not secret else (dp_seed if dp_seed is not None else draw_secret_seed())
    with config_group("strategy"):
        sampler = build_sampler(cfg.strategy, population, sampling_seed(cfg.seed, seed, secret))
        local_epochs = int(cfg.strategy.get("local_epochs", 1))
        check(local_epochs >= 1, "local_epochs", local_epochs, ">= 1")  # a count of releases
    if sampler.unit == "record" and not mechanism.pooled_records:
        from dpfed.privacy.mechanisms.base import reject_pooled

        raise reject_pooled(mechanism.label)
    neighboring = None if dp.neighboring is None else Neighboring(str(dp.neighboring))
    batch_size = cfg.strategy.get("batch_size")
    batch_size = None if batch_size is None else int(batch_size)
    ctx = PlanContext(sampler, neighboring, cfg.rounds, local_epochs, population, batch_size)

    def plan_with(z: float) -> PrivacyPlan:
        return PrivacyPlan(
            mechanism,
            mechanism.label,
            sampler,
            mechanism.accounts(ctx, z),
            settings,
            z,
            cfg.rounds,
            ctx.local_epochs,
            population,
            dp.target_epsilon,
            dp.max_epsilon,
            seed,
            secret,
            batch_size,
        )

    with config_group("dp"):
        plan = plan_with(mechanism.tunable_noise)
        check_accountable(plan)  # before calibrating, which composes the same events
        if dp.max_epsilon is not None and plan.budget_account is None:
            raise ConfigError(
                "max_epsilon",
                dp.max_epsilon,
                "null: this run releases nothing private (no noise), so no budget can hold",
            )
        if dp.target_epsilon is not None:
            plan = calibrate(plan_with, dp.target_epsilon, mechanism.noise_limit(ctx))
    with config_group("audit"):
        audit.check(plan)
    return plan


@dataclass(frozen=True)
class Prepared:
    """What a run is checked and planned from before TensorFlow starts."""

    dataset: object
    plan: object
    model: object
    audit: object


def prepare(cfg: DictConfig, checkpoints=None) -> Prepared:
    """Builds and checks everything that needs no TensorFlow: data, privacy plan, model, strategy.

    Bad values and bad data fail here, in seconds.

    Args:
        cfg: the composed run config.
        checkpoints: the run's checkpoints; a resumed run with a secret DP seed continues it.

    Raises:
        ConfigError: a setting is out of range; the message names its key.
    """
    check_run(cfg)
    dataset = build_dataset(cfg)
    resumed_seed = None
    if checkpoints is not None and checkpoints.round > 0:
        resumed_seed = int(checkpoints.meta["dp_seed"]) if "dp_seed" in checkpoints.meta else None
    plan = build_privacy(cfg, dataset.population(), resumed_seed)
    with config_group("model"):
        model = instantiate(cfg.model).bind(dataset)
    optimizers = {k: None for k in ("client_optimizer", "server_optimizer") if k in cfg.strategy}
    _build("strategy", cfg.strategy, **optimizers)  # its own range checks (optimizers come later)
    return Prepared(dataset, plan, model, build_audit(cfg))


def build_simulation(cfg: DictConfig, checkpoints=None, prepared: Prepared | None = None):
    """Builds and validates every component of a run, before any training.

    Args:
        cfg: the composed run config (`dpfed.config.RunConfig`).
        checkpoints: the run's checkpoints (`build_checkpoints`); None writes none.
        prepared: what `prepare` returned for ``cfg`` (built here when None).

    Returns:
        A ready-to-run `dpfed.federated.simulation.Simulation`.

    Raises:
        ConfigError: a setting is out of range; the message names its key.
    """
    prepared = prepared or prepare(cfg, checkpoints)
    import tensorflow as tf

    from dpfed.federated.simulation import Simulation
    from dpfed.runtime import configure_device

    with config_group("sim"):
        configure_device(cfg.sim.device)
    tf.keras.backend.clear_session()  # each job of a sweep starts from a clean TF state
    tf.keras.utils.set_random_seed(cfg.seed)
    dataset, plan, model, audit = prepared.dataset, prepared.plan, prepared.model, prepared.audit
    with config_group("dp"):
        parts = plan.mechanism.setup(audit.mechanism_plan(plan), model)
    with config_group("audit"):
        parts = audit.wrap(parts, plan, model)
    if parts.transform is not None:  # input perturbation replaces the training data
        dataset = parts.transform(dataset)
    strategy = _build("strategy", cfg.strategy)
    backend = _build("backend", cfg.backend).for_run(strategy, parts, model)  # refusals: absolute
    # The initial model must depend on the seed only, not on what was built before it.
    tf.keras.utils.set_random_seed(cfg.seed)
    process = strategy.build_process(backend, model, parts, plan, dataset)
    return Simulation(
        dataset,
        model,
        plan,
        parts,
        strategy,
        backend,
        process,
        seed=cfg.seed,
        progress=cfg.logger.progress,
        checkpoints=checkpoints,
        audit=audit,
    )


def build_checkpoints(cfg: DictConfig, output_dir: str, multirun: bool = False):
    """The run's checkpoints in ``output_dir``; with ``resume=true``, the one to continue from.

    Cheap (no TensorFlow work), so a bad resumption fails before anything is built.
    In a sweep (``multirun``), a job that never started is started afresh.

    Raises:
        ConfigError: ``resume=true`` without a checkpoint in ``output_dir`` or
            with a config that differs from it.
    """
    from dpfed.io.checkpoint import Checkpoints

    config = OmegaConf.to_container(cfg, resolve=True)
    return Checkpoints(
        output_dir,
        cfg.checkpoint_every,
        config,
        resume=cfg.resume,
        fresh_if_empty=multirun,
        option_hint=option_selecting,
    )


def option_selecting(key: str, target) -> str | None:
    """For a ``<group>._target_`` key, the override whose schema has ``target``
    (``backend=reference``; ``optimizer@strategy.client_optimizer=adam``), else None."""
    from dpfed.config import schemas

    if not key.endswith("._target_"):
        return None
    node = key.removesuffix("._target_")
    group = "optimizer" if node.endswith("_optimizer") else node
    names = [n for n, s in schemas().get(group, {}).items() if getattr(s, "_target_", 0) == target]
    if len(names) != 1:
        return None
    return f"{node}={names[0]}" if group == node else f"{group}@{node}={names[0]}"


def build_writer(cfg: DictConfig, output_dir: str, simulation):
    """The run's sinks: metrics.csv and summary.json, plus TensorBoard if configured."""
    from dpfed.io.run_writer import RunWriter

    return RunWriter(output_dir, simulation.columns, tensorboard=cfg.logger.tensorboard)
