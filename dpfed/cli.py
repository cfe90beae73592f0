"""What ``run.py`` checks before Hydra starts: ``--help``, and the keys a command line sets.

Hydra's own message for a mistyped key names neither the closest key nor the
group the key belongs to, and its advice (``+key=value``) adds a key no
component accepts. Here every ``key=value`` override is looked up in the
configuration it would change (composed with the command line's group
choices); an unknown key stops the run at once with the closest known keys.
"""

from __future__ import annotations

import difflib
import os
import sys

from omegaconf import DictConfig, OmegaConf

# Hydra flags that take a value (the value is not an override)
VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--shell-completion",
    "-sc",
}


def _groups() -> tuple[str, ...]:
    """The config groups: the folders of conf/ (hydra's own aside)."""
    from dpfed.config import CONF

    return tuple(sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"))


GROUPS = _groups()


def overrides_of(argv: list[str]) -> list[str]:
    """The overrides of a ``run.py`` command line (Hydra's flags and their values left out)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of ``cfg`` (nested nodes included)."""
    found = []
    for key in cfg:
        path = f"{prefix}{key}"
        found.append(path)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
            found += keys(node, path + ".")
    return found


def unknown_keys(argv: list[str]) -> list[str]:
    """One message per override whose key the composed configuration does not have."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from dpfed.config import compose

    try:
        parsed = OverridesParser.create().parse_overrides(overrides_of(argv))
    except Exception:  # Hydra reports malformed overrides itself
        return []
    choices, chosen = [], set()  # group choices (a sweep's first option), by input line
    for override in parsed:
        group = override.key_or_group
        if override.package is None and (group in GROUPS or group.startswith("hydra/")):
            value = (
                next(iter(override.sweep_string_iterator()))
                if (override.is_sweep_override())
                else override.get_value_element_as_str()
            )
            choices.append(f"{group}={value}")
            chosen.add(override.input_line)
        elif override.package is not None:
            choices.append(override.input_line)
            chosen.add(override.input_line)
    try:
        full = compose(*choices, return_hydra_config=True)
    except Exception:  # an unknown option: Hydra's message lists the options
        return []
    picked = dict(full.hydra.runtime.choices)
    cfg = compose(*choices)
    known = keys(cfg)
    messages = []
    for override in parsed:
        key = override.key_or_group
        if override.input_line in chosen or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        if override.is_add() and key in known:
            messages.append(f"+{key} adds a key, but {key} exists: set it with {key}=...")
        elif key not in known:
            depth = key.count(".")
            peers = [k for k in known if k.count(".") == depth and "_target_" not in k]
            close = difflib.get_close_matches(key, peers, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            group = key.split(".", 1)[0]
            where = (
                f"the config has no {key}"
                if group not in cfg or group not in picked
                else f"{group}={picked[group]} has no setting {key.split('.', 1)[1]}"
            )
            messages.append(
                f"{override.input_line}: {where}{hint}; `python run.py --cfg job` shows every key"
            )
    return messages


def help_text() -> str:
    """``python run.py --help``: groups and their options, examples, the default config."""
    from dpfed.config import CONF, compose

    lines = [
        "dpfed: differentially private federated training of GRU sequence models.",
        "",
        "python run.py [group=option ...] [key=value ...]       one run",
        "python run.py -m dp.noise_multiplier=0.5,1,2 ...       a sweep (one job per value)",
        "python run.py -m hydra/launcher=parallel ...           a sweep, 2 jobs at a time",
        "python run.py ... resume=true hydra.run.dir=<run dir>  continue an interrupted run",
        "python run.py experiment=<name>                        a paper-table preset",
        "python run.py hparams_search=<dataset>                 a hyperparameter search",
        "python run.py --cfg job                                the composed config",
        "",
        "== Configuration groups ==",
        "Choose one option per group (group=option):",
        "",
    ]
    for group in (*GROUPS, "hydra/launcher"):
        options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
        lines.append(f"{group}: {', '.join(options)}")
    lines += [
        "",
        "Optimizers are chosen per side: optimizer@strategy.client_optimizer=adam "
        "strategy.client_optimizer.learning_rate=0.01",
        "Privacy: python -m dpfed.privacy --help (the calculator); README.md, "
        "'Privacy accounting'.",
        "",
        "== Config ==",
        "Override any key (key=value); the composed defaults are:",
        "",
        OmegaConf.to_yaml(compose()).rstrip(),
        "",
        "Outputs go to results/runs/<date>/<time>_<dataset>_<dp>_seed<seed>/ (metrics.csv, "
        "summary.json, tensorboard/, checkpoint/). "
        "Hydra's own flags: --hydra-help.",
    ]
    return "\n".join(lines)


def preflight(argv: list[str]) -> None:
    """Answers ``--help`` and stops a command line with an unknown key, before Hydra starts."""
    from dpfed.config import release_compose

    if any(arg in ("--help", "-h") for arg in argv):
        try:
            print(help_text())
        except BrokenPipeError:  # `run.py --help | head`
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        sys.exit(0)
    if any(arg.startswith("--hydra-help") or arg.startswith("--shell") for arg in argv):
        return
    messages = unknown_keys(argv)
    release_compose()  # Hydra's app initializes itself next
    if messages:
        for message in messages:
            print(f"dpfed: unknown setting: {message}", file=sys.stderr)
        sys.exit(1)
