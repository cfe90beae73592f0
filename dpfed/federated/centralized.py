"""Centralized training on every client's pooled data: the no-federation reference point.
With ``dp=gaussian`` or ``dp=dpsgd`` the records are the unit of privacy: DP-SGD
with that mechanism's noise multiplier and clip.

`Centralized` plugs into the same round loop as the federated strategies: a
round is one epoch over the pooled training records, the "cohort" is every
client, and `CentralizedProcess` offers the part of TFF's LearningProcess
interface the loop uses. With ``dp=dpsgd`` each step draws a Poisson batch
(every record independently with probability q = batch_size / n) and applies
DP-SGD with per-example clipping, noise, and division by the expected batch
size: exactly the mechanism ``PoissonSampledDpEvent`` accounts for (TF
Privacy's Keras DP optimizers divide by the realised batch size and draw
shuffled batches, which that analysis does not cover).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import dp_accounting
import numpy as np
import tensorflow as tf

from dpfed.errors import ConfigError, check
from dpfed.federated.runtime import tff
from dpfed.privacy.dpsgd import add_seeded_noise
from dpfed.privacy.ghost import GhostClipper
from dpfed.privacy.local import noise_key


class RecordPoissonSampler:
    """All clients every round; within a round, Poisson batches of records.

    Round ``r`` runs ``ceil(r * n / b) - ceil((r - 1) * n / b)`` steps, so
    ``rounds`` epochs take ``ceil(rounds * n / b)`` steps in all, as TF
    Privacy's ``compute_dp_sgd_privacy`` counts them.
    """

    name = "poisson_records"
    neighboring_relation = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE

    def __init__(self, population: int, num_records: int, batch_size: int):
        check(1 <= batch_size <= num_records, "batch_size", batch_size,
              f"in [1, {num_records}] (the pooled training records)")  # fmt: skip
        self.population, self.num_records, self.batch_size = population, num_records, batch_size
        self.q = batch_size / num_records

    def steps(self, round_num: int) -> int:
        per_epoch = self.num_records / self.batch_size
        return math.ceil(round_num * per_epoch) - math.ceil((round_num - 1) * per_epoch)

    def sample(self, round_num: int) -> list[str]:
        return [str(i) for i in range(self.population)]  # (pooled; ids are not used)

    def round_event(self, round_num: int, event: dp_accounting.DpEvent) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(self.q, event), self.steps(round_num)
        )

    participation_event = round_event

    def describe(self) -> dict:
        return {"sampling": self.name, "num_clients": self.population,
                "num_records": self.num_records, "sampling_probability": self.q}  # fmt: skip

    def state_dict(self) -> dict:
        """Checkpoint state: batches are drawn from ``(seed, round, step)`` alone, so none."""
        return {**self.describe(), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state != self.state_dict():
            raise ValueError(f"checkpoint sampler {state} differs from {self.state_dict()}")


class CentralizedProcess:
    """Trains one Keras model on pooled arrays; mirrors what the loop needs of a TFF process.

    DP-SGD noise is drawn from the seed pair ``(noise key, round)`` folded with
    the step, so a rerun or a resumed run adds the same noise.
    """

    def __init__(self, model, x, y, sampler, optimizer, dpsgd, seed: int):
        self.model, self.x, self.y, self.sampler = model, x, y, sampler
        self.optimizer_config, self.dpsgd, self.seed = optimizer, dpsgd, seed
        self.noise_key = noise_key(seed, "dpsgd")

    def initialize(self):
        self.keras = self.model.keras_model()
        self.optimizer = tf.keras.optimizers.SGD(**self.optimizer_config)
        self.loss = self.model.loss("none")
        self._clipper = None if self.dpsgd is None else GhostClipper(self.keras, self.loss)
        self.metric = self.model.metrics()[0]
        # reduce_retracing: Poisson batch sizes vary from step to step
        self._step = tf.function(self._train_step, reduce_retracing=True)
        self._round = 0
        return self._weights()

    def _weights(self):
        return tff.learning.models.ModelWeights(
            trainable=[v.numpy() for v in self.keras.trainable_variables],
            non_trainable=[v.numpy() for v in self.keras.non_trainable_variables],
        )

    def get_model_weights(self, state):
        return state

    def _train_step(self, x, y, noise_seed):
        if self.dpsgd is None:
            with tf.GradientTape() as tape:
                predictions = self.keras(x, training=True)
                loss = tf.reduce_mean(self.loss(y, predictions))
            grads = tape.gradient(loss, self.keras.trainable_variables)
        else:  # DP-SGD; the ghost clipper's forward pass also gives the loss and predictions
            clip, z = self.dpsgd
            summed, _, losses, predictions = self._clipper(x, y, clip)
            expected = float(self.sampler.batch_size)
            grads = [s / expected for s in add_seeded_noise(summed, z * clip, noise_seed)]
            loss = tf.reduce_mean(losses)
        self.optimizer.apply_gradients(zip(grads, self.keras.trainable_variables, strict=True))
        return loss, predictions

    def _batches(self, round_num: int):
        rng = np.random.default_rng([self.seed, round_num, 41])
        n, b = len(self.x), self.sampler.batch_size
        if self.dpsgd is not None:  # Poisson: what the accountant assumes
            for _ in range(self.sampler.steps(round_num)):
                yield np.flatnonzero(rng.random(n) < self.sampler.q)
        else:
            order = rng.permutation(n)
            for start in range(0, n, b):
                yield order[start : start + b]

    # ------------------------------------------------------------------ checkpoints
    def state_to_arrays(self, state) -> dict[str, np.ndarray]:
        """Weights, optimizer variables (iterations, momentum) and the epoch counter."""
        arrays = {f"weight_{i:04d}": v.numpy() for i, v in enumerate(self.keras.weights)}
        self.optimizer.build(self.keras.trainable_variables)
        arrays.update({f"optimizer_{i:04d}": v.numpy()
                       for i, v in enumerate(self.optimizer.variables)})  # fmt: skip
        arrays["round"] = np.asarray(self._round)
        return arrays

    def restore_from_arrays(self, arrays: dict[str, np.ndarray]):
        """Sets what `state_to_arrays` saved (after `initialize`); returns the state."""
        self.optimizer.build(self.keras.trainable_variables)
        for prefix, variables in (("weight", self.keras.weights),
                                  ("optimizer", self.optimizer.variables)):  # fmt: skip
            names = sorted(k for k in arrays if k.startswith(prefix + "_"))
            if len(names) != len(variables):
                raise ValueError(f"checkpoint has {len(names)} {prefix} tensors, this run "
                                 f"has {len(variables)}")  # fmt: skip
            for name, variable in zip(names, variables, strict=True):
                variable.assign(arrays[name])
        self._round = int(arrays["round"])
        return self._weights()

    def next(self, state, data=None):
        self.metric.reset_state()
        total, count = 0.0, 0
        self._round += 1
        for step, idx in enumerate(self._batches(self._round)):
            if len(idx) == 0:
                continue  # an empty Poisson batch: nothing to train on; still accounted
            seed = tf.constant([self.noise_key, self._round * 1_000_003 + step], tf.int64)
            loss, predictions = self._step(tf.constant(self.x[idx]), tf.constant(self.y[idx]), seed)
            self.metric.update_state(self.y[idx], predictions)
            total, count = total + float(loss) * len(idx), count + len(idx)
        train = {"loss": total / max(count, 1), self.metric.name: float(self.metric.result()),
                 "num_examples": count}  # fmt: skip
        metrics = {"client_work": {"train": train}, "aggregator": {}}
        return SimpleNamespace(state=self._weights(), metrics=metrics)


class Centralized:
    """Pool every client's training data and train one model (no federation).

    Args:
        batch_size: batch size (the expected batch size under DP-SGD's Poisson batches).
        learning_rate, momentum: Keras SGD settings.
        eval_every, eval_clients: as for the federated strategies.
    """

    name = "centralized"
    weighted = False
    local_epochs = 1

    def __init__(self, batch_size: int, learning_rate: float, momentum: float, eval_every: int,
                 eval_clients: int, clients_per_round: int | None = None):  # fmt: skip
        check(batch_size >= 1, "batch_size", batch_size, ">= 1")
        check(learning_rate > 0, "learning_rate", learning_rate, "> 0")
        check(0 <= momentum < 1, "momentum", momentum, "in [0, 1)")
        check(eval_every >= 0, "eval_every", eval_every, ">= 0 (0 disables evaluation)")
        check(eval_clients == -1 or eval_clients >= 1, "eval_clients", eval_clients,
              "-1 (all clients) or >= 1")  # fmt: skip
        self.batch_size, self.learning_rate, self.momentum = batch_size, learning_rate, momentum
        self.eval_every, self.eval_clients = eval_every, eval_clients
        self.clients_per_round = clients_per_round

    def pool(self, client_data, clients):
        """The training records of ``clients``, concatenated (built once)."""
        parts = [client_data.arrays(i) for i in clients]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def sampler(self, population: int, seed: int, client_data=None):
        m = population if self.clients_per_round is None else self.clients_per_round
        check(1 <= m <= population, "clients_per_round", m,
              f"null or in [1, {population}] (the dataset has {population} clients)")  # fmt: skip
        clients = np.sort(np.random.default_rng([seed, 43]).choice(population, m, replace=False))
        self.clients_per_round = m
        self._x, self._y = self.pool(client_data, clients)
        self._sampler = RecordPoissonSampler(m, len(self._x), self.batch_size)
        return self._sampler

    def cohort_data(self, client_data, client_ids, round_num: int, seed: int):
        return None  # the process holds the pooled arrays

    def build_process(self, model, mechanism, model_fn, aggregator, seed: int):
        """A `CentralizedProcess`; only ``dp=none`` and ``dp=dpsgd`` apply to pooled data."""
        if mechanism.name != "none" and mechanism.example_dp is None:
            raise ConfigError("dp", mechanism.name, "none, gaussian or dpsgd with "
                              "strategy=centralized (both mean DP-SGD on the pooled records; "
                              "there are no clients for user-level or local mechanisms)",
                              absolute=True)  # fmt: skip
        optimizer = {"learning_rate": self.learning_rate, "momentum": self.momentum}
        return CentralizedProcess(model, self._x, self._y, self._sampler, optimizer,
                                  mechanism.example_dp, seed)  # fmt: skip

    def describe(self) -> dict:
        return {"strategy": self.name, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "momentum": self.momentum}  # fmt: skip
