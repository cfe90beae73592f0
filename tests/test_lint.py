"""The code base passes the project's own lint configuration."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_the_code_passes_ruff_check():
    """`ruff check` finds nothing to report anywhere in the repository."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
