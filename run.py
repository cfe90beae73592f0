"""Train a GRU with federated learning and differential privacy: ``python run.py [overrides]``."""

import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF C++ start-up chatter; set 0 to see it

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpfed.config import register_configs
from dpfed.errors import ConfigError

register_configs()
log = logging.getLogger("dpfed")
logging.getLogger("absl").setLevel(logging.WARNING)  # TFF logs every model build at INFO


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from dpfed.build import build_simulation, build_writer, provenance  # heavy: TF and TFF
    from dpfed.federated.runtime import tff_runtime

    hydra_cfg = HydraConfig.get()
    try:
        simulation = build_simulation(cfg)  # validates everything before any training
    except ConfigError as err:
        print(f"dpfed: invalid configuration: {err}", file=sys.stderr)
        sys.exit(2)
    writer = build_writer(cfg, hydra_cfg.runtime.output_dir, simulation)
    with tff_runtime():
        summary = simulation.run(writer, provenance(cfg, dict(hydra_cfg.runtime.choices)))
    log.info("done: %s", {k: summary[k] for k in ("rounds", "epsilon", "delta")})
    return summary


if __name__ == "__main__":
    main()
