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

import numpy as np

from dpfed.errors import check
from dpfed.federated.strategy import Strategy, _check_evaluation


class Centralized(Strategy):
    """Pool the training data of every client (or of a seeded subset) and train one model.

    The pool and its Poisson batches are the privacy plan's
    (`dpfed.privacy.sampling.RecordPoissonSampler`); with ``dp=gaussian`` or
    ``dp=dpsgd`` the records are the unit of privacy and training is DP-SGD.
    There are no clients, so there is no client backend to choose.

    Args:
        clients_per_round: clients pooled (null: all); read by the sampler.
        sampling: ``records`` (read by the privacy plan).
        batch_size: batch size (the expected batch size under DP-SGD's Poisson batches).
        learning_rate, momentum: Keras SGD settings.
        eval_every, eval_clients: as for the federated strategies.
    """

    def __init__(
        self,
        batch_size: int,
        learning_rate: float,
        momentum: float,
        eval_every: int,
        eval_clients: int,
        clients_per_round: int | None = None,
        sampling: str = "records",
    ):
        check(batch_size >= 1, "batch_size", batch_size, ">= 1")
        check(learning_rate > 0, "learning_rate", learning_rate, "> 0")
        check(0 <= momentum < 1, "momentum", momentum, "in [0, 1)")
        _check_evaluation(eval_every, eval_clients)
        self.batch_size, self.learning_rate, self.momentum = batch_size, learning_rate, momentum
        self.eval_every, self.eval_clients = eval_every, eval_clients

    @staticmethod
    def pool(client_data, clients):
        """The training records of ``clients``, concatenated."""
        parts = [client_data.arrays(i) for i in clients]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def build_process(self, backend, model, parts, plan, dataset):
        """A `CentralizedProcess` on the plan's pool of records (a lockstep backend refuses
        a strategy without clients in its `check`)."""
        from dpfed.federated.pooled import CentralizedProcess

        x, y = self.pool(dataset.train, plan.sampler.clients)
        optimizer = {"learning_rate": self.learning_rate, "momentum": self.momentum}
        return CentralizedProcess(
            model,
            x,
            y,
            plan.sampler,
            optimizer,
            parts.example_dp,
            plan.sampler.seed,
            plan.stream_key("dpsgd"),
        )

    def state_codec(self, process):
        return process  # CentralizedProcess checkpoints its own weights and optimizer

    def describe(self) -> dict:
        return {
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "momentum": self.momentum,
        }
