"""Checkpoints and ``resume=true``: an interrupted-then-resumed run ends as an uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import dp_accounting
import numpy as np
import pandas as pd
import psutil
import pytest
from omegaconf import OmegaConf

from dpfed.errors import ConfigError
from dpfed.io.checkpoint import Checkpoints
from dpfed.io.run_writer import RunWriter
from dpfed.privacy.accounting import Accountant
from dpfed.privacy.noise import stream_key
from tests.conftest import ROOT, compose_config, worker_pids

# Run by `pytest -m slow` (and CI), not by default: the resumed-run cases beyond local DP with a
# secret seed (its noise and cohorts continued).
SLOW_CASES = {
    "test_interrupted_and_resumed_run_ends_as_an_uninterrupted_one[adaptive]",
    "test_interrupted_and_resumed_run_ends_as_an_uninterrupted_one[audit-vectorized]",
    "test_interrupted_and_resumed_run_ends_as_an_uninterrupted_one[bandmf-vectorized]",
    "test_interrupted_and_resumed_run_ends_as_an_uninterrupted_one[dpsgd-poisson-records-vectorized]",
    "test_interrupted_and_resumed_run_ends_as_an_uninterrupted_one[dpsgd-vectorized]",
}

SMOKE = "debug=smoke"


class Crash(Exception):
    """Stands in for a kill between writing a round's row and checkpointing it."""


class CrashingWriter(RunWriter):
    """A RunWriter that raises once the summary of round ``crash_after`` is written."""

    def __init__(self, *args, crash_after: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_after = crash_after

    def write_summary(self, summary: dict) -> None:
        super().write_summary(summary)
        if summary["rounds"] == self.crash_after and summary["status"] == "running":
            self.crash_after = None
            raise Crash


def in_process(run_dir, *overrides, resume=False, crash_after=None):
    """Runs (or resumes) a smoke run in ``run_dir`` as run.py would, without a subprocess."""
    from dpfed.build import build_checkpoints, build_simulation

    cfg = compose_config(SMOKE, "logger.tensorboard=false", f"resume={resume}", *overrides)
    checkpoints = build_checkpoints(cfg, str(run_dir))
    sim = build_simulation(cfg, checkpoints)
    if crash_after is None:
        summary = sim.run(RunWriter(run_dir, sim.columns))
    else:
        with pytest.raises(Crash):
            sim.run(CrashingWriter(run_dir, sim.columns, crash_after=crash_after))
        summary = json.loads((run_dir / "summary.json").read_text())
    return summary, pd.read_csv(run_dir / "metrics.csv")


def assert_same_run(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert list(got["round"]) == list(want["round"])
    np.testing.assert_array_equal(got["epsilon"], want["epsilon"])  # exact
    columns = [c for c in want.columns if c not in ("round_seconds",)]
    pd.testing.assert_frame_equal(got[columns], want[columns], rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------- in process, with TFF
# adaptive (TFF's server and aggregator state restored) and local DP with a secret seed (its
# noise continued) on the reference backend (TFF's client work); the others on the vectorized backend (its
# own state: the seeded noise streams, bandmf's noise history, the canaries), which the
# experiments run
@pytest.mark.parametrize(
    "overrides",
    [
        ("dp=adaptive", "dp.clipped_count_stddev=2.0", "dp.initial_clip=0.05", "backend=reference"),
        (
            "dp=dpsgd",
            "strategy.sampling=fixed",
            "dp.user_noise_multiplier=0.5",
            "backend=vectorized",
        ),
        ("dp=laplace_local", "dp.seed=null", "backend=reference"),
        (
            "dp=bandmf",
            "dp.noise_multiplier=0.5",
            "strategy.clients_per_round=20",
            "backend=vectorized",
        ),
        ("audit=canaries", "audit.inserted=10", "audit.held_out=10", "backend=vectorized"),
        (
            "dp=dpsgd",
            "dp.record_sampling=poisson",
            "dp.neighboring=zero_out",
            "strategy.batch_size=4",
            "backend=vectorized",
        ),
    ],
    ids=[
        "adaptive",
        "dpsgd-vectorized",
        "local_secret_seed",
        "bandmf-vectorized",
        "audit-vectorized",
        "dpsgd-poisson-records-vectorized",
    ],
)
def test_interrupted_and_resumed_run_ends_as_an_uninterrupted_one(runtime, tmp_path, overrides):
    from dpfed.build import build_checkpoints

    overrides = ("rounds=4", "strategy.eval_every=2", *overrides)
    if "dp.seed=null" in overrides:  # a secret seed: the resumed run must continue its noise
        crashed, rows = in_process(tmp_path / "resumed", *overrides, crash_after=3)
        got_summary, got = in_process(tmp_path / "resumed", *overrides, resume=True)
        assert got_summary["status"] == "completed" and "secret" in got_summary["dp_seed"]
        # round 3 ran twice, before the crash and after the resumption: the same noise
        assert_same_run(got.iloc[:3], rows.iloc[:3])
        return
    want_summary, want = in_process(tmp_path / "whole", *overrides)

    run_dir = tmp_path / "resumed"
    crashed, rows = in_process(run_dir, *overrides, crash_after=3)
    assert crashed["status"] == "failed" and len(rows) == 3  # row 3 written, not checkpointed
    got_summary, got = in_process(run_dir, *overrides, resume=True)

    assert_same_run(got, want)
    assert got_summary["status"] == "completed" and got_summary["resumed_from_round"] == [2]
    assert got_summary["epsilon"] == want_summary["epsilon"]
    assert got_summary["accounts"] == want_summary["accounts"]
    assert got_summary["max_participations"] == want_summary["max_participations"]
    assert got_summary["total_bytes_up"] == want_summary["total_bytes_up"]
    if "dp/clip" in want:  # the clip moved: the clipped-count noise was reproduced too
        assert want["dp/clip"].nunique() > 1

    # resuming again finds a finished run; another config is refused, naming its first key
    same = compose_config(SMOKE, "logger.tensorboard=false", "resume=true", *overrides)
    done = build_checkpoints(same, str(run_dir))
    assert done.finished and done.round == 4 and done.summary == got_summary
    other = compose_config(
        SMOKE, "logger.tensorboard=false", "resume=true", *overrides, "dp.noise_multiplier=2"
    )
    was = f"{float(same.dp.noise_multiplier)}".replace(".", r"\.")
    with pytest.raises(ConfigError, match=rf"^dp\.noise_multiplier=2\.0 .* must be {was} "):
        build_checkpoints(other, str(run_dir))


@pytest.mark.parametrize("dp", ["dpsgd"])
@pytest.mark.slow
def test_interrupted_and_resumed_centralized_run_ends_as_an_uninterrupted_one(
    runtime, tmp_path, dp
):
    """DP-SGD on pooled records: weights, optimizer slots, epoch counter and seeded noise."""
    overrides = (
        "strategy=centralized",
        f"dp={dp}",
        "rounds=3",
        "strategy.momentum=0.5",
        "strategy.batch_size=8",
    )
    want_summary, want = in_process(tmp_path / "whole", *overrides)
    run_dir = tmp_path / "resumed"
    crashed, rows = in_process(run_dir, *overrides, crash_after=2)
    assert crashed["status"] == "failed" and len(rows) == 2
    got_summary, got = in_process(run_dir, *overrides, resume=True)
    assert_same_run(got, want)
    assert got_summary["resumed_from_round"] == [1]
    assert got_summary["epsilon"] == want_summary["epsilon"]
    if dp == "dpsgd":
        assert 0 < want_summary["epsilon"] < float("inf")


def flat_update(*overrides, rounds=1, sim=None):
    """The flat model change after ``rounds`` rounds of a smoke run (server: plain SGD, lr 1)."""
    from dpfed.build import build_simulation

    sim = sim or build_simulation(
        compose_config(
            SMOKE,
            "strategy.server_optimizer.momentum=null",
            "strategy.server_optimizer.learning_rate=1.0",
            *overrides,
        )
    )
    state = start = sim.process.initialize()
    for r in range(1, rounds + 1):
        state = sim.process.next(state, sim.cohort_datasets(sim.sampler.sample(r), r)).state
    before, after = (sim.process.get_model_weights(s).trainable for s in (start, state))
    return np.concatenate([np.ravel(a - b) for a, b in zip(after, before, strict=True)]), sim


@pytest.mark.slow
def test_dp_noise_is_fixed_by_the_seed_and_fresh_every_round(runtime):
    first, sim = flat_update(rounds=2)
    again, _ = flat_update(rounds=2, sim=sim)  # from initialize() again: the seed is in the state
    other_noise, _ = flat_update("dp.seed=1", rounds=2)  # same data, cohorts and init
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other_noise).max() > 1e-3


def test_dpsgd_noise_inside_clients_is_fixed_by_the_seed(runtime):
    overrides = ("dp=dpsgd", "dp.noise_multiplier=5.0")
    first, sim = flat_update(*overrides)
    again, _ = flat_update(*overrides, sim=sim)
    other_noise, _ = flat_update(*overrides, "dp.seed=1")
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other_noise).max() > 1e-3


def test_seeded_noise_has_the_configured_stddev(runtime):
    # Clients that do not move (learning rate 0) send zero updates: the model change is
    # the noise alone, N(0, (z * clip / expected cohort)^2) in every coordinate.
    z, clip = 20.0, 0.5
    noise, sim = flat_update(
        "strategy.client_optimizer.learning_rate=0", f"dp.noise_multiplier={z}", f"dp.clip={clip}"
    )
    cohort = sim.sampler.expected_cohort
    assert noise.size > 2000 and abs(np.mean(noise)) < 0.1 * z * clip / cohort
    assert np.std(noise) == pytest.approx(z * clip / cohort, rel=0.05)


# ---------------------------------------------------------------------- DP queries, eagerly
def noised(query, record, rounds=2):
    """The query's noised sums of ``record`` over ``rounds`` releases, from its initial state."""
    state, out = query.initial_global_state(), []
    for _ in range(rounds):
        params = query.derive_sample_params(state)
        sample = query.accumulate_record(params, query.initial_sample_state(record), record)
        result, state, _ = query.get_noised_result(sample, state)
        out.append(np.concatenate([np.ravel(v) for v in tf_flatten(result)]))
    return out


def tf_flatten(structure):
    import tensorflow as tf

    return [np.asarray(v) for v in tf.nest.flatten(structure)]


def seeded_queries(seed):
    """A query of every central noising mechanism, as their aggregators build them for ``seed``."""
    import tensorflow as tf
    import tensorflow_privacy as tfp
    from tensorflow_privacy.privacy.dp_query.nested_query import NestedSumQuery

    from dpfed.privacy.queries import (
        FactorizedGaussianSumQuery,
        SeededGaussianSumQuery,
        SeededQuantileAdaptiveClipSumQuery,
    )

    specs = [tf.TensorSpec([300]), tf.TensorSpec([20, 10])]
    return {
        # as PerLayerMechanism.setup: one seeded Gaussian query per layer, each its own stream
        "per_layer": NestedSumQuery(
            [SeededGaussianSumQuery(0.7, 2.0, stream_key(seed, f"sum/layer{i}")) for i in range(2)]
        ),
        # as BandMFMechanism.setup: banded (c_0, c_1) and BLT (one buffer) noise streams
        "bandmf": FactorizedGaussianSumQuery(
            1.0, 2.0, stream_key(seed, "bandmf"), specs, "banded", 1.0, [0.5], []
        ),
        "blt": FactorizedGaussianSumQuery(
            1.0, 2.0, stream_key(seed, "bandmf"), specs, "blt", 1.0, [0.3], [0.9]
        ),
        "gaussian": SeededGaussianSumQuery(1.0, 2.0, stream_key(seed, "sum")),
        "adaptive": SeededQuantileAdaptiveClipSumQuery(
            1.0,
            2.0,
            0.5,
            0.2,
            1.0,
            5.0,
            sum_key=stream_key(seed, "sum"),
            count_key=stream_key(seed, "clipped_count"),
        ),
        "tree": tfp.TreeResidualSumQuery.build_l2_gaussian_query(
            1.0, 2.0, specs, noise_seed=stream_key(seed, "tree")
        ),
    }


@pytest.mark.parametrize(
    "mechanism", ["gaussian", "adaptive", "tree", "per_layer", "bandmf", "blt"]
)
def test_every_mechanisms_noise_is_seeded_and_fresh_every_round(mechanism):
    record = [np.zeros(300, np.float32), np.zeros((20, 10), np.float32)]
    first = noised(seeded_queries(0)[mechanism], record)
    again = noised(seeded_queries(0)[mechanism], record)
    other = noised(seeded_queries(1)[mechanism], record)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.std(first[0]) > 0.5 and not np.allclose(first[0], first[1])  # fresh each round
    assert not np.allclose(first[0], other[0])
    # the two tensors (per_layer: two layers' queries) draw independent noise, not one stream
    assert not np.allclose(first[0][:200], first[0][300:500])


def test_adaptive_clipped_count_noise_is_seeded():
    import tensorflow as tf

    def clips(seed):
        query = seeded_queries(seed)["adaptive"]
        state, out = query.initial_global_state(), []
        for _ in range(3):
            params = query.derive_sample_params(state)
            sample = query.accumulate_record(
                params, query.initial_sample_state([tf.zeros(3)]), [tf.zeros(3)]
            )
            _, state, _ = query.get_noised_result(sample, state)
            out.append(float(state.sum_state.l2_norm_clip))
        return out

    assert clips(0) == clips(0) != clips(1)


# ---------------------------------------------------------------------- no TFF needed
def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import dpfed.io.checkpoint as checkpoint

    checkpoints = Checkpoints(tmp_path, config={"seed": 0})
    checkpoints.save({"state_00000": np.arange(3.0)}, {"round": 1, "finished": False})

    def torn_write(file, **arrays):  # half a file on disk, then the process dies
        file.write(b"PK\x03\x04 partial")
        raise Crash

    monkeypatch.setattr(checkpoint.np, "savez", torn_write)
    with pytest.raises(Crash):
        checkpoints.save({"state_00000": np.zeros(3)}, {"round": 2, "finished": False})
    monkeypatch.undo()

    def crash_before_replace(src, dst):
        raise Crash

    monkeypatch.setattr(checkpoint.os, "replace", crash_before_replace)
    with pytest.raises(Crash):
        checkpoints.save({"state_00000": np.ones(3)}, {"round": 2, "finished": False})
    monkeypatch.undo()

    arrays, meta = checkpoints.load()
    assert meta["round"] == 1 and meta["config"] == {"seed": 0}
    np.testing.assert_array_equal(arrays["state_00000"], np.arange(3.0))
    resumed = Checkpoints(tmp_path, config={"seed": 0}, resume=True)
    assert resumed.round == 1 and not resumed.finished
    checkpoints.save({"state_00000": np.ones(3)}, {"round": 2, "finished": False})
    assert checkpoints.load()[1]["round"] == 2
    assert [p.name for p in checkpoints.dir.iterdir()] == ["checkpoint.npz"]  # no temporaries


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^resume=True .* has no checkpoint"):
        Checkpoints(tmp_path, config={}, resume=True)


def test_resume_with_another_config_names_the_first_differing_key(tmp_path):
    saved = OmegaConf.to_container(compose_config(SMOKE), resolve=True)
    Checkpoints(tmp_path, config=saved).save({}, {"round": 1, "finished": False})
    again = OmegaConf.to_container(
        compose_config(SMOKE, "resume=true", "checkpoint_every=3", "logger.progress=true"),
        resolve=True,
    )
    assert Checkpoints(tmp_path, config=again, resume=True).round == 1
    other = OmegaConf.to_container(
        compose_config(SMOKE, "resume=true", "strategy.batch_size=4"), resolve=True
    )
    with pytest.raises(ConfigError, match=r"^strategy\.batch_size=4 .* must be 8 "):
        Checkpoints(tmp_path, config=other, resume=True)


@pytest.mark.parametrize(
    "saved,override",
    [
        (("backend=reference",), "backend=reference"),  # a run from before backend=auto
        (("optimizer@strategy.client_optimizer=adam",), "optimizer@strategy.client_optimizer=adam"),
        (("dp=tree",), "dp=tree"),
    ],
)
def test_a_component_that_differs_on_resume_names_the_option_that_selects_it(
    tmp_path, saved, override
):
    from dpfed.build import build_checkpoints

    config = OmegaConf.to_container(compose_config(SMOKE, *saved), resolve=True)
    Checkpoints(tmp_path, config=config).save({}, {"round": 1, "finished": False})
    with pytest.raises(ConfigError, match=r"\._target_=.* must be ") as err:
        build_checkpoints(compose_config(SMOKE, "resume=true"), tmp_path)
    assert f"({override} selects it)" in str(err.value)
    retried = build_checkpoints(compose_config(SMOKE, *saved, "resume=true"), tmp_path)
    assert retried.round == 1


def test_a_refused_resumption_leaves_the_runs_hydra_record_as_it_was(tmp_path):
    hydra = tmp_path / ".hydra"
    hydra.mkdir()
    (hydra / "overrides.yaml").write_text("- rounds=6\n")
    Checkpoints(tmp_path, config={"rounds": 6}).save({}, {"round": 6, "finished": True})
    (hydra / "overrides.yaml").write_text("- rounds=7\n- resume=true\n")  # Hydra, on the retry
    with pytest.raises(ConfigError, match="^rounds=7 .* must be 6 "):
        Checkpoints(tmp_path, config={"rounds": 7}, resume=True)
    assert (hydra / "overrides.yaml").read_text() == "- rounds=6\n"


def test_a_completed_run_kept_as_its_record_is_finished_on_resume(tmp_path):
    """A committed paper-table run keeps summary.json (with its config) and drops its
    checkpoint: resuming its sweep leaves it as it is, if the config is the same."""
    saved = OmegaConf.to_container(compose_config(SMOKE), resolve=True)
    summary = {"status": "completed", "rounds": 2, "config": saved, "eval/accuracy": 0.5}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    again = OmegaConf.to_container(compose_config(SMOKE, "resume=true"), resolve=True)
    job = Checkpoints(tmp_path, config=again, resume=True, fresh_if_empty=True)
    assert job.finished and job.round == 2 and job.summary == summary
    other = OmegaConf.to_container(
        compose_config(SMOKE, "resume=true", "strategy.batch_size=4"), resolve=True
    )
    with pytest.raises(ConfigError, match=r"^strategy\.batch_size=4 .* must be 8 "):
        Checkpoints(tmp_path, config=other, resume=True)
    for status in ("failed", "interrupted"):  # only a completed record stands for its run
        (tmp_path / "summary.json").write_text(json.dumps({**summary, "status": status}))
        with pytest.raises(ConfigError, match=r"^resume=True .* has no checkpoint"):
            Checkpoints(tmp_path, config=again, resume=True, fresh_if_empty=True)


def test_a_sweep_job_that_never_started_starts_afresh_on_resume(tmp_path):
    job = Checkpoints(tmp_path / "2", config={}, resume=True, fresh_if_empty=True)
    assert job.round == 0 and not job.finished
    with pytest.raises(ConfigError, match="^resume=True"):  # a single run is refused instead
        Checkpoints(tmp_path / "2", config={}, resume=True)


def test_metrics_are_cut_back_to_the_checkpointed_round(tmp_path):
    columns = ["round", "epsilon", "train/loss"]
    writer = RunWriter(tmp_path, columns)
    for r in range(1, 4):
        writer.write_round({"round": r, "epsilon": 0.5 * r, "train/loss": 1.0 / r})
    writer.close()
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("4,2.0,0.2")  # a row cut short by a kill
    writer = RunWriter(tmp_path, columns)
    writer.resume(2)
    writer.write_round({"round": 3, "epsilon": 1.5, "train/loss": 0.3})
    writer.close()
    rows = pd.read_csv(tmp_path / "metrics.csv")
    assert list(rows["round"]) == [1, 2, 3] and list(rows["train/loss"])[-1] == 0.3
    with pytest.raises(ValueError, match="lacks rows"):
        RunWriter(tmp_path, columns).resume(5)


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_a_restored_ledger_continues_with_exactly_the_same_epsilon(accountant):
    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    a = dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.3))
    b = dp_accounting.NoOpDpEvent()
    events = [a, a, b, a, b, b, a]
    whole = Accountant(accountant, 1e-5, relation, pld_discretization=1e-3)
    for e in events:
        whole.record(e)
    first = Accountant(accountant, 1e-5, relation, pld_discretization=1e-3)
    for e in events[:4]:
        first.record(e)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = Accountant(accountant, 1e-5, relation, pld_discretization=1e-3)
    resumed.load_state_dict(state)
    for e in events[4:]:
        resumed.record(e)
    assert resumed.epsilon == whole.epsilon and resumed.counts == Counter(events)
    assert resumed.events() == whole.events()


# ---------------------------------------------------------------------- as a user runs it
@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_uninterrupted_result(runtime, tmp_path):
    args = (SMOKE, "rounds=5", "strategy.eval_every=3")
    whole_summary, whole_metrics = in_process(tmp_path / "whole", *args[1:])

    run_dir = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            metrics = run_dir / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:  # header + 2
                break
            time.sleep(0.05)
        workers = [
            p for p in psutil.Process(proc.pid).children(recursive=True) if p.pid in worker_pids()
        ]
        assert workers, "the run should have started a worker"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    _, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"worker outlived its killed run: {alive}"
    killed_rows = len(pd.read_csv(run_dir / "metrics.csv"))
    assert 2 <= killed_rows < 5

    resumed = subprocess.run(
        [*cmd, "resume=true", "logger.progress=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and len(summary["resumed_from_round"]) == 1
    assert summary["epsilon"] == whole_summary["epsilon"]
    assert_same_run(pd.read_csv(run_dir / "metrics.csv"), whole_metrics)
    # (the session fixture in conftest checks that the finished runs left no worker)


def test_a_sigterm_during_a_checkpoint_write_interrupts_after_it(tmp_path, monkeypatch):
    """run.py's SIGTERM handler waits for a checkpoint write: the new checkpoint is complete and
    in place, and the run is interrupted when the write ends (not inside numpy's zip)."""
    import os
    import signal

    import numpy as np

    from dpfed.io.checkpoint import Checkpoints
    from dpfed.jobs import RunInterrupted, interrupt, interrupts_deferred

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(RunInterrupted, match="SIGTERM"):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                reached = True  # the handler ran and did not raise inside the block
        assert reached
        with pytest.raises(RunInterrupted):  # outside a block it interrupts at once
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("not interrupted")
        checkpoints = Checkpoints(tmp_path)
        checkpoints.save({"w": np.zeros(3)}, {"round": 1})
        savez = np.savez

        def savez_then_sigterm(*args, **kwargs):  # the signal arrives in the middle of the write
            os.kill(os.getpid(), signal.SIGTERM)
            savez(*args, **kwargs)

        monkeypatch.setattr(np, "savez", savez_then_sigterm)
        with pytest.raises(RunInterrupted, match="SIGTERM"):
            checkpoints.save({"w": np.ones(3)}, {"round": 2})
        arrays, meta = checkpoints.load()
        assert meta["round"] == 2 and arrays["w"].tolist() == [1.0, 1.0, 1.0]
        assert not list(checkpoints.dir.glob(".*tmp-*"))
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_ctrl_c_during_a_checkpoint_write_interrupts_after_it(tmp_path, monkeypatch):
    """SIGINT (Ctrl-C) is held like SIGTERM during a checkpoint write and raised as Python's
    KeyboardInterrupt once the new checkpoint is in place; Python's own handler is back after
    the write, and a signal held in a block that fails does not fire in a later block."""
    import os
    import signal

    import numpy as np

    from dpfed.io.checkpoint import Checkpoints
    from dpfed.jobs import RunInterrupted, interrupt, interrupts_deferred

    # Python's own handler, as in a terminal (a background job started without job control,
    # as CI may run this, inherits SIGINT ignored, and then Ctrl-C cannot reach it at all)
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        checkpoints = Checkpoints(tmp_path)
        checkpoints.save({"w": np.zeros(3)}, {"round": 1})
        savez = np.savez

        def savez_then_sigint(*args, **kwargs):  # Ctrl-C in the middle of the write
            os.kill(os.getpid(), signal.SIGINT)
            savez(*args, **kwargs)

        monkeypatch.setattr(np, "savez", savez_then_sigint)
        with pytest.raises(KeyboardInterrupt):
            checkpoints.save({"w": np.ones(3)}, {"round": 2})
        arrays, meta = checkpoints.load()
        assert meta["round"] == 2 and arrays["w"].tolist() == [1.0, 1.0, 1.0]
        assert not list(checkpoints.dir.glob(".*tmp-*"))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

        with pytest.raises(ValueError, match="the write failed"):
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                raise ValueError("the write failed")
        with interrupts_deferred():  # the failed block's SIGTERM was dropped with it
            reached = True
        assert reached
        with pytest.raises(RunInterrupted, match="SIGTERM"):  # SIGTERM outranks Ctrl-C
            with interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_sigint)
