"""Federation strategies built on ``tff.learning.algorithms``."""

from __future__ import annotations

import collections

import tensorflow as tf

from dpfed.errors import ConfigError, check
from dpfed.federated.runtime import tff
from dpfed.federated.sampling import SAMPLERS


class FederatedStrategy:
    """What every TFF-backed strategy shares: cohorts, evaluation, client data, model_fn.

    Subclasses implement `_build(model_fn, aggregator)`. Args are documented on
    `dpfed.config.FedAvgConfig`; optimizers arrive built as TFF optimizers.
    """

    name = "strategy"
    local_epochs = 1
    client_backend = None  # set by dpfed.build: None runs TFF's own client work

    def __init__(self, weighted: bool, clients_per_round: int, sampling: str, batch_size: int,
                 eval_every: int, eval_clients: int, server_optimizer):  # fmt: skip
        check(sampling in SAMPLERS, "sampling", sampling, f"one of {', '.join(SAMPLERS)}")
        check(batch_size >= 1, "batch_size", batch_size, ">= 1")
        check(eval_every >= 0, "eval_every", eval_every, ">= 0 (0 disables evaluation)")
        check(eval_clients == -1 or eval_clients >= 1, "eval_clients", eval_clients,
              "-1 (all clients) or >= 1")  # fmt: skip
        self.weighted, self.clients_per_round, self.sampling = weighted, clients_per_round, sampling
        self.batch_size, self.eval_every, self.eval_clients = batch_size, eval_every, eval_clients
        self.server_optimizer = server_optimizer

    def sampler(self, population: int, seed: int, client_data=None):
        return SAMPLERS[self.sampling](population, self.clients_per_round, seed)

    def build_process(self, model, mechanism, model_fn, aggregator, seed: int):
        """The TFF learning process (``model`` and ``mechanism`` are for other strategies)."""
        if self.client_backend is not None:  # e.g. `dpfed.federated.vectorized`
            return self.client_backend.build_process(self, model, mechanism, model_fn, aggregator)
        return self.learning_process(model_fn, aggregator)

    def learning_process(self, model_fn, aggregator):
        """Builds the TFF learning process for ``model_fn`` with ``aggregator`` (None: default)."""
        if self.weighted and isinstance(aggregator, tff.aggregators.UnweightedAggregationFactory):
            raise ConfigError("weighted", self.weighted,
                              "false with this dp mechanism (its aggregator weighs every "
                              "client equally, as user-level DP requires)")  # fmt: skip
        return self._build(model_fn, aggregator)

    def _build(self, model_fn, aggregator):
        raise NotImplementedError

    def cohort_data(self, client_data, client_ids, round_num: int, seed: int):
        """One shuffled, batched tf.data.Dataset per client of the cohort.

        With a client backend: one dataset per shard of clients, made from those.
        """
        datasets = [
            self.client_dataset(client_data.create_tf_dataset_for_client(cid),
                                seed=seed * 1_000_003 + round_num * 7919 + int(cid))
            for cid in client_ids
        ]  # fmt: skip
        if self.client_backend is None:
            return datasets
        return self.client_backend.shards(self, datasets)

    def client_dataset(self, dataset: tf.data.Dataset, seed: int) -> tf.data.Dataset:
        """Shuffles, repeats for the local epochs and batches one client's data."""
        return (
            dataset.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
            .repeat(self.local_epochs)
            .batch(self.batch_size)
        )

    def describe(self) -> dict:
        return {"strategy": self.name, "weighted": self.weighted,
                "local_epochs": self.local_epochs, "batch_size": self.batch_size}  # fmt: skip


class FedAvg(FederatedStrategy):
    """Federated averaging (McMahan et al., AISTATS 2017); with an adaptive server
    optimizer (``strategy=fedadam|fedyogi``) it is FedOpt (Reddi et al., ICLR 2021)."""

    name = "fedavg"

    def __init__(self, client_optimizer, local_epochs: int, **kwargs):
        check(local_epochs >= 1, "local_epochs", local_epochs, ">= 1")
        super().__init__(**kwargs)
        self.client_optimizer, self.local_epochs = client_optimizer, local_epochs

    def _build(self, model_fn, aggregator):
        if self.weighted:
            return tff.learning.algorithms.build_weighted_fed_avg(
                model_fn, self.client_optimizer, self.server_optimizer, model_aggregator=aggregator
            )
        return tff.learning.algorithms.build_unweighted_fed_avg(
            model_fn, self.client_optimizer, self.server_optimizer, model_aggregator=aggregator
        )


class ProximalOptimizer(tff.learning.optimizers.Optimizer):
    """A client optimizer whose gradient gains FedProx's proximal term ``mu * (w - w_start)``.

    ``w_start`` is the model a client starts local training from (the weights
    of its first step): TFF initializes the client optimizer once per client
    and round, so the first `next` call fixes it in the state.

    TFF 0.87's own FedProx (``proximal_client_work``) adds ``mu * (w_start - w)``,
    the opposite sign, which pushes clients away from the server model; this
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
        anchor = tf.nest.map_structure(lambda a, w: tf.where(state["started"], a, w),
                                       state["anchor"], weights)  # fmt: skip
        gradients = tf.nest.map_structure(lambda g, w, a: g + self.mu * (w - a),
                                          gradients, weights, anchor)  # fmt: skip
        base, weights = self.base.next(state["base"], weights, gradients)
        return collections.OrderedDict(base=base, anchor=anchor, started=tf.constant(True)), weights

    def get_hparams(self, state):
        return self.base.get_hparams(state["base"])

    def set_hparams(self, state, hparams):
        return collections.OrderedDict(state, base=self.base.set_hparams(state["base"], hparams))


class FedProx(FedAvg):
    """FedProx (Li et al., MLSys 2020): FedAvg with a proximal term mu/2 ||w - w_server||^2.

    Local training adds ``mu * (w - w_server)`` to every gradient through
    `ProximalOptimizer` on TFF's FedAvg client work (TFF 0.87's FedProx has
    the sign of that term reversed).

    Args:
        proximal_strength: mu, >= 0 (0 is FedAvg).
    """

    name = "fedprox"

    def __init__(self, proximal_strength: float, **kwargs):
        check(proximal_strength >= 0, "proximal_strength", proximal_strength, ">= 0")
        super().__init__(**kwargs)
        self.proximal_strength = proximal_strength

    def _build(self, model_fn, aggregator):
        build = (tff.learning.algorithms.build_weighted_fed_avg if self.weighted
                 else tff.learning.algorithms.build_unweighted_fed_avg)  # fmt: skip
        client_optimizer = ProximalOptimizer(self.client_optimizer, self.proximal_strength)
        return build(model_fn, client_optimizer, self.server_optimizer,
                     model_aggregator=aggregator)  # fmt: skip

    def describe(self) -> dict:
        return {**super().describe(), "proximal_strength": self.proximal_strength}


class FedSGD(FederatedStrategy):
    """Federated SGD (McMahan et al. 2017): each client sends the gradient of its data.

    Clients sum their batches' gradients in one pass and send the mean; the
    server applies the aggregate with ``server_optimizer``. With a DP mechanism
    each client's gradient is clipped and clients count equally.
    """

    name = "fedsgd"

    def _build(self, model_fn, aggregator):
        if not self.weighted:  # every client's gradient counts once, as with DP
            unweighted = aggregator or tff.aggregators.UnweightedMeanFactory()
            aggregator = tff.aggregators.as_weighted_aggregator(unweighted)
        return tff.learning.algorithms.build_fed_sgd(
            model_fn, self.server_optimizer, model_aggregator=aggregator
        )
