"""Turn a sweep's run folders into a table: python scripts/make_table.py RESULTS_DIR [options].

Reads summary.json (and .hydra/overrides.yaml) of every run under RESULTS_DIR, so
tables never need re-training. Rows and columns are any summary field, config
choice (``choice/dp``) or override (``override/dp.noise_multiplier``).

Example:
    python scripts/make_table.py results/sweeps/2026-11-26 \\
        --rows override/dp.noise_multiplier --values epsilon eval/accuracy \\
        --format markdown --out results/tables/noise.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpfed.report.collect import summaries, table

FORMATS = ("markdown", "latex", "csv")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a results folder (runs or a sweep)")
    parser.add_argument("--rows", nargs="+", default=["choice/dp"])
    parser.add_argument("--columns", nargs="*", default=[])
    parser.add_argument("--values", nargs="+", default=["epsilon", "eval/accuracy"])
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--digits", type=int, default=4)
    parser.add_argument("--out", help="write here (the folder is created); default: stdout")
    args = parser.parse_args(argv)
    frame = summaries(args.root)
    if frame.empty:
        print(f"error: no run with a summary.json under {args.root}", file=sys.stderr)
        return 2
    try:
        result = table(frame, args.rows, args.columns, args.values).round(args.digits)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    text = {"markdown": result.to_markdown, "latex": result.to_latex, "csv": result.to_csv}[
        args.format
    ]()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
