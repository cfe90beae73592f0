"""DP mechanisms, one module each (class, schema); `SCHEMAS` maps every ``dp`` option to its schema.

A module here defines a `dpfed.privacy.mechanisms.base.Mechanism` subclass and
``CONFIGS = {"<option>": <schema>}``; adding a mechanism means adding such a
module, its ``conf/dp/<option>.yaml`` and a test, and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil


def _schemas() -> dict[str, type]:
    found: dict[str, type] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        configs = getattr(importlib.import_module(f"{__name__}.{module.name}"), "CONFIGS", {})
        clash = found.keys() & configs.keys()
        if clash:
            raise ImportError(f"dp options {sorted(clash)} are defined twice (in {module.name})")
        found.update(configs)
    return dict(sorted(found.items()))


SCHEMAS = _schemas()
