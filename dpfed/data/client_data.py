"""A lazy TFF ClientData over a per-client array generator.

A client's arrays are generated (or loaded) only when the client is asked for,
so a population of 100,000 clients costs nothing until it is sampled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from dpfed.federated.runtime import tff

ClientArrays = tuple[np.ndarray, np.ndarray]


class LazyClientData(tff.simulation.datasets.ClientData):
    """ClientData whose client ``k`` is ``make_arrays(k)``, built on demand.

    Client ids are ``"0" .. str(num_clients - 1)``. Datasets handed to TFF are
    made with ``from_tensor_slices`` so TFF can serialize them into a round.

    Args:
        num_clients: population size.
        make_arrays: ``index -> (x, y)`` numpy arrays of one client.
        element_spec: spec of one (x, y) example.
    """

    def __init__(
        self,
        num_clients: int,
        make_arrays: Callable[[int], ClientArrays],
        element_spec: tuple[tf.TensorSpec, tf.TensorSpec],
    ):
        self._num_clients = num_clients
        self._make_arrays = make_arrays
        self._element_spec = element_spec

    @property
    def client_ids(self) -> list[str]:
        return [str(i) for i in range(self._num_clients)]

    @property
    def num_clients(self) -> int:
        return self._num_clients

    def arrays(self, client_id: str | int) -> ClientArrays:
        """Returns the (x, y) numpy arrays of one client."""
        index = int(client_id)
        if not 0 <= index < self._num_clients:
            raise ValueError(f"client id {client_id!r} is not in [0, {self._num_clients})")
        return self._make_arrays(index)

    def create_tf_dataset_for_client(self, client_id: str) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self.arrays(client_id))

    @property
    def serializable_dataset_fn(self):
        x_spec, y_spec = self._element_spec

        def dataset_fn(client_id):
            x, y = tf.numpy_function(
                lambda cid: self.arrays(cid.decode() if isinstance(cid, bytes) else cid),
                [client_id],
                [x_spec.dtype, y_spec.dtype],
            )
            x.set_shape([None, *x_spec.shape])
            y.set_shape([None, *y_spec.shape])
            return tf.data.Dataset.from_tensor_slices((x, y))

        return dataset_fn

    @property
    def element_type_structure(self):
        return self._element_spec
