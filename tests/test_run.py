"""End to end through ``python run.py``, as a user runs it: outputs, sweeps, bad input, hygiene."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import dp_accounting
import numpy as np
import pandas as pd
import psutil
import pytest
from dp_accounting.rdp import RdpAccountant

from tests.conftest import ROOT, compose_config, worker_pids

SMOKE = "debug=smoke"


def independent_epsilon(summary: dict) -> float:
    """Recomputes epsilon from summary.json's settings alone with dp-accounting.

    The default run: Poisson cohorts (q = clients per round / clients), add/remove
    adjacency (one user moves the clipped sum by one clip).
    """
    assert summary["sampling"] == "poisson" and summary["neighboring"] == "add_remove"
    assert summary["accountant"] == "rdp" and summary["orders"] is None
    assert summary["sensitivity"] == 1 and summary["clip"] == 1
    q = summary["clients_per_round"] / summary["num_clients"]
    event = dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.GaussianDpEvent(summary["noise_multiplier"])
    )
    accountant = RdpAccountant()
    accountant.compose(event, summary["rounds"])
    return accountant.get_epsilon(summary["delta"])


def check_dp_run(result, job=None, rounds=2):
    summary, metrics = result.summary(job), result.metrics(job)
    assert summary["status"] == "completed" and summary["rounds"] == rounds
    assert list(metrics["round"]) == list(range(1, rounds + 1))
    eps = metrics["epsilon"].to_numpy()
    assert np.all(np.isfinite(eps)) and np.all(np.diff(eps) > 0)
    assert summary["epsilon"] == pytest.approx(eps[-1], rel=1e-12)
    assert summary["epsilon"] == pytest.approx(independent_epsilon(summary), rel=1e-6)
    assert summary["epsilon_planned"] == pytest.approx(summary["epsilon"], rel=1e-9)
    for column in ("delta", "clients", "train/loss", "round_seconds", "bytes_down", "bytes_up"):
        assert metrics[column].notna().all(), column
    assert (metrics["bytes_down"] >= metrics["bytes_up"]).all()
    per_client = metrics["bytes_up"] / metrics["clients"].where(metrics["clients"] > 0)
    assert per_client.dropna().nunique() <= 1  # bytes scale with the (Poisson) cohort
    assert metrics["eval/loss"].notna().any()
    run_dir = result.dir / job if job else result.dir
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    return summary, metrics


def sweep_jobs(result) -> list[str]:
    """A sweep's job folders (``<job number>_<overrides>_seed<seed>``), in job order."""
    names = [p.name for p in result.dir.iterdir() if p.is_dir() and p.name[:1].isdigit()]
    return sorted(names, key=lambda name: int(name.split("_")[0]))


def tensorboard_scalars(run_dir) -> dict[str, dict[int, float]]:
    """Every scalar of a run's TensorBoard events, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return {
        tag: {e.step: float(make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
        for tag in acc.Tags()["tensors"]
    }


def check_tensorboard_matches_metrics(run_dir, metrics) -> None:
    scalars = tensorboard_scalars(run_dir)
    numeric = [c for c in metrics.columns if c != "round" and metrics[c].notna().any()]
    assert set(numeric) <= set(scalars), set(numeric) - set(scalars)
    for column in numeric:
        expected = {
            int(r): v for r, v in zip(metrics["round"], metrics[column], strict=True) if pd.notna(v)
        }
        assert scalars[column].keys() == expected.keys(), column
        for step, value in expected.items():  # TensorBoard stores float32
            assert scalars[column][step] == pytest.approx(value, rel=1e-6, abs=1e-6), column


@pytest.mark.slow
def test_each_dataset_end_to_end_with_gaussian_dp_in_one_sweep(run_cli):
    result = run_cli(SMOKE, "dataset=smart_home,health,finance", multirun=True)
    assert result.returncode == 0, result.output[-3000:]
    jobs = sweep_jobs(result)
    assert jobs == [
        f"{i}_dataset={name},debug=smoke_seed0"
        for i, name in enumerate(("smart_home", "health", "finance"))
    ]
    seen = set()
    for job in jobs:
        summary, metrics = check_dp_run(result, job)
        assert summary["mechanism"] == "gaussian"
        assert {"train/accuracy", "eval/accuracy"} <= set(metrics.columns)
        seen.add(summary["choices"]["dataset"])
        assert (result.dir / job / ".hydra" / "config.yaml").exists()
    assert seen == {"smart_home", "health", "finance"}


@pytest.mark.slow
def test_failing_job_is_recorded_and_the_rest_of_the_sweep_runs(run_cli):
    """The middle job's ConfigError neither stops the sweep nor hides: failed summary, exit 1."""
    result = run_cli(SMOKE, "dp.noise_multiplier=0.8,-1,1.6", multirun=True)
    assert result.returncode == 1, result.output[-3000:]
    message = (
        "dp.noise_multiplier=-1.0 is not allowed: dp.noise_multiplier must be a finite number >= 0"
    )
    assert f"dpfed: invalid configuration: {message}" in result.stderr
    jobs = sweep_jobs(result)
    assert jobs == [
        f"{i}_debug=smoke,dp.noise_multiplier={z}_seed0" for i, z in enumerate(("0.8", "-1", "1.6"))
    ]
    failed = result.summary(jobs[1])
    assert failed["status"] == "failed" and failed["error"] == f"ConfigError: {message}"
    assert (
        failed["choices"]["dp"] == "gaussian" and failed["config"]["dp"]["noise_multiplier"] == -1
    )
    assert not (result.dir / jobs[1] / "metrics.csv").exists()
    low, high = (check_dp_run(result, job)[0] for job in (jobs[0], jobs[2]))
    assert (low["noise_multiplier"], high["noise_multiplier"]) == (0.8, 1.6)
    assert high["epsilon"] < low["epsilon"]
    for job in (jobs[0], jobs[2]):  # TensorBoard's reader sees what metrics.csv holds
        check_tensorboard_matches_metrics(result.dir / job, result.metrics(job))
    recompute = [sys.executable, str(ROOT / "scripts" / "recompute_epsilon.py")]
    script = subprocess.run(
        [*recompute, str(result.dir / jobs[0]), str(result.dir / jobs[2])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert script.returncode == 0, script.stdout + script.stderr
    assert script.stdout.count('"match": true') == 2


def test_dp_none_reports_infinite_epsilon_and_weighted_fedavg_runs(runtime, tmp_path):
    import json

    from tests.helpers import run_in_process

    _, _, metrics = run_in_process(tmp_path, "dp=none", "strategy.weighted=true", "dataset=finance")
    summary = json.loads((tmp_path / "summary.json").read_text())  # as written: Infinity
    assert math.isinf(summary["epsilon"]) and summary["epsilon"] > 0
    assert math.isinf(summary["epsilon_planned"])
    assert np.isinf(metrics["epsilon"]).all()


@pytest.mark.parametrize(
    "override,message",
    [
        (
            "dp.noise_multiplier=-1",
            "dp.noise_multiplier=-1.0 is not allowed: dp.noise_multiplier "
            "must be a finite number >= 0",
        ),
        ("dp.clip=0", "dp.clip=0.0 is not allowed: dp.clip must be a finite number > 0"),
        ("dp.delta=1.5", "dp.delta=1.5 is not allowed: dp.delta must be in (0, 1)"),
        (
            "strategy.clients_per_round=41",
            "strategy.clients_per_round=41 is not allowed: "
            "strategy.clients_per_round must be in [1, 40] (the dataset has 40 clients)",
        ),
        ("rounds=0", "rounds=0 is not allowed: rounds must be >= 1"),
    ],
)
def test_bad_input_fails_cleanly_before_training(run_cli, override, message):
    result = run_cli(SMOKE, override)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not result.dir.exists()  # a run that never started leaves no folder


@pytest.mark.parametrize(
    "override,hint",
    [
        (
            "dp.noise_multiplir=1",
            "dp=gaussian has no setting noise_multiplir (did you mean dp.noise_multiplier?)",
        ),
        ("strategy.clients_per_rnd=5", "did you mean strategy.clients_per_round?"),
        ("+dp.clip=2", "+dp.clip adds a key, but dp.clip exists: set it with dp.clip=..."),
        ("dp.initial_clip=0.5", "dp=gaussian has no setting initial_clip"),
    ],
)
def test_an_unknown_key_is_named_with_the_closest_known_ones(override, hint):
    from dpfed.cli import unknown_keys

    (message,) = unknown_keys([override, "rounds=3"])
    assert hint in message
    assert unknown_keys(["dp=adaptive", "dp.initial_clip=0.5", "-m", "seed=0,1"]) == []
    # a sweep over a global patch group (no key of that name in the config) is a choice too
    assert unknown_keys(["-m", "experiment=baselines", "baseline=vowels,markets"]) == []


def test_a_typo_stops_the_run_at_once_with_a_suggestion(run_cli):
    result = run_cli(SMOKE, "dp.noise_multiplir=1")
    assert result.returncode == 1 and "did you mean dp.noise_multiplier?" in result.stderr
    assert "Traceback" not in result.output and not result.dir.exists()


@pytest.mark.slow
def test_a_diverged_run_stops_says_so_and_exits_non_zero(runtime, tmp_path):
    import json

    from dpfed.jobs import JobFailed, RunDiverged, recorded_failure
    from tests.helpers import run_in_process

    # on the one-step task a learning rate of 1e30 overflows the first round; two hours ahead the
    # smoke-size run stayed finite for its 4 rounds (observed, not traced)
    with pytest.raises(RunDiverged, match="after round 1"):
        run_in_process(
            tmp_path,
            "dp=none",
            "strategy.client_optimizer.learning_rate=1e30",
            "rounds=4",
            "dataset.horizon=1",
        )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_round"] == 1
    assert summary["rounds"] == 1 and "after round 1" in summary["error"]
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 1  # no rounds after the divergence
    with pytest.raises(SystemExit) as exited:  # a single run exits 3 ...
        with recorded_failure(tmp_path, False, dict):
            raise RunDiverged("train/loss is nan after round 1")
    assert exited.value.code == 3
    with pytest.raises(JobFailed, match="diverged"):  # ... a sweep's job is a failed job
        with recorded_failure(tmp_path, True, dict):
            raise RunDiverged("train/loss is nan after round 1")


def test_unknown_dataset_fails_at_compose_time_listing_the_options(run_cli):
    result = run_cli(SMOKE, "dataset=imaginary")
    assert result.returncode != 0
    assert "dataset/imaginary" in result.stderr and "smart_home" in result.stderr
    assert not result.dir.exists() or not list(result.dir.glob("**/metrics.csv"))


def test_dp_aggregator_with_weighted_fedavg_is_rejected(runtime):
    from dpfed.errors import ConfigError
    from tests.helpers import build

    with pytest.raises(ConfigError, match="strategy.weighted"):
        build("strategy.weighted=true")


def test_help_and_cfg_job_work():
    out = subprocess.run(
        [sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0
    listed = next(line for line in out.stdout.splitlines() if line.startswith("dataset: "))
    options = sorted(p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml"))
    assert listed == "dataset: " + ", ".join(options)
    out = subprocess.run(
        [sys.executable, "run.py", "--cfg", "job", "dp.clip=0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "clip: 0.5" in out.stdout


def test_a_worker_that_ignores_tffs_sigint_is_killed_not_waited_for(monkeypatch):
    """TFF stops its worker with SIGINT and an unbounded wait(); ours gives up and kills it."""
    from dpfed import runtime

    monkeypatch.setattr(runtime, "WORKER_STOP_SECONDS", 0.5)
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"
    proc = runtime._DetachedPopen([sys.executable, "-c", stubborn])
    time.sleep(1.0)  # let it install its handler
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait() == -signal.SIGKILL  # as TFF's ServiceManager.__del__ calls it


@pytest.mark.slow
def test_worker_dies_with_a_killed_run(tmp_path):
    """Even a SIGKILLed run leaves no worker_binary (the kernel kills it with its parent)."""
    before = worker_pids()
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), SMOKE, "rounds=200", f"hydra.run.dir={out}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 300
        metrics = out / "metrics.csv"  # written with its header before round 1: wait for a row
        while time.time() < deadline and not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 2
        ):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.1)
        started = worker_pids() - before
        assert started, "the run should have started a worker"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(
        [psutil.Process(p) for p in started if psutil.pid_exists(p)], timeout=15
    )
    assert not alive, f"worker outlived its killed parent: {alive}"
    proc.stdout.read()  # returns (EOF) only because no worker still holds the pipe


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_terminated_run_says_interrupted_and_how_to_resume(run_cli, tmp_path, signum):
    """SIGTERM (a cluster's time limit, `kill`) or SIGINT (Ctrl-C) ends the run with a summary
    that says so."""
    import json

    before = worker_pids()
    out = tmp_path / "run"
    # Ctrl-C reaches a run in a terminal, but a background CI job may have SIGINT ignored, which
    # the child would inherit; a handled SIGINT is reset to the default in the child instead
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), SMOKE, "rounds=200", f"hydra.run.dir={out}"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    try:
        deadline = time.time() + 300
        metrics = out / "metrics.csv"  # written with its header before round 1: wait for a row
        while time.time() < deadline and not (
            metrics.exists() and len(metrics.read_text().splitlines()) >= 2
        ):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.1)
    finally:
        proc.send_signal(signum)
        output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    said = f"{summary}\n{output[-3000:]}"  # what the run said, for any failure below
    assert summary["status"] == "interrupted" and 1 <= summary["rounds"] < 200, said
    assert summary["resume_command"].startswith("python run.py debug=smoke rounds=200"), said
    assert f"resume=true \"hydra.run.dir='{out}'\"" in summary["resume_command"], said
    assert f"interrupted ({signum.name})" in output and "Traceback" not in output, said
    gone = time.time() + 15
    while worker_pids() - before and time.time() < gone:
        time.sleep(0.2)
    assert not worker_pids() - before, said


@pytest.mark.slow
def test_default_experiment_learns_under_dp(run_cli):
    """The default run: a meaningful budget (epsilon <= 4), above the majority class and the
    light's current state, below the oracle, one line."""
    from dpfed.build import build_dataset
    from tests.conftest import compose_config

    result = run_cli()
    assert result.returncode == 0, result.output[-3000:]
    summary, metrics = check_dp_run(result, rounds=summary_rounds())
    assert summary["epsilon"] <= 4 and summary["delta"] == 1e-5
    assert summary["backend"] == "vectorized"  # backend=auto
    cfg = compose_config()
    data = build_dataset(cfg)
    rng = np.random.default_rng([cfg.dataset.seed, 2])  # the evaluation cohort Simulation draws
    ids = rng.choice(data.num_clients, size=cfg.strategy.eval_clients, replace=False)
    labels = np.concatenate([data.eval.arrays(i)[1] for i in ids])
    majority = max(labels.mean(), 1 - labels.mean())
    assert summary["eval/trivial_accuracy"] == pytest.approx(majority)
    forecast = np.concatenate([data.last_value(data.eval.arrays(i)[0]) for i in ids])
    last_value = np.mean(forecast == labels)  # the light's current state
    assert summary["eval/last_value_accuracy"] == pytest.approx(last_value)
    oracle = np.concatenate([data.oracle_forecast(i, data.eval.arrays(i)[0]) for i in ids])
    oracle = np.mean(oracle == labels)  # knows each household's parameters
    assert summary["eval/oracle_accuracy"] == pytest.approx(oracle)
    accuracy = metrics["eval/accuracy"].iloc[-1]
    assert max(majority + 0.05, last_value + 0.01) < accuracy < oracle, (accuracy, last_value)
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("dpfed: eval/accuracy ") and f"majority class: {majority:.3f}" in last
    assert f"last value: {last_value:.3f}; oracle: {oracle:.3f})" in last
    assert "at delta 1e-05 (user-level, add_remove" in last and str(result.dir) in last


def summary_rounds() -> int:
    from tests.conftest import compose_config

    return compose_config().rounds


def test_the_finalizer_error_of_a_reaped_worker_is_dropped_and_others_are_not(monkeypatch):
    """After an interruption TFF's executor finalizer may signal the worker dpfed reaped."""
    import types

    from dpfed import runtime

    def finalizer():
        pass

    finalizer.__module__ = runtime.executor_factory.__name__
    passed_on = []
    monkeypatch.setattr(runtime, "_default_unraisablehook", passed_on.append)
    reaped = types.SimpleNamespace(
        exc_type=ProcessLookupError,
        exc_value=ProcessLookupError(3),
        exc_traceback=None,
        err_msg=None,
        object=finalizer,
    )
    runtime._ignore_reaped_worker(reaped)
    assert passed_on == []
    other = types.SimpleNamespace(
        exc_type=ValueError,
        exc_value=ValueError("kept"),
        exc_traceback=None,
        err_msg=None,
        object=finalizer,
    )
    runtime._ignore_reaped_worker(other)
    assert passed_on == [other]


@pytest.mark.parametrize(
    "dataset", ["smart_home", "health", "finance", "shakespeare", "watch", "vowels", "markets"]
)
def test_every_packaged_dataset_runs_with_no_other_override(dataset):
    """Each dataset brings the cohort its population allows (``dataset.default_cohort``)."""
    from dpfed.build import prepare

    cfg = compose_config(f"dataset={dataset}")
    prepared = prepare(cfg)
    assert cfg.strategy.clients_per_round == cfg.dataset.default_cohort
    assert 1 <= prepared.plan.sampler.clients_per_round <= prepared.dataset.num_clients
    # an explicit cohort still wins
    assert (
        compose_config(
            f"dataset={dataset}", "strategy.clients_per_round=3"
        ).strategy.clients_per_round
        == 3
    )
