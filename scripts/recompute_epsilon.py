"""Recompute a run's epsilon from its summary.json with dp-accounting alone.

Usage: python scripts/recompute_epsilon.py RUN_DIR [RUN_DIR ...]

Rebuilds the DP events recorded in ``dp_events`` (each with how many rounds it
occurred in) using only dp-accounting, composes them with the recorded
accountant settings and prints the result beside the epsilon the run reported.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

RELATIONS = {
    "replace_one": dp_accounting.NeighboringRelation.REPLACE_ONE,
    "add_or_remove_one": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
}


def rebuild_event(data: dict) -> dp_accounting.DpEvent:
    fields = {
        k: rebuild_event(v) if isinstance(v, dict) else v for k, v in data.items() if k != "type"
    }
    return getattr(dp_accounting, data["type"])(**fields)


def recompute(summary: dict) -> float:
    relation = RELATIONS[summary["neighboring_relation"]]
    if summary["accountant"] == "pld":
        accountant = PLDAccountant(relation, summary["pld_discretization"])
    else:
        accountant = RdpAccountant(orders=summary["orders"], neighboring_relation=relation)
    for item in summary["dp_events"]:
        accountant.compose(rebuild_event(item["event"]), item["count"])
    if summary["accountant"] == "rdp" and summary["conversion"] == "classic":
        log_term = math.log(1 / summary["delta"])
        eps = min(
            r + log_term / (o - 1) for o, r in zip(accountant.orders, accountant.rdp, strict=True)
        )
    else:
        eps = accountant.get_epsilon(summary["delta"])
    return math.inf if eps is None or math.isnan(eps) else float(eps)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    worst = 0.0
    for run_dir in argv:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        mine, theirs = recompute(summary), summary["epsilon"]
        same = bool(mine == theirs or abs(mine - theirs) <= 1e-9 * max(1.0, abs(mine)))
        worst = max(worst, 0.0 if same else 1.0)
        print(
            json.dumps(
                {
                    "run": run_dir,
                    "rounds": summary["rounds"],
                    "delta": summary["delta"],
                    "epsilon_reported": theirs,
                    "epsilon_recomputed": mine,
                    "match": same,
                }
            )
        )
    return int(worst)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
