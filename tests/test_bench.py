"""scripts/bench.py writes its JSON and Markdown table (speed itself is never asserted)."""

from __future__ import annotations

import json

from scripts import bench


def test_accounting_workload_writes_json_and_table(tmp_path):
    assert bench.main(["accounting", "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "accounting.json").read_text())
    assert result["quick"] is True
    assert result["details"]["rdp"]["rounds"] == 1_000
    assert 0 < result["details"]["rdp"]["epsilon"] < float("inf")
    assert result["milliseconds"]["rdp_per_round_ms"] > 0
    assert result["machine"]["cores"] >= 1
    table = (tmp_path / "README.md").read_text()
    assert "| `accounting`:" in table and "ms" in table


def test_unknown_workload_is_rejected(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_info:
        bench.main(["nonsense"])
    assert exit_info.value.code == 2
    assert "unknown workload 'nonsense'" in capsys.readouterr().err
