"""Collect finished runs (summary.json, .hydra choices, metrics.csv) into pandas frames."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml


def run_dirs(root: str | Path) -> list[Path]:
    """Every run directory (one holding a summary.json) under ``root``, sorted."""
    return sorted(p.parent for p in Path(root).rglob("summary.json"))


def _overrides(run_dir: Path) -> dict:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    pairs = (o.split("=", 1) for o in yaml.safe_load(path.read_text()) or [] if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs}


def summaries(root: str | Path) -> pd.DataFrame:
    """One row per run: every scalar of summary.json, the config choices and the overrides.

    Columns: ``run`` (directory), ``choice/<group>`` for each config group
    choice, ``override/<key>`` for each command-line override, then the
    summary's scalar fields (``epsilon``, ``eval/accuracy``, ``rounds``, ...).
    """
    rows = []
    for run_dir in run_dirs(root):
        summary = json.loads((run_dir / "summary.json").read_text())
        row = {"run": str(run_dir)}
        row.update({f"choice/{k}": v for k, v in summary.get("choices", {}).items()
                    if not k.startswith("hydra")})  # fmt: skip
        row.update({f"override/{k}": v for k, v in _overrides(run_dir).items()})
        row.update({k: v for k, v in summary.items()
                    if isinstance(v, str | int | float | bool) or v is None})  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows)


def curves(root: str | Path) -> pd.DataFrame:
    """Every run's metrics.csv stacked, with a ``run`` column (for per-round plots)."""
    frames = [pd.read_csv(d / "metrics.csv").assign(run=str(d))
              for d in run_dirs(root) if (d / "metrics.csv").exists()]  # fmt: skip
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table(
    frame: pd.DataFrame, rows: list[str], columns: list[str], values: list[str]
) -> pd.DataFrame:
    """A pivot of ``values`` (mean, and std when runs repeat) by ``rows`` x ``columns``."""
    missing = [c for c in [*rows, *columns, *values] if c not in frame.columns]
    if missing:
        raise KeyError(f"no column {missing} in the runs; have: {sorted(frame.columns)}")
    grouped = frame.groupby(rows + columns, dropna=False)[values]
    out = grouped.mean()
    if grouped.size().max() > 1:
        out = out.join(grouped.std().add_suffix(" std")).join(grouped.size().rename("runs"))
    return out.unstack(columns) if columns else out
