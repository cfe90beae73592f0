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
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
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


# the forecasts a run is also scored by where its dataset knows them: (name, summary key prefix)
FORECASTS = (("last value", "eval/last_value_"), ("oracle", "eval/oracle_"))


def result_line(summary: dict, output_dir: str) -> str:
    """A run's last line: held-out metric vs the trivial predictor's, privacy, rounds, folder."""
    metric = next((k for k in ("eval/accuracy", "eval/mae") if summary.get(k) is not None), None)
    parts = []
    if metric:
        trivial = summary.get(metric.replace("eval/", "eval/trivial_"))
        others = ""  # the forecasts a forecasting task is also scored by
        for name, prefix in FORECASTS:
            value = summary.get(metric.replace("eval/", prefix))
            others += f"; {name}: {value:.3f}" if value is not None else ""
        note = ""
        if trivial is not None:
            note = f" ({summary['trivial_predictor']}: {trivial:.3f}{others})"
        parts.append(f"{metric} {summary[metric]:.3f}{note}")
    # every account with its own unit and relation: a record-level account can be under
    # another relation than the headline's (dpsgd's defaults: replace-one users, zero-out
    # records with Poisson batches)
    accounts = {a["column"]: a for a in summary.get("accounts", [])}
    for column in ("epsilon", "epsilon_record"):
        epsilon = summary.get(column)
        if epsilon is None and column != "epsilon":
            continue
        if epsilon is None or epsilon == float("inf"):
            parts.append(f"{column} inf (not private)")
            continue
        account = accounts.get(column, summary if column == "epsilon" else None)
        if account is None:  # a summary from before accounts were recorded: no relation known
            parts.append(f"{column} {epsilon:.3g}")
            continue
        parts.append(
            f"{column} {epsilon:.3g} at delta {summary['delta']:g} "
            f"({account['unit']}-level, {account['neighboring']}, "
            f"{summary['accountant']})"
        )
    # the largest of an audit's bounds (each computed so that all hold together)
    bounds = [summary.get(k) for k in ("audit/epsilon_lower", "audit/epsilon_lower_iterates")]
    bounds = [b for b in bounds if b is not None and b == b]
    lower = max(bounds) if bounds else None
    if lower is not None:
        confidence = 1 - summary.get("audit_significance", 0.05)
        parts.append(f"audit: epsilon >= {lower:.3g} ({confidence:.0%} confidence)")
    parts.append(f"{summary['rounds']} rounds ({summary['status']})")
    parts.append(output_dir)
    return "dpfed: " + " | ".join(parts)
