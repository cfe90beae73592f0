"""Run and sweep jobs: failures recorded in summary.json, sweep folders named by their overrides,
and the value a hyperparameter search optimises.

Hydra 1.3's launchers keep running the other jobs of a sweep when a job raises
an ``Exception`` and re-raise the first failure once the batch is done (exit
code 1), but a ``SystemExit`` ends the whole sweep at once and an exception that
cannot be pickled breaks the joblib and submitit launchers, which send each
job's outcome back to the parent process. `recorded_failure` turns every job
failure into a `JobFailed` (a picklable ``RuntimeError``) in a multirun, after
writing it to the job's ``summary.json`` and stderr; a single run keeps exit
code 2 for an invalid configuration.

Hydra's Optuna sweeper (hydra-optuna-sweeper 1.2, ``hparams_search``) is
stricter: the first job that raises, or returns anything but a float that is
not NaN, ends the whole study. `optimized` therefore gives a failed or
diverged job of a search the worst value instead of raising. With
``optimized_seeds`` n > 1, `over_seeds` makes a trial n runs, one per seed in
``seed_<s>/`` of the trial's folder, scored by their mean.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import re
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dpfed.errors import ConfigError, check

log = logging.getLogger(__name__)

MAX_NAME = 120  # characters of overrides kept in a sweep job's folder name
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")


class JobFailed(RuntimeError):
    """A job of a sweep failed; the reason is in its summary.json and was printed to stderr."""


class RunDiverged(RuntimeError):
    """Training produced a non-finite loss or weights; summary.json says ``diverged``."""


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM ended the run; summary.json says ``interrupted`` and how to resume."""


_deferred_depth = 0
_pending_signal: str | None = None


def interrupt(signum, frame) -> None:
    """run.py's SIGTERM handler (and SIGINT's inside `interrupts_deferred`): raises
    `RunInterrupted` now or, inside `interrupts_deferred`, when that block ends."""
    global _pending_signal
    name = signal.Signals(signum).name
    if _deferred_depth:
        if _pending_signal != "SIGTERM":  # a SIGTERM outranks a Ctrl-C
            _pending_signal = name
        return
    raise RunInterrupted(name)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """A SIGTERM or SIGINT (Ctrl-C) that arrives inside the block interrupts the run when the
    block ends (`RunInterrupted`, or `KeyboardInterrupt` for SIGINT as Python raises it), so
    that a write (a checkpoint's zip) is never cut in the middle, leaving an open file for the
    interpreter to finalize noisily at exit. SIGINT is held only where Python's own handler is
    installed, in the main thread (the only one that receives signals)."""
    global _deferred_depth, _pending_signal
    _deferred_depth += 1
    hold_sigint = (
        _deferred_depth == 1
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if hold_sigint:
        signal.signal(signal.SIGINT, interrupt)
    pending = None
    try:
        yield
    finally:
        if hold_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _deferred_depth -= 1
        if not _deferred_depth:  # taken even when the block raised: it must not fire later
            pending, _pending_signal = _pending_signal, None
    if pending == "SIGINT":
        raise KeyboardInterrupt
    if pending:
        raise RunInterrupted(pending)


def remove_unstarted(output_dir: str | Path) -> bool:
    """Deletes a single run's folder that holds nothing but Hydra's record (the run never began).

    Returns:
        Whether it was deleted.
    """
    import shutil

    root = Path(output_dir)
    if not root.is_dir():
        return False
    leftovers = [p for p in root.iterdir() if p.name not in (".hydra", "run.log")]
    if leftovers:
        return False
    shutil.rmtree(root)
    return True


def overrides_dirname(override_dirname: str, max_len: int = MAX_NAME) -> str:
    """A short, filesystem-safe folder name from Hydra's ``job.override_dirname``.

    Overrides whose value is a path (contains ``/``) are dropped, characters other
    than letters, digits and ``._,=+@-`` become ``_``, and a name longer than
    ``max_len`` is cut and ends in a hash of the full name, so it stays unique.

    Args:
        override_dirname: ``key=value`` items joined by ``,`` (Hydra's format).
        max_len: longest name returned.

    Returns:
        The folder name (``""`` when no override is left).
    """
    items = [item for item in override_dirname.split(",") if item]
    kept = [item for item in items if "/" not in item.partition("=")[2]]
    name = _UNSAFE.sub("_", ",".join(kept))
    if len(name) > max_len:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[: max_len - 9]}-{digest}"
    return name


def job_dirname(num, override_dirname: str, seed) -> str:
    """A sweep job's folder: ``<job number>_<overrides>_seed<seed>`` (e.g. ``1_dp=tree_seed0``)."""
    parts = [str(num), overrides_dirname(str(override_dirname)), f"seed{seed}"]
    return "_".join(p for p in parts if p)


def register_resolvers() -> None:
    """Registers ``${dpfed.job_dirname:num,override_dirname,seed}`` for ``hydra.sweep.subdir``."""
    if not OmegaConf.has_resolver("dpfed.job_dirname"):
        OmegaConf.register_new_resolver("dpfed.job_dirname", job_dirname)


def write_summary_json(path: Path, summary: dict) -> None:
    """Writes ``summary`` to ``path`` atomically (NaN as null; epsilon may be ``Infinity``,
    which Python's json reads; values json cannot hold as their str)."""
    safe = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(safe, indent=2, default=str) + "\n")
    tmp.replace(path)


def write_failure(
    output_dir: str | Path, error: BaseException, extra: Callable[[], dict] | None = None
) -> None:
    """Marks a run as failed in its summary.json, keeping what an interrupted run wrote.

    Args:
        output_dir: the run's directory.
        error: why it failed.
        extra: returns the fields of a summary that does not exist yet (config,
            choices); called only then, and a failure in it is ignored.
    """
    path = Path(output_dir) / "summary.json"
    summary = {}
    if path.exists():
        summary = json.loads(path.read_text())
    elif extra is not None:
        with contextlib.suppress(Exception):  # the failure itself is what must be recorded
            summary = dict(extra())
    summary.update(status="failed", error=f"{type(error).__name__}: {error}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_summary_json(path, summary)


def refuse(err: ConfigError, multirun: bool, output_dir: str | Path | None = None) -> NoReturn:
    """Prints an invalid configuration; fails a sweep's job (`JobFailed`), or exits with code 2."""
    message = f"dpfed: invalid configuration: {err}"
    print(message, file=sys.stderr)
    if multirun:
        where = f" (in {output_dir})" if output_dir is not None else ""
        raise JobFailed(message + where) from None
    sys.exit(2)


@contextlib.contextmanager
def recorded_failure(
    output_dir: str | Path, multirun: bool, extra: Callable[[], dict] | None = None
) -> Iterator[None]:
    """Records a failing run in its summary.json and stderr; isolates it from the rest of a sweep.

    An invalid configuration (`ConfigError`) prints one line and, in a single run,
    exits with code 2 and leaves no run folder behind (nothing ran). A diverged
    run (`RunDiverged`, its summary already written) prints one line and exits
    with code 3. Any other error keeps its traceback (stderr and the log). In a
    multirun each is re-raised as `JobFailed` with summary.json recording it,
    which Hydra's launchers collect while the other jobs run on; the sweep then
    exits with code 1.

    Args:
        output_dir: the job's directory (``HydraConfig.get().runtime.output_dir``).
        multirun: the job is part of a sweep (``-m``).
        extra: returns summary fields for a job that fails before writing one.
    """
    try:
        yield
    except ConfigError as err:
        if multirun:
            write_failure(output_dir, err, extra)
        else:
            remove_unstarted(output_dir)
        refuse(err, multirun, output_dir)
    except RunDiverged as err:
        message = f"dpfed: training diverged: {err} (in {output_dir})"
        print(message, file=sys.stderr)
        if multirun:
            raise JobFailed(message) from None
        sys.exit(3)
    except Exception as err:
        write_failure(output_dir, err, extra)
        if not multirun:
            raise
        traceback.print_exception(err, file=sys.stderr)
        message = f"dpfed: job failed: {type(err).__name__}: {err} (in {output_dir})"
        log.error(message)
        raise JobFailed(message) from None


def metric_value(summary: dict, metric: str) -> float:
    """The value of ``metric`` (``optimized_metric``) in a finished run's summary.

    Raises:
        ConfigError: naming ``optimized_metric`` and the summary's numeric keys,
            when ``metric`` is not one of them (absent, null or not a number).
    """

    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and value == value

    if number(summary.get(metric)):
        return float(summary[metric])
    numeric = [key for key, value in summary.items() if number(value)]
    found = "absent" if metric not in summary else f"{summary[metric]!r}, not a number"
    raise ConfigError(
        "optimized_metric",
        metric,
        f"a numeric key of the run's summary.json ({metric} is {found}); "
        f"this run's are: {', '.join(numeric)}",
        absolute=True,
    )


SEED_FOLDER = re.compile(r"seed_(\d+)")  # one seed of a search's trial (optimized_seeds)


def resume_command(task: list[str], output_dir: str | Path) -> str:
    """The shell command that resumes the run in ``output_dir``: its command-line overrides,
    ``resume=true`` and the folder, quoted for the shell and for Hydra's override grammar (a
    sweep job's folder name holds ``=`` and ``,``)."""
    folder = str(output_dir).replace("\\", "\\\\").replace("'", "\\'")
    override = f"hydra.run.dir='{folder}'"  # Hydra reads the quoted folder verbatim
    plain = not set(override) & set('"$`\\!')  # then double quotes keep it as it is
    return " ".join(
        [
            "python run.py",
            *map(shlex.quote, task),
            "resume=true",
            f'"{override}"' if plain else shlex.quote(override),
        ]
    )


def seed_overrides(task: list[str], seed: int) -> list[str]:
    """The command-line overrides that rerun one seed of a trial on its own (its resume
    command): the trial's, with ``seed=<s>``, one seed, and a single run, not the search its
    ``hparams_search`` config would start."""
    own = ("seed", "optimized_seeds", "hydra.mode")
    return [o for o in task if o.split("=", 1)[0].lstrip("+~") not in own] + [
        f"seed={seed}",
        "optimized_seeds=1",
        "hydra.mode=RUN",
    ]


def over_seeds(run: Callable[[DictConfig, str], dict], cfg: DictConfig, output_dir: str) -> dict:
    """``run(cfg, output_dir)``, or with ``optimized_seeds`` n > 1 one run per seed.

    The seeds are ``seed`` to ``seed + n - 1`` (the data, the model's initial
    weights, the cohorts and the DP noise all follow the seed), each run in
    ``<output_dir>/seed_<s>`` with its own summary.json; the trial's folder gets
    none, so that tables and the tuning cost (`dpfed.report.collect`) read each
    seed as a run and the n of them as one trial.

    Returns:
        The run's summary, or with n > 1 one for the trial: ``optimized_metric``
        the runs' mean, ``<metric>/per_seed`` their values and ``seeds``.

    Raises:
        ConfigError: ``optimized_seeds`` < 1, or > 1 without ``optimized_metric``.
        JobFailed: a seed's run failed (in a multirun), as `recorded_failure` says.
    """
    seeds, metric = cfg.get("optimized_seeds", 1), cfg.get("optimized_metric")
    check(isinstance(seeds, int) and seeds >= 1, "optimized_seeds", seeds, ">= 1")
    check(
        seeds == 1 or metric is not None,
        "optimized_seeds",
        seeds,
        "1 unless optimized_metric is set (the seeds' mean is what a search optimises)",
    )
    if seeds == 1:
        return run(cfg, output_dir)
    values = []
    for seed in range(cfg.seed, cfg.seed + seeds):
        seeded = copy.deepcopy(cfg)
        seeded.seed = seed  # ${seed} interpolations (dataset, dp.seed) follow
        summary = run(seeded, str(Path(output_dir) / f"seed_{seed}"))
        values.append(metric_value(summary, metric))
    mean = sum(values) / len(values)
    print(
        f"dpfed: {metric} {mean:.4g}, the mean over seeds {cfg.seed} to {cfg.seed + seeds - 1} "
        f"({', '.join(f'{v:.4g}' for v in values)}), in {output_dir}"
    )
    return {
        "status": "completed",
        metric: mean,
        f"{metric}/per_seed": values,
        "seeds": list(range(cfg.seed, cfg.seed + seeds)),
    }


def optimized(run: Callable[[], dict], metric: str | None, hydra_cfg: DictConfig) -> dict | float:
    """Runs a job; returns its summary or, with ``optimized_metric`` set, that metric's value.

    In a search (a sweeper with a ``direction``, Hydra's Optuna sweeper), a job
    that failed or diverged, already recorded in its summary.json and on stderr,
    scores the worst value, ``-inf`` when maximizing and ``inf`` when
    minimizing, so that the study goes on without it. A ``metric`` the summary
    lacks, or a `ConfigError` from ``run`` (`over_seeds`: ``optimized_seeds``), is
    a mistake every job would repeat: it fails the job (`JobFailed`), which ends
    an Optuna study at once, or a single run with exit code 2.

    Args:
        run: runs the job and returns its summary.
        metric: ``optimized_metric``, a summary.json key, or None.
        hydra_cfg: the job's Hydra config (``HydraConfig.get()``): its mode and sweeper.

    Returns:
        The summary (``metric`` None), else the metric's value.
    """
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if metric is None:
        try:
            return run()
        except ConfigError as err:  # optimized_seeds: every job would repeat it
            refuse(err, multirun)
    direction = OmegaConf.select(hydra_cfg, "sweeper.direction", default=None) if multirun else None
    direction = getattr(direction, "name", direction)  # the sweeper schema's default is an enum
    try:
        summary = run()
    except JobFailed as err:
        if direction not in ("maximize", "minimize"):
            raise
        worst = -math.inf if direction == "maximize" else math.inf
        print(f"dpfed: this trial of the search scores {metric} = {worst}: {err}", file=sys.stderr)
        return worst
    except ConfigError as err:  # optimized_seeds or a seed's missing metric: every trial would
        refuse(err, multirun)  # repeat it, so it ends the study (JobFailed) or the run (code 2)
    try:
        return metric_value(summary, metric)
    except ConfigError as err:
        refuse(err, multirun)
