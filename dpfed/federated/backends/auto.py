"""``backend=auto`` (the default): the vectorized backend where it runs the setting, else reference.

The two give the same model (``tests/federated/test_backends.py``: a round agrees within 1e-4
for every mechanism and the strategies both run); ``vectorized`` trains a cohort several times
faster, and ``reference`` (TFF's own client work) runs what it refuses: ``fedsgd``,
``centralized``, client optimizers other than SGD and models other than the GRU stack.
"""

from __future__ import annotations

import logging

from dpfed.errors import ConfigError
from dpfed.federated.backends.reference import ReferenceBackend
from dpfed.federated.backends.vectorized import VectorizedBackend

log = logging.getLogger(__name__)


class AutoBackend:
    """Chooses the client backend for a run (`for_run`); summary.json's ``backend`` names it.

    Args:
        users_per_shard: simulated users per TFF client when the vectorized backend runs.
    """

    def __init__(self, users_per_shard: int):
        self.vectorized = VectorizedBackend(users_per_shard)  # refuses a bad users_per_shard

    def for_run(self, strategy, parts, model):
        if strategy.client_update is not None:
            try:
                return self.vectorized.for_run(strategy, parts, model)
            except ConfigError as refused:
                log.info(
                    "backend=auto runs reference, as vectorized refuses the setting: %s", refused
                )
        return ReferenceBackend().for_run(strategy, parts, model)
