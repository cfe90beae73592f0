"""What a client does in a round, described once and executed by every client backend."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from dpfed.errors import ConfigError


class ClientWork(enum.StrEnum):
    """The kinds of client work the backends know how to run."""

    local_training = "local_training"  # local_epochs passes of minibatch steps; send the delta
    gradient = "gradient"  # one mean gradient over the client's data (FedSGD)


@dataclass(frozen=True)
class ClientUpdate:
    """A client's work in a round (the strategy's side of it; DP lives in `MechanismParts`).

    A backend runs exactly this, or refuses the run: a strategy whose clients do
    something else must say so with a new ``work`` that the backends reject
    until they implement it.

    Attributes:
        work: `ClientWork`.
        optimizer: the TFF client optimizer (``local_training``).
        learning_rate: its learning rate.
        momentum: its momentum (0: plain SGD), for backends that step users in lockstep.
        sgd: the optimizer is (momentum) SGD, which lockstep backends can run exactly.
        local_epochs: passes over the client's data per round.
        batch_size: client batch size.
        proximal_mu: FedProx's proximal strength (0: FedAvg).
        weighted: weight updates by the client's number of examples.
    """

    work: ClientWork
    optimizer: Any = None
    learning_rate: float = 0.0
    momentum: float = 0.0
    sgd: bool = True
    local_epochs: int = 1
    batch_size: int = 16
    proximal_mu: float = 0.0
    weighted: bool = False


def proximal_gradient(gradient, weights, start, mu: float):
    """FedProx's gradient (Li et al., MLSys 2020): ``g + mu * (w - w_start)``.

    TFF 0.87's own FedProx client work adds ``mu * (w_start - w)``, which pushes
    clients away from the server model; both of dpfed's backends use this one.
    """
    return gradient + mu * (weights - start)


def check_weighting(weighted: bool, parts) -> None:
    """User-level DP aggregators count every client once; Poisson record batches must too.

    Args:
        weighted: ``strategy.weighted``.
        parts: the mechanism's `dpfed.privacy.mechanisms.base.MechanismParts`.

    Raises:
        ConfigError: naming ``strategy.weighted``.
    """
    if weighted and parts.aggregator is not None:
        raise ConfigError(
            "strategy.weighted",
            True,
            "false with this dp mechanism (its aggregator weighs every client "
            "equally, as user-level DP requires)",
            absolute=True,
        )
    if weighted and parts.poisson_batches is not None:
        raise ConfigError(
            "strategy.weighted",
            True,
            "false with dp.record_sampling=poisson (a client's weight would be "
            "the number of records its Poisson batches drew, which tells whether "
            "a record was drawn)",
            absolute=True,
        )
