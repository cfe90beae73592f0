"""Forward pass, loss and metric of a `GRUModel` for K models at once (one per simulated user)."""

from __future__ import annotations

import tensorflow as tf


class StackedGRU:
    """The forward pass of `GRUModel.keras_model()` for K models at once.

    Weights are the Keras model's trainable variables in order (the token
    embedding ``[V, e]`` of text models; per GRU layer ``kernel [d, 3u]``,
    ``recurrent_kernel [u, 3u]``, ``bias [2, 3u]``; the head's ``kernel [u, c]``
    and ``bias [c]``), each with a leading user axis K.
    The GRU is Keras's default (Cho et al. 2014, ``reset_after=True``, gates
    ordered z, r, h): ``z = sigmoid(x Wz + bz + h Uz + cz)``, likewise r,
    ``h~ = tanh(x Wh + bh + r * (h Uh + ch))``, ``h' = z * h + (1 - z) * h~``.

    Args:
        model: a bound `dpfed.models.gru.GRUModel`.
    """

    def __init__(self, model):
        self.units, self.dropout = list(model.units), model.dropout
        self.every_step, self.regression = model.outputs == "every_step", model.task == "regression"
        self.num_features, self.width = model.num_features, model.width
        self.vocab_size, self.embedding_dim = model.vocab_size, model.embedding_dim

    def shapes(self) -> list[tuple[int, ...]]:
        """Shapes of one model's trainable weights, in Keras order."""
        shapes, d = [], self.num_features
        if self.vocab_size:
            shapes, d = [(self.vocab_size, self.embedding_dim)], self.embedding_dim
        for u in self.units:
            shapes += [(d, 3 * u), (u, 3 * u), (2, 3 * u)]
            d = u
        return [*shapes, (d, self.width), (self.width,)]

    @staticmethod
    def _gru(inputs, kernel, recurrent_kernel, bias, sequences: bool, record=None):
        """One GRU layer over ``[K, B, T, d]`` or a list of its time steps ``[K, B, d]``.

        Each step's input projection is its own ``[K, B, d] x [K, d, 3u]`` matmul:
        on a CPU that is faster than one projection of the stacked sequence
        followed by slicing it into steps (the slices and their gradients are
        copies), and the recurrence needs the steps one by one anyway.
        """
        steps = inputs if isinstance(inputs, list) else tf.unstack(inputs, axis=2)
        input_bias, recurrent_bias = bias[:, None, 0, :], bias[:, None, 1, :]
        units = recurrent_kernel.shape[1]
        h = tf.zeros(tf.concat([tf.shape(steps[0])[:-1], [units]], 0), steps[0].dtype)
        h.set_shape(steps[0].shape[:-1].concatenate([units]))
        projections, previous, resets, outputs = [], [], [], []
        for xt in steps:
            projected = tf.matmul(xt, kernel)
            if record is not None:
                record.watch(projected)
                projections.append(projected)
            x_z, x_r, x_h = tf.split(projected + input_bias, 3, axis=-1)
            rec = tf.matmul(h, recurrent_kernel) + recurrent_bias
            r_z, r_r, r_h = tf.split(rec, 3, axis=-1)
            z = tf.sigmoid(x_z + r_z)
            r = tf.sigmoid(x_r + r_r)
            previous.append(h)
            resets.append(r)
            h = z * h + (1 - z) * tf.tanh(x_h + r * r_h)
            outputs.append(h)
        if record is not None:
            if isinstance(inputs, list):
                inputs = tf.stack(inputs, axis=2)
            record.add(
                "gru", (inputs, tf.stack(previous, axis=2), tf.stack(resets, axis=2)), projections
            )
        return outputs if sequences else h

    def __call__(self, weights, x, training: bool = False, record=None) -> tf.Tensor:
        """Outputs of K models on their own batches.

        Args:
            weights: the trainable weights, each ``[K, ...]``.
            x: inputs ``[K, B, T, F]`` (token ids ``[K, B, T]`` for text models).
            training: apply dropout (as Keras does in training).
            record: an object with ``watch(tensor)`` and ``add(kind, inputs,
                output)``, told every weight's layer input and (watched)
                pre-activation output, a tensor or a list of the time steps'
                ``[K, B, n]``: what per-example gradient norms need
                (`dpfed.privacy.ghost.stacked_clipped_gradients`).

        Returns:
            Logits ``[K, B, C]`` (``[K, B, T, C]`` per step), or ``[K, B]``
            (``[K, B, T]``) for regression.
        """
        weights = list(weights)
        if self.vocab_size:
            tokens = tf.cast(x, tf.int32)
            x = tf.gather(weights.pop(0), tokens, batch_dims=1)  # each user's own embedding
            if record is not None:
                record.watch(x)
                record.add("embedding", tokens, x)
        steps = x
        for i in range(len(self.units)):
            kernel, recurrent_kernel, bias = weights[3 * i : 3 * i + 3]
            last = i == len(self.units) - 1
            steps = self._gru(
                steps, kernel, recurrent_kernel, bias, not last or self.every_step, record
            )
            if training and self.dropout:
                steps = (
                    [tf.nn.dropout(s, self.dropout) for s in steps]
                    if isinstance(steps, list)
                    else tf.nn.dropout(steps, self.dropout)
                )
        head_kernel, head_bias = weights[-2:]
        if self.every_step:
            x = tf.stack(steps, axis=2)
            pre = tf.einsum("kbtu,kuc->kbtc", x, head_kernel)
            bias = head_bias[:, None, None, :]
        else:
            x = steps
            pre = tf.matmul(x, head_kernel)
            bias = head_bias[:, None, :]
        if record is not None:
            record.watch(pre)
            record.add("dense", x, pre)
        out = pre + bias
        return tf.squeeze(out, -1) if self.regression else out

    def example_losses(self, out, y) -> tf.Tensor:
        """Each example's loss ``[K, B]`` (averaged over time steps), as the Keras loss."""
        if self.regression:
            per = tf.square(out - tf.cast(y, out.dtype))
        else:
            per = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(y, tf.int64), logits=out
            )
        return tf.reduce_mean(per, axis=2) if self.every_step else per

    def metric_update(self, out, y, mask):
        """(total, count) this batch adds to the Keras metric, per user ``[K]``.

        Accuracy counts every (example, step); Keras's MAE on one label per
        example reduces a batch to its mean and counts the batch once.
        """
        if self.regression:
            err = tf.abs(out - tf.cast(y, out.dtype))
            if self.every_step:
                return tf.reduce_sum(tf.reduce_mean(err, 2) * mask, 1), tf.reduce_sum(mask, 1)
            n = tf.reduce_sum(mask, 1)
            batch = tf.math.divide_no_nan(tf.reduce_sum(err * mask, 1), n)
            return batch, tf.cast(n > 0, tf.float32)
        hit = tf.cast(tf.equal(tf.argmax(out, -1, output_type=y.dtype), y), tf.float32)
        if self.every_step:
            steps = float(hit.shape[2])
            return tf.reduce_sum(tf.reduce_sum(hit, 2) * mask, 1), steps * tf.reduce_sum(mask, 1)
        return tf.reduce_sum(hit * mask, 1), tf.reduce_sum(mask, 1)
