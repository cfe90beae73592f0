"""Tuned non-private baselines (``baseline=<dataset>``): each composes onto its dataset and runs."""

from __future__ import annotations

import pytest

from tests.conftest import CONF, compose_config

BASELINES = sorted(p.stem for p in (CONF / "baseline").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml"))


def test_every_searched_dataset_has_a_baseline():
    assert BASELINES == SEARCHES


@pytest.mark.parametrize("baseline", BASELINES)
def test_a_baseline_is_non_private_fedavg_on_its_dataset_and_passes_every_check(baseline):
    from dpfed.build import prepare

    full = compose_config(f"baseline={baseline}", return_hydra_config=True)
    choices = full.hydra.runtime.choices
    assert (choices.dataset, choices.dp, choices.backend) == (baseline, "none", "vectorized")
    assert full.optimized_metric is None  # a plain run, not a search
    cfg = compose_config(f"baseline={baseline}")
    prepared = prepare(cfg)  # data, privacy plan and every range check, before TensorFlow
    assert prepared.dataset.task == "classification"
    assert cfg.strategy.clients_per_round <= prepared.dataset.num_clients
