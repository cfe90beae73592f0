"""Configurable stacked GRU with a dense head (Cho et al. 2014)."""

from __future__ import annotations

from dpfed.errors import ConfigError, check

OUTPUT_MODES = ("last", "every_step")


class GRUModel:
    """Builds fresh Keras GRU stacks and the loss and metrics that go with them.

    The textbook model (two GRU(128) layers, Dense(10)) is
    ``units=[128, 128], head_units=10``.

    Args:
        units: units of each GRU layer, bottom to top.
        dropout: dropout between layers and before the head, in [0, 1).
        outputs: ``last`` or ``every_step``.
        head_units: width of the output layer; None takes it from the data.
        embedding_dim: width of the token embedding that text datasets (those
            with a ``vocab_size``) start with; 8 as in TFF's Shakespeare model.
    """

    def __init__(
        self,
        units,
        dropout: float = 0.0,
        outputs: str = "last",
        head_units=None,
        embedding_dim: int = 8,
    ):
        units = list(units)
        check(
            len(units) >= 1 and all(u >= 1 for u in units),
            "units",
            units,
            "a non-empty list of positive integers",
        )
        check(0 <= dropout < 1, "dropout", dropout, "in [0, 1)")
        check(outputs in OUTPUT_MODES, "outputs", outputs, f"one of {', '.join(OUTPUT_MODES)}")
        check(head_units is None or head_units >= 1, "head_units", head_units, "null or >= 1")
        check(embedding_dim >= 1, "embedding_dim", embedding_dim, ">= 1")
        self.embedding_dim = embedding_dim
        self.units, self.dropout, self.outputs, self.head_units = (
            units,
            dropout,
            outputs,
            head_units,
        )

    def bind(self, dataset) -> GRUModel:
        """Fixes input shape, task and head width from a dataset; checks they agree."""
        if self.outputs != dataset.labels:
            raise ConfigError(
                "outputs", self.outputs, f"equal to dataset.labels ({dataset.labels})"
            )
        if self.head_units is not None and dataset.task == "classification":
            check(
                self.head_units >= dataset.num_classes,
                "head_units",
                self.head_units,
                f">= the dataset's number of classes ({dataset.num_classes})",
            )
        if self.head_units is not None and dataset.task == "regression":
            check(self.head_units == 1, "head_units", self.head_units, "1 (or null) for regression")
        self.seq_len, self.num_features = dataset.seq_len, dataset.num_features
        self.vocab_size = dataset.vocab_size
        self.task = dataset.task
        self._array_spec = dataset.train.array_spec
        self.width = self.head_units or dataset.num_classes
        return self

    @property
    def input_spec(self):
        """Batched (x, y) ``tf.TensorSpec`` of what the model trains on."""
        import tensorflow as tf

        x_spec, y_spec = (spec.tensor_spec() for spec in self._array_spec)
        return (
            tf.TensorSpec([None, *x_spec.shape], x_spec.dtype),
            tf.TensorSpec([None, *y_spec.shape], y_spec.dtype),
        )

    def keras_model(self, unroll: bool = False):
        """Returns a new, freshly initialised Keras model.

        Args:
            unroll: unroll the GRUs over time (what vectorized per-example
                gradients need; same weights and outputs).
        """
        import tensorflow as tf

        if self.vocab_size:
            # Token ids -> vectors, as in TFF's Shakespeare model (McMahan et al. 2017).
            inputs = tf.keras.Input((self.seq_len,), dtype=tf.int32, name="sequence")
            x = tf.keras.layers.Embedding(self.vocab_size, self.embedding_dim, name="embedding")(
                inputs
            )
        else:
            inputs = tf.keras.Input((self.seq_len, self.num_features), name="sequence")
            x = inputs
        for i, u in enumerate(self.units):
            last_layer = i == len(self.units) - 1
            x = tf.keras.layers.GRU(
                u,
                return_sequences=not last_layer or self.outputs == "every_step",
                unroll=unroll,
                name=f"gru_{i}",
            )(x)
            if self.dropout:
                x = tf.keras.layers.Dropout(self.dropout)(x)
        out = tf.keras.layers.Dense(self.width, name="head")(x)
        if self.task == "regression":
            out = tf.keras.layers.Lambda(lambda t: tf.squeeze(t, -1), name="squeeze")(out)
        return tf.keras.Model(inputs, out, name="gru_stack")

    def trainable_weight_specs(self) -> list:
        """The ``tf.TensorSpec`` of each trainable weight, in the order TFF aggregates updates."""
        import tensorflow as tf

        return [tf.TensorSpec(v.shape, v.dtype) for v in self.keras_model().trainable_variables]

    def loss(self, reduction: str = "auto"):
        """The training Keras loss; ``reduction="none"`` gives one value per example (and step)."""
        import tensorflow as tf

        if self.task == "regression":
            return tf.keras.losses.MeanSquaredError(reduction=reduction)
        return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)

    def tff_model(self, keras_model=None):
        """A TFF VariableModel around ``keras_model`` (a fresh one by default)."""
        from dpfed.runtime import tff

        return tff.learning.models.from_keras_model(
            keras_model or self.keras_model(),
            loss=self.loss(),
            input_spec=self.input_spec,
            metrics=self.metrics(),
        )

    def metrics(self) -> list:
        """The Keras metrics: accuracy, or mean absolute error for regression."""
        import tensorflow as tf

        if self.task == "regression":
            return [tf.keras.metrics.MeanAbsoluteError(name="mae")]
        return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
