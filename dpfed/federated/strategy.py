"""Federation strategies built on ``tff.learning.algorithms``."""

from __future__ import annotations

import tensorflow as tf

from dpfed.errors import ConfigError, check
from dpfed.federated.runtime import tff
from dpfed.federated.sampling import SAMPLERS


class FedAvg:
    """Federated averaging (McMahan et al., AISTATS 2017) via TFF's learning API.

    Args are documented on `dpfed.config.FedAvgConfig`; the optimizers arrive
    already built as ``tff.learning.optimizers.Optimizer`` objects.
    """

    def __init__(
        self,
        weighted: bool,
        clients_per_round: int,
        sampling: str,
        local_epochs: int,
        batch_size: int,
        eval_every: int,
        eval_clients: int,
        client_optimizer,
        server_optimizer,
    ):
        check(clients_per_round >= 1, "clients_per_round", clients_per_round, ">= 1")
        check(sampling in SAMPLERS, "sampling", sampling, f"one of {', '.join(SAMPLERS)}")
        check(local_epochs >= 1, "local_epochs", local_epochs, ">= 1")
        check(batch_size >= 1, "batch_size", batch_size, ">= 1")
        check(eval_every >= 0, "eval_every", eval_every, ">= 0 (0 disables evaluation)")
        check(
            eval_clients == -1 or eval_clients >= 1,
            "eval_clients",
            eval_clients,
            "-1 (all clients) or >= 1",
        )
        self.weighted, self.clients_per_round, self.sampling = weighted, clients_per_round, sampling
        self.local_epochs, self.batch_size = local_epochs, batch_size
        self.eval_every, self.eval_clients = eval_every, eval_clients
        self.client_optimizer, self.server_optimizer = client_optimizer, server_optimizer

    def sampler(self, population: int, seed: int):
        return SAMPLERS[self.sampling](population, self.clients_per_round, seed)

    def learning_process(
        self, model, element_spec, aggregator
    ) -> tff.learning.templates.LearningProcess:
        """Builds TFF's FedAvg process for ``model`` with ``aggregator`` (None: default mean)."""
        x_spec, y_spec = element_spec
        input_spec = (
            tf.TensorSpec([None, *x_spec.shape], x_spec.dtype),
            tf.TensorSpec([None, *y_spec.shape], y_spec.dtype),
        )

        def model_fn():
            return tff.learning.models.from_keras_model(
                model.keras_model(),
                loss=model.loss(),
                input_spec=input_spec,
                metrics=model.metrics(),
            )

        unweighted_only = isinstance(aggregator, tff.aggregators.UnweightedAggregationFactory)
        if self.weighted and unweighted_only:
            raise ConfigError(
                "weighted",
                self.weighted,
                "false with this dp mechanism (its aggregator weighs every "
                "client equally, as user-level DP requires)",
            )
        if self.weighted:
            return tff.learning.algorithms.build_weighted_fed_avg(
                model_fn, self.client_optimizer, self.server_optimizer, model_aggregator=aggregator
            )
        return tff.learning.algorithms.build_unweighted_fed_avg(
            model_fn, self.client_optimizer, self.server_optimizer, model_aggregator=aggregator
        )

    def client_dataset(self, dataset: tf.data.Dataset, seed: int) -> tf.data.Dataset:
        """Shuffles, repeats for the local epochs and batches one client's data."""
        return (
            dataset.shuffle(1024, seed=seed, reshuffle_each_iteration=True)
            .repeat(self.local_epochs)
            .batch(self.batch_size)
        )

    def describe(self) -> dict:
        return {
            "strategy": "fedavg",
            "weighted": self.weighted,
            "local_epochs": self.local_epochs,
            "batch_size": self.batch_size,
        }
