"""The folders are the architecture: no import runs back up from a lower layer.

Data flows config -> built components -> round loop -> sinks -> reports. Every
import in ``dpfed/`` (module level or inside a function) is checked against
this order; command-line entry points (``__main__``) may use anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {  # lower numbers are lower floors
    "dpfed.errors": 0,
    "dpfed.runtime": 0,
    "dpfed.jobs": 0,
    "dpfed.data": 1,
    "dpfed.models": 1,
    "dpfed.io": 1,
    "dpfed.privacy": 2,
    "dpfed.audit": 3,  # canary clients wrap a mechanism's query; the round loop calls them
    "dpfed.federated": 3,
    "dpfed.config": 4,
    "dpfed.build": 4,
    "dpfed.experiments": 5,
    "dpfed.cli": 5,  # run.py's preflight: --help and unknown keys, over composed configs
    "dpfed.report": 6,
}


def layer(module: str) -> int | None:
    matches = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [name for name in found if name.startswith("dpfed")]


def modules():
    for path in sorted((ROOT / "dpfed").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def test_every_module_has_a_layer():
    assert [name for name, _ in modules() if layer(name) is None and name != "dpfed"] == []


def test_no_import_runs_back_up():
    upward = []
    for name, path in modules():
        if name.endswith("__main__"):
            continue
        for imported in imports(path):
            if layer(imported) is not None and layer(imported) > layer(name):
                upward.append(f"{name} -> {imported}")
    assert upward == []
