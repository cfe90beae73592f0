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

    def _train_step(self, x, y, noise_seed, extra=None):
        if self.dpsgd is None:
            with tf.GradientTape() as tape:
                predictions = self.keras(x, training=True)
                loss = tf.reduce_mean(self.loss(y, predictions))
            grads = tape.gradient(loss, self.keras.trainable_variables)
            residual = None
        else:  # DP-SGD; the ghost clipper's forward pass also gives the loss and predictions
            summed, _, losses, predictions = self._clipper(x, y, self.dpsgd.clip)
            grads, residual = self._noised_mean(summed, noise_seed, extra)
            loss = tf.reduce_mean(losses)
        self.optimizer.apply_gradients(zip(grads, self.keras.trainable_variables, strict=True))
        return loss, predictions, residual

    def _noised_mean(self, summed, noise_seed, extra):
        """DP-SGD's update from the clipped sum: plus an audit's canary gradients (flat
        ``extra``, or None), plus noise, over the expected batch size; and the noised sum
        minus ``summed``, flat (what the audit's probe observes), or None without a probe."""
        clip, z = self.dpsgd.clip, self.dpsgd.noise_multiplier
        total = summed
        if extra is not None:
            shapes = [tf.shape(s) for s in summed]
            sizes = [int(np.prod(v.shape)) for v in self.keras.trainable_variables]
            parts = tf.split(extra, sizes)
            total = [
                s + tf.reshape(p, shape) for s, p, shape in zip(summed, parts, shapes, strict=True)
            ]
        noised = add_seeded_noise(total, z * clip, noise_seed)
        expected = float(self.sampler.batch_size)
        residual = None
        if extra is not None:
            noise = [n - s for n, s in zip(noised, summed, strict=True)]
            residual = tf.concat([tf.reshape(n, [-1]) for n in noise], 0)
        return [s / expected for s in noised], residual

    def _noise_only_step(self, noise_seed, extra=None):
        """The DP-SGD step of an empty Poisson batch: the noise alone, as the analysis assumes
        (with an audit, plus the canaries its batch drew)."""
        variables = self.keras.trainable_variables
        zeros = [tf.zeros_like(v) for v in variables]
        grads, residual = self._noised_mean(zeros, noise_seed, extra)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return residual

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
        arrays.update(
            {f"optimizer_{i:04d}": v.numpy() for i, v in enumerate(self.optimizer.variables)}
        )
        arrays["round"] = np.asarray(self._round)
        return arrays

    def restore_from_arrays(self, arrays: dict[str, np.ndarray]):
        """Sets what `state_to_arrays` saved (after `initialize`); returns the state."""
        self.optimizer.build(self.keras.trainable_variables)
        for prefix, variables in (
            ("weight", self.keras.weights),
            ("optimizer", self.optimizer.variables),
        ):
            names = sorted(k for k in arrays if k.startswith(prefix + "_"))
            if len(names) != len(variables):
                raise ValueError(
                    f"checkpoint has {len(names)} {prefix} tensors, this run has {len(variables)}"
                )
            for name, variable in zip(names, variables, strict=True):
                variable.assign(arrays[name])
        self._round = int(arrays["round"])
        return self._weights()

    def next(self, state, data=None):
        self.metric.reset_state()
        total, count = 0.0, 0
        self._round += 1
        probe = None if self.dpsgd is None else self.dpsgd.probe
        for step, idx in enumerate(self._batches(self._round)):
            seed = tf.constant(position_seed(self.noise_key, self._round, step), tf.int64)
            extra = None if probe is None else tf.constant(probe.step_gradient(self._round, step))
            if len(idx) == 0:  # an empty Poisson batch still releases its noise
                residual = self._noise_step(seed, extra)
                if probe is not None:
                    probe.observe(residual.numpy())
                continue
            x, y = tf.constant(self.x[idx]), tf.constant(self.y[idx])
            loss, predictions, residual = self._step(x, y, seed, extra)
            if probe is not None:
                probe.observe(residual.numpy())
            self.metric.update_state(self.y[idx], predictions)
            total, count = total + float(loss) * len(idx), count + len(idx)
        train = {
            "loss": total / max(count, 1),
            self.metric.name: float(self.metric.result()),
            "num_examples": count,
        }
        metrics = {"client_work": {"train": train}, "aggregator": {}}
        return SimpleNamespace(state=self._weights(), metrics=metrics)
