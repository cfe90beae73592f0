"""Run and sweep jobs: failures recorded in summary.json, sweep folders named by their overrides.

Hydra 1.3's launchers keep running the other jobs of a sweep when a job raises
an ``Exception`` and re-raise the first failure once the batch is done (exit
code 1), but a ``SystemExit`` ends the whole sweep at once and an exception that
cannot be pickled breaks the joblib and submitit launchers, which send each
job's outcome back to the parent process. `recorded_failure` turns every job
failure into a `JobFailed` (a picklable ``RuntimeError``) in a multirun, after
writing it to the job's ``summary.json`` and stderr; a single run keeps exit
code 2 for an invalid configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import OmegaConf

from dpfed.errors import ConfigError

log = logging.getLogger(__name__)

MAX_NAME = 120  # characters of overrides kept in a sweep job's folder name
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")


class JobFailed(RuntimeError):
    """A job of a sweep failed; the reason is in its summary.json and was printed to stderr."""


class RunDiverged(RuntimeError):
    """Training produced a non-finite loss or weights; summary.json says ``diverged``."""


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM ended the run; summary.json says ``interrupted`` and how to resume."""


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


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: _json_safe(v) for k, v in summary.items()}, indent=2,
                              default=str) + "\n")  # fmt: skip
    tmp.replace(path)


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
        message = f"dpfed: invalid configuration: {err}"
        print(message, file=sys.stderr)
        if multirun:
            write_failure(output_dir, err, extra)
            raise JobFailed(f"{message} (in {output_dir})") from None
        remove_unstarted(output_dir)
        sys.exit(2)
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
