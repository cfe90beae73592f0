r"""Turn run folders into a table: python scripts/make_table.py SWEEP_DIR|EXPERIMENT [options].

Reads summary.json (and .hydra/overrides.yaml) of every run under SWEEP_DIR, so
tables never need re-training. Rows and columns are any summary field, config
choice (``choice/dp``) or override (``override/dp.noise_multiplier``); repeated
runs (seeds) are averaged, with their standard deviation and count.

Given an experiment name (``privacy_utility``, ``mnist_epsilon_quick``, ...; see
experiments/README.md) instead of a folder, it reads
``results/experiments/<name>`` with that experiment's layout and writes
``results/tables/<name>.csv``, ``.md`` and ``.tex``.

Example:
    python scripts/make_table.py results/sweeps/2026-11-26 \
        --rows override/dp.noise_multiplier --values epsilon eval/accuracy \
        --format markdown --out results/tables/noise.md
    python scripts/make_table.py privacy_utility
    python scripts/make_table.py results/sweeps/lr \
        --rows override/strategy.client_optimizer.learning_rate \
        --tuning poisson   # + the epsilon of releasing the best run (Papernot & Steinke 2022)
    python scripts/make_table.py results/searches/private_smart_home --tuning geometric
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from dpfed.report.collect import format_cells, summaries, table, tuning_cost
from dpfed.report.experiments import EXPERIMENTS, ROOT, experiment_table, resolve

FORMATS = ("markdown", "latex", "csv")
SUFFIX = {"markdown": "md", "latex": "tex", "csv": "csv"}


def render(result: pd.DataFrame, fmt: str, digits: int = 4, title: str | None = None) -> str:
    """The table as CSV (std and count in own columns) or Markdown/LaTeX (``mean ± std``)."""
    pivots = list(result.columns.names[1:]) if isinstance(result.columns, pd.MultiIndex) else []
    if fmt == "csv":
        return _flat_columns(result, pivots).round(digits).to_csv()
    cells = format_cells(result.reset_index(), digits)
    cells.columns = [_label(c, pivots) for c in cells.columns]
    if fmt == "markdown":
        text = _markdown(cells)
        return f"{title}\n\n{text}" if title else text
    return _latex(cells, title)


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _label(column, pivots: list[str]) -> str:
    """One header for a (value, pivot values...) column: ``eval/accuracy, epsilon budget=2``."""
    if not isinstance(column, tuple):
        return str(column)
    value, *rest = column
    if not rest or all(r == "" for r in rest):
        return str(value)
    named = ", ".join(f"{name}={_value(v)}" for name, v in zip(pivots, rest, strict=True))
    return f"{value}, {named}"


def _flat_columns(result: pd.DataFrame, pivots: list[str]) -> pd.DataFrame:
    """Pivoted ``(value, column)`` headers as one string each (for CSV)."""
    if not isinstance(result.columns, pd.MultiIndex):
        return result
    out = result.copy()
    out.columns = [_label(c, pivots) for c in result.columns]
    return out


def _markdown(cells: pd.DataFrame) -> str:
    """A GitHub Markdown table; a ``|`` inside a header or cell is escaped."""

    def esc(text) -> str:
        return str(text).replace("|", "\\|")

    header = "| " + " | ".join(esc(c) for c in cells.columns) + " |"
    rule = "|" + "|".join("---" for _ in cells.columns) + "|"
    rows = ["| " + " | ".join(esc(v) for v in row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _latex(cells: pd.DataFrame, title: str | None) -> str:
    """A booktabs tabular (pandas' to_latex needs jinja2, which dpfed does not depend on)."""
    special = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
        "|": r"\textbar{}",
        "±": r"$\pm$",
    }

    def esc(text) -> str:
        text = str(text)
        if text in ("inf", "-inf"):
            return text.replace("inf", r"$\infty$")
        return "".join(special.get(char, char) for char in text)

    lines = [r"\begin{table}[t]", r"\centering"]
    if title:
        lines.append(rf"\caption{{{esc(title)}}}")
    lines += [
        r"\begin{tabular}{" + "l" * len(cells.columns) + "}",
        r"\toprule",
        " & ".join(esc(c) for c in cells.columns) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in cells.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def write_experiment_tables(
    name: str, sweep_dir: str | Path, out_dir: str | Path, digits: int = 4
) -> list[Path]:
    """Writes ``<out_dir>/<name>.{csv,md,tex}`` from the experiment's sweep folder.

    Args:
        name: experiment or quick variant (``communication_quick``).
        sweep_dir: its runs (``results/experiments/<name>``).
        out_dir: where the tables go (``results/tables``).
        digits: significant digits in Markdown/LaTeX, decimals in CSV.

    Returns:
        The three files written.
    """
    experiment, _ = resolve(name)
    result = experiment_table(name, sweep_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{name}.{SUFFIX[fmt]}"
        path.write_text(render(result, fmt, digits, experiment.title) + "\n")
        paths.append(path)
    return paths


def tuning_lines(run_folders: list[str], distribution: str, mean: float | None = None) -> list[str]:
    """The tuning cost of each account, one sentence each (`dpfed.report.collect.tuning_cost`)."""
    lines = []
    for row in tuning_cost(run_folders, distribution, mean):
        if "error" in row:
            lines.append(f"tuning cost of {row['account']}: not computed: {row['error']}")
            continue
        lines.append(
            f"tuning cost of {row['account']} (Papernot & Steinke 2022): releasing the best of "
            f"a random search with {distribution}-distributed trials, mean {row['mean']:g} "
            f"({_trials_here(row)}), is epsilon {row['epsilon_tuned']:.4g} at delta "
            f"{row['delta']:g} ({row['neighboring']}), against at most "
            f"{row['epsilon_one_trial_max']:.4g} for one trial{_coverage(row)}"
        )
    return lines


def _coverage(row: dict) -> str:
    """Whether the theorem covers the sweep: only a search that drew its number of trials."""
    declared = row["declared"]
    if row["covered"]:
        seeded = (
            "; from a seed: it holds only while the seed, and so the number of trials, stays secret"
            if declared.get("seeded")
            else ""
        )
        return (
            f" (the search drew its number of trials: {declared['distribution']}, mean "
            f"{declared['mean']:g}{seeded})"
        )
    how = {
        "fixed": f"a fixed number of trials (n_trials={declared.get('trials')})",
        "grid": "a grid of runs (or single runs)",
        "unknown": "a number of trials it did not record in a form read here",
    }[declared["kind"]]
    return (
        f"; NOT COVERED: this sweep ran {how}, and the bound holds only for a search that "
        "draws its number of trials at random (${dpfed.random_trials:MEAN,LAW}); it is what "
        "such a search would cost"
    )


def _trials_here(row: dict) -> str:
    if row["trials"] == row["runs"]:
        return f"{row['runs']} runs here"
    return f"{row['trials']} trials of {row['runs']} runs here, a trial's seeds composed"


def main(argv: list[str] | None = None) -> int:
    """Writes the table (Markdown, LaTeX, CSV) of the runs under ``root``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a results folder (runs or a sweep), or an experiment name")
    parser.add_argument("--rows", nargs="+", default=["choice/dp"])
    parser.add_argument("--columns", nargs="*", default=[])
    parser.add_argument("--values", nargs="+", default=["epsilon", "eval/accuracy"])
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument("--digits", type=int, default=4)
    parser.add_argument("--out", help="write here (the folder is created); default: stdout")
    parser.add_argument(
        "--tables-dir",
        default=str(ROOT / "results" / "tables"),
        help="where an experiment's tables go",
    )
    parser.add_argument(
        "--tuning",
        choices=("poisson", "geometric", "logarithmic"),
        help="also print the epsilon of releasing the best of the runs' "
        "trials (a run, or the seeds of an optimized_seeds trial), read as "
        "a random search whose number of trials has this law (Papernot & "
        "Steinke 2022); a search that drew its trials with "
        "${dpfed.random_trials:...} must be given its own law",
    )
    parser.add_argument(
        "--tuning-mean",
        type=float,
        help="the mean number of trials; default: the mean a search's "
        "${dpfed.random_trials:...} recorded, else the number of "
        "trials",
    )
    args = parser.parse_args(argv)
    if args.tuning_mean is not None and not args.tuning_mean >= 1:
        print(
            f"error: --tuning-mean={args.tuning_mean} is not allowed; allowed: >= 1",
            file=sys.stderr,
        )
        return 2
    base = args.root.removesuffix("_quick")
    if not Path(args.root).exists() and base in EXPERIMENTS:
        sweep_dir = ROOT / "results" / "experiments" / args.root
        try:
            paths = write_experiment_tables(args.root, sweep_dir, args.tables_dir, args.digits)
        except FileNotFoundError as err:
            print(f"error: {err}; run python scripts/reproduce.py {base} first", file=sys.stderr)
            return 2
        print("\n".join(map(str, paths)))
        return 0
    frame = summaries(args.root)
    if frame.empty:
        print(f"error: no run with a summary.json under {args.root}", file=sys.stderr)
        return 2
    if "status" in frame.columns:
        left_out = frame[~frame["status"].isin(["completed", "stopped"])]
        for run, status in zip(left_out["run"], left_out["status"], strict=True):
            print(f"note: leaving out {status} run {run}", file=sys.stderr)
        frame = frame[frame["status"].isin(["completed", "stopped"])]
    try:
        result = table(frame, args.rows, args.columns, args.values)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    text = render(result, args.format, args.digits)
    if args.tuning:
        text += "\n\n" + "\n".join(tuning_lines(list(frame["run"]), args.tuning, args.tuning_mean))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
