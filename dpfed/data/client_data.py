"""Per-client arrays made on demand, and turned into tf.data datasets only when TFF needs them.

A client's arrays are generated (or loaded) only when the client is asked for,
so a population of 100,000 clients costs nothing until it is sampled. Nothing
here imports TensorFlow until a dataset or a spec is asked for, so datasets can
be built and checked before TensorFlow starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

ClientArrays = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one example's array (what a ``tf.TensorSpec`` will say)."""

    shape: tuple[int, ...]
    dtype: str

    def tensor_spec(self):
        import tensorflow as tf

        return tf.TensorSpec(list(self.shape), tf.as_dtype(self.dtype))

    @classmethod
    def of(cls, array: np.ndarray) -> ArraySpec:
        """The spec of one example of a stacked ``[n, ...]`` array."""
        return cls(tuple(int(d) for d in array.shape[1:]), str(array.dtype))


class LazyClientData:
    """Clients ``"0" .. str(num_clients - 1)``; client ``k`` is ``make_arrays(k)``, built on demand.

    Args:
        num_clients: population size.
        make_arrays: ``index -> (x, y)`` numpy arrays of one client.
        element_spec: (x, y) `ArraySpec` of one example.
    """

    def __init__(
        self,
        num_clients: int,
        make_arrays: Callable[[int], ClientArrays],
        element_spec: tuple[ArraySpec, ArraySpec],
    ):
        self._num_clients = num_clients
        self._make_arrays = make_arrays
        self.array_spec = element_spec

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

    def create_tf_dataset_for_client(self, client_id: str):
        """One client's examples as a ``tf.data.Dataset`` (made with ``from_tensor_slices``)."""
        import tensorflow as tf

        return tf.data.Dataset.from_tensor_slices(self.arrays(client_id))

    @property
    def element_type_structure(self):
        """(x, y) ``tf.TensorSpec`` of one example."""
        return tuple(spec.tensor_spec() for spec in self.array_spec)
