"""What a job writes when it fails: summary.json, atomically, with NaN and infinity readable."""

from __future__ import annotations

import json
import math

from dpfed.io.run_writer import RunWriter
from dpfed.jobs import write_failure


def test_a_failure_keeps_what_the_run_wrote_and_a_summary_reads_back(tmp_path):
    writer = RunWriter(tmp_path / "run", ["round", "epsilon"])
    writer.write_summary({"status": "running", "epsilon": math.inf, "loss": math.nan, "rounds": 3})
    write_failure(tmp_path / "run", RuntimeError("boom"), extra=lambda: {"never": "called"})
    got = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert got == {
        "status": "failed",
        "epsilon": math.inf,
        "loss": None,
        "rounds": 3,
        "error": "RuntimeError: boom",
    }
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["summary.json"]


def test_a_failure_before_any_summary_writes_the_extra_fields_or_only_the_error(tmp_path):
    write_failure(tmp_path / "a", ValueError("bad"), extra=lambda: {"config": {"x": math.nan}})
    got = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert got["status"] == "failed" and got["error"] == "ValueError: bad"
    assert math.isnan(got["config"]["x"])  # only top-level NaN becomes null

    def broken():
        raise KeyError("config")

    write_failure(tmp_path / "b", ValueError("bad"), extra=broken)  # the failure is recorded
    assert json.loads((tmp_path / "b" / "summary.json").read_text()) == {
        "status": "failed",
        "error": "ValueError: bad",
    }
