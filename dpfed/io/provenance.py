"""Where a run came from: package versions, git commit, config choices and the resolved config."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

PACKAGES = (
    "tensorflow",
    "tensorflow-federated",
    "tensorflow-privacy",
    "dp-accounting",
    "hydra-core",
)


def git_commit() -> str | None:
    """The checkout's commit, or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance(cfg: DictConfig, choices: dict | None = None) -> dict:
    """Versions, git commit, config choices and the resolved config, for summary.json.

    A secret DP seed (``dp.seed=null``) stays null in the recorded config.
    """
    return {
        "seed": cfg.seed,
        "choices": choices or {},
        "versions": {p: metadata.version(p) for p in PACKAGES},
        "git_commit": git_commit(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
