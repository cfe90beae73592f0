"""Per-example clipped gradient sums for GRU stacks without per-example gradients.

DP-SGD (Abadi et al., CCS 2016) needs ``sum_i min(1, C / ||g_i||) g_i`` over the
examples ``i`` of a batch. Materialising every ``g_i`` (microbatches, or
``vectorized_map``) costs a batch of backward passes; for recurrent layers TF
Privacy falls back to exactly that. Here one forward pass records, for every
weight, the layer input ``a`` and the gradient ``d`` of the summed loss with
respect to the layer's pre-activation output (both still per example). A
weight used at every time step has the per-example gradient
``g_i = sum_t a_{i,t}^T d_{i,t}``, whose squared norm is

    ||g_i||^2 = sum_{t,s} (a_{i,t} . a_{i,s}) (d_{i,t} . d_{i,s})

the "ghost norm" of Goodfellow (2015) and Li et al. (ICLR 2022) extended over
time steps; it is computed from the two Gram matrices, or from the
materialised ``[d_in, d_out]`` per-example gradient when that is cheaper
(Bu et al., 2022, "mixed ghost clipping"). Since every weight gradient is
linear in ``d``, the clipped sum is then the ordinary weight gradient with
each example's ``d`` scaled by its clip factor: one backward pass to the
activations, no second pass.

Covered layers (what `dpfed.models.gru.GRUModel` builds): ``InputLayer``,
``Embedding``, ``GRU`` (Keras defaults: ``reset_after=True``, tanh and
sigmoid, gate order z, r, h), ``Dropout``, ``Dense`` (on the last step or on
every step) and the regression ``squeeze``. Anything else raises.
"""

from __future__ import annotations

import tensorflow as tf


def elementwise_loss(loss: tf.keras.losses.Loss):
    """``(y, prediction) -> loss of every label element`` from a ``reduction="none"`` Keras loss.

    Keras' mean squared error averages over the last axis, which for scalar
    regression targets is the batch axis itself; giving it a trailing
    singleton axis keeps one value per target.
    """
    if isinstance(loss, tf.keras.losses.MeanSquaredError):
        return lambda y, p: loss(y[..., None], p[..., None])
    return loss


def per_example_loss(loss: tf.keras.losses.Loss):
    """``(y, prediction) -> [batch]`` mean loss of each example (over its time steps)."""
    elementwise = elementwise_loss(loss)

    def fn(y, p):
        values = elementwise(y, p)
        return tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)

    return fn


def _squared_weight_norms(a, d):
    """Per-example ``||sum_t a_t^T d_t||^2`` for ``a [B,(T,)m]``, ``d [B,(T,)k]``."""
    if a.shape.rank == 2:
        return tf.reduce_sum(a * a, 1) * tf.reduce_sum(d * d, 1)
    steps, m, k = a.shape[1], a.shape[2], d.shape[2]
    if steps is not None and steps * steps * (m + k) < steps * m * k:  # Gram matrices are cheaper
        gram_a = tf.einsum("btm,bsm->bts", a, a)
        gram_d = tf.einsum("btk,bsk->bts", d, d)
        return tf.reduce_sum(gram_a * gram_d, axis=[1, 2])
    per_example = tf.einsum("btm,btk->bmk", a, d)
    return tf.reduce_sum(per_example * per_example, axis=[1, 2])


def _squared_bias_norms(d):
    summed = d if d.shape.rank == 2 else tf.reduce_sum(d, axis=1)
    return tf.reduce_sum(summed * summed, axis=1)


def _weight_gradient(a, d):
    return tf.einsum("btm,btk->mk", a, d) if a.shape.rank == 3 else tf.matmul(a, d, True)


def _bias_gradient(d):
    return tf.reduce_sum(tf.reshape(d, [-1, d.shape[-1]]), axis=0)


def _gram(t):
    return tf.einsum("btm,bsm->bts", t, t)


def _gru_norms(inputs, previous, resets, projected):
    """Per-example squared norm of a GRU layer's kernel, recurrent kernel and bias gradients.

    ``projected`` is the output gradient of the input projection ``x W``; the
    recurrent matmul ``h U`` has the same gradient in its update and reset
    thirds and the candidate third scaled by the reset gate (it enters as
    ``r * (h U_h)``). The update and reset thirds of both weights share one
    output gradient, so their norms come from the Gram matrix of ``[x | h]``.
    """
    units = resets.shape[-1]
    d_zr, d_h = projected[..., : 2 * units], projected[..., 2 * units :]
    d_hr = d_h * resets
    bias = 2 * _squared_bias_norms(d_zr) + _squared_bias_norms(d_h) + _squared_bias_norms(d_hr)
    steps, m = inputs.shape[1], inputs.shape[2]
    gram_cost = steps * (m + 5 * units)
    dense_cost = (m + units) * 2 * units + m * units + units * units
    if steps is None or gram_cost >= dense_cost:  # materialising per-example gradients is cheaper
        joint = tf.concat([inputs, previous], axis=-1)
        return (
            bias
            + _squared_weight_norms(joint, d_zr)
            + _squared_weight_norms(inputs, d_h)
            + _squared_weight_norms(previous, d_hr)
        )
    gram_x, gram_h = _gram(inputs), _gram(previous)
    total = (gram_x + gram_h) * _gram(d_zr) + gram_x * _gram(d_h) + gram_h * _gram(d_hr)
    return bias + tf.reduce_sum(total, axis=[1, 2])


def _gru_gradients(inputs, previous, resets, projected):
    """(kernel, recurrent kernel, bias) gradients of a GRU layer, summed over the batch."""
    units = resets.shape[-1]
    m = inputs.shape[-1]
    d_zr, d_h = projected[..., : 2 * units], projected[..., 2 * units :]
    d_hr = d_h * resets
    joint_zr = _weight_gradient(tf.concat([inputs, previous], axis=-1), d_zr)
    kernel = tf.concat([joint_zr[:m], _weight_gradient(inputs, d_h)], axis=1)
    recurrent = tf.concat([joint_zr[m:], _weight_gradient(previous, d_hr)], axis=1)
    input_bias = _bias_gradient(projected)
    recurrent_bias = tf.concat([input_bias[: 2 * units], _bias_gradient(d_hr)], axis=0)
    return kernel, recurrent, tf.stack([input_bias, recurrent_bias])


def _stacked(steps):
    """``[B, T, d]`` from a list of time steps ``[B, d]`` (a tensor is returned as it is)."""
    return tf.stack(steps, axis=1) if isinstance(steps, list) else steps


def _scale(d, factors):
    return d * tf.reshape(factors, [-1] + [1] * (d.shape.rank - 1))


class _Linear:
    """``out = a @ kernel + bias`` (the Dense head, a GRU's input projection)."""

    def __init__(self, kernel, bias):
        self.kernel, self.bias = kernel, bias

    def norms(self, a, d):
        squared = _squared_weight_norms(a, d)
        return squared if self.bias is None else squared + _squared_bias_norms(d)

    def gradients(self, a, d):
        grads = {self.kernel.ref(): _weight_gradient(a, d)}
        if self.bias is not None:
            grads[self.bias.ref()] = _bias_gradient(d)
        return grads


class GhostClipper:
    """Clipped per-example gradient sums of a Keras GRU stack, in one forward and one backward pass.

    Args:
        keras_model: a model from `dpfed.models.gru.GRUModel.keras_model` (any
            ``unroll``; the weights are read, the layers are not called).
        loss: the model's Keras loss with ``reduction="none"``.

    Raises:
        ValueError: the model has a layer this class does not cover.
    """

    def __init__(self, keras_model: tf.keras.Model, loss: tf.keras.losses.Loss):
        self.model = keras_model
        self.per_example_loss = per_example_loss(loss)
        for layer in keras_model.layers:
            self._check(layer)

    @staticmethod
    def _check(layer):
        if isinstance(layer, tf.keras.layers.GRU):
            cell = layer.cell
            activations = (cell.activation, cell.recurrent_activation)
            ok = (
                cell.reset_after
                and cell.use_bias
                and activations == (tf.keras.activations.tanh, tf.keras.activations.sigmoid)
                and not layer.go_backwards
                and not layer.stateful
                and not cell.dropout
                and not cell.recurrent_dropout
            )
            if not ok:
                raise ValueError(f"GhostClipper covers Keras' default GRU only, not {layer.name}")
        elif isinstance(layer, tf.keras.layers.Dense):
            if layer.activation is not tf.keras.activations.linear:
                raise ValueError(f"GhostClipper covers linear Dense layers only, not {layer.name}")
        elif not isinstance(
            layer,
            (
                tf.keras.layers.InputLayer,
                tf.keras.layers.Embedding,
                tf.keras.layers.Dropout,
                tf.keras.layers.Lambda,
            ),
        ):
            raise ValueError(f"GhostClipper does not cover layer {layer.name} ({type(layer)})")

    # ------------------------------------------------------------------ forward
    def _forward(self, x, training: bool, tape: tf.GradientTape):
        """Runs the model; returns predictions and the (op, input, output) records.

        Between recurrent layers a sequence travels as a list of its time steps
        ``[B, d]``: on a CPU, per-step matmuls are faster than slicing a stacked
        ``[B, T, d]`` tensor into steps and stacking the results again (each is a
        copy, and so is its gradient).
        """
        records = []  # (handler, layer input, pre-activation output whose gradient we need)
        h = x
        for layer in self.model.layers:
            if isinstance(layer, tf.keras.layers.InputLayer):
                continue
            if isinstance(layer, tf.keras.layers.Embedding):
                tokens = tf.cast(h, tf.int32)
                h = tf.gather(layer.embeddings, tokens)
                tape.watch(h)
                records.append((("embedding", layer), tokens, h))
            elif isinstance(layer, tf.keras.layers.GRU):
                h = self._gru(layer, h, tape, records)
            elif isinstance(layer, tf.keras.layers.Dense):
                h = _stacked(h)
                pre = (
                    tf.matmul(h, layer.kernel)
                    if h.shape.rank == 2
                    else tf.einsum("btm,mk->btk", h, layer.kernel)
                )
                tape.watch(pre)
                records.append(
                    (_Linear(layer.kernel, layer.bias if layer.use_bias else None), h, pre)
                )
                h = pre + layer.bias if layer.use_bias else pre
            elif isinstance(layer, tf.keras.layers.Dropout):
                if training and layer.rate > 0:
                    h = (
                        [tf.nn.dropout(t, rate=layer.rate) for t in h]
                        if isinstance(h, list)
                        else tf.nn.dropout(h, rate=layer.rate)
                    )
            else:  # the regression head's squeeze (checked in __init__)
                h = layer(_stacked(h))
        return _stacked(h), records

    def _gru(self, layer, inputs, tape, records):
        cell = layer.cell
        units = cell.units
        input_bias, recurrent_bias = tf.unstack(cell.bias)
        steps = inputs if isinstance(inputs, list) else tf.unstack(inputs, axis=1)
        state = tf.zeros([tf.shape(steps[0])[0], units], steps[0].dtype)
        projections, previous, resets, outputs = [], [], [], []
        for step in steps:
            projected = tf.matmul(step, cell.kernel)
            tape.watch(projected)
            projections.append(projected)
            x_z, x_r, x_h = tf.split(tf.nn.bias_add(projected, input_bias), 3, axis=-1)
            rec = tf.nn.bias_add(tf.matmul(state, cell.recurrent_kernel), recurrent_bias)
            r_z, r_r, r_h = tf.split(rec, 3, axis=-1)
            z = tf.sigmoid(x_z + r_z)
            r = tf.sigmoid(x_r + r_r)
            candidate = tf.tanh(x_h + r * r_h)
            previous.append(state)
            resets.append(r)
            state = z * state + (1 - z) * candidate
            outputs.append(state)
        # The recurrent matmul's output gradient is the projection's, with the candidate's
        # third scaled by the reset gate (it enters as r * r_h): no per-step gradients needed.
        records.append(
            (
                ("gru", cell),
                (_stacked(inputs), tf.stack(previous, 1), tf.stack(resets, 1)),
                projections,
            )
        )
        return outputs if layer.return_sequences else state

    # ------------------------------------------------------------------ gradients
    def __call__(self, x, y, clip: float, training: bool = True):
        """The per-example clipped gradient sum and what it was computed from.

        Args:
            x: one batch.
            y: their labels.
            clip: L2 bound of each example's gradient (over all trainable weights).
            training: apply dropout.

        Returns:
            ``(clipped_sum, norms, losses, predictions)``: the sum over examples
            of each gradient scaled by ``min(1, clip / norm)``, aligned with
            ``keras_model.trainable_variables``; the per-example gradient norms
            ``[batch]``; the per-example losses ``[batch]``; the predictions.
        """
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            predictions, records = self._forward(x, training, tape)
            losses = self.per_example_loss(y, predictions)
            total = tf.reduce_sum(losses)
        outputs = [out for _, _, out in records]  # a GRU's: one per time step
        deltas = tape.gradient(total, outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        deltas = [_stacked(d) for d in deltas]
        squared = tf.add_n(
            [self._norms(op, a, d) for (op, a, _), d in zip(records, deltas, strict=True)]
        )
        norms = tf.sqrt(squared)
        factors = tf.minimum(1.0, clip / tf.maximum(norms, 1e-12))
        grads = {}
        for (op, a, _), d in zip(records, deltas, strict=True):
            grads.update(
                self._gradients(op, a, tf.nest.map_structure(lambda t: _scale(t, factors), d))
            )
        clipped = [grads[v.ref()] for v in self.model.trainable_variables]
        return clipped, norms, losses, predictions

    @staticmethod
    def _norms(op, a, d):
        if isinstance(op, _Linear):
            return op.norms(a, d)
        kind, layer = op
        if kind == "embedding":
            same = tf.cast(tf.equal(a[:, :, None], a[:, None, :]), d.dtype)
            return tf.reduce_sum(same * tf.einsum("bte,bse->bts", d, d), axis=[1, 2])
        return _gru_norms(*a, d)

    @staticmethod
    def _gradients(op, a, d):
        if isinstance(op, _Linear):
            return op.gradients(a, d)
        kind, layer = op
        if kind == "embedding":
            table = layer.embeddings
            flat = tf.reshape(d, [-1, d.shape[-1]])
            return {
                table.ref(): tf.math.unsorted_segment_sum(flat, tf.reshape(a, [-1]), table.shape[0])
            }
        kernel, recurrent, bias = _gru_gradients(*a, d)
        return {
            layer.kernel.ref(): kernel,
            layer.recurrent_kernel.ref(): recurrent,
            layer.bias.ref(): bias,
        }


# --------------------------------------------------------------------------- K models at once
class _Records:
    """What a stacked forward pass reports: each weight's layer input and watched output."""

    def __init__(self, tape: tf.GradientTape):
        self.tape, self.items = tape, []

    def watch(self, tensor) -> None:
        self.tape.watch(tensor)

    def add(self, kind: str, inputs, output) -> None:
        self.items.append((kind, inputs, output))


def _stacked_gram(t):
    return tf.einsum("kbtm,kbsm->kbts", t, t)


def _stacked_weight_norms(a, d):
    """Per (user, example) ``||sum_t a_t^T d_t||^2`` for ``a [K,B,(T,)m]``, ``d [K,B,(T,)n]``."""
    if a.shape.rank == 3:
        return tf.reduce_sum(a * a, -1) * tf.reduce_sum(d * d, -1)
    steps, m, n = a.shape[2], a.shape[3], d.shape[3]
    if steps is not None and steps * (m + n) < m * n:
        return tf.reduce_sum(_stacked_gram(a) * _stacked_gram(d), axis=[2, 3])
    per_example = tf.einsum("kbtm,kbtn->kbmn", a, d)
    return tf.reduce_sum(per_example * per_example, axis=[2, 3])


def _stacked_bias_norms(d):
    summed = d if d.shape.rank == 3 else tf.reduce_sum(d, axis=2)
    return tf.reduce_sum(summed * summed, axis=-1)


def _stacked_weight_gradient(a, d):
    return (
        tf.einsum("kbtm,kbtn->kmn", a, d) if a.shape.rank == 4 else tf.einsum("kbm,kbn->kmn", a, d)
    )


def _stacked_bias_gradient(d):
    return tf.reduce_sum(d, axis=[1, 2]) if d.shape.rank == 4 else tf.reduce_sum(d, axis=1)


def _stacked_gru_norms(inputs, previous, resets, projected):
    """`_gru_norms` for K users: ``[K, B]``."""
    units = resets.shape[-1]
    d_zr, d_h = projected[..., : 2 * units], projected[..., 2 * units :]
    d_hr = d_h * resets
    bias = 2 * _stacked_bias_norms(d_zr) + _stacked_bias_norms(d_h) + _stacked_bias_norms(d_hr)
    steps, m = inputs.shape[2], inputs.shape[3]
    if steps is None or steps * (m + 5 * units) >= (m + units) * 2 * units + (m + units) * units:
        joint = tf.concat([inputs, previous], axis=-1)
        return (
            bias
            + _stacked_weight_norms(joint, d_zr)
            + _stacked_weight_norms(inputs, d_h)
            + _stacked_weight_norms(previous, d_hr)
        )
    gram_x, gram_h = _stacked_gram(inputs), _stacked_gram(previous)
    total = (
        (gram_x + gram_h) * _stacked_gram(d_zr)
        + gram_x * _stacked_gram(d_h)
        + gram_h * _stacked_gram(d_hr)
    )
    return bias + tf.reduce_sum(total, axis=[2, 3])


def _stacked_gru_gradients(inputs, previous, resets, projected):
    units, m = resets.shape[-1], inputs.shape[-1]
    d_zr, d_h = projected[..., : 2 * units], projected[..., 2 * units :]
    d_hr = d_h * resets
    joint_zr = _stacked_weight_gradient(tf.concat([inputs, previous], axis=-1), d_zr)
    kernel = tf.concat([joint_zr[:, :m], _stacked_weight_gradient(inputs, d_h)], axis=2)
    recurrent = tf.concat([joint_zr[:, m:], _stacked_weight_gradient(previous, d_hr)], axis=2)
    input_bias = _stacked_bias_gradient(projected)
    recurrent_bias = tf.concat([input_bias[:, : 2 * units], _stacked_bias_gradient(d_hr)], 1)
    return [kernel, recurrent, tf.stack([input_bias, recurrent_bias], axis=1)]


def stacked_clipped_gradients(net, weights, x, y, mask, clip, training: bool = True):
    """Per-user sums of per-example gradients clipped to ``clip``, for K users at once.

    The ghost-norm algebra of `GhostClipper` with a leading user axis: every
    user's examples are clipped with that user's own weights, in one forward
    and one backward pass of the stacked model (`dpfed.models.stacked.StackedGRU`).

    Args:
        net: the stacked model.
        weights: its trainable weights, each ``[K, ...]``.
        x: one step's batches ``[K, B, ...]``.
        y: their labels.
        mask: ``[K, B]``, 1 for real examples, 0 for padding.
        clip: the per-example L2 bound.
        training: apply dropout.

    Returns:
        ``(clipped sums [K, ...] per weight, per-example losses [K, B], outputs)``.
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        records = _Records(tape)
        out = net(weights, x, training=training, record=records)
        losses = net.example_losses(out, y)
        total = tf.reduce_sum(losses * mask)
    outputs = [output for _, _, output in records.items]  # a GRU's: one per time step
    deltas = tape.gradient(total, outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    deltas = [tf.stack(d, axis=2) if isinstance(d, list) else d for d in deltas]
    norms = []
    for (kind, a, _), d in zip(records.items, deltas, strict=True):
        if kind == "gru":
            norms.append(_stacked_gru_norms(*a, d))
        elif kind == "dense":
            norms.append(_stacked_weight_norms(a, d) + _stacked_bias_norms(d))
        else:  # embedding: tokens a [K, B, T], output gradients d [K, B, T, e]
            same = tf.cast(tf.equal(a[..., :, None], a[..., None, :]), d.dtype)
            norms.append(tf.reduce_sum(same * tf.einsum("kbte,kbse->kbts", d, d), axis=[2, 3]))
    factors = tf.minimum(1.0, clip / tf.maximum(tf.sqrt(tf.add_n(norms)), 1e-12))
    grads = []
    for (kind, a, _), d in zip(records.items, deltas, strict=True):
        d = d * factors[(...,) + (None,) * (d.shape.rank - 2)]
        if kind == "gru":
            grads += _stacked_gru_gradients(*a, d)
        elif kind == "dense":
            grads += [_stacked_weight_gradient(a, d), _stacked_bias_gradient(d)]
        else:
            users, vocab = tf.shape(d)[0], weights[0].shape[1]
            ids = a + vocab * tf.range(users)[:, None, None]
            flat = tf.math.unsorted_segment_sum(
                tf.reshape(d, [-1, d.shape[-1]]), tf.reshape(ids, [-1]), users * vocab
            )
            grads.append(tf.reshape(flat, [users, vocab, d.shape[-1]]))
    return grads, losses, out
