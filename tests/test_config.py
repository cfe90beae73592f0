"""Every config option composes, and schemas reject typos and wrong types at compose time."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, HydraException
from hydra.utils import get_object
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from dpfed.config import schemas
from tests.conftest import CONF, compose_config

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in (
        "dataset",
        "model",
        "dp",
        "strategy",
        "backend",
        "sim",
        "logger",
        "debug",
        "experiment",
        "hparams_search",
        "baseline",
    )
}


def test_every_group_has_options():
    for group in ("dataset", "model", "dp", "strategy", "backend", "sim", "logger"):
        assert GROUP_OPTIONS[group], group


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts],
)
def test_every_option_composes_resolves_and_names_real_targets(group, option):
    cfg = compose_config(f"{group}={option}")
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    targets = []

    def collect(node):
        if isinstance(node, dict):
            if "_target_" in node:
                targets.append(node["_target_"])
            for value in node.values():
                collect(value)

    collect(resolved)
    assert len(targets) >= 4  # dataset, model, dp, strategy (and its optimizers)
    for target in targets:
        assert callable(get_object(target)), target  # resolved the way instantiate does


def test_every_yaml_option_has_a_schema():
    registry = schemas()
    for group in ("dataset", "model", "dp", "strategy", "backend", "sim", "logger", "optimizer"):
        yaml_options = {p.stem for p in (CONF / group).glob("*.yaml")}
        for option in yaml_options:
            text = (CONF / group / f"{option}.yaml").read_text()
            prefix = f"- /schema/{group}/"
            assert prefix in text, f"conf/{group}/{option}.yaml names no schema"
            schema = text.split(prefix, 1)[1].split("@", 1)[0]
            assert schema in registry[group], f"{group}/{option} -> unknown schema {schema}"


def test_every_dp_option_has_a_yaml_and_its_module_defines_its_schema():
    registry = schemas()["dp"]
    assert set(registry) == {p.stem for p in (CONF / "dp").glob("*.yaml")}
    for option, schema in registry.items():
        assert schema.__module__.startswith("dpfed.privacy.mechanisms."), option
        assert get_object(schema._target_).__module__ == schema.__module__  # class beside schema


def test_defaults_compose_to_dp_fedavg_on_smart_home():
    cfg = compose_config()
    assert cfg.dataset._target_.endswith("SmartHome")
    assert cfg.dp._target_.endswith("GaussianMechanism")
    assert cfg.strategy._target_.endswith("FedAvg")
    assert cfg.model.outputs == cfg.dataset.labels


@pytest.mark.parametrize(
    "override",
    [
        "dp.nosie_multiplier=1",
        "strategy.clients_per_rnd=3",
        "dataset.num_client=5",
        "model.unit=[8]",
        "sim.devise=cpu",
        "rouds=3",
        "backend.user_per_shard=3",
    ],
)
def test_unknown_key_fails_at_compose_time(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, HydraException)):
        compose_config(override)


@pytest.mark.parametrize(
    "override",
    [
        "rounds=three",
        "dp.noise_multiplier=loud",
        "strategy.clients_per_round=1.5",
        "dataset.num_clients=many",
        "model.units=[a]",
        "strategy.weighted=maybe",
        "dp.accountant=rdpp",  # enum values are checked when the config is composed
        "dp.neighboring=replace",
        "strategy.sampling=poison",
        "dataset.labels=all",
        "sim.device=tpu",
    ],
)
def test_wrong_type_fails_at_compose_time(override):
    with pytest.raises((ConfigCompositionException, ValidationError, HydraException)):
        compose_config(override)


def test_unknown_option_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, HydraException), match="dataset"):
        compose_config("dataset=mnist_of_the_future")


def test_optimizer_can_be_swapped_per_side():
    cfg = compose_config(
        "optimizer@strategy.client_optimizer=adam", "strategy.client_optimizer.learning_rate=0.01"
    )
    assert cfg.strategy.client_optimizer._target_.endswith("build_adam")
    assert cfg.strategy.client_optimizer.learning_rate == 0.01
    assert cfg.strategy.server_optimizer._target_.endswith("build_sgdm")
