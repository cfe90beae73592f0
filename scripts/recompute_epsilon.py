"""Recompute every epsilon a run reported, two ways, from its folder alone.

Usage: python scripts/recompute_epsilon.py RUN_DIR [RUN_DIR ...]

1. Independently: the DP events each account recorded in summary.json
   (``accounts``: events, how often each occurred, the dp-accounting relation
   they were composed under) are rebuilt and composed with dp-accounting alone
   (RDP with the recorded orders and conversion, or PLD; the pure accountant is
   basic composition of Laplace releases), with nothing from dpfed.
2. From the settings: the privacy plan is rebuilt from the run's recorded
   config with `dpfed.build.build_privacy` (the function runs, the calculator
   and the reports use) and its epsilon after the rounds and participations
   the run recorded is computed; this checks which events the run's settings
   imply, not only how the recorded ones compose.

Prints one JSON line per run and account; exits 1 if any epsilon differs.
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
    "replace_special": dp_accounting.NeighboringRelation.REPLACE_SPECIAL,
}
TOLERANCE = 1e-9


def rebuild_event(data: dict) -> dp_accounting.DpEvent:
    """The dp-accounting event a run recorded as JSON (its ``type`` and fields)."""
    fields = {
        k: rebuild_event(v) if isinstance(v, dict) else v for k, v in data.items() if k != "type"
    }
    return getattr(dp_accounting, data["type"])(**fields)


def pure_epsilon(event: dp_accounting.DpEvent) -> float:
    """Basic composition of pure-DP releases; raises on anything else."""
    if isinstance(event, dp_accounting.NoOpDpEvent):
        return 0.0
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return math.inf
    if isinstance(event, dp_accounting.LaplaceDpEvent):
        return 1.0 / event.noise_multiplier
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        return event.count * pure_epsilon(event.event)
    if isinstance(event, dp_accounting.ComposedDpEvent):
        return sum(pure_epsilon(e) for e in event.events)
    raise ValueError(f"not a pure-DP release: {event}")


def recompute_account(summary: dict, account: dict) -> float:
    """Epsilon of one account's recorded events, with dp-accounting alone."""
    events = [(rebuild_event(item["event"]), item["count"]) for item in account["dp_events"]]
    if not events:
        return 0.0
    if summary["accountant"] == "pure":
        return float(sum(count * pure_epsilon(event) for event, count in events))
    relation = RELATIONS[account["accounting_relation"]]
    if summary["accountant"] == "pld":
        accountant = PLDAccountant(relation, summary["pld_discretization"])
    else:
        accountant = RdpAccountant(orders=summary["orders"], neighboring_relation=relation)
    for event, count in events:
        accountant.compose(event, count)
    if summary["accountant"] == "rdp" and summary["conversion"] == "classic":
        log_term = math.log(1 / summary["delta"])
        with_orders = zip(accountant.orders, accountant.rdp, strict=True)
        eps = min((r + log_term / (o - 1) for o, r in with_orders), default=math.inf)
    else:
        eps = accountant.get_epsilon(summary["delta"])
    return math.inf if eps is None or math.isnan(eps) else float(eps)


def replan(summary: dict) -> dict:
    """Every account's epsilon from the run's settings (`dpfed.build.build_privacy`)."""
    from omegaconf import OmegaConf

    from dpfed.build import build_privacy
    from dpfed.config import register_configs
    from dpfed.data.base import Population

    register_configs()
    cfg = OmegaConf.create(summary["config"])
    records = summary.get("num_records")
    # the sampler's population holds an audit's canary clients; build_privacy adds them again
    clients = summary["num_clients"] - summary.get("audit_inserted", 0)
    population = Population(
        clients,
        None if records is None else (lambda clients: records),
        summary.get("record_size"),
        None,
    )
    if summary.get("client_records_mean"):  # Poisson record batches: q from the mean
        population = Population.with_mean_records(
            clients, summary["client_records_mean"], summary.get("record_size")
        )
    plan = build_privacy(cfg, population, dp_seed=0)
    return plan.epsilons(rounds=summary["rounds"], participations=summary["max_participations"])


def same(a: float, b: float) -> bool:
    """Whether two epsilons agree within ``TOLERANCE`` (relative, absolute below 1)."""
    return a == b or abs(a - b) <= TOLERANCE * max(1.0, abs(a))


def check_run(run_dir: str | Path) -> list[dict]:
    """One record per account: reported, recomputed and replanned epsilon, and whether all agree."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    if "accounts" not in summary:  # a run that failed before its first round released nothing
        print(
            f"note: skipping {run_dir}: no accounts recorded (status {summary.get('status')})",
            file=sys.stderr,
        )
        return []
    planned = replan(summary) if summary.get("config") else {}
    out = []
    for account in summary["accounts"]:
        column, reported = account["column"], summary[account["column"]]
        reported = math.inf if reported is None else reported
        recomputed = recompute_account(summary, account)
        replanned = planned.get(column, recomputed)
        out.append(
            {
                "run": str(run_dir),
                "account": column,
                "unit": account["unit"],
                "neighboring": account["neighboring"],
                "rounds": summary["rounds"],
                "delta": summary["delta"],
                "epsilon_reported": reported,
                "epsilon_recomputed": recomputed,
                "epsilon_replanned": replanned,
                "match": same(reported, recomputed) and same(reported, replanned),
            }
        )
    return out


def main(argv: list[str]) -> int:
    """Prints one JSON line per run and account of the folders in ``argv``; 1 on a mismatch."""
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    files = [d for d in argv if Path(d).is_file()]  # a glob over a sweep: its multirun.yaml
    for name in files:
        print(f"note: skipping {name}: a file, not a run folder", file=sys.stderr)
    argv = [d for d in argv if d not in files]
    missing = [d for d in argv if not (Path(d) / "summary.json").is_file()]
    if missing:  # checked before any output, so nothing is half-printed
        print(
            f"error: no summary.json in {', '.join(missing)}: give run folders (a run's "
            "output directory, as its last line names it)",
            file=sys.stderr,
        )
        return 2
    ok = True
    for run_dir in argv:
        for record in check_run(run_dir):
            ok &= record["match"]
            print(json.dumps(record))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
