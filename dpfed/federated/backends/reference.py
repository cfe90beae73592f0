"""The reference client backend: TFF's own client work, one simulated client after another."""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

from dpfed.errors import ConfigError
from dpfed.federated.backends.base import ClientBackend
from dpfed.federated.client_update import ClientWork, check_weighting, proximal_gradient
from dpfed.privacy.dpsgd import noisy_clipped_mean_gradient
from dpfed.privacy.queries import local_randomize, local_seed
from dpfed.runtime import tff


class ProximalOptimizer(tff.learning.optimizers.Optimizer):
    """A client optimizer whose gradient gains FedProx's proximal term ``mu * (w - w_start)``.

    ``w_start`` is the model a client starts local training from (the weights
    of its first step): TFF initializes the client optimizer once per client
    and round, so the first `next` call fixes it in the state. TFF 0.87's own
    FedProx (``proximal_client_work``) has the sign of the term reversed; this
    optimizer lets FedProx run on TFF's FedAvg client work instead.

    Args:
        base: the TFF client optimizer.
        mu: proximal strength, >= 0.
    """

    def __init__(self, base, mu: float):
        self.base, self.mu = base, mu

    def initialize(self, specs):
        return collections.OrderedDict(
            base=self.base.initialize(specs),
            anchor=tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), specs),
            started=tf.constant(False),
        )

    def next(self, state, weights, gradients):
        anchor = tf.nest.map_structure(
            lambda a, w: tf.where(state["started"], a, w), state["anchor"], weights
        )
        gradients = tf.nest.map_structure(
            lambda g, w, a: proximal_gradient(g, w, a, self.mu), gradients, weights, anchor
        )
        base, weights = self.base.next(state["base"], weights, gradients)
        return collections.OrderedDict(base=base, anchor=anchor, started=tf.constant(True)), weights

    def get_hparams(self, state):
        return self.base.get_hparams(state["base"])

    def set_hparams(self, state, hparams):
        return collections.OrderedDict(state, base=self.base.set_hparams(state["base"], hparams))


class KeyedModel(tff.learning.models.VariableModel):
    """A TFF model whose batches ``((x, y), seed)`` carry a noise seed pair, which it ignores.

    Args:
        base: the TFF model of (x, y) batches.
    """

    def __init__(self, base):
        self._base = base
        self._input_spec = (base.input_spec, tf.TensorSpec([2], tf.int64))

    trainable_variables = property(lambda self: self._base.trainable_variables)
    non_trainable_variables = property(lambda self: self._base.non_trainable_variables)
    local_variables = property(lambda self: self._base.local_variables)
    input_spec = property(lambda self: self._input_spec)

    @tf.function
    def forward_pass(self, batch_input, training=True):
        examples, _ = batch_input
        return self._base.forward_pass(examples, training=training)

    @tf.function
    def predict_on_batch(self, x, training=True):
        return self._base.predict_on_batch(x, training=training)

    @tf.function
    def report_local_unfinalized_metrics(self):
        return self._base.report_local_unfinalized_metrics()

    def metric_finalizers(self):
        return self._base.metric_finalizers()

    @tf.function
    def reset_metrics(self):
        return self._base.reset_metrics()


class DPSGDModel(KeyedModel):
    """A keyed TFF model whose training loss has the DP-SGD gradient (Abadi et al., CCS 2016).

    The returned loss keeps the true batch loss as its value (metrics are the
    wrapped model's), while its gradient with respect to the trainable
    variables is the noisy clipped mean gradient of the batch
    (`dpfed.privacy.dpsgd.noisy_clipped_mean_gradient`), its noise drawn from
    the batch's seed pair.

    Args:
        base: the TFF model built from ``keras_model``.
        keras_model: its Keras model.
        loss: the loss with ``reduction="none"``.
        clip: per-example L2 clipping norm.
        noise_multiplier: noise std / clip.
        batch_size: the configured batch size (the DP-SGD denominator).
    """

    def __init__(self, base, keras_model, loss, clip, noise_multiplier, batch_size):
        super().__init__(base)
        self._keras, self._loss, self._clip = keras_model, loss, clip
        self._noise_std, self._batch_size = noise_multiplier * clip, float(batch_size)

    @tf.function
    def forward_pass(self, batch_input, training=True):
        (x, y), seed = batch_input
        output = self._base.forward_pass((x, y), training=training)
        if not training:
            return output
        grads = noisy_clipped_mean_gradient(
            self._keras, self._loss, x, y, self._clip, self._noise_std, self._batch_size, seed
        )
        variables = self._keras.trainable_variables
        surrogate = tf.add_n(
            [tf.reduce_sum(tf.stop_gradient(g) * v) for g, v in zip(grads, variables, strict=True)]
        )
        loss = tf.stop_gradient(output.loss) + surrogate - tf.stop_gradient(surrogate)
        return tff.learning.models.BatchOutput(
            loss=loss, predictions=output.predictions, num_examples=output.num_examples
        )


def _locally_randomized(client_work, local, data_type):
    """``client_work`` followed by each client's randomizer, keyed by its data's first seed."""
    result_type = client_work.next.type_signature.result.result.member

    @tff.tensorflow.computation(data_type)
    def client_seed(dataset):
        first = dataset.take(1).reduce(tf.zeros([2], tf.int64), lambda _, batch: batch[1])
        return local_seed(first)

    @tff.tensorflow.computation(result_type, tff.TensorType(np.int64, [2]))
    def randomize(result, seed):
        flat = tf.nest.flatten(result.update)
        noised = local_randomize(flat, local.norm, local.clip, local.noise, local.scale, seed)
        return tff.learning.templates.ClientResult(
            update=tf.nest.pack_sequence_as(result.update, noised),
            update_weight=result.update_weight,
        )

    @tff.federated_computation(
        client_work.initialize.type_signature.result,
        client_work.next.type_signature.parameter[1],
        client_work.next.type_signature.parameter[2],
    )
    def next_fn(state, weights, data):
        output = client_work.next(state, weights, data)
        seeds = tff.federated_map(client_seed, data)
        result = tff.federated_map(randomize, (output.result, seeds))
        return tff.templates.MeasuredProcessOutput(output.state, result, output.measurements)

    return tff.learning.templates.ClientWorkProcess(
        client_work.initialize,
        next_fn,
        get_hparams_fn=client_work.get_hparams,
        set_hparams_fn=client_work.set_hparams,
    )


class ReferenceBackend(ClientBackend):
    """TFF's own client work (``tff.learning.algorithms``), one client after another.

    Example-level DP-SGD runs through `DPSGDModel`; a local randomizer runs on
    each client's update after TFF's client work, keyed by the seed the server
    attached to the client's data.
    """

    name = "reference"

    def check(self, strategy, parts, model) -> None:
        update = strategy.client_update
        if update is None:  # no clients (centralized): TFF's client work is not used
            return
        if parts.example_dp is not None and update.work != ClientWork.local_training:
            raise ConfigError(
                "strategy",
                str(update.work),
                "one with local training (not fedsgd) for example-level DP-SGD",
                absolute=True,
            )
        if parts.example_dp is not None and parts.example_dp.probe is not None:
            raise ConfigError(
                "backend",
                "reference",
                "vectorized for canary records in "
                "clients' DP-SGD (audit=canary_gradients): its clients measure "
                "the canaries' residuals",
                absolute=True,
            )
        if parts.local is not None and update.work != ClientWork.local_training:
            raise ConfigError(
                "strategy",
                str(update.work),
                "one with local training (not fedsgd) for local DP",
                absolute=True,
            )
        check_weighting(update.weighted, parts)

    def model_fn(self, model, parts, update):
        """The TFF model clients train (keyed when their batches carry noise seeds)."""
        if parts.example_dp is not None:
            dp = parts.example_dp

            def dpsgd_model():
                keras = model.keras_model()  # ghost clipping needs no unrolled GRUs
                return DPSGDModel(
                    model.tff_model(keras),
                    keras,
                    model.loss("none"),
                    dp.clip,
                    dp.noise_multiplier,
                    update.batch_size,
                )

            return dpsgd_model
        if parts.client_side:
            return lambda: KeyedModel(model.tff_model())
        return model.tff_model

    def build_process(self, strategy, model, parts):
        update = strategy.client_update
        model_fn = self.model_fn(model, parts, update)
        algorithms = tff.learning.algorithms
        if update.work == ClientWork.gradient:
            aggregator = parts.aggregator
            if not update.weighted:  # every client's gradient counts once, as with DP
                unweighted = aggregator or tff.aggregators.UnweightedMeanFactory()
                aggregator = tff.aggregators.as_weighted_aggregator(unweighted)
            return algorithms.build_fed_sgd(
                model_fn, strategy.server_optimizer, model_aggregator=aggregator
            )
        optimizer = update.optimizer
        if update.proximal_mu:
            optimizer = ProximalOptimizer(optimizer, update.proximal_mu)
        build = (
            algorithms.build_weighted_fed_avg
            if update.weighted
            else algorithms.build_unweighted_fed_avg
        )
        if parts.local is None:
            return build(
                model_fn, optimizer, strategy.server_optimizer, model_aggregator=parts.aggregator
            )

        # Local DP: FedAvg's composition, with the randomizer after TFF's client work.
        @tff.tensorflow.computation()
        def initial_model_weights_fn():
            return tff.learning.models.ModelWeights.from_model(model_fn())

        weights_type = initial_model_weights_fn.type_signature.result
        client_work = tff.learning.templates.build_model_delta_client_work(
            model_fn, optimizer, tff.learning.ClientWeighting.UNIFORM
        )
        data_type = client_work.next.type_signature.parameter[2].member
        aggregator = tff.aggregators.as_weighted_aggregator(parts.aggregator)
        return tff.learning.templates.compose_learning_process(
            initial_model_weights_fn,
            tff.learning.templates.build_broadcast_process(weights_type),
            _locally_randomized(client_work, parts.local, data_type),
            aggregator.create(weights_type.trainable, tff.TensorType(np.float32)),
            tff.learning.templates.build_apply_optimizer_finalizer(
                strategy.server_optimizer, weights_type
            ),
        )
