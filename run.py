"""Train a GRU with federated learning and differential privacy: ``python run.py [overrides]``."""

import logging
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ start-up chatter; set 0 to see it

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dpfed.config import register_configs
from dpfed.errors import ConfigError
from dpfed.jobs import (
    RunInterrupted,
    interrupt,
    optimized,
    over_seeds,
    recorded_failure,
    refuse,
    resume_command,
    seed_overrides,
)

register_configs()
log = logging.getLogger("dpfed")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | float:
    """One run of ``cfg`` (or one job of a sweep).

    Returns the summary or, with optimized_metric set, its value there (the mean over
    optimized_seeds seeds): what a search (Optuna) optimises.
    """
    hydra_cfg = HydraConfig.get()
    trial = lambda: over_seeds(run, cfg, hydra_cfg.runtime.output_dir)  # noqa: E731
    return optimized(trial, cfg.optimized_metric, hydra_cfg)


def run(cfg: DictConfig, out_dir: str) -> dict:
    """One run (or sweep job, or one seed of a search's trial) to its end in ``out_dir``;
    returns its summary."""
    from dpfed.build import build_checkpoints, build_simulation, build_writer, prepare
    from dpfed.io.provenance import provenance, result_line

    # TFF logs every model build at INFO; set here so joblib's worker processes get it too.
    logging.getLogger("absl").setLevel(logging.WARNING)
    hydra_cfg = HydraConfig.get()
    choices, multirun = dict(hydra_cfg.runtime.choices), hydra_cfg.mode == RunMode.MULTIRUN
    task = list(hydra_cfg.overrides.task)
    if out_dir != hydra_cfg.runtime.output_dir:  # one seed of a trial: it resumes on its own
        task = seed_overrides(task, cfg.seed)
    try:  # outside recorded_failure: a refused resumption leaves the run it names untouched
        checkpoints = build_checkpoints(cfg, out_dir, multirun)
    except ConfigError as err:
        refuse(err, multirun, out_dir)
    if checkpoints.finished:  # resume=true on a run that already ended: leave it as it is
        print(
            f"dpfed: the run in {out_dir} is complete ({checkpoints.summary['status']} after "
            f"{checkpoints.round} rounds); nothing to resume"
        )
        return checkpoints.summary
    resume = resume_command(task, out_dir)
    # A failing job writes summary.json status "failed"; in a sweep the other jobs run on.
    with recorded_failure(
        out_dir, multirun, lambda: {"status": "failed", **provenance(cfg, choices)}
    ):
        prepared = prepare(cfg, checkpoints)  # bad values and data fail here, before TensorFlow
        simulation = build_simulation(cfg, checkpoints, prepared)
        writer = build_writer(cfg, out_dir, simulation)
        from dpfed.runtime import tff_runtime

        with tff_runtime():
            summary = simulation.run(writer, provenance(cfg, choices), resume_command=resume)
    print(result_line(summary, out_dir))
    return summary


if __name__ == "__main__":
    from dpfed.cli import preflight

    preflight(sys.argv[1:])  # --help, and unknown keys with the closest known ones
    signal.signal(signal.SIGTERM, interrupt)
    try:
        main()
    except (RunInterrupted, KeyboardInterrupt) as err:
        print(
            f"dpfed: interrupted ({str(err) or 'SIGINT'}); summary.json says how to resume",
            file=sys.stderr,
        )
        sys.exit(130)
