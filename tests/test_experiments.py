"""Paper-table experiments: every preset composes; each quick variant runs and makes its table."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from dpfed.report.experiments import EXPERIMENTS
from tests.conftest import CONF, ROOT, compose_config

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_experiment_composes_with_its_sweep_folder(preset):
    cfg = compose_config(f"experiment={preset}")
    assert cfg.rounds >= 1
    full = compose_config(f"experiment={preset}", return_hydra_config=True)
    assert full.hydra.sweep.dir == f"results/experiments/{preset}"
    assert full.hydra.sweeper.params, "an experiment holds its sweep"


def test_every_experiment_has_a_quick_variant_and_a_readme_row():
    readme = (ROOT / "experiments" / "README.md").read_text()
    for name in EXPERIMENTS:
        assert {name, f"{name}_quick"} <= set(PRESETS)
        assert f"python scripts/reproduce.py {name}" in readme
        assert f"results/tables/{name}.md" in readme
        full, quick = (
            compose_config(f"experiment={e}", return_hydra_config=True)
            for e in (name, f"{name}_quick")
        )
        # the smoke test runs what the experiment runs, only smaller
        assert quick.hydra.runtime.choices.backend == full.hydra.runtime.choices.backend, name


def reproduce(name: str, tmp_path, *flags: str) -> pd.DataFrame:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "reproduce.py"),
        name,
        "--quick",
        "--results",
        str(tmp_path),
        *flags,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for suffix in ("md", "tex"):
        assert (tmp_path / "tables" / f"{name}_quick.{suffix}").read_text().strip()
    return pd.read_csv(tmp_path / "tables" / f"{name}_quick.csv")


@pytest.mark.slow
def test_mnist_quick_reproduces_the_tutorials_epsilon_and_dpfeds_conservative_one(tmp_path):
    table = reproduce("mnist_epsilon", tmp_path)
    assert len(table) == 1 and table.loc[0, "noise"] == 1.3 and table.loc[0, "epochs"] == 15
    tutorial = table.loc[0, "epsilon, setting=Poisson, add/remove, classic RDP"]
    assert tutorial == pytest.approx(1.19, abs=0.005) == table.loc[0, "tutorial epsilon"]
    assert (
        table.loc[0, "epsilon, setting=fixed-size (dpfed), replace-one, classic RDP"]
        > 1.5 * tutorial
    )


@pytest.mark.slow
def test_tff_quick_gives_epsilon_2_at_120_clients_per_round(tmp_path):
    table = reproduce("tff_dp_clients", tmp_path).set_index("clients per round")
    assert list(table.index) == [60, 120]
    poisson = table["epsilon, setting=Poisson, add/remove, improved RDP"]
    assert poisson[120] == pytest.approx(2.0, abs=0.03) and poisson[60] < poisson[120]
    assert (table["epsilon, setting=fixed-size (dpfed), replace-one, improved RDP"] > poisson).all()


@pytest.mark.slow
def test_published_epsilons_beside_the_papers(tmp_path):
    """Andrew et al. 2021 Table 1 (5.0 at zero-out, fixed-size cohorts) and Kairouz et al.
    2021's StackOverflow setting (19.74, 2.04: dp-accounting's test of it), recomputed by the
    privacy plan a run builds; replace-one and Poisson rows of Andrew's setting for contrast."""
    table = reproduce("published_epsilons", tmp_path)
    classic, improved = table["epsilon, conversion=classic"], table["epsilon, conversion=improved"]
    andrew = (table["mechanism"] == "gaussian") & (table["noise"] == 0.51)
    own = andrew & (table["sampling"] == "fixed") & (table["neighboring"] == "zero_out")
    assert table.loc[own, "published epsilon"].tolist() == ["5.0"]
    assert improved[own].item() == pytest.approx(5.0, abs=0.05)  # the paper: epsilon 5.0
    replace = andrew & (table["neighboring"] == "replace_one")
    poisson = andrew & (table["sampling"] == "poisson")
    assert improved[replace].item() > 100 * improved[own].item()  # half the accounted noise
    assert improved[poisson].item() < improved[own].item()  # add/remove of a Poisson cohort
    assert table.loc[replace | poisson, "paper"].str.endswith("(contrast)").all()
    tree = table[table["mechanism"] == "tree"].set_index("noise")
    for noise, published in ((1.13, 19.74), (8.83, 2.04)):
        assert tree.loc[noise, "published epsilon"] == str(published)
        assert round(tree.loc[noise, "epsilon, conversion=classic"], 2) == published
        assert tree.loc[noise, "epsilon, conversion=improved"] < published  # dp-accounting's test
    assert (classic >= improved).all()


@pytest.mark.slow
def test_privacy_utility_quick_runs_and_tabulates_epsilon_4_and_inf(tmp_path):
    table = reproduce("privacy_utility", tmp_path)
    assert list(table["dataset"]) == ["smart_home"] and list(table["mechanism"]) == ["gaussian"]
    accuracy = table[["eval/accuracy, epsilon budget=4", "eval/accuracy, epsilon budget=inf"]].iloc[
        0
    ]
    assert ((accuracy > 0) & (accuracy <= 1)).all()
    for kind in ("utility", "epsilon", "curves"):
        for suffix in ("png", "pdf"):
            assert (tmp_path / "figures" / f"privacy_utility_quick_{kind}.{suffix}").stat().st_size


@pytest.mark.slow
def test_communication_quick_counts_bytes_per_strategy(tmp_path):
    table = reproduce("communication", tmp_path).set_index("strategy")
    assert sorted(table.index) == ["fedavg", "fedsgd"]
    # Both send the whole model down and a model-sized update up (float32, unweighted).
    assert (table["bytes down per round"] > 0).all()
    assert table.loc["fedavg", "bytes up per round"] == table.loc["fedsgd", "bytes up per round"]
    assert "rounds to acc 0.5" in table.columns and "bytes to acc 0.5" in table.columns
    reached = table["rounds to acc 0.5"].dropna()
    per_round = table["bytes down per round"] + table["bytes up per round"]
    for strategy, rounds in reached.items():
        assert table.loc[strategy, "bytes to acc 0.5"] == pytest.approx(
            rounds * per_round[strategy]
        )


@pytest.mark.slow
def test_audit_quick_tabulates_the_bound_and_catches_the_planted_bug(tmp_path):
    """Canary clients (gaussian) and canary records (centralized DP-SGD), each honest and with
    a tenth of the noise the accountant is told: the bound is below the claimed epsilon in the
    honest run and above it in the planted one."""
    table = reproduce("audit", tmp_path).set_index(["audit", "planted noise factor"])
    assert sorted(table.index) == [
        ("canary clients", 0.1),
        ("canary clients", 1.0),
        ("canary records", 0.1),
        ("canary records", 1.0),
    ]
    assert set(table["neighboring"]) == {"zero_out"}
    assert set(table["mechanism"]) == {"gaussian", "dpsgd"}
    for audit, bounds in (
        ("canary clients", ["audit/epsilon_lower"]),
        ("canary records", ["audit/epsilon_lower", "audit/epsilon_lower_iterates"]),
    ):
        honest, planted = table.loc[(audit, 1.0)], table.loc[(audit, 0.1)]
        assert honest["epsilon"] == planted["epsilon"]  # the accountant is told the same noise
        assert max(honest[b] for b in bounds) < honest["epsilon"], audit
        assert max(planted[b] for b in bounds) > planted["epsilon"], audit
    assert np.isnan(table.loc[("canary records", 1.0), "audit/epsilon_estimate"])
    for suffix in ("png", "pdf"):
        assert (tmp_path / "figures" / f"audit_quick_audit.{suffix}").stat().st_size


@pytest.mark.slow
def test_adaptive_clip_quick_tabulates_fixed_clips_and_the_adaptive_one(tmp_path):
    """Fixed clips 0.1 and 1 and the adaptive clip (from 0.1), each at server learning rates 0.5
    and 1, at the same noise multiplier: one row per clip at its rate with the higher accuracy,
    one epsilon for all rows, the adaptive run's final clip moved from its start, a figure."""
    from dpfed.report.collect import summaries

    table = reproduce("adaptive_clip", tmp_path).set_index("clip")
    assert sorted(table.index) == ["0.1", "1", "adaptive (median)"]
    runs = summaries(tmp_path / "experiments" / "adaptive_clip_quick")
    assert len(runs) == 6
    rate = runs["override/strategy.server_optimizer.learning_rate"].astype(float)
    clip = runs["override/dp.clip"].fillna("adaptive (median)")
    for label, row in table.iterrows():
        accuracies = runs["eval/accuracy"][clip == label].groupby(rate[clip == label]).mean()
        assert row["server lr"] == accuracies.idxmax(), label  # the better of the two rates
        assert row["eval/accuracy"] == pytest.approx(accuracies.max(), abs=1e-4)
    assert table["epsilon"].nunique() == 1  # the count noise is paid inside the same budget
    assert table.loc["1", "final clip"] == 1 and table.loc["0.1", "final clip"] == 0.1
    final = table.loc["adaptive (median)", "final clip"]
    assert 0 < final and final != pytest.approx(0.1)  # initial_clip 0.1, then adapted
    for suffix in ("png", "pdf"):
        assert (tmp_path / "figures" / f"adaptive_clip_quick_clip.{suffix}").stat().st_size


@pytest.mark.slow
def test_adaptive_clip_shakespeare_quick_runs_the_clips_on_the_shakespeare_baseline(tmp_path):
    """Fixed clips 0.3 and 3 and the adaptive clip at quantiles 0.5 and 0.9 on
    baseline=shakespeare (its fixed-size cohorts), at one noise multiplier: one epsilon for all
    rows, a figure."""
    table = reproduce("adaptive_clip_shakespeare", tmp_path).set_index("clip")
    assert sorted(table.index) == ["0.3", "3", "adaptive (median)", "adaptive (quantile 0.9)"]
    assert table["epsilon"].nunique() == 1 and np.isfinite(table["epsilon"]).all()
    for quantile in ("adaptive (median)", "adaptive (quantile 0.9)"):
        final = table.loc[quantile, "final clip"]
        assert 0 < final and final != pytest.approx(0.1)  # initial_clip 0.1, then adapted
    runs = sorted((tmp_path / "experiments" / "adaptive_clip_shakespeare_quick").glob("*/"))
    configs = [
        yaml.safe_load((r / ".hydra" / "config.yaml").read_text())
        for r in runs
        if (r / ".hydra").is_dir()
    ]
    assert len(configs) == 4
    for cfg in configs:  # the tuned baseline's setting, under the experiment's noise
        assert cfg["model"]["units"] == [128] and cfg["strategy"]["sampling"] == "fixed"
        assert cfg["strategy"]["client_optimizer"]["learning_rate"] == pytest.approx(2.651, 1e-3)
        assert cfg["dp"]["noise_multiplier"] == 0.01 and cfg["dp"]["neighboring"] == "zero_out"
    figure = tmp_path / "figures" / "adaptive_clip_shakespeare_quick_clip"
    for suffix in ("png", "pdf"):
        assert figure.with_suffix(f".{suffix}").stat().st_size


def test_mf_error_quick_shows_banded_mf_below_tree_and_independent_noise(tmp_path):
    table = reproduce("mf_error", tmp_path).set_index("mechanism")
    assert set(table["neighboring"]) == {"zero_out"}
    for epochs in (1, 2):
        rmse = table[f"prefix_sum_rmse, epochs={epochs}"]
        assert rmse["bandmf banded"] < rmse["tree"] and rmse["bandmf banded"] < rmse["gaussian"]
        # one participation per epoch, equal epsilon: independent noise and banded MF (b = an
        # epoch's rounds) are both one Gaussian release per epoch, so they need the same noise
        noise = table[f"noise_multiplier, epochs={epochs}"]
        assert noise["bandmf banded"] == pytest.approx(noise["gaussian"], rel=1e-6)


@pytest.mark.slow
def test_baselines_quick_tabulates_each_baseline_beside_its_majority_class(tmp_path):
    """Two baselines (one with Shakespeare's embedding) at smoke size, at a fresh seed."""
    table = reproduce("baselines", tmp_path).set_index("dataset")
    assert sorted(table.index) == ["shakespeare", "vowels"]
    for dataset in table.index:
        accuracy, trivial = table.loc[dataset, ["eval/accuracy", "eval/trivial_accuracy"]]
        # a smoke-size model after 2 rounds may score 0 on a dozen held-out records; the
        # table must hold a real accuracy (not NaN) and the majority class beside it
        assert 0 <= accuracy <= 1 and 0 < trivial < 1, (dataset, accuracy, trivial)
    # neither input holds its target's current value: the last-value column is there, empty
    assert table["eval/last_value_accuracy"].isna().all()
    assert (table["rounds"] == 2).all()

    # --resume after an interruption: a finished run is kept as it is, a missing one is run
    runs = sorted((tmp_path / "experiments" / "baselines_quick").glob("*/summary.json"))
    assert len(runs) == 2
    kept, lost = sorted((r.parent for r in runs), key=lambda d: "vowels" not in d.name)
    assert "vowels" in kept.name and "shakespeare" in lost.name
    stamp = (kept / "metrics.csv").stat().st_mtime_ns
    shutil.rmtree(lost)
    resumed = reproduce("baselines", tmp_path, "--resume").set_index("dataset")
    assert (kept / "metrics.csv").stat().st_mtime_ns == stamp
    assert (lost / "summary.json").exists()
    assert resumed.loc["vowels", "train_seconds"] == table.loc["vowels", "train_seconds"]
    # seeded: the rerun is the same run, up to its time
    pd.testing.assert_frame_equal(
        resumed.drop(columns="train_seconds"), table.drop(columns="train_seconds")
    )


def test_privacy_utility_runs_each_user_level_cell_once_at_its_selected_clip():
    """Every (dataset, fixed-clip mechanism, budget) cell of the user-level rows is one sweep
    point, composed with the clip USER_CLIPS selected for it, under zero-out adjacency."""
    from dpfed.report.experiments import PRIVACY_UTILITY_SWEEPS, USER_CLIPS

    seen: dict[tuple[str, str, float], float] = {}
    for sweep in PRIVACY_UTILITY_SWEEPS:
        if not any(o.startswith("dp.clip=") for o in sweep) or "dp=dpsgd" in sweep:
            continue
        budgets = next(o for o in sweep if o.startswith("dp.target_epsilon=")).split("=")[1]
        for budget in budgets.split(","):
            point = [o for o in sweep if not o.startswith("dp.target_epsilon=")]
            cfg = compose_config(
                "experiment=privacy_utility", *point, f"dp.target_epsilon={budget}"
            )
            choice = {o.split("=")[0]: o.split("=")[1] for o in point if o.count("=") == 1}
            mechanism = "blt" if cfg.dp.get("factorization") == "blt" else choice["dp"]
            key = (choice["dataset"], mechanism, float(budget))
            assert key not in seen, key
            seen[key] = cfg.dp.clip
            assert cfg.dp.neighboring == "zero_out"
    expected = {
        (d, m, float(b)): c for (d, m), clips in USER_CLIPS.items() for b, c in clips.items()
    }
    assert seen == expected
    assert {m for _, m, _ in seen} == {"gaussian", "tree", "bandmf", "blt"}
    assert {b for _, _, b in seen} == {0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0}


_EVERY_RATE = {1, 2, 4, 8}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "adaptive_clip",
            {
                **{("fixed", c): _EVERY_RATE for c in (0.03, 0.1, 0.3, 1, 3)},
                ("adaptive", 0.5): _EVERY_RATE,
            },
        ),
        # the clips below the best need larger rates (a clipped step is rate x clip): 0.3 up to
        # 16 x, 1 up to 8 x, 3 and 10 and the adaptive clip (which collapses at 4 x) up to 4 x
        (
            "adaptive_clip_shakespeare",
            {
                ("fixed", 0.1): {1},
                ("fixed", 0.3): {*_EVERY_RATE, 16},
                ("fixed", 1): _EVERY_RATE,
                ("fixed", 3): {1, 2, 4},
                ("fixed", 10): {1, 2, 4},
                ("adaptive", 0.5): {1, 2, 4},
                ("adaptive", 0.9): {1, 2, 4},
            },
        ),
    ],
)
def test_adaptive_clip_grids_multiply_their_baselines_server_learning_rate(name, expected):
    """Every configuration (each fixed clip, each adaptive quantile) is run at a grid of server
    learning rates going up from the tuned baseline's own (the multiples of it given here),
    which its table chooses from; the rest of each run is the baseline under the experiment's
    noise."""
    from dpfed.report.experiments import SERVER_LR, sweep_points

    experiment = EXPERIMENTS[name]
    base = compose_config(f"experiment={name}", return_hydra_config=True)
    rates: dict[tuple, set] = {}
    for extra in experiment.sweeps:
        baseline = next(o for o in extra if o.startswith("baseline="))
        for point in [p for p in sweep_points(base, extra) if "seed=0" in p]:  # seeds alike
            cfg = compose_config(f"experiment={name}", *point)
            reference = compose_config(baseline)
            assert cfg.model == reference.model and cfg.dataset == reference.dataset
            assert cfg.strategy.client_optimizer == reference.strategy.client_optimizer
            assert cfg.strategy.server_optimizer.get("momentum") == (
                reference.strategy.server_optimizer.get("momentum")
            )
            adaptive = "Adaptive" in cfg.dp._target_
            arm = ("adaptive", cfg.dp.target_quantile) if adaptive else ("fixed", cfg.dp.clip)
            ratio = OmegaConf.select(cfg, SERVER_LR) / OmegaConf.select(reference, SERVER_LR)
            rates.setdefault(arm, set()).add(round(ratio, 9))
    assert rates == expected


@pytest.mark.parametrize("dataset", ["watch", "vowels"])
def test_privacy_utility_protects_watch_and_vowels_records_under_their_baseline(dataset):
    """The record-level rows: DP-SGD in clients on the tuned baseline (its data and cohort),
    one sweep per budget with that budget's searched settings, calibrated on
    epsilon_record (zero-out), beside the baseline's own non-private run."""
    from dpfed.build import build_dataset, build_privacy
    from dpfed.report.experiments import BASELINE_ROUNDS, PRIVACY_UTILITY_SWEEPS, RECORD_LEVEL

    sweeps = [s for s in PRIVACY_UTILITY_SWEEPS if f"dataset={dataset}" in s]
    assert {o for s in sweeps for o in s if o.startswith("dp=")} == {"dp=dpsgd", "dp=none"}
    baseline = compose_config(f"baseline={dataset}")
    plain = compose_config("experiment=privacy_utility", *next(s for s in sweeps if "dp=none" in s))
    assert plain.rounds == baseline.rounds == BASELINE_ROUNDS[dataset]
    assert plain.strategy == baseline.strategy and plain.model == baseline.model
    private = [s for s in sweeps if "dp=dpsgd" in s]
    assert sorted(
        float(o.split("=")[1]) for s in private for o in s if o.startswith("dp.target_epsilon")
    ) == [1, 2, 4, 8]
    for sweep in private:
        assert not any("," in o for o in sweep)  # one setting per budget
        epsilon = float(next(o for o in sweep if o.startswith("dp.target_epsilon")).split("=")[1])
        cfg = compose_config("experiment=privacy_utility", *sweep)
        assert cfg.dataset == baseline.dataset  # the baseline's data, not the experiment's
        assert cfg.strategy.clients_per_round == baseline.strategy.clients_per_round
        assert cfg.model.outputs == baseline.model.outputs
        for setting in RECORD_LEVEL[dataset][epsilon]:  # the searched settings arrive
            key, value = setting.split("=")
            selected = OmegaConf.select(cfg, key)  # a float field holds lr=12 as 12.0
            if OmegaConf.is_config(selected):
                selected = OmegaConf.to_container(selected)
            assert selected == yaml.safe_load(value), setting
        plan = build_privacy(cfg, build_dataset(cfg).population())
        budget = plan.budget_account
        assert budget.column == "epsilon_record" and budget.neighboring.value == "zero_out"
        assert plan.epsilon(budget) == pytest.approx(epsilon, rel=0.01)
        assert plan.epsilon(budget) <= epsilon


def test_privacy_utility_table_says_each_rows_unit_of_privacy():
    from dpfed.report.experiments import _privacy_utility

    frame = pd.DataFrame(
        {
            "choice/dataset": ["watch", "watch", "vowels", "vowels", "health", "health"],
            "choice/dp": ["dpsgd", "none", "dpsgd", "none", "gaussian", "none"],
            "override/dp.target_epsilon": ["2", None, "2", None, "2", None],
            # summary.json's q: only runs with Poisson record batches have one
            "record_sampling_probability": [0.084, None, None, None, None, None],
        }
    )
    out = _privacy_utility(frame, ROOT)
    units = dict(zip(out["choice/dp"] + "/" + out["dataset"], out["unit of privacy"], strict=False))
    poisson, shuffled = (
        "record (DP-SGD in clients, Poisson batches)",
        "record (DP-SGD in clients, shuffled batches)",
    )
    assert units["dpsgd/watch"] == units["none/watch"] == poisson  # the inf cell joins its row
    assert units["dpsgd/vowels"] == units["none/vowels"] == shuffled
    assert units["gaussian/health"] == units["none/health"] == "user"
    # each dataset's non-private run fills the inf column of its own mechanisms' rows only
    plain = out[out["choice/dp"] == "none"]
    assert len(plain) == 3
    assert set(plain.loc[plain["dataset"] == "watch", "mechanism"]) == {"dpsgd"}
    assert set(plain.loc[plain["dataset"] == "health", "mechanism"]) == {"gaussian"}


RECORDS = ROOT / "results" / "experiments" / "privacy_utility"


def test_the_committed_privacy_utility_table_is_made_from_its_committed_runs(tmp_path):
    """results/experiments/privacy_utility holds the run records (summary.json, metrics.csv) of
    the committed table: remaking the table from them gives the committed CSV, cell for cell,
    and every sweep point of the experiment has its 3 seeds there."""
    from dpfed.report.collect import summaries
    from dpfed.report.experiments import PRIVACY_UTILITY_SWEEPS
    from scripts.make_table import write_experiment_tables

    write_experiment_tables("privacy_utility", RECORDS, tmp_path)
    made = pd.read_csv(tmp_path / "privacy_utility.csv")
    committed = pd.read_csv(ROOT / "results" / "tables" / "privacy_utility.csv")
    pd.testing.assert_frame_equal(made, committed)
    runs = summaries(RECORDS)
    assert (runs["status"] == "completed").all()
    points = sum(
        int(np.prod([len(o.split("=", 1)[1].split(",")) for o in sweep]))
        for sweep in PRIVACY_UTILITY_SWEEPS
    )
    assert len(runs) == 3 * points


def test_the_committed_privacy_utility_runs_epsilons_recompute():
    """One committed run per row of the table: its epsilons recompute from its record alone,
    with dp-accounting and from its settings (scripts/recompute_epsilon.py), and the private ones
    stay within their budget."""
    from dpfed.report.collect import mechanism_labels, summaries
    from dpfed.report.experiments import RECORD_LEVEL
    from scripts.recompute_epsilon import check_run

    runs = summaries(RECORDS)
    runs = runs.assign(mechanism=mechanism_labels(runs))
    picked = runs.groupby(["choice/dataset", "mechanism"]).first()["run"]
    assert len(picked) >= 12
    for run in picked:
        for record in check_run(run):
            assert record["match"], record
    private = runs[runs["mechanism"] != "none"]
    column = np.where(private["choice/dataset"].isin(RECORD_LEVEL), "epsilon_record", "epsilon")
    spent = [row[c] for (_, row), c in zip(private.iterrows(), column, strict=True)]
    budget = pd.to_numeric(private["override/dp.target_epsilon"])
    assert (np.array(spent) <= budget.to_numpy() * (1 + 1e-9)).all()


def test_the_audit_keeps_the_one_step_smart_home_task_its_table_was_made_from():
    """The default task is two hours ahead; the audit (privacy, not utility) pins horizon 1, whose
    data are the old default's bit for bit (tests/data/test_synthetic.py's digest)."""
    assert compose_config().dataset.horizon == 4
    for preset in ("audit", "audit_quick"):
        assert compose_config(f"experiment={preset}").dataset.horizon == 1, preset
