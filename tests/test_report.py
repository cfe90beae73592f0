"""Tables and plots come from run folders alone: summary.json, .hydra overrides, metrics.csv."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from dpfed.report.collect import curves, summaries, table


def fake_run(root, name, noise, dp, epsilon, accuracy, rounds=3):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(f"- dp.noise_multiplier={noise}\n- dp={dp}\n")
    summary = {"epsilon": epsilon, "eval/accuracy": accuracy, "rounds": rounds,
               "choices": {"dp": dp, "dataset": "health"}, "dp_events": [{"x": 1}]}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({"round": range(1, rounds + 1), "epsilon": [epsilon * r / rounds for r in range(1, rounds + 1)],
                  "eval/accuracy": [accuracy] * rounds}).to_csv(run / "metrics.csv", index=False)  # fmt: skip


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
