"""Vectorized client backend: a TFF client is a shard of simulated users trained in lockstep.

TFF's own client work (``sim.client_backend=reference``) trains the cohort's
clients one after another, each on its own tiny batches, so a round costs many
small, latency-bound steps. Here (``sim.client_backend=vectorized``) one TFF
client is a *shard* of up to ``sim.users_per_shard`` simulated users: every
weight of the GRU stack gets a leading user axis K, the users' local SGD runs
in lockstep as one batched computation (``[K, B, ...]`` batch matmuls), and a
user whose data has run out is masked so that it stays exactly where it
stopped. The server side stays TFF's: its broadcast, a TFF aggregator and its
optimizer finalizer, composed with ``tff.learning.templates.compose_learning_process``.

Equivalence with the reference path (tested to 1e-4): each user trains on the
very batches `FederatedStrategy.cohort_data` makes for it (same shuffle seed),
the loss of a partial last batch is the mean over its real examples, the update
is ``initial - final`` weights (zeroed if not finite), and SGD with optional
momentum is applied with TFF's formulas. FedProx adds ``mu * (w - w_initial)``
to the gradient (Li et al., MLSys 2020), as the reference path's
`dpfed.federated.strategy.ProximalOptimizer` does. User-level DP keeps the
mechanism's own TF Privacy query: a shard sends its users' updates stacked, and
`UserLevelQuery` runs the query's ``preprocess_record`` (the clip, or a local
randomizer) on each user before summing, so the noise is added once to the
cohort's sum and divided by the cohort size exactly as TFF's
``DifferentiallyPrivateFactory`` does for per-user clients (McMahan et al., ICLR
2018). Dropout, if configured, is drawn independently of the reference path.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_privacy as tfp

from dpfed.errors import ConfigError, check
from dpfed.federated.runtime import tff

BACKENDS = ("reference", "vectorized")


def client_backend(name: str, users_per_shard: int, strategy, mechanism, model):
    """The client backend a strategy uses: None (TFF's client work) or a `VectorizedBackend`.

    Args:
        name: ``reference`` or ``vectorized`` (``sim.client_backend``).
        users_per_shard: simulated users per TFF client (``sim.users_per_shard``).
        strategy: the built strategy (`dpfed.federated.strategy`).
        mechanism: the built DP mechanism (`dpfed.privacy.mechanisms`).
        model: the bound `dpfed.models.gru.GRUModel`.

    Returns:
        None for ``reference``, else a backend checked to support this run.

    Raises:
        ConfigError: ``sim.client_backend`` or ``sim.users_per_shard`` is out of
            range, or the vectorized backend does not support this combination.
    """
    check(name in BACKENDS, "client_backend", name, f"one of {', '.join(BACKENDS)}")
    check(users_per_shard >= 1, "users_per_shard", users_per_shard, ">= 1")
    if name == "reference":
        return None
    backend = VectorizedBackend(users_per_shard)
    backend.validate(strategy, mechanism, model)
    return backend


def _unsupported(what: str) -> ConfigError:
    return ConfigError("sim.client_backend", "vectorized", f"reference for {what}", absolute=True)


def _batches(datasets: list[tf.data.Dataset]) -> list[list[tuple[np.ndarray, ...]]]:
    """Every dataset's batches as numpy arrays, from its first iteration.

    One ``choose_from_datasets`` iterator reads them all, user after user: about
    ten times faster than one Python iterator per dataset, in the same order
    (each dataset's shuffle seeds are its own). A dataset is iterated once only:
    a second iteration would reshuffle (``reshuffle_each_iteration``).
    """
    steps = [int(ds.cardinality()) for ds in datasets]
    if min(steps) < 0:  # unknown length (not what `client_dataset` makes): one by one
        return [list(ds.as_numpy_iterator()) for ds in datasets]
    choice = np.repeat(np.arange(len(datasets), dtype=np.int64), steps)
    if not len(choice):
        return [[] for _ in datasets]
    chosen = tf.data.Dataset.choose_from_datasets(
        datasets, tf.data.Dataset.from_tensor_slices(choice)
    )
    flat, users, start = list(chosen.as_numpy_iterator()), [], 0
    for n in steps:
        users.append(flat[start : start + n])
        start += n
    return users


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
    def _gru(x, kernel, recurrent_kernel, bias, sequences: bool):
        # The input projection of every time step at once: one [K, B*T, d] x [K, d, 3u] matmul.
        xw = tf.einsum("kbtd,kdh->kbth", x, kernel) + bias[:, None, None, 0, :]
        recurrent_bias = bias[:, None, 1, :]
        steps = tf.unstack(xw, axis=2)
        h = tf.zeros_like(steps[0][..., : recurrent_kernel.shape[1]])
        outputs = []
        for xt in steps:
            x_z, x_r, x_h = tf.split(xt, 3, axis=-1)
            rec = tf.matmul(h, recurrent_kernel) + recurrent_bias
            r_z, r_r, r_h = tf.split(rec, 3, axis=-1)
            z = tf.sigmoid(x_z + r_z)
            r = tf.sigmoid(x_r + r_r)
            h = z * h + (1 - z) * tf.tanh(x_h + r * r_h)
            outputs.append(h)
        return tf.stack(outputs, axis=2) if sequences else h

    def __call__(self, weights, x, training: bool = False) -> tf.Tensor:
        """Outputs of K models on their own batches.

        Args:
            weights: the trainable weights, each ``[K, ...]``.
            x: inputs ``[K, B, T, F]`` (token ids ``[K, B, T]`` for text models).
            training: apply dropout (as Keras does in training).

        Returns:
            Logits ``[K, B, C]`` (``[K, B, T, C]`` per step), or ``[K, B]``
            (``[K, B, T]``) for regression.
        """
        weights = list(weights)
        if self.vocab_size:
            x = tf.gather(weights.pop(0), x, batch_dims=1)  # each user's own embedding
        for i in range(len(self.units)):
            kernel, recurrent_kernel, bias = weights[3 * i : 3 * i + 3]
            last = i == len(self.units) - 1
            x = self._gru(x, kernel, recurrent_kernel, bias, not last or self.every_step)
            if training and self.dropout:
                x = tf.nn.dropout(x, self.dropout)
        head_kernel, head_bias = weights[-2:]
        if self.every_step:
            out = tf.einsum("kbtu,kuc->kbtc", x, head_kernel) + head_bias[:, None, None, :]
        else:
            out = tf.matmul(x, head_kernel) + head_bias[:, None, :]
        return tf.squeeze(out, -1) if self.regression else out

    def example_losses(self, out, y) -> tf.Tensor:
        """Each example's loss ``[K, B]`` (averaged over time steps), as the Keras loss."""
        if self.regression:
            per = tf.square(out - tf.cast(y, out.dtype))
        else:
            per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int64),
                                                                 logits=out)  # fmt: skip
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


class UserLevelQuery(tfp.SumAggregationDPQuery):
    """A DP query over shards: applies ``query`` to each user of a shard, then sums.

    A shard's record is its users' updates stacked on a leading axis. Each user's
    update goes through ``query.preprocess_record`` (clipping, or a local
    randomizer) and is accumulated as a separate record would be; sample
    params, noise and global state are ``query``'s own, so the release is the
    one TFF's ``DifferentiallyPrivateFactory`` makes with one client per user.

    Args:
        query: the mechanism's ``tfp.SumAggregationDPQuery``.
    """

    def __init__(self, query):
        self._query = query

    @staticmethod
    def _one_user(template):
        return tf.nest.map_structure(lambda s: tf.TensorSpec(s.shape[1:], s.dtype), template)

    def initial_global_state(self):
        return self._query.initial_global_state()

    def derive_sample_params(self, global_state):
        return self._query.derive_sample_params(global_state)

    def initial_sample_state(self, template=None):
        return self._query.initial_sample_state(self._one_user(template))

    def preprocess_record(self, params, record):
        spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), record)
        users = tf.shape(tf.nest.flatten(record)[0])[0]

        def body(i, state):
            user = tf.nest.map_structure(lambda t: t[i], record)
            return i + 1, self._query.accumulate_record(params, state, user)

        _, total = tf.while_loop(lambda i, _: i < users, body,
                                 (tf.constant(0), self.initial_sample_state(spec)))  # fmt: skip
        return total

    def get_noised_result(self, sample_state, global_state):
        return self._query.get_noised_result(sample_state, global_state)

    def derive_metrics(self, global_state):
        return self._query.derive_metrics(global_state)


class VectorizedBackend:
    """Trains each TFF client's shard of simulated users in one batched computation.

    Args:
        users_per_shard: users per TFF client; a cohort of m users becomes
            ``ceil(m / users_per_shard)`` clients.
    """

    name = "vectorized"
    # FedProx's proximal gradient is +mu * (w - w_initial) (Li et al. 2020); -1.0 would
    # reproduce TFF 0.87's own proximal client work, which has the sign reversed.
    proximal_sign = 1.0

    def __init__(self, users_per_shard: int):
        check(users_per_shard >= 1, "users_per_shard", users_per_shard, ">= 1")
        self.users_per_shard = users_per_shard

    # ------------------------------------------------------------------ checks
    def validate(self, strategy, mechanism, model) -> None:
        """Rejects what this backend cannot reproduce exactly (before any training)."""
        from dpfed.federated.strategy import FedAvg

        if not isinstance(strategy, FedAvg):
            raise _unsupported(f"strategy={strategy.name}")
        if type(strategy.client_optimizer) is not type(tff.learning.optimizers.build_sgdm(1.0)):
            raise ConfigError("strategy.client_optimizer", type(strategy.client_optimizer).__name__,
                              "sgd with sim.client_backend=vectorized (users step in lockstep; "
                              "an optimizer with a step counter would count masked steps)",
                              absolute=True)  # fmt: skip
        if mechanism.name == "dpsgd":
            raise _unsupported("dp=dpsgd")
        stacked = StackedGRU(model)
        actual = [tuple(s.shape) for s in model.trainable_weight_specs()]
        if actual != stacked.shapes():
            raise _unsupported("this model (only the GRU stack with a dense head is vectorized)")

    # ------------------------------------------------------------------ data
    def shards(self, strategy, datasets: list[tf.data.Dataset]) -> list[tf.data.Dataset]:
        """Turns the cohort's per-user batched datasets into one dataset per shard.

        Each shard's dataset has one element ``(x [S, K, B, ...], y [S, K, B, ...],
        mask [S, K, B])``: step s of user k, zero-padded to the batch size and to
        the shard's longest user (mask 0). Users are sorted by their number of
        steps first, so that users of similar size share a shard and little
        padded work is done; the aggregate is a sum, so the order is immaterial.

        Args:
            strategy: the strategy that batched ``datasets`` (its batch size).
            datasets: `FederatedStrategy.cohort_data`'s datasets, one per user.
        """
        if not datasets:
            return []
        x_spec, y_spec = datasets[0].element_spec
        batch = strategy.batch_size
        users = _batches(datasets)
        order = sorted(range(len(users)), key=lambda i: len(users[i]))
        shards = []
        for start in range(0, len(order), self.users_per_shard):
            group = [users[i] for i in order[start : start + self.users_per_shard]]
            steps, k = max(1, max(len(u) for u in group)), len(group)
            x = np.zeros([steps, k, batch, *x_spec.shape[1:]], x_spec.dtype.as_numpy_dtype)
            y = np.zeros([steps, k, batch, *y_spec.shape[1:]], y_spec.dtype.as_numpy_dtype)
            mask = np.zeros([steps, k, batch], np.float32)
            for j, user in enumerate(group):
                for s, (bx, by) in enumerate(user):
                    n = len(bx)
                    x[s, j, :n], y[s, j, :n], mask[s, j, :n] = bx, by, 1.0
            shards.append(tf.data.Dataset.from_tensors((x, y, mask)))
        return shards

    def data_type(self, strategy, model):
        """TFF type of one shard's dataset."""
        x_spec, y_spec = model.input_spec
        b = strategy.batch_size

        def tensor(spec):
            return tff.TensorType(spec.dtype.as_numpy_dtype, [None, None, b, *spec.shape[1:]])

        mask = tff.TensorType(np.float32, [None, None, b])
        return tff.SequenceType((tensor(x_spec), tensor(y_spec), mask))

    # ------------------------------------------------------------------ process
    def build_process(self, strategy, model, mechanism, model_fn, aggregator):
        """The learning process: TFF's broadcast and finalizer around vectorized client work.

        Args:
            strategy: a `FedAvg` (or `FedProx`) strategy.
            model: the bound `GRUModel`.
            mechanism: the DP mechanism.
            model_fn: what the reference path would train (its initial weights are used).
            aggregator: the mechanism's aggregator (None: the mean).

        Returns:
            A ``tff.learning.templates.LearningProcess``.
        """
        from dpfed.federated.strategy import FedProx

        # Traced first, as TFF's own builders do, so the initial model is the reference's.
        @tff.tensorflow.computation()
        def initial_model_weights_fn():
            return tff.learning.models.ModelWeights.from_model(model_fn())

        weights_type = initial_model_weights_fn.type_signature.result
        dp = aggregator is not None
        if dp and not isinstance(aggregator, tff.aggregators.DifferentiallyPrivateFactory):
            raise _unsupported(f"dp={mechanism.name} (its aggregator is not a DP query)")
        if dp and strategy.weighted:
            raise ConfigError("strategy.weighted", True,
                              "false with this dp mechanism (its aggregator weighs every "
                              "client equally, as user-level DP requires)",
                              absolute=True)  # fmt: skip
        proximal = strategy.proximal_strength if isinstance(strategy, FedProx) else 0.0
        client_work = self.client_work(strategy, model, weights_type, proximal, stacked=dp)
        update_type = client_work.next.type_signature.result.result.member.update
        if dp:
            # The DP factory's private query: the mechanism's own (seeded) noise and clip.
            factory = tff.aggregators.DifferentiallyPrivateFactory(
                UserLevelQuery(aggregator._query), aggregator._record_aggregation_factory
            )
            factory = tff.aggregators.as_weighted_aggregator(factory)
        else:
            factory = tff.aggregators.MeanFactory()
        model_aggregator = factory.create(update_type, tff.TensorType(np.float32))
        return tff.learning.templates.compose_learning_process(
            initial_model_weights_fn,
            tff.learning.templates.build_broadcast_process(weights_type),
            client_work,
            model_aggregator,
            tff.learning.templates.build_apply_optimizer_finalizer(
                strategy.server_optimizer, weights_type
            ),
        )

    def client_work(self, strategy, model, weights_type, proximal: float, stacked: bool):
        """A ``ClientWorkProcess`` whose clients are shards of users.

        Each shard returns either its users' updates stacked (``stacked``, for a
        per-user DP query) with weight 1, or their (example-weighted if
        ``strategy.weighted``) mean with the total weight, for TFF's `MeanFactory`.
        Train metrics are summed over shards and finalized as Keras does.
        """
        net = StackedGRU(model)
        hparams = strategy.client_optimizer.get_hparams(
            strategy.client_optimizer.initialize(tf.TensorSpec([], tf.float32))
        )
        lr, momentum = float(hparams["learning_rate"]), float(hparams.get("momentum", 0.0))
        weighted, metric = strategy.weighted, model.metrics()[0].name
        data_type = self.data_type(strategy, model)

        def train_shard(weights, x, y, mask):
            initial = tuple(weights.trainable)
            users = tf.shape(x)[1]
            start = tuple(tf.tile(w[None], [users] + [1] * w.shape.rank) for w in initial)
            zero = tf.zeros([users])
            sums0 = (zero, zero, zero, zero, zero)  # loss*n, n, metric total, metric count, batches

            def step(s, w, acc, sums):
                m = mask[s]
                n = tf.reduce_sum(m, 1)
                active = n > 0
                with tf.GradientTape() as tape:
                    tape.watch(w)
                    out = net(w, x[s], training=True)
                    losses = tf.reduce_sum(net.example_losses(out, y[s]) * m, 1)
                    user_loss = tf.math.divide_no_nan(losses, n)  # the mean over real examples
                    total = tf.reduce_sum(user_loss)
                grads = tuple(tf.convert_to_tensor(g) for g in tape.gradient(total, w))
                if proximal:  # FedProx; masked below with the step, like the gradient
                    grads = tuple(g + proximal * self.proximal_sign * (v - v0[None])
                                  for g, v, v0 in zip(grads, w, initial, strict=True))  # fmt: skip
                if momentum:  # TFF's SGDM: a = momentum * a + g; w = w - lr * a
                    new_acc = tuple(momentum * a + g for a, g in zip(acc, grads, strict=True))
                    new_w = tuple(v - lr * a for v, a in zip(w, new_acc, strict=True))
                else:
                    new_acc, new_w = acc, tuple(v - lr * g for v, g in zip(w, grads, strict=True))

                def keep(new, old):  # a user without data this step does not move
                    cond = tf.reshape(active, [-1] + [1] * (new.shape.rank - 1))
                    return tf.where(cond, new, old)

                w = tuple(keep(a, b) for a, b in zip(new_w, w, strict=True))
                acc = tuple(keep(a, b) for a, b in zip(new_acc, acc, strict=True))
                metric_total, metric_count = net.metric_update(out, y[s], m)
                step_sums = (user_loss * n, n, metric_total, metric_count,
                             tf.cast(active, tf.float32))  # fmt: skip
                return s + 1, w, acc, tuple(a + b for a, b in zip(sums, step_sums, strict=True))

            acc0 = tuple(tf.zeros_like(v) for v in start) if momentum else ()
            _, final, _, sums = tf.while_loop(
                lambda s, *_: s < tf.shape(x)[0], step, (tf.constant(0), start, acc0, sums0)
            )
            return initial, final, sums

        @tff.tensorflow.computation(weights_type, data_type)
        def shard_update(weights, dataset):
            x, y, mask = dataset.get_single_element()
            initial, final, sums = train_shard(weights, x, y, mask)
            delta = tuple(v0[None] - v for v0, v in zip(initial, final, strict=True))
            finite = tf.reduce_all(
                tf.stack([tf.reduce_all(tf.math.is_finite(tf.reshape(d, [tf.shape(d)[0], -1])), 1)
                          for d in delta]), 0)  # fmt: skip
            delta = tuple(tf.where(tf.reshape(finite, [-1] + [1] * (d.shape.rank - 1)), d, 0.0)
                          for d in delta)  # fmt: skip
            examples = sums[1]
            if stacked:
                update, weight = list(delta), tf.constant(1.0)
            else:
                # TFF zeroes a non-finite update; weighted, it also gets weight 0.
                per_user = (examples * tf.cast(finite, tf.float32) if weighted
                            else tf.ones_like(examples))  # fmt: skip
                weight = tf.reduce_sum(per_user)
                update = [tf.math.divide_no_nan(tf.tensordot(per_user, d, 1), weight)
                          for d in delta]  # fmt: skip
            metrics = collections.OrderedDict(
                loss_total=tf.reduce_sum(sums[0]),
                metric_total=tf.reduce_sum(sums[2]),
                metric_count=tf.reduce_sum(sums[3]),
                num_examples=tf.cast(tf.reduce_sum(examples), tf.int64),
                num_batches=tf.cast(tf.reduce_sum(sums[4]), tf.int64),
            )
            return tff.learning.templates.ClientResult(update=update, update_weight=weight), metrics

        metrics_type = shard_update.type_signature.result[1]

        @tff.tensorflow.computation(metrics_type)
        def finalize(total):
            examples = tf.cast(total["num_examples"], tf.float32)
            return collections.OrderedDict([
                (metric, tf.math.divide_no_nan(total["metric_total"], total["metric_count"])),
                ("loss", tf.math.divide_no_nan(total["loss_total"], examples)),
                ("num_examples", total["num_examples"]),
                ("num_batches", total["num_batches"]),
            ])  # fmt: skip

        @tff.federated_computation()
        def init_fn():
            return tff.federated_value((), tff.SERVER)

        @tff.federated_computation(
            init_fn.type_signature.result,
            tff.FederatedType(weights_type, tff.CLIENTS),
            tff.FederatedType(data_type, tff.CLIENTS),
        )
        def next_fn(state, weights, data):
            result, metrics = tff.federated_map(shard_update, (weights, data))
            train = tff.federated_map(finalize, tff.federated_sum(metrics))
            measurements = tff.federated_zip(collections.OrderedDict(train=train))
            return tff.templates.MeasuredProcessOutput(state, result, measurements)

        return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
