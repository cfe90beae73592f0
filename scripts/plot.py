"""Plot runs: python scripts/plot.py RESULTS_DIR --out FIGURE [--kind ... | --x round --y ...].

Kinds (each saved as FIGURE.pdf and FIGURE.png when FIGURE has no suffix), one
panel per dataset, one colour, marker and line style per mechanism in every
figure (`dpfed.report.figures.STYLES`), mean ± std over seeds:

- ``utility``: held-out accuracy against the epsilon budget (ticks at the
  swept budgets, delta and adjacency on the axis), the non-private result, the
  trivial predictor and, where the runs recorded them, the last value and the
  oracle as labelled horizontal lines;
- ``epsilon``: epsilon against rounds per mechanism;
- ``curves``: learning curves, held-out accuracy against rounds per mechanism and budget;
- ``audit``: runs with ``audit=canaries`` or ``audit=canary_gradients``: the audit's
  lower bound (the largest of its bounds) and one-shot estimate (canary clients)
  against the accountant's epsilon, planted-bug runs marked;
- ``clip``: runs with ``dp=gaussian`` at several ``dp.clip`` and ``dp=adaptive``: final
  accuracy against the fixed clip, the adaptive clip's result as a band at its final clip;
- or any ``--x`` / ``--y`` pair of metrics.csv columns, one line per run,
  labelled by the overrides that differ between runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from dpfed.io.provenance import FORECASTS  # noqa: E402
from dpfed.report.collect import (  # noqa: E402
    audited,
    config_values,
    curves,
    mechanism_labels,
    summaries,
)
from dpfed.report.experiments import SERVER_LR  # noqa: E402
from dpfed.report.figures import (  # noqa: E402
    audit_figure,
    clip_figure,
    curves_figure,
    save,
    utility_figure,
)

KINDS = {"epsilon": ("round", "epsilon"), "curves": ("round", "eval/accuracy")}


def _labels(root) -> dict[str, str]:
    frame = summaries(root).set_index("run")
    columns = [c for c in frame.columns if c.startswith("override/")]
    varying = [c for c in columns if frame[c].astype(str).nunique() > 1] or columns
    labels = {}
    for run in frame.index:
        pairs = [(c.removeprefix("override/"), frame.at[run, c]) for c in varying]
        labels[run] = ", ".join(f"{k}={v}" for k, v in pairs if str(v) != "nan") or run
    return labels


def plot_lines(root, x: str, y: str, out) -> list[Path]:
    """One line of ``y`` against ``x`` per run (metrics.csv); returns the files written."""
    data = curves(root)
    if data.empty:
        raise FileNotFoundError(f"no metrics.csv under {root}")
    for column in (x, y):
        if column not in data.columns:
            raise KeyError(f"no column {column!r}; have: {sorted(data.columns)}")
    labels = _labels(root)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for run, frame in data.groupby("run"):
        points = frame[[x, y]].dropna()
        points = points[points[x].map(math.isfinite) & points[y].map(math.isfinite)]
        if not points.empty:
            ax.plot(points[x], points[y], marker="o", markersize=2, label=labels.get(run, run))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if data["run"].nunique() <= 12:
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save(fig, out)


def labelled_runs(root, statuses=("completed", "stopped")) -> pd.DataFrame:
    """summary.json of every run with one of ``statuses`` (finished ones), with ``dataset``,
    ``mechanism`` and ``budget`` columns.

    ``budget`` is the swept ``dp.target_epsilon`` where there is one, else the
    run's final epsilon; non-private runs have an infinite budget. A run private
    only at record level (DP-SGD in clients without user-level noise: epsilon inf,
    epsilon_record finite) gets ``unit`` record, its ``epsilon_record`` and that
    account's ``neighboring``.
    """
    frame = summaries(root)
    if frame.empty:
        raise FileNotFoundError(f"no run with a summary.json under {root}")
    status = frame.get("status", pd.Series("completed", index=frame.index))
    frame = frame[status.isin(statuses)].copy()
    if frame.empty:
        raise FileNotFoundError(f"no run under {root} has status {' or '.join(statuses)}")
    frame["dataset"] = frame.get("choice/dataset", "runs")
    frame["mechanism"] = mechanism_labels(frame)
    missing = pd.Series(float("nan"), index=frame.index)
    target = pd.to_numeric(frame.get("override/dp.target_epsilon", missing), errors="coerce")
    epsilon = pd.to_numeric(frame.get("epsilon", missing), errors="coerce")
    epsilon_record = pd.to_numeric(frame.get("epsilon_record", missing), errors="coerce")
    record_only = (
        (frame["mechanism"] != "none") & (epsilon == math.inf) & (epsilon_record < math.inf)
    )
    frame.loc[record_only, "unit"] = "record"
    if "epsilon_record/neighboring" in frame.columns:  # its own relation, not the users'
        frame.loc[record_only, "neighboring"] = frame.loc[record_only, "epsilon_record/neighboring"]
    frame["record_only"] = record_only
    frame["budget"] = target.fillna(epsilon.mask(record_only, epsilon_record))
    return frame


def privacy_axis(frame: pd.DataFrame) -> str:
    """An epsilon axis label naming delta and the neighbouring relation(s) of the runs."""
    private = frame[frame["mechanism"] != "none"]
    deltas = sorted({f"{d:g}" for d in private.get("delta", pd.Series(dtype=float)).dropna()})
    relations = sorted(set(private.get("neighboring", pd.Series(dtype=str)).dropna()))
    units = sorted(set(private.get("unit", pd.Series(dtype=str)).dropna()))
    unit = f"{'/'.join(units)}-level " if units else ""
    return (
        f"{unit}epsilon\n(delta {'/'.join(deltas) or '-'}, {'/'.join(relations) or 'no'} adjacency)"
    )


def plot_utility(root, out, y: str = "eval/accuracy") -> list[Path]:
    """``y`` against the epsilon budget, mean ± std over seeds, one panel per dataset."""
    frame = labelled_runs(root)
    if y not in frame.columns:
        raise FileNotFoundError(f"no run with {y!r} in its summary.json under {root}")
    private = frame[(frame["mechanism"] != "none") & frame["budget"].map(math.isfinite)]
    baselines = {}
    for dataset, part in frame.groupby("dataset"):
        lines = {}
        none = part[part["mechanism"] == "none"][y].dropna()
        if not none.empty:
            lines["no DP"] = float(none.mean())
        trivial = part.get(y.replace("eval/", "eval/trivial_"))
        if trivial is not None and trivial.notna().any():
            lines[str(part["trivial_predictor"].dropna().iloc[0])] = float(trivial.mean())
        for name, prefix in FORECASTS:
            forecast = part.get(y.replace("eval/", prefix))  # where the dataset knows it
            if forecast is not None and forecast.notna().any():
                lines[name] = float(forecast.mean())
        baselines[dataset] = lines
    return utility_figure(
        private, "budget", y, out, xlabel=privacy_axis(frame), ylabel=y, baselines=baselines
    )


def plot_curves(root, y: str, out) -> list[Path]:
    """``y`` (metrics.csv) against the round, per mechanism (and budget), mean ± std over seeds;
    an interrupted run's curve up to its last round (its rows were written as rounds finished)."""
    frame = labelled_runs(root, ("completed", "stopped", "interrupted")).set_index("run")
    data = curves(root)
    if data.empty or y not in data.columns:
        raise FileNotFoundError(f"no metrics.csv with {y!r} under {root}")
    data = data[data["run"].isin(frame.index)].copy()
    data["dataset"] = data["run"].map(frame["dataset"])
    budgets = frame["budget"].map(lambda b: "" if not math.isfinite(b) else f", eps {b:g}")
    swept = frame.get("override/dp.target_epsilon") is not None
    series = frame["mechanism"]
    strategies = frame.get("choice/strategy")
    if strategies is not None and strategies.nunique() > 1:  # e.g. the communication table
        series = strategies if series.nunique() == 1 else strategies + ", " + series
    data["mechanism"] = data["run"].map(series + (budgets if swept else ""))
    if y == "epsilon":  # non-private runs have no curve to draw
        data = data[data["run"].map(frame["mechanism"]) != "none"].copy()
        if "epsilon_record" in data.columns:  # record-level runs: their epsilon_record
            record = data["run"].map(frame["record_only"]).astype(bool)
            data.loc[record, "epsilon"] = data.loc[record, "epsilon_record"]
    ylabel = privacy_axis(frame) if y == "epsilon" else y
    return curves_figure(data, "round", y, out, ylabel=ylabel)


def plot_audit(root, out) -> list[Path]:
    """The audit's epsilons against the accountant's, per mechanism (runs with canaries)."""
    frame = labelled_runs(root)
    if "audit/epsilon_lower" not in frame.columns:
        raise FileNotFoundError(f"no audited run (audit=canaries or canary_gradients) under {root}")
    frame = audited(frame)
    bounds = [c for c in ("audit/epsilon_lower", "audit/epsilon_lower_iterates") if c in frame]
    frame = frame.assign(bound=frame[bounds].max(axis=1))  # every bound holds together
    frame = frame[frame["bound"].notna()].copy()
    frame["planted"] = frame.get("audit_planted_noise_factor", 1.0).fillna(1.0)
    return audit_figure(frame, out, xlabel=privacy_axis(frame).replace("\n", " "))


def plot_clip(root, out, y: str = "eval/accuracy") -> list[Path]:
    """``y`` against the fixed clip, with the adaptive clip's result (runs with dp=gaussian and
    dp=adaptive)."""
    frame = labelled_runs(root)
    frame["server lr"] = config_values(frame, SERVER_LR)  # several: each clip at its best
    fixed = frame[frame["mechanism"] == "gaussian"]
    adaptive = frame[frame["mechanism"] == "adaptive"]
    if fixed.empty or y not in frame.columns:
        raise FileNotFoundError(f"no dp=gaussian run with {y!r} under {root}")
    epsilons = sorted({f"{e:.3g}" for e in frame["epsilon"].dropna()})
    what, privacy = privacy_axis(frame).splitlines()
    note = f"{what} {'/'.join(epsilons)} {privacy}"
    trivial_column = y.replace("eval/", "eval/trivial_")
    trivial = None
    if trivial_column in frame and frame[trivial_column].notna().any():
        name = str(frame["trivial_predictor"].dropna().iloc[0])
        trivial = (name, float(frame[trivial_column].mean()))
    ylabel = "held-out accuracy (last round)" if y == "eval/accuracy" else f"{y} (last round)"
    return clip_figure(fixed, adaptive, out, y=y, ylabel=ylabel, note=note, trivial=trivial)


def plot_kind(kind: str, root, out) -> list[Path]:
    """Draws one of `KINDS`, ``utility``, ``audit`` or ``clip`` for the runs under ``root``."""
    if kind == "utility":
        return plot_utility(root, out)
    if kind == "audit":
        return plot_audit(root, out)
    if kind == "clip":
        return plot_clip(root, out)
    return plot_curves(root, KINDS[kind][1], out)


def main(argv: list[str] | None = None) -> int:
    """Draws the figure of the runs under ``root``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument(
        "--out", required=True, help="figure (.png, .pdf, .svg); no suffix: .png and .pdf"
    )
    parser.add_argument("--kind", choices=[*KINDS, "utility", "audit", "clip"])
    parser.add_argument("--x", default="epsilon")
    parser.add_argument("--y", default="eval/accuracy")
    args = parser.parse_args(argv)
    try:
        if args.kind:
            paths = plot_kind(args.kind, args.root, args.out)
        else:
            paths = plot_lines(args.root, args.x, args.y, args.out)
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
