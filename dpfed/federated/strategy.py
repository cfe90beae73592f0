"""Federation strategies: what clients do (a `ClientUpdate`) and how the server applies it.

A strategy is a description; a client backend (`dpfed.federated.backends`)
turns it into a TFF learning process, so every strategy runs on every backend
that can execute its client work, and is refused by the others.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from dpfed.errors import check
from dpfed.federated.client_update import ClientUpdate, ClientWork
from dpfed.privacy.sampling import RecordSampling, Sampling


class Strategy(abc.ABC):
    """What every strategy has: evaluation settings and a way to build its process.

    Attributes:
        eval_every: evaluate every k rounds (and after the last); 0 disables it.
        eval_clients: clients whose held-out split is evaluated; -1 for all.
        weighted: client updates are weighted by their number of examples.
        client_update: what each client does, or None when there are no
            clients (``strategy=centralized``).
    """

    eval_every: int
    eval_clients: int
    weighted: bool = False
    client_update: ClientUpdate | None = None

    @abc.abstractmethod
    def build_process(self, backend, model, parts, plan, dataset):
        """The learning process (TFF's interface: ``initialize``, ``next``, ``get_model_weights``).

        Args:
            backend: the client backend (`dpfed.federated.backends`).
            model: the bound `dpfed.models.gru.GRUModel`.
            parts: the mechanism's `dpfed.privacy.mechanisms.base.MechanismParts`.
            plan: the run's `dpfed.privacy.plan.PrivacyPlan`.
            dataset: the run's dataset (its training data as the mechanism left it).
        """

    def state_codec(self, process):
        """How ``process``'s state becomes arrays and back (for checkpoints): TFF's codec here.

        A strategy whose process is not TFF's returns an object with
        ``state_to_arrays(state) -> dict[str, np.ndarray]`` and
        ``restore_from_arrays(arrays) -> state``.
        """
        from dpfed.io.checkpoint import TFFStateCodec

        return TFFStateCodec(process)

    def describe(self) -> dict:
        return {"weighted": self.weighted}


def _check_evaluation(eval_every: int, eval_clients: int) -> None:
    check(eval_every >= 0, "eval_every", eval_every, ">= 0 (0 disables evaluation)")
    check(
        eval_clients == -1 or eval_clients >= 1,
        "eval_clients",
        eval_clients,
        "-1 (all clients) or >= 1",
    )


class FederatedStrategy(Strategy):
    """A strategy with clients; the backend runs their `ClientUpdate` (args: `StrategyConfig`)."""

    def __init__(
        self,
        weighted: bool,
        clients_per_round: int,
        sampling: str,
        batch_size: int,
        eval_every: int,
        eval_clients: int,
        server_optimizer,
        sampling_groups: int | None = None,
    ):
        check(batch_size >= 1, "batch_size", batch_size, ">= 1")
        check(clients_per_round >= 1, "clients_per_round", clients_per_round, ">= 1")
        _check_evaluation(eval_every, eval_clients)
        self.weighted, self.batch_size = weighted, batch_size
        self.eval_every, self.eval_clients = eval_every, eval_clients
        self.server_optimizer = server_optimizer

    def build_process(self, backend, model, parts, plan, dataset):
        return backend.build_process(self, model, parts)

    def describe(self) -> dict:
        update = self.client_update
        return {
            "weighted": self.weighted,
            "batch_size": self.batch_size,
            "client_work": str(update.work),
            "local_epochs": update.local_epochs,
            "proximal_strength": update.proximal_mu,
        }


def _optimizer_hparams(optimizer) -> dict:
    import tensorflow as tf

    return optimizer.get_hparams(optimizer.initialize(tf.TensorSpec([], tf.float32)))


class FedAvg(FederatedStrategy):
    """Federated averaging (McMahan et al., AISTATS 2017); with an adaptive server
    optimizer (``strategy=fedadam|fedyogi``) it is FedOpt (Reddi et al., ICLR 2021).

    Args:
        client_optimizer: the TFF optimizer of local training.
        local_epochs: passes over its data each client makes per round, >= 1.
        **kwargs: as for `FederatedStrategy`.
    """

    proximal_strength = 0.0

    def __init__(self, client_optimizer, local_epochs: int, **kwargs):
        check(local_epochs >= 1, "local_epochs", local_epochs, ">= 1")
        super().__init__(**kwargs)
        self.client_optimizer, self.local_epochs = client_optimizer, local_epochs

    @property
    def client_update(self) -> ClientUpdate:
        hparams = _optimizer_hparams(self.client_optimizer)
        return ClientUpdate(
            ClientWork.local_training,
            optimizer=self.client_optimizer,
            learning_rate=float(hparams["learning_rate"]),
            momentum=float(hparams.get("momentum", 0.0)),
            sgd=set(hparams) <= {"learning_rate", "momentum"},
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            proximal_mu=self.proximal_strength,
            weighted=self.weighted,
        )


class FedProx(FedAvg):
    """FedProx (Li et al., MLSys 2020): FedAvg with a proximal term mu/2 ||w - w_server||^2.

    Local training adds ``mu * (w - w_server)`` to every gradient
    (`dpfed.federated.client_update.proximal_gradient`).

    Args:
        proximal_strength: mu, >= 0 (0 is FedAvg).
    """

    def __init__(self, proximal_strength: float, **kwargs):
        check(proximal_strength >= 0, "proximal_strength", proximal_strength, ">= 0")
        super().__init__(**kwargs)
        self.proximal_strength = proximal_strength


class FedSGD(FederatedStrategy):
    """Federated SGD (McMahan et al. 2017): each client sends the gradient of its data.

    Clients sum their batches' gradients in one pass and send the mean; the
    server applies the aggregate with ``server_optimizer``. With a DP mechanism
    each client's gradient is clipped and clients count equally.
    """

    @property
    def client_update(self) -> ClientUpdate:
        return ClientUpdate(ClientWork.gradient, batch_size=self.batch_size, weighted=self.weighted)


# --------------------------------------------------------------------------- schemas
@dataclass
class StrategyConfig:
    """Settings every federation strategy has.

    Attributes:
        weighted: weight client updates by their number of examples; DP
            aggregators need ``false`` (each client counts once).
        clients_per_round: cohort size (expected size for ``poisson``).
        sampling: how cohorts are drawn: ``fixed`` (TFF's uniform fixed-size
            sampling without replacement), ``poisson`` (each client joins with
            probability clients_per_round / num_clients) or ``shuffle``
            (shuffled epochs, every client once per epoch, no amplification),
            ``cyclic`` (one permutation visited in order every epoch) or
            ``min_sep_poisson`` (``sampling_groups`` groups take turns, Poisson
            within the group: rounds of one client at least that far apart).
        sampling_groups: the groups of ``min_sep_poisson`` (null otherwise).
        batch_size: client batch size.
        eval_every: evaluate on held-out client data every k rounds (and after
            the last round); 0 disables evaluation.
        eval_clients: clients whose held-out split is evaluated (a fixed,
            seeded set); -1 evaluates all clients.
        server_optimizer: optimizer applying the aggregated update on the server.
    """

    _target_: str = MISSING
    weighted: bool = False
    clients_per_round: int = 50
    sampling: Sampling = Sampling.poisson
    sampling_groups: int | None = None
    batch_size: int = 16
    eval_every: int = 2
    eval_clients: int = 200
    server_optimizer: Any = MISSING


@dataclass
class FedAvgConfig(StrategyConfig):
    """Federated averaging through ``tff.learning.algorithms`` (McMahan et al. 2017).

    Attributes:
        local_epochs: passes over its data each client makes per round.
        client_optimizer: optimizer of local training.
    """

    _target_: str = "dpfed.federated.strategy.FedAvg"
    local_epochs: int = 1
    client_optimizer: Any = MISSING


@dataclass
class FedProxConfig(FedAvgConfig):
    """FedProx (Li et al. 2020).

    Attributes:
        proximal_strength: weight mu of the proximal term, >= 0.
    """

    _target_: str = "dpfed.federated.strategy.FedProx"
    proximal_strength: float = 0.01


@dataclass
class FedSGDConfig(StrategyConfig):
    """Federated SGD: one gradient per client per round."""

    _target_: str = "dpfed.federated.strategy.FedSGD"


@dataclass
class CentralizedConfig:
    """Pool every client's training data and train one model (Keras SGD).

    Attributes:
        clients_per_round: pool the data of this many (seeded, random) clients;
            null pools every client.
        sampling: ``records``: every step draws a Poisson batch of the pooled
            records (what DP-SGD's accounting assumes).
        batch_size: batch size; the expected size of DP-SGD's Poisson batches.
        learning_rate: SGD learning rate.
        momentum: SGD momentum.
        eval_every: evaluate every k epochs (rounds); 0 disables evaluation.
        eval_clients: clients whose held-out split is evaluated; -1 for all.
    """

    _target_: str = "dpfed.federated.centralized.Centralized"
    clients_per_round: int | None = None
    sampling: RecordSampling = RecordSampling.records
    batch_size: int = 256
    learning_rate: float = 0.2
    momentum: float = 0.0
    eval_every: int = 1
    eval_clients: int = 200


SCHEMAS = {
    "fedavg": FedAvgConfig,
    "fedprox": FedProxConfig,
    "fedsgd": FedSGDConfig,
    "centralized": CentralizedConfig,
}
