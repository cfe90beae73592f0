"""Shared fixtures: composing configs in-process, a TFF runtime, and running ``run.py`` as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from dpfed.config import CONF, compose, register_configs  # noqa: F401 (CONF for the tests)

ROOT = Path(__file__).resolve().parent.parent
register_configs()
compose_config = compose  # the project's one compose helper (`dpfed.config.compose`)


# Every process this test session starts inherits this mark, TFF's workers included, so the
# leftover-worker check counts this session's workers and not those of other sessions.
# Each pytest-xdist worker is its own session (its own mark): another worker's running runs
# are not left over.
SESSION_MARK = "DPFED_TEST_SESSION"
os.environ[SESSION_MARK] = str(os.getpid())


def worker_pids() -> set[int]:
    """PIDs of the TFF worker_binary processes this test session (or its subprocesses) started."""
    pids = set()
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if proc.info.get("name") == "worker_binary" or "worker_binary" in cmd.split(" ")[0]:
            try:
                mark = proc.environ().get(SESSION_MARK)
            except psutil.Error:  # gone, or another user's
                continue
            if mark == os.environ[SESSION_MARK]:
                pids.add(proc.pid)
    return pids


class RunResult:
    """Outcome of one ``python run.py`` call."""

    def __init__(self, proc: subprocess.CompletedProcess, out_dir: Path):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.dir = out_dir

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def summary(self, job: str | None = None) -> dict:
        base = self.dir / job if job else self.dir
        return json.loads((base / "summary.json").read_text())

    def metrics(self, job: str | None = None):
        import pandas as pd

        base = self.dir / job if job else self.dir
        return pd.read_csv(base / "metrics.csv")


@pytest.fixture
def run_cli(tmp_path):
    """Runs ``python run.py`` with pipes on stdout/stderr (a leftover worker would hang it)."""

    def _run(*overrides: str, multirun: bool = False, timeout: float = 600) -> RunResult:
        out = tmp_path / "out"
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        cmd = [
            sys.executable,
            str(ROOT / "run.py"),
            *(["-m"] if multirun else []),
            *overrides,
            f"{key}={out}",
            "logger.progress=false",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(
            cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=env
        )
        return RunResult(proc, out)

    return _run


@pytest.fixture(scope="module")
def runtime():
    """A TFF execution context shared by a test module's in-process runs (its worker reaped after)."""
    from dpfed.runtime import tff_runtime  # TFF's import is slow: only where needed

    with tff_runtime():
        yield


@pytest.fixture(autouse=True, scope="session")
def no_leftover_workers():
    """Fails the session if any test leaves a worker_binary running."""
    before = worker_pids()
    yield
    import time

    deadline = time.time() + 10
    while (left := worker_pids() - before) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"worker_binary processes left running: {sorted(left)}"


# Where the slow suite's time goes (pytest -m slow --durations): each of these modules' slow
# tests runs run.py or reproduce.py in a subprocess, 20 to 120 s (the default experiment's).
STARTED_FIRST = (
    "tests/test_run.py",
    "tests/test_experiments.py",
    "tests/test_hparams_search.py",
    "tests/io/test_resume.py",
)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks set here
def pytest_collection_modifyitems(config, items):
    """Marks `slow` the cases a module lists in ``SLOW_CASES`` (test name with its case id).

    The default run keeps one case of each property; the others run with ``pytest -m slow``,
    which CI runs after the default suite. A listed name that matches no test is an error, so
    a renamed test or case cannot drop out of the slow run unnoticed.

    The modules in ``STARTED_FIRST`` are moved to the front (in their order, each keeping its
    own): their tests run ``run.py`` or ``reproduce.py`` in subprocesses for tens of seconds,
    and started last they leave one xdist worker idle while the other finishes them.
    """
    rank = {name: i for i, name in enumerate(STARTED_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
    listed: dict[str, set[str]] = {}
    collected: dict[str, set[str]] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module.__name__ not in listed:  # read once per module, not once per test
            listed[module.__name__] = set(getattr(module, "SLOW_CASES", ()))
            collected[module.__name__] = set()
        collected[module.__name__].add(item.name)
        if item.name in listed[module.__name__]:
            item.add_marker(pytest.mark.slow)
    if any("::" in arg for arg in config.args):
        return  # node ids collect part of a module
    stale = sorted(f"{m}: {n}" for m, names in listed.items() for n in names - collected[m])
    if stale:
        raise pytest.UsageError(f"SLOW_CASES names tests that do not exist: {stale}")
