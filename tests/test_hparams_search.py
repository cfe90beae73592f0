"""Hyperparameter searches: every search config composes and builds; one runs end to end."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra.types import RunMode
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution

from dpfed.errors import ConfigError
from dpfed.jobs import (
    JobFailed,
    metric_value,
    optimized,
    over_seeds,
    resume_command,
    seed_overrides,
)
from tests.conftest import CONF, ROOT, compose_config, worker_pids

SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "dataset").glob("*.yaml"))


def sweep_dir(full) -> str:
    """The search's folder as the Optuna sweeper reads it: before Hydra's runtime config is set
    (the documented command, `python run.py hparams_search=<name>`, gives no hydra.sweep.dir)."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None  # whatever an earlier test of this worker left
    return str(OmegaConf.select(full, "hydra.sweep.dir"))


def search_space(cfg) -> dict:
    """The search's parameters as the Optuna sweeper reads them: name -> distribution."""
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    distributions, fixed = create_params_from_overrides(params)
    assert not fixed, f"fixed values belong in the config, not the search space: {fixed}"
    return distributions


def ends(distribution) -> tuple[str, str]:
    """The cheapest and costliest values of a distribution (by choice length, then size)."""
    if isinstance(distribution, CategoricalDistribution):
        ordered = sorted(distribution.choices, key=lambda c: (len(str(c)), str(c)))
        return str(ordered[0]), str(ordered[-1])
    return str(distribution.low), str(distribution.high)


def test_every_dataset_that_needs_no_file_of_yours_has_a_search():
    ready = [d for d in DATASETS if not OmegaConf.missing_keys(compose_config(f"dataset={d}"))]
    assert SEARCHES == ready  # table and TFF's cached sets need a path first


@pytest.mark.parametrize("search", SEARCHES)
def test_search_composes_onto_optuna_and_both_ends_of_its_space_build(search):
    from dpfed.build import prepare

    full = compose_config(f"hparams_search={search}", return_hydra_config=True)
    sweeper = full.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert full.hydra.mode == RunMode.MULTIRUN and sweeper.n_jobs == 1
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert isinstance(sweeper.sampler.seed, int)
    assert 10 <= sweeper.n_trials <= 20
    assert (full.optimized_metric, sweeper.direction) == ("eval/accuracy", "maximize")
    choices = full.hydra.runtime.choices
    assert (choices.dataset, choices.dp, choices.backend) == (search, "none", "vectorized")
    assert sweep_dir(full).startswith(f"results/searches/{search}/20")

    space = search_space(full)
    assert {
        "model.units",
        "strategy.client_optimizer.learning_rate",
        "strategy.server_optimizer.learning_rate",
        "strategy.local_epochs",
        "strategy.batch_size",
    } <= set(space)
    # Both ends of the space compose (types), and the costliest passes every range check; the
    # task is the one the metric scores.
    low, high = ([f"{k}={ends(d)[i]}" for k, d in space.items()] for i in (0, 1))
    assert OmegaConf.to_container(compose_config(f"hparams_search={search}", *low), resolve=True)
    cfg = compose_config(f"hparams_search={search}", *high)
    assert prepare(cfg).dataset.task == "classification"


RECORD_SEARCHES = sorted(p.stem for p in (CONF / "hparams_search" / "record").glob("*.yaml"))


def test_every_record_level_row_of_the_privacy_utility_table_has_a_search():
    from dpfed.report.experiments import RECORD_LEVEL

    assert RECORD_SEARCHES == sorted(RECORD_LEVEL)


def _inside(distribution, value: str) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return value in {str(c) for c in distribution.choices}
    return distribution.low <= float(value) <= distribution.high


@pytest.mark.parametrize("dataset", RECORD_SEARCHES)
def test_record_search_tunes_dpsgd_in_its_baselines_clients_at_the_budget_given(dataset):
    """hparams_search=record/<dataset>: DP-SGD in the clients of baseline=<dataset> (its model,
    cohort and server optimizer), calibrated on epsilon_record under zero-out to the budget on
    the command line; every per-budget setting of the privacy-utility table lies in its space."""
    from dpfed.build import build_dataset, build_privacy
    from dpfed.report.experiments import RECORD_LEVEL

    full = compose_config(
        f"hparams_search=record/{dataset}", "dp.target_epsilon=2", return_hydra_config=True
    )
    choices = full.hydra.runtime.choices
    assert (choices.dataset, choices.dp, choices.backend) == (dataset, "dpsgd", "vectorized")
    assert sweep_dir(full).startswith(f"results/searches/record/{dataset}/20")
    assert full.hydra.sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert 10 <= full.hydra.sweeper.n_trials <= 20 and full.optimized_metric == "eval/accuracy"
    # vowels' trials score the mean of 3 seeds: on seed 0 alone its winners were lucky draws
    assert full.optimized_seeds == (3 if dataset == "vowels" else 1)
    baseline = compose_config(f"baseline={dataset}")
    for key in ("strategy.clients_per_round", "strategy.server_optimizer.learning_rate"):
        assert OmegaConf.select(full, key) == OmegaConf.select(baseline, key), key

    space = search_space(full)
    searched = {
        "rounds",
        "strategy.local_epochs",
        "strategy.batch_size",
        "dp.clip",
        "strategy.client_optimizer.learning_rate",
    }
    assert searched <= set(space)
    for key, distribution in space.items():  # a key held at one value holds the baseline's
        if isinstance(distribution, CategoricalDistribution) and len(distribution.choices) == 1:
            held = str(OmegaConf.select(baseline, key)).replace(" ", "")
            assert [str(c) for c in distribution.choices] == [held], key
    for i in (0, 1):
        cfg = compose_config(
            f"hparams_search=record/{dataset}",
            "dp.target_epsilon=2",
            *[f"{k}={ends(d)[i]}" for k, d in space.items()],
        )
        plan = build_privacy(cfg, build_dataset(cfg).population())
        budget = plan.budget_account
        assert (budget.column, budget.neighboring.value) == ("epsilon_record", "zero_out")
        assert plan.epsilon(budget) == pytest.approx(2, rel=0.01)
    for budget, settings in RECORD_LEVEL[dataset].items():
        for setting in settings:  # searched, or held by the search config (record_sampling)
            key, value = setting.split("=")
            if key in space:
                assert _inside(space[key], value), (budget, setting)
            else:
                assert str(OmegaConf.select(full, key)) == value, (budget, setting)
    record_sampling = {
        s for b in RECORD_LEVEL[dataset].values() for s in b if "record_sampling" in s
    }
    assert record_sampling == {f"dp.record_sampling={full.dp.record_sampling}"} - {
        "dp.record_sampling=shuffle"
    }  # the table's row runs the batches its search ran


def test_a_debug_patch_shrinks_a_search_trial():
    cfg = compose_config("hparams_search=smart_home", "debug=smoke")
    assert (cfg.rounds, cfg.dataset.num_clients, cfg.strategy.clients_per_round) == (2, 40, 5)


SUMMARY = {
    "status": "completed",
    "rounds": 2,
    "eval/accuracy": 0.75,
    "eval/loss": 0.5,
    "eval/mae": None,
    "epsilon": math.inf,
}


def hydra_cfg(mode: RunMode, direction: str | None = None):
    return OmegaConf.create(
        {"mode": mode, "sweeper": {"direction": direction} if direction else {}}
    )


def test_optimized_metric_returns_the_summary_or_the_value():
    single = hydra_cfg(RunMode.RUN)
    assert optimized(lambda: SUMMARY, None, single) is SUMMARY
    assert optimized(lambda: SUMMARY, "eval/loss", single) == 0.5
    search = hydra_cfg(RunMode.MULTIRUN, "maximize")
    assert optimized(lambda: SUMMARY, "eval/accuracy", search) == 0.75


@pytest.mark.parametrize("name", ["eval/acc", "eval/mae", "status"])
def test_a_bad_optimized_metric_names_the_key_and_lists_the_summarys(name):
    with pytest.raises(ConfigError, match="optimized_metric") as err:
        metric_value(SUMMARY, name)
    assert f"optimized_metric={name!r}" in str(err.value)
    assert str(err.value).endswith("this run's are: rounds, eval/accuracy, eval/loss, epsilon")


def test_over_seeds_runs_each_seed_in_its_folder_and_returns_their_mean(tmp_path):
    cfg = OmegaConf.create(
        {
            "seed": 3,
            "optimized_seeds": 3,
            "optimized_metric": "eval/accuracy",
            "dataset": {"seed": "${seed}"},
            "dp": {"seed": "${seed}"},
        }
    )
    calls = []

    def run(seeded, out_dir):
        calls.append((seeded.seed, seeded.dataset.seed, seeded.dp.seed, out_dir))
        return {**SUMMARY, "eval/accuracy": 0.1 * seeded.seed}

    trial = over_seeds(run, cfg, str(tmp_path))
    assert calls == [(s, s, s, str(tmp_path / f"seed_{s}")) for s in (3, 4, 5)]
    assert trial["eval/accuracy"] == pytest.approx(0.4)
    assert trial["eval/accuracy/per_seed"] == pytest.approx([0.3, 0.4, 0.5])
    assert trial["seeds"] == [3, 4, 5] and cfg.seed == 3  # the trial's config is untouched
    cfg.optimized_seeds = 1  # one seed: the run itself, in the trial's folder
    assert over_seeds(run, cfg, str(tmp_path)) == {**SUMMARY, "eval/accuracy": 0.1 * 3}
    assert calls[-1] == (3, 3, 3, str(tmp_path))


@pytest.mark.parametrize(
    "seeds,metric,allowed",
    [
        (0, "eval/accuracy", ">= 1"),
        (2, None, "1 unless optimized_metric is set"),
    ],
)
def test_a_bad_optimized_seeds_stops_a_run_and_a_search_before_any_run(
    seeds, metric, allowed, capsys
):
    cfg = OmegaConf.create({"seed": 0, "optimized_seeds": seeds, "optimized_metric": metric})
    ran = []
    trial = lambda: over_seeds(lambda c, d: ran.append(d) or SUMMARY, cfg, "out")  # noqa: E731
    with pytest.raises(SystemExit) as exit_:
        optimized(trial, metric, hydra_cfg(RunMode.RUN))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"optimized_seeds={seeds}" in err and allowed in err
    with pytest.raises(JobFailed, match="optimized_seeds"):  # not a -inf trial: the study ends
        optimized(trial, metric, hydra_cfg(RunMode.MULTIRUN, "maximize"))
    assert not ran


@pytest.mark.parametrize("folder", ["/r/0_dp.clip=0.1,rounds=5_seed0", "/r/a b/it's $HOME"])
def test_a_resume_command_gives_hydra_the_folder_and_a_seed_runs_alone(folder):
    """A sweep job's folder holds '=' and ',' (Hydra's override grammar) and may hold what a
    shell expands: the command quotes it for both."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    task = seed_overrides(
        ["hparams_search=record/vowels", "model.units=[16]", "seed=10", "optimized_seeds=3"], 11
    )
    assert task == [
        "hparams_search=record/vowels",
        "model.units=[16]",
        "seed=11",
        "optimized_seeds=1",
        "hydra.mode=RUN",
    ]
    args = shlex.split(resume_command(task, folder))
    assert args[:2] == ["python", "run.py"] and args[2:-2] == task and args[-2] == "resume=true"
    parsed = OverridesParser.create().parse_overrides(args[2:])
    assert {o.key_or_group: o.value() for o in parsed}["hydra.run.dir"] == folder


def test_a_bad_optimized_metric_ends_a_run_with_code_2_and_a_sweep_at_once(capsys):
    with pytest.raises(SystemExit) as exit_:
        optimized(lambda: SUMMARY, "eval/acc", hydra_cfg(RunMode.RUN))
    assert exit_.value.code == 2
    assert "optimized_metric='eval/acc'" in capsys.readouterr().err
    with pytest.raises(JobFailed, match="optimized_metric"):  # the Optuna study stops here
        optimized(lambda: SUMMARY, "eval/acc", hydra_cfg(RunMode.MULTIRUN, "maximize"))


def fail():
    raise JobFailed("dpfed: training diverged: loss nan (in somewhere)")


@pytest.mark.parametrize("direction,worst", [("maximize", -math.inf), ("minimize", math.inf)])
def test_a_failed_trial_of_a_search_scores_the_worst_value(direction, worst, capsys):
    assert optimized(fail, "eval/accuracy", hydra_cfg(RunMode.MULTIRUN, direction)) == worst
    assert "training diverged" in capsys.readouterr().err


def test_a_failed_job_of_a_plain_sweep_still_fails():
    with pytest.raises(JobFailed):  # the basic sweeper runs on and exits 1 at the end
        optimized(fail, "eval/accuracy", hydra_cfg(RunMode.MULTIRUN))


def trials(out: Path) -> list[dict]:
    found = []
    for path in sorted(out.glob("*/summary.json")):
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        found.append({"summary": json.loads(path.read_text()), "overrides": overrides})
    return found


def seeded_trials(out: Path) -> list[dict]:
    """Trials run with optimized_seeds > 1: each seed's summary in <trial>/seed_<s>/."""
    found = []
    for trial in sorted(p.parent.parent for p in out.glob("*/.hydra/overrides.yaml")):
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        seeds = {
            p.parent.name: json.loads(p.read_text()) for p in trial.glob("seed_*/summary.json")
        }
        found.append({"trial": trial, "seeds": seeds, "overrides": overrides})
    return found


@pytest.mark.slow
def test_smoke_search_scores_each_trial_on_its_seeds_and_writes_the_best(run_cli):
    """optimized_seeds=2: each trial runs seeds 5 and 6 in its own seed_<s>/ folders and
    scores their mean; the best trial and value are the runs' records."""
    before = worker_pids()
    result = run_cli(
        "hparams_search=smart_home",
        "debug=smoke",
        "hydra.sweeper.n_trials=2",
        "seed=5",
        "optimized_seeds=2",
        multirun=True,
        timeout=300,
    )
    assert result.returncode == 0, result.output[-3000:]
    best = yaml.safe_load((result.dir / "optimization_results.yaml").read_text())
    found = seeded_trials(result.dir)
    assert len(found) == 2 and all(set(t["seeds"]) == {"seed_5", "seed_6"} for t in found)
    assert not list(result.dir.glob("*/summary.json"))  # a trial is its seeds, not a run
    for trial in found:
        assert {s["seed"] for s in trial["seeds"].values()} == {5, 6}
        assert all(s["status"] == "completed" for s in trial["seeds"].values())
        assert all(s["config"]["dataset"]["seed"] == s["seed"] for s in trial["seeds"].values())
    assert set(best["best_params"]) == set(
        search_space(compose_config("hparams_search=smart_home", return_hydra_config=True))
    )
    means = [sum(s["eval/accuracy"] for s in t["seeds"].values()) / 2 for t in found]
    assert best["best_value"] == pytest.approx(max(means), abs=1e-12), (best, means)
    winners = [t for t, m in zip(found, means, strict=True) if m == max(means)]
    expected = {f"{k}={v}" for k, v in best["best_params"].items()}
    assert any(expected <= set(t["overrides"]) for t in winners), (expected, winners)
    accuracies = {s["eval/accuracy"] for t in found for s in t["seeds"].values()}
    assert len(accuracies) > 1  # the seeds are different runs
    # a seed's resume command (what an interrupted one records) reruns that seed alone, as a
    # single run in its folder, not the search: here it finds the seed finished
    trial = found[0]["trial"]
    command = resume_command(seed_overrides(found[0]["overrides"], 6), trial / "seed_6")
    args = shlex.split(command)
    assert args[:2] == ["python", "run.py"] and "optimized_seeds=1" in args
    again = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args[2:]],
        cwd=result.dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"the run in {trial / 'seed_6'} is complete" in again.stdout
    deadline = time.time() + 10  # each trial stops its TFF worker; give the last one a moment
    while (left := worker_pids() - before) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"worker_binary left by the search: {sorted(left)}"


@pytest.mark.parametrize("dataset", RECORD_SEARCHES)
@pytest.mark.slow
def test_record_search_smoke_runs_private_trials_at_the_budget(run_cli, dataset):
    """hparams_search=record/<dataset> end to end (one trial, 2 rounds): DP-SGD in the clients,
    each run's epsilon_record calibrated to the budget under zero-out, the trial scored by the
    mean over its config's seeds (3 on vowels)."""
    result = run_cli(
        f"hparams_search=record/{dataset}",
        "dp.target_epsilon=2",
        "debug=smoke",
        "hydra.sweeper.n_trials=1",
        "rounds=2",
        multirun=True,
        timeout=300,
    )
    assert result.returncode == 0, result.output[-3000:]
    runs = [json.loads(p.read_text()) for p in sorted(result.dir.rglob("summary.json"))]
    cfg = compose_config(f"hparams_search=record/{dataset}")
    assert sorted(r["seed"] for r in runs) == list(range(cfg.seed, cfg.seed + cfg.optimized_seeds))
    for run in runs:
        assert run["status"] == "completed" and run["choices"]["dp"] == "dpsgd"
        assert run["neighboring"] == "zero_out" and run["epsilon"] == math.inf  # no user-level
        # the record batches its config names (watch: Poisson, amplification credited)
        poisson = run.get("record_sampling_probability") is not None
        assert poisson == (cfg.dp.record_sampling == "poisson")
        # calibrated for a client in every round: reached where one was, below it elsewhere
        assert 0 < run["epsilon_record"] <= 2.0
        if run["max_participations"] == run["rounds"]:
            assert run["epsilon_record"] >= 1.98
    best = yaml.safe_load((result.dir / "optimization_results.yaml").read_text())
    mean = sum(r["eval/accuracy"] for r in runs) / len(runs)
    assert best["best_value"] == pytest.approx(mean, abs=1e-12)
    if cfg.optimized_seeds > 1:  # the seeds redraw model and noise, not the held-out split
        assert cfg.dataset.seed == cfg.seed
        assert (
            compose_config(f"hparams_search=record/{dataset}", "seed=11").dataset.seed == cfg.seed
        )
        assert len({r["eval/trivial_accuracy"] for r in runs}) == 1


def test_failed_trials_do_not_end_the_search(run_cli):
    """Both trials are refused before training (more clients per round than the smoke data has)."""
    result = run_cli(
        "hparams_search=smart_home",
        "debug=smoke",
        "hydra.sweeper.n_trials=2",
        "strategy.clients_per_round=100",
        multirun=True,
        timeout=120,
    )
    assert result.returncode == 0, result.output[-3000:]
    assert result.stderr.count("this trial of the search scores eval/accuracy = -inf") == 2
    assert all(r["summary"]["status"] == "failed" for r in trials(result.dir))
    best = yaml.safe_load((result.dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == -math.inf  # every trial failed: nothing to tune from


def test_a_private_search_draws_its_number_of_trials_when_the_sweeper_reads_it():
    """``${dpfed.random_trials:mean,law,seed}`` in ``hydra.sweeper.n_trials`` (Papernot &
    Steinke 2022): the sweeper's config resolves to the seeded draw."""
    from dpfed.privacy.tuning import draw_trials

    full = compose_config(
        "hparams_search=smart_home",
        "dp=gaussian",
        "hydra.sweeper.n_trials=${dpfed.random_trials:4,poisson,3}",
        return_hydra_config=True,
    )
    assert full.hydra.sweeper.n_trials == draw_trials(4, "poisson", 3) > 0
    assert full.dp.noise_multiplier > 0  # a private search: dp given after the search's none
