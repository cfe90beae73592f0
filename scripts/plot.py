"""Plot runs: python scripts/plot.py RESULTS_DIR --out FIGURE [--kind ... | --x round --y ...].

Kinds (each saved as FIGURE.png and FIGURE.pdf when FIGURE has no suffix):

- ``epsilon``: epsilon against rounds, one line per run (metrics.csv);
- ``utility``: final held-out accuracy against final epsilon, one point per
  run and mean over seeds per mechanism (summary.json), infinite epsilon drawn
  at the right edge;
- ``curves``: learning curves, held-out accuracy against rounds per run;
- or any ``--x`` / ``--y`` pair of metrics.csv columns.

Lines are labelled by the overrides that differ between runs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dpfed.report.collect import curves, summaries  # noqa: E402

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


def _save(fig, out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if out.suffix else [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


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
    return _save(fig, Path(out))


def plot_utility(root, out, y: str = "eval/accuracy") -> list[Path]:
    """Final ``y`` against final epsilon per run, grouped by mechanism and dataset."""
    frame = summaries(root)
    if frame.empty or y not in frame.columns:
        raise FileNotFoundError(f"no run with {y!r} in its summary.json under {root}")
    frame = frame[frame.get("status", "completed").isin(["completed", "stopped"])]
    finite = frame["epsilon"][frame["epsilon"].map(math.isfinite)]
    edge = (finite.max() * 1.5) if not finite.empty else 1.0  # where epsilon = inf is drawn
    group = [c for c in ("choice/dataset", "choice/dp") if c in frame.columns]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for key, part in frame.groupby(group) if group else [("runs", frame)]:
        xs = part["epsilon"].map(lambda e: edge if math.isinf(e) else e)
        ax.scatter(
            xs, part[y], s=12, label=" / ".join(map(str, key if isinstance(key, tuple) else [key]))
        )
    ax.axvline(edge, color="grey", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("epsilon (inf at the dotted line)")
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, Path(out))


def plot_kind(kind: str, root, out) -> list[Path]:
    """Draws one of `KINDS` or ``utility`` for the runs under ``root``."""
    if kind == "utility":
        return plot_utility(root, out)
    return plot_lines(root, *KINDS[kind], out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--out", required=True,
                        help="figure (.png, .pdf, .svg); no suffix: .png and .pdf")  # fmt: skip
    parser.add_argument("--kind", choices=[*KINDS, "utility"])
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
