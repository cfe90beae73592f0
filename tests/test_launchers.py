"""Sweeps that scale out: launcher configs, run and job folder names, parallel jobs' isolation."""

from __future__ import annotations

import re
import time

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from dpfed.config import compose
from dpfed.jobs import MAX_NAME, job_dirname, overrides_dirname
from tests.conftest import worker_pids

SMOKE = "debug=smoke"


def compose_with_hydra(*overrides: str):
    cfg = compose(*overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # for ${hydra:...} in the folder names
    return cfg


def test_slurm_launcher_config_composes_onto_submitit():
    cfg = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert (
        launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    )
    assert launcher.partition == "gpu" and launcher.cpus_per_task >= 1 and launcher.timeout_min > 0
    assert launcher.submitit_folder.startswith(cfg.hydra.sweep.dir + "/")  # logs beside results


def test_parallel_launcher_config_is_joblib_with_two_jobs():
    launcher = compose_with_hydra("hydra/launcher=parallel").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 2 and launcher.prefer == "processes"


def test_launcher_schema_rejects_a_typo():
    with pytest.raises(Exception, match="n_job"):
        compose_with_hydra("hydra/launcher=parallel", "hydra.launcher.n_job=4")


def test_run_folder_is_named_by_dataset_mechanism_and_seed():
    cfg = compose_with_hydra("dataset=health", "dp=tree", "seed=3")
    assert re.fullmatch(
        r"results/runs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d_health_tree_seed3", cfg.hydra.run.dir
    ), cfg.hydra.run.dir


def test_sweep_job_folder_is_named_by_overrides_and_seed_without_noise():
    cfg = compose_with_hydra(
        "dp=tree",
        "model.units=[3,4]",
        "seed=5",
        "logger.progress=false",
        "experiment=communication_quick",
    )
    with read_write(cfg.hydra.job), open_dict(cfg.hydra.job):
        cfg.hydra.job.num = 7
    HydraConfig.instance().set_config(cfg)
    assert cfg.hydra.sweep.subdir == "7_dp=tree,model.units=_3,4__seed5"


def test_folder_names_drop_paths_and_stay_short_and_distinct():
    assert overrides_dirname("dataset.cache_dir=/data/x,dp=none") == "dp=none"
    assert overrides_dirname("a=b c'd") == "a=b_c_d"
    long_a = ",".join(f"strategy.key{i}=value{i}" for i in range(20))
    long_b = long_a.replace("value19", "value20")
    name_a, name_b = overrides_dirname(long_a), overrides_dirname(long_b)
    assert len(name_a) == MAX_NAME and name_a != name_b and name_a[:60] == name_b[:60]
    assert job_dirname(0, "", 1) == "0_seed1"


@pytest.mark.slow
def test_parallel_sweep_isolates_a_failing_job_and_leaves_no_worker(run_cli):
    """Joblib (loky) jobs: one fails, the other finishes; every job's TFF worker is stopped."""
    before = worker_pids()
    result = run_cli(SMOKE, "hydra/launcher=parallel", "dp.noise_multiplier=-1,2", multirun=True)
    assert result.returncode == 1, result.output[-3000:]
    assert "dp.noise_multiplier=-1.0 is not allowed" in result.stderr
    failed = result.summary("0_debug=smoke,dp.noise_multiplier=-1_seed0")
    done = result.summary("1_debug=smoke,dp.noise_multiplier=2_seed0")
    assert failed["status"] == "failed" and "ConfigError" in failed["error"]
    assert done["status"] == "completed" and done["rounds"] == 2 and done["noise_multiplier"] == 2
    deadline = time.time() + 15  # loky may still be shutting its processes down
    while (left := worker_pids() - before) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"worker_binary left by the parallel sweep: {sorted(left)}"
