"""Collect finished runs (summary.json, .hydra choices, metrics.csv) into pandas frames."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import yaml


def adaptive_label(quantile: float) -> str:
    """How tables and figures name adaptive clipping at a target quantile."""
    return "adaptive (median)" if quantile == 0.5 else f"adaptive (quantile {quantile:g})"


def target_quantiles(frame: pd.DataFrame) -> pd.Series:
    """Each run's adaptive-clipping ``target_quantile`` (0.5, the median, where not recorded)."""
    return frame.get("target_quantile", pd.Series(0.5, index=frame.index)).fillna(0.5)


def config_values(frame: pd.DataFrame, key: str) -> pd.Series:
    """Each run's resolved config value at the dotted ``key`` (``strategy.server_optimizer.
    learning_rate``), read from the ``config`` its summary.json holds; NaN where a row has no
    run folder or its config has no such key."""

    def value(run) -> object:
        path = Path(str(run)) / "summary.json"
        if not isinstance(run, str) or not path.exists():
            return math.nan
        node = json.loads(path.read_text()).get("config") or {}
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return math.nan
            node = node[part]
        return node

    return frame.get("run", pd.Series(None, index=frame.index)).map(value)


def best_of(frame: pd.DataFrame, groups: list[str], choice: str, metric: str) -> pd.DataFrame:
    """Per group of ``groups``, only the runs at the value of ``choice`` (a tuned setting, such
    as the server learning rate) whose runs' mean ``metric`` is highest: the best setting chosen
    in hindsight.

    Only values with as many runs as the group's best-covered value compete (a value whose
    other seeds failed cannot win on the seeds that survived); a tie goes to the value met
    first in ``frame``'s order; a missing value of ``choice`` is a value of its own; a group
    whose ``metric`` is missing everywhere keeps its first value's runs. Where no row has a
    ``choice``, ``frame`` is returned as it is.
    """
    if choice not in frame.columns or frame[choice].isna().all():
        return frame
    missing = "<missing>"  # NaN is not equal to itself: a stand-in that groups and matches
    keys = [frame[c].astype(object).where(frame[c].notna(), missing) for c in [*groups, choice]]
    stats = frame[metric].astype(float).groupby(keys, sort=False).agg(["mean", "size"])
    if not isinstance(stats.index, pd.MultiIndex):  # one key: its entries as 1-tuples
        stats.index = pd.MultiIndex.from_arrays([stats.index])
    levels = list(range(len(groups))) if len(groups) > 1 else 0  # a scalar: no pandas warning
    parts = stats.groupby(level=levels, sort=False) if groups else [((), stats)]
    chosen = set()
    for _, part in parts:
        eligible = part[part["size"] == part["size"].max()]
        chosen.add(eligible["mean"].fillna(-math.inf).idxmax())
    rows = zip(*keys, strict=True)
    return frame[[row in chosen for row in rows]]


def run_dirs(root: str | Path) -> list[Path]:
    """Every run directory (one holding a summary.json) under ``root``, sorted."""
    return sorted(p.parent for p in Path(root).rglob("summary.json"))


def trial_dir(run_dir: str | Path, summary: dict | None = None) -> Path | None:
    """The search trial a run's releases count in: the run itself, or for a run recorded
    with ``optimized_seeds`` > 1 (``summary``'s config, default: its summary.json) the
    parent of its ``seed_<s>`` folder (`dpfed.jobs.over_seeds`); None where such a run is not
    in a ``seed_<s>`` folder, so that its trial cannot be told."""
    from dpfed.jobs import SEED_FOLDER

    run_dir = Path(run_dir)
    if summary is None:
        summary = json.loads((run_dir / "summary.json").read_text())
    if ((summary.get("config") or {}).get("optimized_seeds") or 1) == 1:
        return run_dir
    return run_dir.parent if SEED_FOLDER.fullmatch(run_dir.name) else None


def _overrides(run_dir: Path, summary: dict) -> dict:
    trial = trial_dir(run_dir, summary) or run_dir
    path = trial / ".hydra" / "overrides.yaml"  # a trial's seeds share its own
    if not path.exists():
        return {}
    pairs = (o.split("=", 1) for o in yaml.safe_load(path.read_text()) or [] if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs}


def summaries(root: str | Path) -> pd.DataFrame:
    """One row per run: every scalar of summary.json, the config choices and the overrides.

    Columns: ``run`` (directory), ``choice/<group>`` for each config group
    choice, ``override/<key>`` for each command-line override, then the
    summary's scalar fields (``epsilon``, ``eval/accuracy``, ``rounds``, ...;
    ``unit`` and ``neighboring`` are the headline ``epsilon``'s) and, for every
    other account, ``<column>/unit`` and ``<column>/neighboring``
    (``epsilon_record/neighboring``).
    """
    rows = []
    for run_dir in run_dirs(root):
        summary = json.loads((run_dir / "summary.json").read_text())
        row = {"run": str(run_dir)}
        row.update(
            {
                f"choice/{k}": v
                for k, v in summary.get("choices", {}).items()
                if not k.startswith("hydra")
            }
        )
        row.update({f"override/{k}": v for k, v in _overrides(run_dir, summary).items()})
        row.update(
            {
                k: v
                for k, v in summary.items()
                if isinstance(v, str | int | float | bool) or v is None
            }
        )
        for account in summary.get("accounts", []):  # the top-level ones are the headline's
            if account["column"] != "epsilon":
                for key in ("unit", "neighboring"):
                    row[f"{account['column']}/{key}"] = account[key]
        rows.append(row)
    return pd.DataFrame(rows)


def mechanism_labels(frame: pd.DataFrame) -> pd.Series:
    """Each run's ``dp`` option, or its factorization where that is not the option's default
    (``dp=bandmf dp.factorization=blt`` is ``blt``), as tables and figures name mechanisms."""
    mechanism = frame.get("choice/dp", pd.Series("runs", index=frame.index))
    factorization = frame.get("factorization", pd.Series(None, index=frame.index))
    other = factorization.notna() & (factorization.astype(str) != "banded")
    return mechanism.where(~other, factorization.astype(str))


def audited(frame: pd.DataFrame) -> pd.DataFrame:
    """Audited runs with ``epsilon`` the accountant's epsilon the audit bounds (summary.json's
    ``audit_bounds``: ``epsilon_record`` for canary records in clients' DP-SGD, whose
    user-level ``epsilon`` is another guarantee) and ``mechanism`` saying which DP-SGD
    (``dpsgd (in clients)``)."""
    bounds = frame.get("audit_bounds", pd.Series(None, index=frame.index))
    record = bounds == "epsilon_record"
    frame = frame.copy()
    if record.any():
        frame.loc[record, "epsilon"] = frame.loc[record, "epsilon_record"]
        # its own relation: with dp.neighboring unset, DP-SGD's users are replace-one and its
        # records in Poisson batches zero-out
        # (None where a run recorded no accounts: unknown, not the users')
        own = frame.get("epsilon_record/neighboring", pd.Series(None, index=frame.index))
        frame["neighboring"] = frame.get("neighboring", own).astype(object)
        frame.loc[record, "neighboring"] = own[record]
        frame["unit"] = frame.get("unit", pd.Series(None, index=frame.index)).astype(object)
        frame.loc[record, "unit"] = "record"
    mechanism = frame.get("mechanism", mechanism_labels(frame)).astype(str)
    frame["mechanism"] = mechanism.where(~record, mechanism + " (in clients)")
    return frame


def curves(root: str | Path) -> pd.DataFrame:
    """Every run's metrics.csv stacked, with a ``run`` column (for per-round plots)."""
    frames = [
        pd.read_csv(d / "metrics.csv").assign(run=str(d))
        for d in run_dirs(root)
        if (d / "metrics.csv").exists()
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table(
    frame: pd.DataFrame, rows: list[str], columns: list[str], values: list[str]
) -> pd.DataFrame:
    """A pivot of ``values`` (mean, and std when runs repeat) by ``rows`` x ``columns``."""
    missing = [c for c in [*rows, *columns, *values] if c not in frame.columns]
    if missing:
        raise KeyError(f"no column {missing} in the runs; have: {sorted(frame.columns)}")
    frame = frame.assign(**{value: _numbers(frame[value]) for value in values})
    grouped = frame.groupby(rows + columns, dropna=False)[values]
    out = grouped.mean()
    if grouped.size().max() > 1:
        out = out.join(grouped.std().add_suffix(" std")).join(grouped.size().rename("runs"))
    out = out.unstack(columns) if columns else out
    return out.iloc[sorted(range(len(out)), key=lambda i: _natural(out.index[i]))]


def _natural(entry) -> tuple:
    """Sort key of a row label (a value or a tuple of them): numbers, also written as text,
    by value ("3" before "10"), then other labels alphabetically, then missing ones."""
    key = []
    for part in entry if isinstance(entry, tuple) else (entry,):
        try:
            number = float(part)
        except (TypeError, ValueError):
            key.append((1, 0.0, str(part)))
            continue
        key.append((2, 0.0, "") if number != number else (0, number, ""))
    return tuple(key)


def _numbers(column: pd.Series) -> pd.Series:
    """A value column as numbers (overrides are read as text: ``"0.4"`` is 0.4).

    Raises:
        KeyError: a value that is not a number, naming the column.
    """
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column[numbers.isna() & column.notna()]
    if not bad.empty:
        raise KeyError(
            f"value column {column.name!r} holds {bad.iloc[0]!r}, which is not a "
            "number; averaged values must be numbers (put it in --rows or "
            "--columns instead)"
        )
    return numbers


def reach_target(data: pd.DataFrame, metric: str, target: float) -> pd.DataFrame:
    """Per run: the first round whose ``metric`` is at least ``target`` and the bytes until then.

    Args:
        data: stacked metrics.csv rows (`curves`), with ``bytes_down``/``bytes_up``.
        metric: an evaluated column, e.g. ``eval/accuracy`` (empty between evaluations).
        target: the value to reach.

    Returns:
        Columns ``run``, ``rounds_to_target`` and ``bytes_to_target`` (down plus up,
        summed over the rounds up to and including that one); NaN if never reached.
    """
    rows = []
    for run, frame in data.groupby("run"):
        frame = frame.sort_values("round")
        hit = frame[frame[metric] >= target]
        if hit.empty:
            rows.append(
                {"run": run, "rounds_to_target": float("nan"), "bytes_to_target": float("nan")}
            )
            continue
        first = hit["round"].iloc[0]
        upto = frame[frame["round"] <= first]
        sent = float((upto["bytes_down"] + upto["bytes_up"]).sum())
        rows.append({"run": run, "rounds_to_target": float(first), "bytes_to_target": sent})
    return pd.DataFrame(rows, columns=["run", "rounds_to_target", "bytes_to_target"])


def format_cells(result: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Each value as ``mean ± std`` where runs repeat (std columns folded in): Markdown, LaTeX."""
    flat = result.copy()
    std_cols = [
        c for c in flat.columns if str(c[0] if isinstance(c, tuple) else c).endswith(" std")
    ]
    out = flat.drop(columns=std_cols)
    for col in std_cols:
        base = (
            (col[0].removesuffix(" std"), *col[1:])
            if isinstance(col, tuple)
            else col.removesuffix(" std")
        )
        if base in out.columns:
            mean, std = out[base], flat[col]
            out[base] = [_cell(m, s, digits) for m, s in zip(mean, std, strict=True)]
    for col in out.columns:
        if out[col].dtype.kind == "f":
            out[col] = [_cell(v, float("nan"), digits) for v in out[col]]
    return out


def _cell(mean, std, digits: int) -> str:
    if isinstance(mean, str):
        return mean
    if mean is None or (isinstance(mean, float) and mean != mean):
        return "-"
    text = f"{mean:.{digits}g}"
    return text if std is None or std != std else f"{text} ± {std:.2g}"


_RANDOM_TRIALS = re.compile(r"\$\{dpfed\.random_trials:([^}]*)\}")


def declared_trials(trial: str | Path) -> dict:
    """How the search a trial belongs to chose its number of trials, from the trial's recorded
    ``.hydra/hydra.yaml`` (``hydra.sweeper.n_trials``, kept unresolved by Hydra).

    Returns:
        ``{"kind": "random", "mean": M, "distribution": law, "seeded": bool}`` for
        ``${dpfed.random_trials:M,law[,seed]}``; ``{"kind": "fixed", "trials": N}`` for
        ``n_trials: N``; ``{"kind": "grid"}`` for a sweeper without ``n_trials`` (a grid of
        runs); ``{"kind": "unknown"}`` where nothing was recorded.
    """
    path = Path(trial) / ".hydra" / "hydra.yaml"
    if not path.exists():
        return {"kind": "unknown"}
    sweeper = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("sweeper") or {}
    n_trials = sweeper.get("n_trials")
    if n_trials is None:
        return {"kind": "grid"}
    drawn = _RANDOM_TRIALS.fullmatch(str(n_trials).strip())
    if drawn:
        args = [a.strip().strip("'\"") for a in drawn.group(1).split(",")]  # quoted or not
        return {
            "kind": "random",
            "mean": float(args[0]),
            "distribution": args[1] if len(args) > 1 else "poisson",
            # whoever knows the seed knows the number of trials
            "seeded": len(args) > 2 and args[2].lower() not in ("null", "none", "~", ""),
        }
    if isinstance(n_trials, int):
        return {"kind": "fixed", "trials": n_trials}
    return {"kind": "unknown"}


def tuning_cost(
    run_folders: list[str | Path], distribution: str = "poisson", mean: float | None = None
) -> list[dict]:
    """Per account: the epsilon of releasing the best of these runs' trials (Papernot & Steinke).

    The runs are read as the trials of a random search whose number of trials
    is random with mean ``mean`` and law ``distribution`` (Papernot & Steinke
    2022). A search that drew its number of trials with
    ``${dpfed.random_trials:M,law}`` recorded both (`declared_trials`): they are
    used, and a ``distribution`` or ``mean`` that contradicts them is an error
    (the bound holds for the law the search drew from, not for the number it
    happened to draw). Elsewhere ``mean`` defaults to the number of trials and
    the row's ``covered`` is False: a fixed number of trials or a grid is not
    covered by the theorem. A trial is one run, or the seeds of one trial run
    with ``optimized_seeds`` > 1 (read from each run's recorded config: its
    ``seed_<s>`` folder's parent), whose releases compose: they all touch the same
    data. The per-trial RDP is the worst trial's.

    Returns:
        One dict per account column (``epsilon``, ``epsilon_record``): ``runs``,
        ``trials``, ``declared`` (`declared_trials`), ``covered``, ``neighboring``,
        ``delta``, ``epsilon_one_run_max``, ``epsilon_one_trial_max`` and
        ``epsilon_tuned``, or ``error`` where the runs cannot be combined (other
        accountants, deltas or relations, a multi-seed run outside its trial's
        folder, trials of different searches, or settings that contradict what
        the search declared).
    """
    from dpfed.privacy.accounting import event_from_dict
    from dpfed.privacy.neighboring import RELATIONS_BY_NAME
    from dpfed.privacy.tuning import composed_epsilon, tuning_epsilon

    folders = [Path(d) for d in run_folders]
    loaded = [json.loads((d / "summary.json").read_text()) for d in folders]
    trial_of = [trial_dir(d, s) for d, s in zip(folders, loaded, strict=True)]
    columns = sorted({a["column"] for s in loaded for a in s.get("accounts", [])})
    out = []
    ungrouped = [str(d) for d, t in zip(folders, trial_of, strict=True) if t is None]
    if ungrouped:  # counted as trials of their own, they would understate the cost: refuse
        return [
            {
                "account": column,
                "runs": len(folders),
                "distribution": distribution,
                "error": (
                    "runs recorded with optimized_seeds > 1 outside a seed_<s> folder of "
                    f"their trial, whose seeds cannot be grouped: {ungrouped}"
                ),
            }
            for column in columns
        ]
    declared = [declared_trials(t) for t in trial_of]
    laws = {json.dumps(d, sort_keys=True) for d in declared}
    declared = declared[0] if declared else {"kind": "unknown"}
    sweeps = sorted({str(t.parent) for t in trial_of})  # a search's trials share its folder
    problem = None
    if len(laws) > 1:
        problem = f"the runs come from searches that chose their trials differently: {sorted(laws)}"
    elif declared["kind"] == "random" and len(sweeps) > 1:
        # each search drew its own number of trials: pooled, they are not one draw of the law
        problem = (
            f"the runs come from {len(sweeps)} searches (sweep folders {sweeps}); each drew "
            "its own number of trials: give one search's folder (releasing the best of "
            "several searches composes their costs)"
        )
    elif declared["kind"] == "random":
        if distribution != declared["distribution"]:
            problem = (
                f"the search drew its trials from a {declared['distribution']} law "
                f"(${{dpfed.random_trials:...}}), not {distribution}"
            )
        elif mean is not None and mean != declared["mean"]:
            problem = (
                f"the search drew its trials with mean {declared['mean']:g}, not {mean:g} "
                "(the bound holds for the law drawn from)"
            )
        mean = declared["mean"]
    if problem:
        return [
            {
                "account": column,
                "runs": len(folders),
                "distribution": distribution,
                "declared": declared,
                "error": problem,
            }
            for column in columns
        ]
    for column in columns:
        accounts = [
            (s, t, a)
            for s, t in zip(loaded, trial_of, strict=True)
            for a in s.get("accounts", [])
            if a["column"] == column
        ]
        trials: dict[Path, list] = {}
        for _, trial, account in accounts:
            events = [(event_from_dict(e["event"]), e["count"]) for e in account["dp_events"]]
            trials.setdefault(trial, []).extend(events)  # a trial's seeds compose
        row = {
            "account": column,
            "runs": len(accounts),
            "trials": len(trials),
            "distribution": distribution,
            "mean": float(len(trials) if mean is None else mean),
            "declared": declared,
            "covered": declared["kind"] == "random",
        }
        keys = {
            (s["accountant"], s["delta"], a["accounting_relation"], a["neighboring"])
            for s, _, a in accounts
        }
        if len(keys) != 1 or next(iter(keys))[0] != "rdp":
            row["error"] = (
                "the runs differ in accountant, delta or relation, or do not use "
                f"the rdp accountant: {sorted(map(str, keys))}"
            )
            out.append(row)
            continue
        _, delta, relation, neighboring = next(iter(keys))
        relation = RELATIONS_BY_NAME[relation]
        reported = [s.get(column) for s, _, _ in accounts]
        row.update(
            neighboring=neighboring,
            delta=delta,
            epsilon_one_run_max=max(math.inf if e is None else e for e in reported),
            epsilon_one_trial_max=max(
                composed_epsilon(events, relation, delta) for events in trials.values()
            ),
            epsilon_tuned=tuning_epsilon(
                list(trials.values()), relation, delta, mean=row["mean"], distribution=distribution
            ),
        )
        out.append(row)
    return out
