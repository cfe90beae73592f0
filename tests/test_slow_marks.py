"""The default run leaves out the cases a module lists in ``SLOW_CASES``; ``-m slow`` runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

CONFTEST = "from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n"
MODULE = """
import pytest

SLOW_CASES = {%s}

@pytest.mark.parametrize("n", [1, 2, 3])
def test_case(n):
    pass

def test_plain():
    pass
"""


def collect(tmp_path, slow_cases: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_module.py").write_text(textwrap.dedent(MODULE % slow_cases))
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers = slow: slow\n")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)


def test_listed_cases_are_marked_slow_and_the_rest_run_by_default(tmp_path):
    listed = '"test_case[2]", "test_plain"'
    default = collect(tmp_path, listed, "-m", "not slow")
    assert default.returncode == 0, default.stdout + default.stderr
    assert "test_case[1]" in default.stdout and "test_case[3]" in default.stdout
    assert "test_case[2]" not in default.stdout and "test_plain" not in default.stdout
    slow = collect(tmp_path, listed, "-m", "slow")
    assert "test_case[2]" in slow.stdout and "test_plain" in slow.stdout
    assert "test_case[1]" not in slow.stdout


def test_a_listed_case_that_does_not_exist_stops_the_run(tmp_path):
    result = collect(tmp_path, '"test_case[4]"')
    assert result.returncode != 0
    assert "SLOW_CASES names tests that do not exist" in result.stdout + result.stderr
    assert "test_case[4]" in result.stdout + result.stderr
