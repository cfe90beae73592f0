"""Reproduce a paper table: scripts/reproduce.py EXPERIMENT [--quick] [--resume|--tables-only].

Runs the experiment's sweeps (``python run.py -m experiment=<name> ...``, one
call per entry of its ``sweeps`` in `dpfed.report.experiments`; accounting-only
experiments compute epsilon per sweep point without training) into
``results/experiments/<name>``, then writes ``results/tables/<name>.{csv,md,tex}``
and its figures ``results/figures/<name>_<kind>.{png,pdf}``. ``--quick`` runs the
``<name>_quick`` variant. A failing job is recorded (summary.json ``failed``) and
left out of the table; the script then exits with code 1. ``--resume`` continues an
interrupted reproduction: it keeps the runs already in ``results/experiments/<name>``
(a finished run is left as it is), continues the interrupted ones from their last
checkpoint and starts the missing ones (``run.py ... resume=true``); without it the
folder is emptied first, so that runs of an older grid cannot end up in the table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from dpfed.report.experiments import EXPERIMENTS, ROOT, run_accounting
from scripts.make_table import write_experiment_tables
from scripts.plot import plot_kind


def main(argv: list[str] | None = None) -> int:
    """Runs an experiment's sweeps, then writes its tables and figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true", help="the small <name>_quick variant")
    parser.add_argument(
        "--results",
        default=str(ROOT / "results"),
        help="root of experiments/, tables/ and figures/",
    )
    parser.add_argument(
        "--tables-only",
        action="store_true",
        help="remake the table and figures from the existing runs",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the finished runs, continue the interrupted ones and run "
        "the missing ones (after an interruption, with the same grid)",
    )
    args = parser.parse_args(argv)
    experiment = EXPERIMENTS[args.experiment]
    name = f"{experiment.name}_quick" if args.quick else experiment.name
    results = Path(args.results)
    sweep_dir = results / "experiments" / name
    failed = False
    if not args.tables_only:
        if sweep_dir.exists() and not args.resume:  # stale jobs of an older grid: not in a table
            print(f"removing the previous runs in {sweep_dir}", file=sys.stderr)
            shutil.rmtree(sweep_dir)
        sweeps = experiment.quick_sweeps if args.quick else experiment.sweeps
        if experiment.accounting_only:
            for run_dir in run_accounting(name, sweep_dir, sweeps):
                print(run_dir)
        else:
            for extra in sweeps:
                cmd = [
                    sys.executable,
                    str(ROOT / "run.py"),
                    "-m",
                    f"experiment={name}",
                    *extra,
                    f"hydra.sweep.dir={sweep_dir}",
                    *(["resume=true"] if args.resume else []),
                ]
                print("+", " ".join(cmd[1:]), file=sys.stderr, flush=True)
                failed |= subprocess.run(cmd, cwd=ROOT).returncode != 0
    for path in write_experiment_tables(name, sweep_dir, results / "tables"):
        print(path)
    for kind in experiment.plots:
        for path in plot_kind(kind, sweep_dir, results / "figures" / f"{name}_{kind}"):
            print(path)
    if failed:
        print(f"error: some jobs failed; see summary.json files under {sweep_dir}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
