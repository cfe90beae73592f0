"""Tables and plots come from run folders alone: summary.json, .hydra overrides, metrics.csv."""

from __future__ import annotations

import json
import math
import re
import shutil

import pandas as pd
import pytest
import yaml

from dpfed.report.collect import curves, summaries, table


def fake_run(root, name, noise, dp, epsilon, accuracy, rounds=3):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- dp.noise_multiplier={noise}\n- dp={dp}\n")
    summary = {
        "epsilon": epsilon,
        "eval/accuracy": accuracy,
        "rounds": rounds,
        "choices": {"dp": dp, "dataset": "health"},
        "dp_events": [{"x": 1}],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame(
        {
            "round": range(1, rounds + 1),
            "epsilon": [epsilon * r / rounds for r in range(1, rounds + 1)],
            "eval/accuracy": [accuracy] * rounds,
        }
    ).to_csv(run / "metrics.csv", index=False)


def private_run(run, event, count, **fields):
    """A finished run's summary.json with one user-level add/remove account: ``count`` x
    ``event``; ``fields`` add to or replace the summary's."""
    from dpfed.privacy.accounting import event_to_dict

    account = {
        "column": "epsilon",
        "unit": "user",
        "neighboring": "add_remove",
        "accounting_relation": "add_or_remove_one",
        "dp_events": [{"event": event_to_dict(event), "count": count}],
    }
    summary = {
        "status": "completed",
        "accountant": "rdp",
        "delta": 1e-5,
        "choices": {"dp": "gaussian"},
        "accounts": [account],
        **fields,
    }
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def sweep(tmp_path):
    fake_run(tmp_path, "0", 0.8, "gaussian", 9.0, 0.70)
    fake_run(tmp_path, "1", 1.6, "gaussian", 3.0, 0.66)
    fake_run(tmp_path, "2", 1.6, "gaussian", 3.0, 0.62)  # a repeat: mean and std
    fake_run(tmp_path, "3", 0.0, "none", float("inf"), 0.75)
    return tmp_path


def test_summaries_collect_choices_overrides_and_scalars(sweep):
    frame = summaries(sweep)
    assert len(frame) == 4
    assert set(frame["choice/dp"]) == {"gaussian", "none"}
    assert sorted(frame["override/dp.noise_multiplier"]) == ["0.0", "0.8", "1.6", "1.6"]
    assert "dp_events" not in frame.columns  # only scalars


def test_table_averages_repeats_and_reports_spread(sweep):
    result = table(summaries(sweep), ["override/dp.noise_multiplier"], [], ["eval/accuracy"])
    assert result.loc["1.6", "eval/accuracy"] == pytest.approx(0.64)
    assert result.loc["1.6", "eval/accuracy std"] == pytest.approx(0.0283, abs=1e-4)
    assert result.loc["1.6", "runs"] == 2


def test_table_names_a_missing_column(sweep):
    with pytest.raises(KeyError, match="eval/f1"):
        table(summaries(sweep), ["choice/dp"], [], ["eval/f1"])


def test_table_averages_overrides_read_as_text_and_names_a_value_that_is_no_number(sweep, capsys):
    """The first version crashed with pandas' own traceback on a text value column."""
    from scripts.make_table import main as make_table

    result = table(summaries(sweep), ["choice/dp"], [], ["override/dp.noise_multiplier"])
    assert result.loc["gaussian", "override/dp.noise_multiplier"] == pytest.approx(4.0 / 3)
    assert (
        make_table([str(sweep), "--rows", "override/dp.noise_multiplier", "--values", "choice/dp"])
        == 2
    )
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "'choice/dp'" in err and "'gaussian'" in err
    assert "--rows or --columns" in err and "Traceback" not in err


def test_curves_stack_every_runs_rounds(sweep):
    data = curves(sweep)
    assert len(data) == 12 and data["run"].nunique() == 4


def test_scripts_write_a_table_and_a_figure(sweep, tmp_path):
    from scripts.make_table import main as make_table
    from scripts.plot import main as plot

    out = tmp_path / "tables" / "t.md"
    assert make_table([str(sweep), "--rows", "choice/dp", "--out", str(out)]) == 0
    assert "| gaussian" in out.read_text() and "inf" in out.read_text()
    figure = tmp_path / "f.png"
    assert plot([str(sweep), "--out", str(figure), "--x", "round", "--y", "epsilon"]) == 0
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert make_table([str(tmp_path / "empty"), "--rows", "choice/dp"]) == 2


def split_markdown_row(line: str) -> list[str]:
    """Cells of a Markdown table row; an escaped ``\\|`` stays inside its cell."""
    import re

    assert line.startswith("|") and line.endswith("|")
    return [c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])]


def split_latex_row(line: str) -> list[str]:
    import re

    assert line.endswith(r"\\")
    return re.split(r"(?<!\\)&", line[: -len(r"\\")])


@pytest.fixture
def budget_sweep(tmp_path):
    """Two mechanisms x three budgets x two seeds, the privacy-utility layout."""
    for i, (dp, budget, seed) in enumerate(
        (dp, b, s) for dp in ("gaussian", "tree") for b in (2.0, 8.0, float("inf")) for s in (0, 1)
    ):
        run = tmp_path / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- dp={dp}\n- seed={seed}\n")
        summary = {
            "eval/accuracy": 0.5 + 0.01 * i,
            "epsilon": budget,
            "status": "completed",
            "budget": budget,
            "choices": {"dp": dp, "dataset": "smart_home"},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    run = tmp_path / "diverged"  # a run whose loss went non-finite: left out, with a note
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- dp=gaussian\n- seed=2\n")
    (run / "summary.json").write_text(
        json.dumps(
            {
                "eval/accuracy": float("nan"),
                "epsilon": 2.0,
                "status": "diverged",
                "budget": 2.0,
                "diverged_round": 1,
                "choices": {"dp": "gaussian", "dataset": "smart_home"},
            }
        )
    )
    return tmp_path


def test_pivoted_tables_name_metric_and_value_and_parse(budget_sweep, capsys):
    """The first version wrote headers like `eval/accuracy | 2` that break the Markdown table."""
    from scripts.make_table import main as make_table

    args = [
        str(budget_sweep),
        "--rows",
        "choice/dp",
        "--columns",
        "budget",
        "--values",
        "eval/accuracy",
        "epsilon",
    ]
    assert make_table([*args, "--format", "markdown"]) == 0
    out, err = capsys.readouterr()
    assert "leaving out diverged run" in err
    lines = out.strip().splitlines()
    header, rule, *rows = lines
    cells = split_markdown_row(header)
    assert "eval/accuracy, budget=2" in cells and "epsilon, budget=inf" in cells
    assert len(split_markdown_row(rule)) == len(cells)
    assert all(len(split_markdown_row(r)) == len(cells) for r in rows) and len(rows) == 2
    assert make_table([*args, "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    spec = re.search(r"\\begin\{tabular\}\{(l+)\}", latex).group(1)
    body = [line for line in latex.splitlines() if line.endswith(r"\\")]
    assert len(body) == 3 and all(len(split_latex_row(line)) == len(spec) for line in body)
    assert r"\toprule" in latex and r"\bottomrule" in latex and latex.count("{") == latex.count("}")
    assert "eval/accuracy, budget=2" in latex and r"\_" not in latex.split(r"\toprule")[0]
    assert not re.search(r"(?<!\\)[_#%]", latex.replace(r"\begin{tabular}", ""))
    assert r"$\pm$" in latex  # two seeds per cell: mean and spread
    assert "nan" not in latex.lower()  # the diverged run is not averaged in


def test_make_table_prints_the_tuning_cost_of_releasing_the_best_run(tmp_path, capsys):
    """--tuning reads the runs as a random search's trials (Papernot & Steinke 2022)."""

    import dp_accounting

    from dpfed.privacy.tuning import composed_epsilon, tuning_epsilon
    from scripts.make_table import main

    runs = []
    for i, noise in enumerate((0.8, 1.2, 2.0)):
        event = dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(noise))
        private_run(tmp_path / f"{i}_lr", event, 50, epsilon=1.0 + i, **{"eval/accuracy": 0.5})
        runs.append([(event, 50)])
    assert main([str(tmp_path), "--values", "epsilon", "--tuning", "geometric"]) == 0
    out = capsys.readouterr().out
    want = tuning_epsilon(
        runs, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, 1e-5, distribution="geometric"
    )
    assert f"is epsilon {want:.4g} at delta 1e-05 (add_remove)" in out
    one = composed_epsilon(runs[0], dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, 1e-5)
    assert "mean 3 (3 runs here)" in out and f"at most {one:.4g} for one trial" in out
    assert one < want  # releasing the best of several costs more than one run
    # a private search states the mean it drew its number of trials with
    assert (
        main([str(tmp_path), "--values", "epsilon", "--tuning", "geometric", "--tuning-mean", "8"])
        == 0
    )
    out = capsys.readouterr().out
    larger = tuning_epsilon(
        runs,
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        1e-5,
        mean=8,
        distribution="geometric",
    )
    assert larger > want and f"mean 8 (3 runs here), is epsilon {larger:.4g}" in out
    assert main([str(tmp_path), "--tuning", "poisson", "--tuning-mean", "0.5"]) == 2
    assert "--tuning-mean=0.5 is not allowed; allowed: >= 1" in capsys.readouterr().err


def test_the_tuning_cost_uses_the_law_the_search_drew_its_trials_from(tmp_path, capsys):
    """A search with ``n_trials: ${dpfed.random_trials:M,law}`` records M and the law in each
    trial's .hydra/hydra.yaml: the bound is for them, not for the number of trials it happened
    to draw (a review found a Poisson(10) search that drew 6 costed at mean 6: 3.56, not 4.14).
    Contradicting flags are errors; a fixed number of trials or a grid is flagged as not covered
    by the theorem."""
    import dp_accounting

    from dpfed.privacy.tuning import tuning_epsilon
    from dpfed.report.collect import declared_trials, tuning_cost
    from scripts.make_table import main

    event = dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.0))

    def search(name, n_trials, runs=6):
        folders = []
        for i in range(runs):
            run = tmp_path / name / str(i)
            (run / ".hydra").mkdir(parents=True)
            sweeper = {
                "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                "direction": "maximize",
            }
            if n_trials is not None:
                sweeper["n_trials"] = n_trials
            (run / ".hydra" / "hydra.yaml").write_text(
                yaml.safe_dump({"hydra": {"sweeper": sweeper}})
            )
            private_run(run, event, 50, epsilon=1.0)
            folders.append(run)
        return folders

    drawn = search("drawn", "${dpfed.random_trials:10,poisson}")
    assert declared_trials(drawn[0]) == {
        "kind": "random",
        "mean": 10.0,
        "distribution": "poisson",
        "seeded": False,
    }
    (row,) = tuning_cost(drawn, "poisson")
    add = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    at_10 = tuning_epsilon([[(event, 50)]] * 6, add, 1e-5, mean=10, distribution="poisson")
    at_6 = tuning_epsilon([[(event, 50)]] * 6, add, 1e-5, mean=6, distribution="poisson")
    assert row["covered"] and row["mean"] == 10 and row["epsilon_tuned"] == pytest.approx(at_10)
    assert at_6 < at_10  # what the realised count as the mean would have understated
    assert main([str(tmp_path / "drawn"), "--values", "epsilon", "--tuning", "poisson"]) == 0
    out = capsys.readouterr().out
    assert f"mean 10 (6 runs here), is epsilon {at_10:.4g}" in out
    assert "(the search drew its number of trials: poisson, mean 10)" in out
    assert "NOT COVERED" not in out
    # flags that contradict the recorded law are refused, not obeyed
    assert (
        "the search drew its trials from a poisson law (${dpfed.random_trials:...}), not geo"
        in tuning_cost(drawn, "geometric")[0]["error"]
    )
    assert "drew its trials with mean 10, not 6" in tuning_cost(drawn, "poisson", 6)[0]["error"]
    assert tuning_cost(drawn, "poisson", 10)[0]["epsilon_tuned"] == row["epsilon_tuned"]
    seeded = search("seeded", "${dpfed.random_trials:4, 'geometric', 3}", runs=2)  # quoted
    assert declared_trials(seeded[0]) == {
        "kind": "random",
        "mean": 4.0,
        "distribution": "geometric",
        "seeded": True,
    }
    assert main([str(tmp_path / "seeded"), "--values", "epsilon", "--tuning", "geometric"]) == 0
    assert (
        "holds only while the seed, and so the number of trials, stays secret"
        in capsys.readouterr().out
    )
    # two runs of one search (results/searches/<name>/<time>/...): each drew its own count;
    # pooled they are not one draw at mean 10 (a review found 8 trials costed at mean 4)
    again = search("drawn_again", "${dpfed.random_trials:10,poisson}")
    assert "come from 2 searches" in tuning_cost([*drawn, *again], "poisson")[0]["error"]
    # a fixed number of trials, a grid, nothing recorded: computed, and said to be uncovered
    fixed = search("fixed", 6)
    assert declared_trials(fixed[0]) == {"kind": "fixed", "trials": 6}
    assert declared_trials(search("grid", None, runs=1)[0]) == {"kind": "grid"}
    assert declared_trials(tmp_path) == {"kind": "unknown"}
    (row,) = tuning_cost(fixed, "poisson")
    assert not row["covered"] and row["mean"] == 6
    assert main([str(tmp_path / "fixed"), "--values", "epsilon", "--tuning", "poisson"]) == 0
    assert (
        "NOT COVERED: this sweep ran a fixed number of trials (n_trials=6)"
        in capsys.readouterr().out
    )
    # trials of two searches that chose their numbers differently are not one search
    assert "chose their trials differently" in tuning_cost([*drawn, *fixed], "poisson")[0]["error"]


def test_the_seeds_of_a_trial_compose_in_the_tuning_cost(tmp_path):
    """A search run with optimized_seeds > 1 writes each trial's seeds in <trial>/seed_<s>/:
    the tuning cost reads each trial as one release whose runs compose (same data)."""
    import json

    import dp_accounting

    from dpfed.privacy.tuning import composed_epsilon, tuning_epsilon
    from dpfed.report.collect import run_dirs, summaries, trial_dir, tuning_cost

    relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    trials = []
    for t, noise in enumerate((1.0, 1.5)):
        trial = tmp_path / str(t)
        (trial / ".hydra").mkdir(parents=True)
        (trial / ".hydra" / "overrides.yaml").write_text(f"- dp.noise_multiplier={noise}\n")
        events = []
        for seed in (0, 1):
            event = dp_accounting.PoissonSampledDpEvent(
                0.05, dp_accounting.GaussianDpEvent(noise + 0.1 * seed)
            )
            private_run(
                trial / f"seed_{seed}",
                event,
                40,
                seed=seed,
                epsilon=composed_epsilon([(event, 40)], relation, 1e-5),
                config={"seed": seed, "optimized_seeds": 2},
            )
            events.append((event, 40))
        trials.append(events)
    folders = run_dirs(tmp_path)
    assert len(folders) == 4 and {trial_dir(f).name for f in folders} == {"0", "1"}
    frame = summaries(tmp_path)  # a seed reads its trial's overrides and its own seed
    pairs = zip(frame["override/dp.noise_multiplier"], frame["seed"], strict=True)
    assert sorted(pairs) == [("1.0", 0), ("1.0", 1), ("1.5", 0), ("1.5", 1)]
    (row,) = tuning_cost(folders, "poisson")
    assert (row["runs"], row["trials"], row["mean"]) == (4, 2, 2.0)
    assert row["epsilon_tuned"] == tuning_epsilon(trials, relation, 1e-5, distribution="poisson")
    worst_trial = composed_epsilon(trials[0], relation, 1e-5)
    assert row["epsilon_one_trial_max"] == pytest.approx(worst_trial)
    assert row["epsilon_one_run_max"] < worst_trial < row["epsilon_tuned"]
    # read as four independent one-run trials, the same runs would cost less: not composed
    assert (
        tuning_epsilon([[e] for t in trials for e in t], relation, 1e-5, mean=2.0)
        < row["epsilon_tuned"]
    )
    from scripts.make_table import tuning_lines

    (line,) = tuning_lines([str(f) for f in folders], "poisson")
    assert "mean 2 (2 trials of 4 runs here, a trial's seeds composed)" in line
    assert f"is epsilon {row['epsilon_tuned']:.4g}" in line
    assert f"at most {worst_trial:.4g} for one trial" in line
    # the grouping follows each run's recorded optimized_seeds, not the folders' Hydra files
    shutil.rmtree(tmp_path / "0" / ".hydra")
    assert tuning_cost(folders, "poisson")[0]["epsilon_tuned"] == row["epsilon_tuned"]
    # a multi-seed run outside a seed_<s> folder cannot be grouped: refused, not undercounted
    moved = tmp_path / "1_moved"
    shutil.copytree(folders[-1], moved)
    (bad,) = tuning_cost([*folders, moved], "poisson")
    assert "error" in bad and "1_moved" in bad["error"] and "epsilon_tuned" not in bad
    # a folder named seed_<s> holding a run of one seed is a trial of its own
    lone = tmp_path / "other" / "seed_3"
    shutil.copytree(folders[0], lone)
    summary = json.loads((lone / "summary.json").read_text())
    summary["config"]["optimized_seeds"] = 1
    (lone / "summary.json").write_text(json.dumps(summary))
    assert trial_dir(lone) == lone
    assert tuning_cost([lone, folders[0]], "poisson")[0]["trials"] == 2


def test_audited_runs_compare_canary_records_in_clients_with_the_record_level_epsilon():
    from dpfed.report.collect import audited

    frame = pd.DataFrame(
        {
            "choice/dp": ["dpsgd", "dpsgd", "gaussian"],
            "audit_bounds": ["epsilon_record", "epsilon", None],
            "epsilon": [math.inf, 2.5, 1.5],
            "epsilon_record": [3.0, None, None],
            # dp.neighboring unset: replace-one users, zero-out records in Poisson batches
            "unit": ["user", "record", "user"],
            "neighboring": ["replace_one", "add_remove", "add_remove"],
            "epsilon_record/unit": ["record", None, None],
            "epsilon_record/neighboring": ["zero_out", None, None],
        }
    )
    out = audited(frame)
    assert list(out["epsilon"]) == [3.0, 2.5, 1.5]
    assert list(out["mechanism"]) == ["dpsgd (in clients)", "dpsgd", "gaussian"]
    # each epsilon beside its own account's relation (the first version kept the users')
    assert list(out["neighboring"]) == ["zero_out", "add_remove", "add_remove"]
    assert list(out["unit"]) == ["record", "record", "user"]
    assert frame.loc[0, "epsilon"] == math.inf  # the input is left as it was
    assert frame.loc[0, "neighboring"] == "replace_one"
    # a run that recorded no accounts: its record-level relation is unknown, not the users'
    old = audited(frame.drop(columns=["epsilon_record/unit", "epsilon_record/neighboring"]))
    assert pd.isna(old.loc[0, "neighboring"]) and old.loc[1, "neighboring"] == "add_remove"


def test_summaries_name_every_accounts_relation_and_the_last_line_prints_it(tmp_path):
    """DP-SGD in clients with dp.neighboring unset: the users' account is replace-one (and not
    private), the records' zero-out. Tables and the run's last line put each epsilon beside its
    own relation (an independent review found the users' relation beside epsilon_record)."""
    from dpfed.io.provenance import result_line
    from dpfed.report.collect import summaries

    fake_run(tmp_path, "0", 0.0, "dpsgd", math.inf, 0.5)
    path = tmp_path / "0" / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(
        unit="user",
        neighboring="replace_one",
        delta=1e-5,
        accountant="rdp",
        epsilon_record=8.443,
        rounds=20,
        status="completed",
        accounts=[
            {"column": "epsilon", "unit": "user", "neighboring": "replace_one"},
            {"column": "epsilon_record", "unit": "record", "neighboring": "zero_out"},
        ],
    )
    path.write_text(json.dumps(summary))
    row = summaries(tmp_path).iloc[0]
    assert (row["neighboring"], row["epsilon_record/neighboring"]) == ("replace_one", "zero_out")
    assert row["epsilon_record/unit"] == "record" and "epsilon/neighboring" not in row
    line = result_line(summary, "out")
    assert (
        "epsilon inf (not private) | epsilon_record 8.44 at delta 1e-05 (record-level, "
        "zero_out, rdp)" in line
    ), line
    summary["epsilon"] = 2.0
    assert "epsilon 2 at delta 1e-05 (user-level, replace_one, rdp)" in result_line(summary, "o")
    del summary["accounts"]  # recorded before accounts were: no relation rather than the users'
    line = result_line(summary, "out")
    assert "epsilon_record 8.44 |" in line and line.count("replace_one") == 1, line


def test_plots_put_record_level_runs_on_their_epsilon_record(tmp_path):
    """DP-SGD in clients without user-level noise: epsilon is inf, the run's privacy is its
    epsilon_record; the utility and epsilon plots must use it and say record-level."""
    from scripts.plot import labelled_runs, plot_kind, privacy_axis

    fake_run(tmp_path, "0", 1.0, "gaussian", 2.0, 0.80)
    fake_run(tmp_path, "1", 3.0, "dpsgd", math.inf, 0.40)
    fake_run(tmp_path, "2", 0.0, "none", math.inf, 0.90)
    for name, unit in (("0", "user"), ("1", "user"), ("2", None)):
        path = tmp_path / name / "summary.json"
        summary = json.loads(path.read_text())
        summary.update(unit=unit, delta=1e-5, neighboring="zero_out")
        if name == "1":
            summary["epsilon_record"] = 4.0
            summary["accounts"] = [  # the records' relation is its own
                {"column": "epsilon", "unit": "user", "neighboring": "zero_out"},
                {"column": "epsilon_record", "unit": "record", "neighboring": "replace_one"},
            ]
            metrics = pd.read_csv(tmp_path / name / "metrics.csv")
            metrics["epsilon_record"] = [1.0, 2.5, 4.0]
            metrics.to_csv(tmp_path / name / "metrics.csv", index=False)
        path.write_text(json.dumps(summary))
    frame = labelled_runs(tmp_path).set_index("mechanism")
    assert frame.loc["dpsgd", "budget"] == 4.0 and frame.loc["dpsgd", "unit"] == "record"
    assert frame.loc["gaussian", "budget"] == 2.0 and frame.loc["gaussian", "unit"] == "user"
    assert math.isinf(frame.loc["none", "budget"])
    assert frame.loc["dpsgd", "neighboring"] == "replace_one"
    axis = privacy_axis(frame.reset_index())
    assert axis.startswith("record/user-level epsilon") and "replace_one/zero_out adjacency" in axis
    assert plot_kind("epsilon", tmp_path, tmp_path / "figures" / "eps")
    assert plot_kind("utility", tmp_path, tmp_path / "figures" / "utility")


def test_the_communication_target_is_the_experiments_not_the_folders(tmp_path):
    """The first version read the target from the sweep folder's name: a quick sweep made in
    another folder counted rounds to the full experiment's target, which its few rounds do not
    reach."""
    from dpfed.report.experiments import experiment_table

    root = tmp_path / "my_sweep"
    for run, (strategy, accuracies) in enumerate(
        [("fedavg", [0.4, 0.6, 0.8]), ("fedsgd", [0.3, 0.45, 0.55])]
    ):
        fake_run(root, str(run), 1.0, "none", math.inf, accuracies[-1])
        summary = json.loads((root / str(run) / "summary.json").read_text())
        summary.update({"total_bytes_down": 300, "total_bytes_up": 600, "status": "completed"})
        summary["choices"]["strategy"] = strategy
        (root / str(run) / "summary.json").write_text(json.dumps(summary))
        pd.DataFrame(
            {"round": [1, 2, 3], "eval/accuracy": accuracies, "bytes_down": 100, "bytes_up": 200}
        ).to_csv(root / str(run) / "metrics.csv", index=False)
    quick = experiment_table("communication_quick", root)
    assert quick.loc["fedavg", "rounds to acc 0.5"] == 2
    assert quick.loc["fedavg", "bytes to acc 0.5"] == 600
    assert quick.loc["fedsgd", "rounds to acc 0.5"] == 3
    full = experiment_table("communication", root)
    assert full.loc["fedavg", "rounds to acc 0.7"] == 3
    assert math.isnan(full.loc["fedsgd", "rounds to acc 0.7"])


def test_adaptive_clipping_is_named_by_its_target_quantile_in_tables_and_figures(
    tmp_path, monkeypatch
):
    import matplotlib.pyplot as plt

    from dpfed.report import figures
    from dpfed.report.experiments import EXPERIMENTS

    runs = pd.DataFrame(
        {
            "choice/dp": ["gaussian", "gaussian", "adaptive", "adaptive", "adaptive"],
            "clip": [0.3, 3.0, 0.1, 0.1, 0.1],
            "target_quantile": [0.5, 0.5, 0.5, 0.9, 0.9],
            "dp/clip": [0.3, 3.0, 1.4, 2.2, 2.6],
            "eval/accuracy": [0.3, 0.44, 0.40, 0.43, 0.45],
        }
    )
    rows = EXPERIMENTS["adaptive_clip_shakespeare"].derive(runs, tmp_path)
    assert list(rows["clip"]) == [
        "0.3",
        "3",
        "adaptive (median)",
        "adaptive (quantile 0.9)",
        "adaptive (quantile 0.9)",
    ]
    assert list(rows["final clip"]) == [0.3, 3.0, 1.4, 2.2, 2.6]
    legends = []
    monkeypatch.setattr(
        figures,
        "save",
        lambda fig, out: legends.extend(
            t.get_text() for legend in fig.legends for t in legend.get_texts()
        ),
    )
    adaptive = runs[runs["choice/dp"] == "adaptive"]
    figures.clip_figure(
        runs[runs["choice/dp"] == "gaussian"],
        adaptive,
        tmp_path / "f",
        y="eval/accuracy",
        ylabel="accuracy",
        note="",
    )
    plt.close("all")
    # one line per quantile, each at its own runs' mean final clip
    assert "adaptive (median): final clip 1.4" in legends
    assert "adaptive (quantile 0.9): final clip 2.4" in legends


def _clip_run(root, name, dp, clip, server_lr, accuracy, seed, final_clip=None):
    """A finished run of the adaptive-clip experiment as its summary.json holds it."""
    run = root / name
    run.mkdir(parents=True)
    summary = {
        "status": "completed",
        "epsilon": 4.2,
        "neighboring": "add_remove",
        "seed": seed,
        "clip": clip,
        "eval/accuracy": accuracy,
        "dp/clip": final_clip,
        "choices": {"dp": dp, "dataset": "smart_home"},
        "config": {
            "seed": seed,
            "strategy": {"server_optimizer": {"learning_rate": server_lr, "momentum": 0.9}},
        },
    }
    (run / "summary.json").write_text(json.dumps(summary))


def test_the_adaptive_clip_table_keeps_each_clip_at_its_best_server_learning_rate(
    tmp_path, monkeypatch
):
    """Andrew et al. 2021 tune the server learning rate per configuration: each fixed clip and
    the adaptive clip is tabulated at the rate whose mean over seeds is highest (a rate that is
    best at one seed only does not win), with that rate named; the figure draws every rate's
    fixed-clip curve and the tuned one."""
    from dpfed.report import figures
    from dpfed.report.experiments import experiment_table

    grid = {  # (dp, clip, server lr): accuracy at seeds 0 and 1; final clip of adaptive runs
        ("gaussian", 0.1, 0.2): (0.60, 0.62),
        ("gaussian", 0.1, 0.8): (0.70, 0.66),
        ("gaussian", 1.0, 0.2): (0.75, 0.71),
        ("gaussian", 1.0, 0.8): (0.50, 0.80),
        ("adaptive", None, 0.2): (0.65, 0.67),
        ("adaptive", None, 0.8): (0.74, 0.72),
    }
    for k, ((dp, clip, rate), accuracies) in enumerate(grid.items()):
        for seed, accuracy in enumerate(accuracies):
            final = 0.2 + rate if dp == "adaptive" else None
            _clip_run(tmp_path, f"{k}_seed{seed}", dp, clip, rate, accuracy, seed, final)
    result = experiment_table("adaptive_clip", tmp_path).reset_index()
    chosen = {row["clip"]: row["server lr"] for _, row in result.iterrows()}
    # clip 1 at 0.8 wins seed 1 (0.80) but loses on the mean (0.65 against 0.73)
    assert chosen == {"0.1": 0.8, "1": 0.2, "adaptive (median)": 0.8}
    assert list(result["runs"]) == [2, 2, 2]
    assert list(result["server lrs tried"]) == [2, 2, 2]
    accuracy = dict(zip(result["clip"], result["eval/accuracy"], strict=True))
    assert accuracy == pytest.approx({"0.1": 0.68, "1": 0.73, "adaptive (median)": 0.73})
    final = dict(zip(result["clip"], result["final clip"], strict=True))
    assert final["adaptive (median)"] == pytest.approx(1.0)  # the tuned runs' own final clip
    assert set(result["neighboring"]) == {"add_remove"}

    legends, curves = [], {}

    def keep(fig, out):
        legends.extend(t.get_text() for legend in fig.legends for t in legend.get_texts())
        curves.update({line.get_label(): list(line.get_ydata()) for line in fig.axes[0].lines})
        curves.update(
            {bars.get_label(): list(bars.lines[0].get_ydata()) for bars in fig.axes[0].containers}
        )

    monkeypatch.setattr(figures, "save", keep)
    import scripts.plot as plot

    plot.plot_clip(tmp_path, tmp_path / "fig")
    assert {
        "fixed clip, server lr 0.2",
        "fixed clip, server lr 0.8",
        "fixed clip, best server lr",
    } <= set(legends)
    assert "adaptive (median), server lr 0.8: final clip 1" in legends
    # the bold curve is each clip at the table's rate: clip 0.1 at 0.8, clip 1 at 0.2
    bold = next(values for label, values in curves.items() if label.endswith("best server lr"))
    assert bold == pytest.approx([0.68, 0.73])
    assert curves["fixed clip, server lr 0.8"] == pytest.approx([0.68, 0.65])


def test_best_of_compares_settings_over_the_same_runs_only():
    """A setting whose other seeds failed cannot win on its survivors; a missing setting is a
    setting of its own; a tie goes to the first; groups without the metric keep their first."""
    from dpfed.report.collect import best_of

    uneven = pd.DataFrame({"clip": ["1"] * 3, "lr": [0.2, 0.2, 0.8], "acc": [0.6, 0.62, 0.99]})
    assert list(best_of(uneven, ["clip"], "lr", "acc")["lr"]) == [0.2, 0.2]
    unknown = pd.DataFrame({"clip": ["1"] * 3, "lr": [0.2, None, 0.8], "acc": [0.6, 0.9, 0.5]})
    assert best_of(unknown, ["clip"], "lr", "acc")["lr"].isna().tolist() == [True]
    tie = pd.DataFrame({"clip": ["1", "1", "3"], "lr": [0.8, 0.2, 0.2], "acc": [0.5, 0.5, 0.7]})
    assert best_of(tie, ["clip"], "lr", "acc")["lr"].tolist() == [0.8, 0.2]
    blank = pd.DataFrame({"clip": ["1", "1"], "lr": [0.8, 0.2], "acc": [None, None]})
    assert best_of(blank, ["clip"], "lr", "acc")["lr"].tolist() == [0.8]
    overall = pd.DataFrame({"lr": [0.2, 0.2, 0.8, 0.8], "acc": [0.5, 0.9, 0.8, 0.8]})
    assert best_of(overall, [], "lr", "acc")["lr"].tolist() == [0.8, 0.8]  # mean, not max
    untuned = pd.DataFrame({"clip": ["1", "3"], "lr": [None, None], "acc": [0.5, 0.7]})
    assert best_of(untuned, ["clip"], "lr", "acc").equals(untuned)


def test_the_utility_figure_draws_each_datasets_reference_lines(tmp_path, monkeypatch):
    """No DP, the trivial predictor and, where the runs recorded them, the last value and the
    oracle: one horizontal line each, on its dataset's panel only."""
    import scripts.plot as plot

    fake_run(tmp_path, "0", 1.0, "gaussian", 2.0, 0.74)
    fake_run(tmp_path, "1", 0.0, "none", math.inf, 0.76)
    fake_run(tmp_path, "2", 1.0, "gaussian", 2.0, 0.85)
    for name, dataset, extra in (
        ("0", "smart_home", {"eval/last_value_accuracy": 0.68, "eval/oracle_accuracy": 0.81}),
        ("1", "smart_home", {"eval/last_value_accuracy": 0.70, "eval/oracle_accuracy": 0.83}),
        ("2", "health", {}),
    ):
        path = tmp_path / name / "summary.json"
        summary = json.loads(path.read_text())
        summary["choices"]["dataset"] = dataset
        summary.update(
            trivial_predictor="majority class", **{"eval/trivial_accuracy": 0.6}, **extra
        )
        path.write_text(json.dumps(summary))
    drawn = {}
    monkeypatch.setattr(plot, "utility_figure", lambda *a, baselines, **k: drawn.update(baselines))
    plot.plot_utility(tmp_path, tmp_path / "utility")
    assert drawn["smart_home"] == pytest.approx(
        {"no DP": 0.76, "majority class": 0.6, "last value": 0.69, "oracle": 0.82}
    )
    assert drawn["health"] == {"majority class": 0.6}
    # and every reference line gets its own style on the figure, by its label
    from dpfed.report.figures import _OTHER_REFERENCE, _REFERENCE_LINES

    styles = {_REFERENCE_LINES.get(label, _OTHER_REFERENCE) for label in drawn["smart_home"]}
    assert len(styles) == len(drawn["smart_home"])
    named = [style for label, style in _REFERENCE_LINES.items() if label != "no DP"]
    # in colours far from every private mechanism's (no DP is the non-private runs' own black)
    import numpy as np
    from matplotlib.colors import to_rgb

    from dpfed.report.figures import STYLES

    mechanisms = [to_rgb(colour) for name, (colour, _, _) in STYLES.items() if name != "none"]
    for colour, _ in named:  # the majority class keeps the grey dotted line it always had
        distance = min(np.linalg.norm(np.subtract(to_rgb(colour), m)) for m in mechanisms)
        assert distance > 0.3, colour  # tab:brown (blt's) is 0, crimson 0.15 from tab:red


def test_table_rows_sort_numbers_written_as_text_by_value():
    """A clip column holds "10" and "adaptive (median)": 3 comes before 10, labels after numbers,
    and missing values last."""
    frame = pd.DataFrame(
        {
            "mechanism": ["gaussian"] * 5 + ["adaptive", "gaussian"],
            "clip": ["10", "3", "0.3", "1", "0.03", "adaptive (median)", None],
            "eval/accuracy": [0.5, 0.6, 0.7, 0.8, 0.4, 0.9, 0.1],
        }
    )
    out = table(frame, ["mechanism", "clip"], [], ["eval/accuracy"])
    clips = [clip for _, clip in out.index]
    assert clips[:6] == ["adaptive (median)", "0.03", "0.3", "1", "3", "10"] and pd.isna(clips[6])
    by_clip = table(frame, ["clip"], [], ["eval/accuracy"])
    assert list(by_clip.index[:5]) == ["0.03", "0.3", "1", "3", "10"]
    assert by_clip.index[5] == "adaptive (median)" and pd.isna(by_clip.index[6])


def test_figures_are_byte_identical_when_remade(tmp_path):
    """A figure remade from the same runs is the same file (no creation date in the PDF), so
    that a reproduction that changes nothing leaves the committed figures unchanged."""
    import time

    import matplotlib.pyplot as plt

    from dpfed.report.figures import save

    made = []
    for attempt in range(2):
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [0.5, 0.7, 0.6])
        made.append(save(fig, tmp_path / str(attempt) / "figure"))
        time.sleep(1.1)  # a PDF's creation date has one-second resolution
    for first, second in zip(*made, strict=True):
        assert first.suffix == second.suffix
        assert first.read_bytes() == second.read_bytes(), first.suffix


def test_curves_of_many_budgets_share_one_shade_per_budget_and_a_short_legend(
    tmp_path, monkeypatch
):
    """Series ``<mechanism>, eps <b>``: each mechanism keeps its style, each budget has one
    shade in every mechanism (light to dark by its number, 0.5 before 4), and the legend names
    each mechanism and each budget once instead of every pair."""
    from dpfed.report import figures

    rows = [
        {"dataset": d, "mechanism": f"{m}, eps {b}", "round": r, "eval/accuracy": 0.5 + r / 10}
        for d in ("health", "smart_home")
        for m in ("gaussian", "tree")
        for b in ("0.5", "4", "16")
        for r in (1, 2)
    ]
    rows += [{"dataset": "watch", "mechanism": "dpsgd, eps 4", "round": 1, "eval/accuracy": 0.3}]
    captured = {}

    def keep(fig, out):
        captured["legend"] = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
        captured["alpha"] = {
            line.get_label(): line.get_alpha() for ax in fig.axes for line in ax.get_lines()
        }
        return []

    monkeypatch.setattr(figures, "save", keep)
    figures.curves_figure(pd.DataFrame(rows), "round", "eval/accuracy", tmp_path / "f")
    assert captured["legend"] == ["dpsgd", "gaussian", "tree", "eps 0.5", "eps 4", "eps 16"]
    alpha = captured["alpha"]
    assert alpha["gaussian, eps 0.5"] < alpha["gaussian, eps 4"] < alpha["gaussian, eps 16"]
    for budget in ("0.5", "4", "16"):
        assert alpha[f"gaussian, eps {budget}"] == alpha[f"tree, eps {budget}"]
    assert alpha["dpsgd, eps 4"] == alpha["tree, eps 4"]


def test_curves_of_many_budgets_get_a_panel_per_mechanism_with_the_non_private_reference(
    tmp_path, monkeypatch
):
    """With budgets, each (dataset, mechanism) is a panel of its own, a row of panels per
    dataset on one y scale; the non-private curve is drawn in each of its dataset's panels, and
    a dataset without budgeted series keeps a single panel."""
    from dpfed.report import figures

    rows = [
        {
            "dataset": "health",
            "mechanism": f"{m}, eps {b}",
            "round": r,
            "eval/accuracy": (0.2 if m == "tree" else 0.6) + b / 100 + r / 10,
        }
        for m in ("gaussian", "tree")
        for b in (1, 4)
        for r in (1, 2)
    ]
    rows += [
        {"dataset": "health", "mechanism": "none", "round": r, "eval/accuracy": 0.9} for r in (1, 2)
    ]
    rows += [{"dataset": "watch", "mechanism": "dpsgd, eps 2", "round": 1, "eval/accuracy": 0.3}]
    rows += [{"dataset": "plain", "mechanism": "none", "round": 1, "eval/accuracy": 0.5}]
    rows += [{"dataset": "health", "mechanism": None, "round": 1, "eval/accuracy": 0.0}]  # no run
    captured = {}

    def keep(fig, out):
        shown = [ax for ax in fig.axes if ax.get_visible()]
        captured["titles"] = [ax.get_title() for ax in shown]
        captured["lines"] = {
            ax.get_title(): sorted(line.get_label() for line in ax.get_lines()) for ax in shown
        }
        captured["ylim"] = {ax.get_title(): ax.get_ylim() for ax in shown}
        captured["hidden"] = len(fig.axes) - len(shown)
        return []

    monkeypatch.setattr(figures, "save", keep)
    figures.curves_figure(pd.DataFrame(rows), "round", "eval/accuracy", tmp_path / "f")
    assert captured["titles"] == ["health: gaussian", "health: tree", "plain", "watch: dpsgd"]
    lines = captured["lines"]
    assert lines["health: gaussian"] == ["gaussian, eps 1", "gaussian, eps 4", "none"]
    assert lines["health: tree"] == ["none", "tree, eps 1", "tree, eps 4"]
    assert lines["watch: dpsgd"] == ["dpsgd, eps 2"] and lines["plain"] == ["none"]
    assert captured["ylim"]["health: gaussian"] == captured["ylim"]["health: tree"]
    assert 0.1 < captured["ylim"]["health: tree"][0] < 0.45  # tree's curve sets the row's scale
    assert captured["hidden"] == 0  # 4 panels in rows of 2 (health's two mechanisms)


def test_a_null_seed_is_an_unseeded_draw(tmp_path):
    """``${dpfed.random_trials:4,geometric,null}`` draws from the operating system."""
    from dpfed.report.collect import declared_trials

    for seed, seeded in (("null", False), ("None", False), ("7", True)):
        trial = tmp_path / seed
        (trial / ".hydra").mkdir(parents=True)
        n_trials = f"${{dpfed.random_trials:4,geometric,{seed}}}"
        (trial / ".hydra" / "hydra.yaml").write_text(
            yaml.safe_dump({"hydra": {"sweeper": {"n_trials": n_trials}}})
        )
        assert declared_trials(trial)["seeded"] is seeded, seed
