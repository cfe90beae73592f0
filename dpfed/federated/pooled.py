"""The learning process of ``strategy=centralized``: one Keras model on pooled records.

With DP-SGD each step draws a Poisson batch (every record independently with
probability q = batch_size / n) and applies per-example clipping (ghost
clipping), noise, and division by the expected batch size: exactly the
mechanism ``PoissonSampledDpEvent`` accounts for (TF Privacy's Keras DP
optimizers divide by the realised batch size and draw shuffled batches, which
that analysis does not cover).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import tensorflow as tf

from dpfed.privacy.dpsgd import add_seeded_noise
from dpfed.privacy.ghost import GhostClipper
from dpfed.privacy.noise import position_seed
from dpfed.runtime import tff


class CentralizedProcess:
    """Trains one Keras model on pooled arrays; mirrors what the loop needs of a TFF process.

    DP-SGD noise of step s of round r is drawn from the seed pair of position
    ``(r, s)`` of the run's DP-SGD noise stream, so a rerun or a resumed run
    adds the same noise. An empty Poisson batch still applies its noise.

    Args:
        model: the bound `GRUModel`.
        x, y: the pooled training records.
        sampler: the plan's `dpfed.privacy.sampling.RecordPoissonSampler`.
        optimizer: Keras SGD settings.
        dpsgd: the mechanism's `ExampleDP`, or None (non-private).
        seed: the run seed (batches).
        noise_key: the plan's DP-SGD noise stream key.
    """

    def __init__(self, model, x, y, sampler, optimizer, dpsgd, seed: int, noise_key: int = 0):
        self.model, self.x, self.y, self.sampler = model, x, y, sampler
        self.optimizer_config, self.dpsgd, self.seed = optimizer, dpsgd, seed
        self.noise_key = noise_key

    def initialize(self):
        self.keras = self.model.keras_model()
        self.optimizer = tf.keras.optimizers.SGD(**self.optimizer_config)
        self.loss = self.model.loss("none")
        self._clipper = None if self.dpsgd is None else GhostClipper(self.keras, self.loss)
        self.metric = self.model.metrics()[0]
        # reduce_retracing: Poisson batch sizes vary from step to step
        self._step = tf.function(self._train_step, reduce_retracing=True)
        self._noise_step = tf.function(self._noise_only_step)
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
            clip, z = self.dpsgd.clip, self.dpsgd.noise_multiplier
            summed, _, losses, predictions = self._clipper(x, y, clip)
            expected = float(self.sampler.batch_size)
            grads = [s / expected for s in add_seeded_noise(summed, z * clip, noise_seed)]
            loss = tf.reduce_mean(losses)
        self.optimizer.apply_gradients(zip(grads, self.keras.trainable_variables, strict=True))
        return loss, predictions

    def _noise_only_step(self, noise_seed):
        """The DP-SGD step of an empty Poisson batch: the noise alone, as the analysis assumes."""
        clip, z = self.dpsgd.clip, self.dpsgd.noise_multiplier
        variables = self.keras.trainable_variables
        zeros = [tf.zeros_like(v) for v in variables]
        expected = float(self.sampler.batch_size)
        grads = [s / expected for s in add_seeded_noise(zeros, z * clip, noise_seed)]
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))

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
            seed = tf.constant(position_seed(self.noise_key, self._round, step), tf.int64)
            if len(idx) == 0:  # an empty Poisson batch still releases its noise
                self._noise_step(seed)
                continue
            loss, predictions = self._step(tf.constant(self.x[idx]), tf.constant(self.y[idx]), seed)
            self.metric.update_state(self.y[idx], predictions)
            total, count = total + float(loss) * len(idx), count + len(idx)
        train = {"loss": total / max(count, 1), self.metric.name: float(self.metric.result()),
                 "num_examples": count}  # fmt: skip
        metrics = {"client_work": {"train": train}, "aggregator": {}}
        return SimpleNamespace(state=self._weights(), metrics=metrics)
