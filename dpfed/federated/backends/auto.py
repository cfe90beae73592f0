"""``backend=auto`` (the default): the vectorized backend where it runs the setting, else reference.

The two give the same model (``tests/federated/test_backends.py``: a round agrees within 1e-4
for every mechanism and the strategies both run; dropout masks agree in distribution only);
``vectorized`` trains a cohort several times faster, and ``reference`` (TFF's own client work)
runs what it refuses: ``fedsgd``, ``centralized`` (no clients to train in lockstep), client
optimizers other than (momentum) SGD, and a model other than the GRU stack with a dense head
(none of ``conf/model``).
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
        """Vectorized if it takes the setting, else reference.

        Raises:
            ConfigError: neither takes it. Where one backend's refusal names a setting and the
                other's only says "the other backend", the one that names the setting (what
                the user can change); the refusal both make of one setting; else both.
        """
        try:
            return self.vectorized.for_run(strategy, parts, model)
        except ConfigError as on_vectorized:
            try:
                backend = ReferenceBackend().for_run(strategy, parts, model)
            except ConfigError as on_reference:
                vectorized, reference = on_vectorized.key, on_reference.key
                if vectorized == "backend" != reference or vectorized == reference != "backend":
                    raise  # reference's names the setting to change (or both name it)
                if reference == "backend" != vectorized:
                    raise on_vectorized from None  # vectorized's names it
                raise ConfigError(
                    "backend",
                    "auto",
                    "a backend that runs this setting, and neither does: vectorized refuses it "
                    f"({on_vectorized}); reference refuses it ({on_reference})",
                    absolute=True,
                ) from on_reference
            log.info(
                "backend=auto runs reference, as vectorized refuses the setting: %s", on_vectorized
            )
            return backend
