"""Plot runs: python scripts/plot.py RESULTS_DIR --out FIGURE.png [--x round --y eval/accuracy].

Draws one line per run of ``--y`` against ``--x`` from every metrics.csv under
RESULTS_DIR (for example accuracy or loss against epsilon: the privacy-utility
curve), labelled by the run's command-line overrides.
"""

from __future__ import annotations

import argparse
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dpfed.report.collect import curves, summaries  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--out", required=True, help="figure file (.png, .pdf, .svg)")
    parser.add_argument("--x", default="epsilon")
    parser.add_argument("--y", default="eval/accuracy")
    args = parser.parse_args(argv)
    data = curves(args.root)
    if data.empty:
        print(f"error: no metrics.csv under {args.root}", file=sys.stderr)
        return 2
    for column in (args.x, args.y):
        if column not in data.columns:
            print(f"error: no column {column!r}; have: {sorted(data.columns)}", file=sys.stderr)
            return 2
    labels = summaries(args.root).set_index("run")
    override_columns = [c for c in labels.columns if c.startswith("override/")]
    varying = [c for c in override_columns if labels[c].astype(str).nunique() > 1]
    override_columns = varying or override_columns  # label runs by what differs between them
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for run, frame in data.groupby("run"):
        points = frame[[args.x, args.y]].dropna()
        pairs = [(c.removeprefix("override/"), labels.at[run, c]) for c in override_columns]
        label = ", ".join(f"{k}={v}" for k, v in pairs if str(v) != "nan") or run
        ax.plot(points[args.x], points[args.y], marker="o", markersize=3, label=label)
    ax.set_xlabel(args.x)
    ax.set_ylabel(args.y)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
