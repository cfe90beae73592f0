"""Every command block of README.md runs as written.

The blocks are read from the README itself. Each command is run as far as it
goes without training: ``python run.py`` commands pass the unknown-key check,
compose, and build everything that needs no TensorFlow (data, privacy plan,
model, strategy: where every bad value fails); ``--help`` and ``--cfg job`` run
whole; the privacy calculator runs whole and must print the number its comment
names; the table and plot scripts run on a sweep laid out as the README's sweep
writes it; the Python block runs on a real run's summary.json. The set-up
commands of the Quick start are what CI itself runs (checked against
``.ci/run``).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

README = ROOT / "README.md"


def blocks(language: str) -> list[str]:
    """The README's fenced blocks in ``language``."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[tuple[str, str]]:
    """(command, the comment line above it) of every bash block, continuations joined."""
    found = []
    for block in blocks("bash"):
        comment = ""
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("#"):
                comment = line
            elif line:
                found.append((line.split("  #")[0].strip(), comment))
                comment = ""
    return found


COMMANDS = commands()


def of_kind(prefix: str) -> list[tuple[str, str]]:
    return [(c, note) for c, note in COMMANDS if c.startswith(prefix)]


def test_every_readme_command_is_covered_below():
    kinds = (
        "python run.py",
        "python -m dpfed.privacy",
        "python scripts/make_table.py",
        "python scripts/plot.py",
        "python3 -m pip install uv",
    )
    assert len(COMMANDS) >= 20
    assert [c for c, _ in COMMANDS if not c.startswith(kinds)] == []


def test_the_readme_test_command_is_what_ci_runs():
    setup = [c for c, _ in of_kind("python3 -m pip install uv")]
    assert len(setup) == 2  # run the default experiment; run the tests
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = next(c for c in setup if c.endswith("pytest"))
    for part in test_command.split(" && "):
        assert part.replace("python3 -m pip install uv", "python3 -m pip install --quiet uv") in ci
    # the default run leaves out the tests marked slow; CI runs them too
    assert "addopts = \"-m 'not slow'" in (ROOT / "pyproject.toml").read_text()
    assert f"{test_command.split(' && ')[-1]} -m slow" in ci


def first_values(overrides: list[str]) -> list[str]:
    """A sweep's first job: ``key=a,b,c`` becomes ``key=a``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    out = []
    for override in parsed:
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={value}")
        else:
            out.append(override.input_line)
    return out


@pytest.fixture
def user_table(tmp_path, monkeypatch):
    """The README's own CSV example (``dataset.path=data.csv``) finds a valid file."""
    rng = np.random.default_rng(0)
    rows = ["user,time,x1,x2,label"]
    for user in range(60):  # more than the default cohort (50)
        for t in range(60):
            rows.append(
                f"u{user},{t},{rng.normal():.4f},{rng.normal():.4f},{int(rng.random() < 0.5)}"
            )
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)


RUNS = [c for c, _ in of_kind("python run.py")]


@pytest.mark.parametrize("command", RUNS)
def test_run_commands_compose_and_build_without_error(command, user_table):
    from dpfed.build import prepare
    from dpfed.cli import VALUE_FLAGS, unknown_keys
    from dpfed.config import compose

    argv = shlex.split(command)[2:]
    if "--help" in argv or "--cfg" in argv:
        done = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert ("== Configuration groups ==" in done.stdout) or ("dataset:" in done.stdout)
        return
    assert unknown_keys(argv) == []
    overrides, skip = [], False
    for arg in argv:
        if skip or arg in VALUE_FLAGS:
            skip = not skip and arg in VALUE_FLAGS
            continue
        if not arg.startswith("-") and not arg.startswith("hydra"):
            overrides.append(arg)
    cfg = compose(*first_values(overrides))
    prepare(cfg)  # every range check and the data, as run.py does before TensorFlow


CALCULATOR = of_kind("python -m dpfed.privacy")


@pytest.mark.parametrize("command,comment", CALCULATOR)
def test_calculator_commands_print_the_numbers_their_comments_name(command, comment, capsys):
    from dpfed.privacy.__main__ import main

    assert main(shlex.split(command)[3:]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = re.search(r":\s*([0-9.]+)$", comment)
    if expected:  # "# Andrew et al. 2021, Table 1: 4.98"
        digits = len(expected.group(1).split(".")[1])
        assert round(out["epsilon"], digits) == float(expected.group(1))
    else:
        assert out["command"] == "noise" and out["epsilon_reached"] <= 2 + 1e-9


@pytest.fixture
def readme_sweep(tmp_path, monkeypatch):
    """``results/sweeps/noise`` as the README's sweep writes it (three jobs, no training)."""
    for job, noise in enumerate((0.5, 1, 2)):
        run = tmp_path / "results" / "sweeps" / "noise" / f"{job}_dp.noise_multiplier={noise}_seed0"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(
            f"- dp.noise_multiplier={noise}\n- rounds=20\n"
        )
        rounds = np.arange(1, 21)
        eps = np.sqrt(rounds) / noise
        accuracy = 0.5 + 0.3 * (1 - np.exp(-rounds / (5 * noise)))
        lines = ["round,epsilon,delta,eval/accuracy,train/loss,bytes_up"]
        lines += [
            f"{r},{e},1e-05,{a},{1 - a},1000" for r, e, a in zip(rounds, eps, accuracy, strict=True)
        ]
        (run / "metrics.csv").write_text("\n".join(lines) + "\n")
        summary = {
            "status": "completed",
            "rounds": 20,
            "epsilon": float(eps[-1]),
            "delta": 1e-5,
            "eval/accuracy": float(accuracy[-1]),
            "total_bytes_up": 20000,
            "unit": "user",
            "neighboring": "add_remove",
            "eval/trivial_accuracy": 0.5,
            "choices": {"dp": "gaussian", "dataset": "smart_home"},
        }
        (run / "summary.json").write_text(json.dumps(summary))
    # the private search's folder, laid out like a sweep's
    for search in ("smart_home", "private_smart_home"):
        shutil.copytree(
            tmp_path / "results" / "sweeps" / "noise", tmp_path / "results" / "searches" / search
        )
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", [c for c, _ in of_kind("python scripts/")])
def test_table_and_plot_commands_run_on_the_readme_sweep(command, readme_sweep, capsys):
    argv = shlex.split(command)[2:]
    script = Path(shlex.split(command)[1]).stem
    if script == "make_table":
        from scripts.make_table import main
    else:
        from scripts.plot import main
    assert main(argv) == 0
    if "--out" in argv:
        out = Path(argv[argv.index("--out") + 1])
        assert out.exists() and out.stat().st_size > 1000
    else:
        assert "eval/accuracy" in capsys.readouterr().out


def test_the_python_block_recomputes_a_real_runs_epsilon(runtime, tmp_path, monkeypatch, capsys):
    from tests.helpers import run_in_process

    (block,) = blocks("python")
    _, summary, _ = run_in_process(tmp_path, "strategy.sampling=poisson", "dp=gaussian")
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    recomputed, reported = map(float, capsys.readouterr().out.split())
    assert reported == summary["epsilon"]
    assert recomputed == pytest.approx(reported, rel=1e-9)
