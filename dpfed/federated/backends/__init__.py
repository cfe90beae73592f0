"""Client backends: how a strategy's client work runs (`base.ClientBackend`), and their schemas.

The backend modules import TensorFlow; their schemas live here so that
composing a config does not.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReferenceConfig:
    """TFF's own client work, one simulated client after another (``backend=reference``)."""

    _target_: str = "dpfed.federated.backends.reference.ReferenceBackend"


@dataclass
class VectorizedConfig:
    """Shards of simulated users trained in lockstep (``backend=vectorized``).

    Attributes:
        users_per_shard: simulated users per TFF client.
    """

    _target_: str = "dpfed.federated.backends.vectorized.VectorizedBackend"
    users_per_shard: int = 100


@dataclass
class AutoConfig(VectorizedConfig):
    """``vectorized`` (with its ``users_per_shard``) where it runs the setting, else ``reference``
    (``backend=auto``)."""

    _target_: str = "dpfed.federated.backends.auto.AutoBackend"


SCHEMAS = {"auto": AutoConfig, "reference": ReferenceConfig, "vectorized": VectorizedConfig}
