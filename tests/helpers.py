"""Helpers shared by the in-process tests: build a run, step it, run it to the end."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import dp_accounting
import numpy as np
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from dpfed.config import compose

# A plain server step (w - update), so a round's change is the aggregated update itself.
PLAIN_SERVER = (
    "strategy.server_optimizer.momentum=null",
    "strategy.server_optimizer.learning_rate=1.0",
)
# Tiny and fast: 12 clients, 3 per round (fixed-size cohorts, so a round is never empty).
TINY = (
    "debug=smoke",
    "dataset.num_clients=12",
    "strategy.clients_per_round=3",
    "strategy.sampling=fixed",
    "model.units=[4]",
    "dataset.seq_len=4",
    "strategy.eval_clients=4",
)


def build(*overrides, smoke=("debug=smoke",)):
    """A built `Simulation` (needs the ``runtime`` fixture)."""
    from dpfed.build import build_simulation

    return build_simulation(compose(*smoke, *overrides))


@functools.lru_cache(maxsize=32)
def _cached_build(overrides: tuple[str, ...], smoke: tuple[str, ...]):
    return build(*overrides, smoke=smoke)


def first_rounds(*overrides, rounds: int = 1, server=PLAIN_SERVER, smoke=("debug=smoke",)):
    """(initial weights, weights after ``rounds`` rounds, last round's result, simulation).

    Only the process is stepped (from ``initialize()``, so its state is fresh), so equal
    configurations share one build across tests.
    """
    sim = _cached_build((*server, *overrides), tuple(smoke))
    state = sim.process.initialize()
    initial = [np.asarray(w) for w in sim.process.get_model_weights(state).trainable]
    result = None
    for r in range(1, rounds + 1):
        result = sim.process.next(state, sim.cohort_datasets(sim.sampler.sample(r), r))
        state = result.state
    return initial, sim.process.get_model_weights(state).trainable, result, sim


def one_round_update(*overrides, smoke=("debug=smoke",)):
    """(flat model change after one round, number of parameters, cohort size)."""
    initial, after, _, sim = first_rounds(*overrides, smoke=smoke)
    delta = np.concatenate([np.ravel(b - a) for a, b in zip(initial, after, strict=True)])
    return delta, delta.size, len(sim.sampler.sample(1))


def change(run) -> float:
    """L2 norm of the model change of a `first_rounds` result."""
    return float(np.sqrt(sum(np.sum((b - a) ** 2) for a, b in zip(run[0], run[1], strict=True))))


def run_in_process(tmp_path: Path, *overrides, smoke=("debug=smoke",)):
    """Runs a configuration to the end in this process; (simulation, summary, metrics)."""
    import pandas as pd

    from dpfed.io.run_writer import RunWriter

    sim = build("logger.tensorboard=false", *overrides, smoke=smoke)
    summary = sim.run(RunWriter(tmp_path, sim.columns))
    path = Path(tmp_path) / "metrics.csv"
    return sim, summary, pd.read_csv(path) if path.exists() else None


RELATIONS = {
    "replace_one": dp_accounting.NeighboringRelation.REPLACE_ONE,
    "add_or_remove_one": dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
    "replace_special": dp_accounting.NeighboringRelation.REPLACE_SPECIAL,
}


def independent_epsilon(
    events, relation: str = "add_or_remove_one", accountant: str = "rdp", delta: float = 1e-5
) -> float:
    """Epsilon of ``[(event, count), ...]`` with dp-accounting alone (no dpfed code)."""
    if accountant == "pure":
        return float(sum(count / e.noise_multiplier for e, count in events))
    ref = (
        RdpAccountant(neighboring_relation=RELATIONS[relation])
        if accountant == "rdp"
        else (PLDAccountant(RELATIONS[relation]))
    )
    for event, count in events:
        ref.compose(event, count)
    eps = ref.get_epsilon(delta)
    return math.inf if eps is None else eps
