"""Vectorized client backend: a TFF client is a shard of simulated users trained in lockstep.

TFF's own client work (``backend=reference``) trains the cohort's clients one
after another, each on its own tiny batches, so a round costs many small,
latency-bound steps. Here (``backend=vectorized``) one TFF client is a *shard*
of up to ``backend.users_per_shard`` simulated users: every weight of the GRU
stack gets a leading user axis K (`dpfed.models.stacked.StackedGRU`), the
users' local SGD runs in lockstep as one batched computation (``[K, B, ...]``
batch matmuls), and a user whose data has run out is masked so that it stays
exactly where it stopped. The server side stays TFF's: its broadcast, a TFF
aggregator and its optimizer finalizer, composed with
``tff.learning.templates.compose_learning_process``.

Equivalence with the reference backend (tested to 1e-4): each user trains on
the very batches of its `dpfed.federated.backends.base.ClientRound` that the
reference backend's `client_dataset` holds (same order, same noise seeds), the
loss of a partial last batch is the mean over its real examples, the update is
``initial - final`` weights (zeroed if not finite), SGD with optional momentum
is applied with TFF's formulas, and FedProx adds
`dpfed.federated.client_update.proximal_gradient`. User-level DP
keeps the mechanism's own TF Privacy query: a shard sends its users' updates
stacked, and `UserLevelQuery` runs the query's ``preprocess_record`` (the clip)
on each user before summing, so the noise is added once to the cohort's sum and
divided by the expected cohort size exactly as TFF's
``DifferentiallyPrivateFactory`` does for per-user clients (McMahan et al.,
ICLR 2018). A local randomizer runs on each user's update with that user's
seed, as on the reference backend. Dropout, if configured, is drawn
independently of the reference path.
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf
import tensorflow_privacy as tfp

from dpfed.errors import ConfigError, check
from dpfed.federated.backends.base import ClientBackend, ClientRound
from dpfed.federated.client_update import ClientWork, check_weighting, proximal_gradient
from dpfed.models.stacked import StackedGRU
from dpfed.privacy.ghost import stacked_clipped_gradients
from dpfed.privacy.queries import local_randomize, local_seed, seeded_normal
from dpfed.runtime import tff


def _unsupported(what: str) -> ConfigError:
    return ConfigError("backend", "vectorized", f"reference for {what}", absolute=True)


def _canary_steps(placements: list[list[tuple[int, int]]], steps: int) -> np.ndarray:
    """``[steps, K, C]`` canary ids from each user's ``(step, canary)`` placements (-1: none)."""
    per_step = [[[] for _ in placements] for _ in range(steps)]
    for k, user in enumerate(placements):
        for step, canary in user:
            per_step[step][k].append(canary)
    width = max([1, *(len(c) for row in per_step for c in row)])
    out = np.full([steps, len(placements), width], -1, np.int32)
    for s, row in enumerate(per_step):
        for k, ids in enumerate(row):
            out[s, k, : len(ids)] = ids
    return out


class RecordCanaries:
    """Canary records in a lockstep DP-SGD step (`dpfed.audit.records.GradientCanaryAudit`).

    Canary c adds ``values[c]`` (the clip, or 0 for an excluded one) on the flat model
    coordinate ``coordinates[c]`` of its user's clipped sum, before the noise.

    Args:
        coordinates: each canary's coordinate in the flat trainable weights.
        values: what each canary adds there.
        shapes: the trainable weights' shapes, in order.
    """

    def __init__(self, coordinates, values, shapes):
        self.count = len(coordinates)
        self._coordinates = np.asarray(coordinates, np.int64)  # constants of the graph using them
        self._values = np.asarray(values, np.float32)
        self._shapes = [tuple(shape) for shape in shapes]
        self._sizes = [int(np.prod(shape)) for shape in self._shapes]
        self._dim = sum(self._sizes)

    def _gather(self, ids):
        """(coordinates [K, C], values [K, C]) of canary ids ``[K, C]``; -1 adds 0."""
        present = ids >= 0
        safe = tf.where(present, ids, 0)
        values = tf.where(present, tf.gather(self._values, safe), 0.0)
        return tf.gather(self._coordinates, safe), values

    def _flat(self, tensors):
        users = tf.shape(tensors[0])[0]
        return tf.concat([tf.reshape(t, [users, -1]) for t in tensors], 1)

    def add(self, summed, ids):
        """Each user's clipped sums (per weight, ``[K, ...]``) plus its canaries' gradients."""
        coordinates, values = self._gather(ids)
        users = tf.shape(ids)[0]
        rows = tf.broadcast_to(tf.range(tf.cast(users, tf.int64))[:, None], tf.shape(coordinates))
        indices = tf.reshape(tf.stack([rows, coordinates], -1), [-1, 2])
        flat = tf.scatter_nd(
            indices, tf.reshape(values, [-1]), tf.stack([tf.cast(users, tf.int64), self._dim])
        )
        parts = tf.split(flat, self._sizes, axis=1)
        return tuple(
            s + tf.reshape(p, [-1, *shape])
            for s, p, shape in zip(summed, parts, self._shapes, strict=True)
        )

    def residual(self, noised, summed, ids):
        """Per canary ``[count]`` (float64): noised sum minus the real clipped sum, on its
        coordinate, in the step of its user (0 for canaries not in the step)."""
        coordinates, _ = self._gather(ids)
        difference = self._flat(noised) - self._flat(summed)
        measured = tf.gather(difference, coordinates, batch_dims=1)
        measured = tf.where(ids >= 0, tf.cast(measured, tf.float64), 0.0)
        return tf.math.unsorted_segment_sum(
            tf.reshape(measured, [-1]),
            tf.reshape(tf.where(ids >= 0, ids, self.count), [-1]),
            self.count + 1,
        )[: self.count]


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

        _, total = tf.while_loop(
            lambda i, _: i < users, body, (tf.constant(0), self.initial_sample_state(spec))
        )
        return total

    def get_noised_result(self, sample_state, global_state):
        return self._query.get_noised_result(sample_state, global_state)

    def derive_metrics(self, global_state):
        return self._query.derive_metrics(global_state)


class VectorizedBackend(ClientBackend):
    """Trains each TFF client's shard of simulated users in one batched computation.

    Args:
        users_per_shard: users per TFF client; a cohort of m users becomes
            ``ceil(m / users_per_shard)`` clients.
    """

    name = "vectorized"

    lockstep = True
    seeds_in_data = False  # `pack` lays the seeds out per step and user itself

    def __init__(self, users_per_shard: int):
        check(users_per_shard >= 1, "users_per_shard", users_per_shard, ">= 1")
        self.users_per_shard = users_per_shard

    def describe(self) -> dict:
        return {**super().describe(), "users_per_shard": self.users_per_shard}

    # ------------------------------------------------------------------ checks
    def check(self, strategy, parts, model) -> None:
        update = strategy.client_update
        if update is None or update.work != ClientWork.local_training:
            work = "no clients" if update is None else str(update.work)
            raise _unsupported(f"client work {work!r} (it runs local training only)")
        if not update.sgd:
            raise ConfigError(
                "strategy.client_optimizer",
                type(update.optimizer).__name__,
                "sgd with backend=vectorized (users step in lockstep; an "
                "optimizer with a step counter would count masked steps)",
                absolute=True,
            )
        if parts.aggregator is not None and parts.query is None:
            raise _unsupported("a mechanism whose aggregator exposes no DP query")
        check_weighting(update.weighted, parts)
        actual = [tuple(s.shape) for s in model.trainable_weight_specs()]
        if actual != StackedGRU(model).shapes():
            raise _unsupported("this model (only the GRU stack with a dense head is vectorized)")

    # ------------------------------------------------------------------ data
    def pack(
        self, strategy, clients: list[ClientRound], seeds=None, canaries=None
    ) -> list[tf.data.Dataset]:
        """Turns the cohort's users into one dataset per shard.

        Each shard's dataset has one element ``(x [S, K, B, ...], y [S, K, B, ...],
        mask [S, K, B], seeds [S, K, 2])``: step s of user k, zero-padded to the
        batch size (Poisson batches: to the cohort's largest batch) and to the
        shard's longest user (mask 0), with the step's
        noise seed (zeros when the batches carry none); with canary records, also
        ``canaries [S, K, C]``, the canaries in step s of user k (-1: none). Users are sorted by
        their number of steps first, so that users of similar size share a
        shard and little padded work is done; the aggregate is a sum, so the
        order is immaterial.

        Args:
            strategy: the strategy (its batch size).
            clients: `ClientBackend.cohort_data`'s users, one `ClientRound` each.
            seeds: per user, its batches' noise seeds ``[batches, 2]``, or None.
            canaries: per user, its canary records' ``(step, canary)``, or None.
        """
        x_first, y_first = clients[0].epochs[0]
        users = [client.batches(strategy.client_update.batch_size) for client in clients]
        # Poisson batches may hold more than the batch size: pad to the largest
        batch = max([strategy.client_update.batch_size, *(len(b[0]) for u in users for b in u)])
        order = sorted(range(len(users)), key=lambda i: len(users[i]))
        shards = []
        for start in range(0, len(order), self.users_per_shard):
            members = order[start : start + self.users_per_shard]
            group = [users[i] for i in members]
            steps, k = max(1, max(len(u) for u in group)), len(group)
            x = np.zeros([steps, k, batch, *x_first.shape[1:]], x_first.dtype)
            y = np.zeros([steps, k, batch, *y_first.shape[1:]], y_first.dtype)
            mask = np.zeros([steps, k, batch], np.float32)
            shard_seeds = np.zeros([steps, k, 2], np.int64)
            for j, (i, user) in enumerate(zip(members, group, strict=True)):
                for s, (bx, by) in enumerate(user):
                    n = len(bx)
                    x[s, j, :n], y[s, j, :n], mask[s, j, :n] = bx, by, 1.0
                if seeds is not None:
                    shard_seeds[: len(seeds[i]), j] = seeds[i]
            element = (x, y, mask, shard_seeds)
            if canaries is not None:
                for i, user in zip(members, group, strict=True):
                    if any(step >= len(user) for step, _ in canaries[i]):  # never a padded step
                        raise RuntimeError(
                            f"a canary record placed beyond user {i}'s {len(user)} batches"
                        )
                element += (_canary_steps([canaries[i] for i in members], steps),)
            shards.append(tf.data.Dataset.from_tensors(element))
        return shards

    def data_type(self, strategy, model, canaries: bool = False, poisson_batches: bool = False):
        """TFF type of one shard's dataset (with a canary-record tensor when ``canaries``;
        of any batch width with ``poisson_batches``)."""
        x_spec, y_spec = model.input_spec
        b = None if poisson_batches else strategy.client_update.batch_size

        def tensor(spec):
            return tff.TensorType(spec.dtype.as_numpy_dtype, [None, None, b, *spec.shape[1:]])

        mask = tff.TensorType(np.float32, [None, None, b])
        seeds = tff.TensorType(np.int64, [None, None, 2])
        element = (tensor(x_spec), tensor(y_spec), mask, seeds)
        if canaries:
            element += (tff.TensorType(np.int32, [None, None, None]),)
        return tff.SequenceType(element)

    # ------------------------------------------------------------------ process
    def build_process(self, strategy, model, parts):
        """The learning process: TFF's broadcast and finalizer around vectorized client work."""

        # Traced first, as TFF's own builders do, so the initial model is the reference's.
        @tff.tensorflow.computation()
        def initial_model_weights_fn():
            return tff.learning.models.ModelWeights.from_model(model.tff_model())

        weights_type = initial_model_weights_fn.type_signature.result
        dp = parts.aggregator is not None
        client_work = self.client_work(strategy, model, weights_type, parts, stacked=dp)
        update_type = client_work.next.type_signature.result.result.member.update
        if dp:  # the mechanism's own (seeded) query, applied to each user of a shard
            factory = tff.aggregators.as_weighted_aggregator(
                tff.aggregators.DifferentiallyPrivateFactory(UserLevelQuery(parts.query))
            )
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

    def client_work(self, strategy, model, weights_type, parts, stacked: bool):
        """A ``ClientWorkProcess`` whose clients are shards of users.

        Each shard returns either its users' updates stacked (``stacked``, for a
        per-user DP query) with weight 1, or their (example-weighted if
        ``weighted``) mean with the total weight, for TFF's `MeanFactory`.
        Train metrics are summed over shards and finalized as Keras does.
        """
        net = StackedGRU(model)
        update = strategy.client_update
        lr, momentum, proximal = update.learning_rate, update.momentum, update.proximal_mu
        weighted, metric = update.weighted, model.metrics()[0].name
        local, example_dp = parts.local, parts.example_dp
        probe = example_dp.probe if example_dp is not None else None
        poisson = parts.poisson_batches is not None
        data_type = self.data_type(
            strategy, model, canaries=probe is not None, poisson_batches=poisson
        )
        if probe is not None:
            canary = RecordCanaries(probe.coordinates, probe.values, net.shapes())

        def dpsgd_gradients(w, x, y, m, seeds, canaries=None):
            """Each user's DP-SGD step: clipped sum + noise from its batch's seed, over B.

            With canary records (``canaries [K, C]``), their gradients join the clipped
            sum before the noise, and the step's residual per canary (noised sum minus
            the real records' clipped sum, on its coordinate) is returned too.
            """
            summed, example_losses, out = stacked_clipped_gradients(
                net, w, x, y, m, example_dp.clip
            )
            std = example_dp.noise_multiplier * example_dp.clip

            def noise(seed):  # as `dpfed.privacy.dpsgd.add_seeded_noise` draws it per weight
                return tuple(
                    seeded_normal(
                        v.shape[1:], tf.random.experimental.stateless_fold_in(seed, i), std, v.dtype
                    )
                    for i, v in enumerate(w)
                )

            spec = tuple(tf.TensorSpec(v.shape[1:], v.dtype) for v in w)
            drawn = tf.map_fn(noise, seeds, fn_output_signature=spec)
            batch = float(update.batch_size)
            total = summed if canaries is None else canary.add(summed, canaries)
            noised = tuple(g + n for g, n in zip(total, drawn, strict=True))
            grads = tuple(g / batch for g in noised)
            residual = () if canaries is None else canary.residual(noised, summed, canaries)
            return grads, tf.reduce_sum(example_losses * m, 1), out, residual

        def train_shard(weights, x, y, mask, seeds, canaries=None):
            initial = tuple(weights.trainable)
            users = tf.shape(x)[1]
            start = tuple(tf.tile(w[None], [users] + [1] * w.shape.rank) for w in initial)
            zero = tf.zeros([users])
            sums0 = (zero, zero, zero, zero, zero)  # loss*n, n, metric total, metric count, batches
            audit0 = () if canaries is None else tf.zeros([canary.count], tf.float64)

            def step(s, w, acc, sums, audit):
                m = mask[s]
                n = tf.reduce_sum(m, 1)
                # a user's step exists if it has data or, with Poisson batches (possibly
                # empty, still a noise release), a noise seed: padding has neither
                active = tf.reduce_any(tf.not_equal(seeds[s], 0), axis=-1) if poisson else n > 0
                if example_dp is not None:
                    grads, losses, out, residual = dpsgd_gradients(
                        w, x[s], y[s], m, seeds[s], None if canaries is None else canaries[s]
                    )
                    if canaries is not None:
                        audit = audit + residual
                    user_loss = tf.math.divide_no_nan(losses, n)
                else:
                    with tf.GradientTape() as tape:
                        tape.watch(w)
                        out = net(w, x[s], training=True)
                        losses = tf.reduce_sum(net.example_losses(out, y[s]) * m, 1)
                        user_loss = tf.math.divide_no_nan(losses, n)  # the mean over real ones
                        total = tf.reduce_sum(user_loss)
                    grads = tuple(tf.convert_to_tensor(g) for g in tape.gradient(total, w))
                if proximal:  # FedProx; masked below with the step, like the gradient
                    grads = tuple(
                        proximal_gradient(g, v, v0[None], proximal)
                        for g, v, v0 in zip(grads, w, initial, strict=True)
                    )
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
                step_sums = (
                    user_loss * n,
                    n,
                    metric_total,
                    metric_count,
                    tf.cast(active, tf.float32),
                )
                sums = tuple(a + b for a, b in zip(sums, step_sums, strict=True))
                return s + 1, w, acc, sums, audit

            acc0 = tuple(tf.zeros_like(v) for v in start) if momentum else ()
            _, final, _, sums, audit = tf.while_loop(
                lambda s, *_: s < tf.shape(x)[0], step, (tf.constant(0), start, acc0, sums0, audit0)
            )
            return initial, final, sums, audit

        def randomize(delta, seeds):
            """Each user's local randomizer, keyed as on the reference backend."""

            def one(args):
                user_delta, first_seed = args
                seed = local_seed(first_seed)
                return tuple(
                    local_randomize(
                        list(user_delta), local.norm, local.clip, local.noise, local.scale, seed
                    )
                )

            return tf.map_fn(
                one,
                (delta, seeds[0]),
                fn_output_signature=tuple(tf.TensorSpec(d.shape[1:], d.dtype) for d in delta),
            )

        @tff.tensorflow.computation(weights_type, data_type)
        def shard_update(weights, dataset):
            x, y, mask, seeds, *canaries = dataset.get_single_element()
            initial, final, sums, audit = train_shard(weights, x, y, mask, seeds, *canaries)
            delta = tuple(v0[None] - v for v0, v in zip(initial, final, strict=True))
            finite = tf.reduce_all(
                tf.stack(
                    [
                        tf.reduce_all(tf.math.is_finite(tf.reshape(d, [tf.shape(d)[0], -1])), 1)
                        for d in delta
                    ]
                ),
                0,
            )
            delta = tuple(
                tf.where(tf.reshape(finite, [-1] + [1] * (d.shape.rank - 1)), d, 0.0) for d in delta
            )
            if local is not None:
                delta = randomize(delta, seeds)
            examples = sums[1]
            if stacked:
                update, weight = list(delta), tf.constant(1.0)
            else:
                # TFF zeroes a non-finite update; weighted, it also gets weight 0.
                per_user = (
                    examples * tf.cast(finite, tf.float32) if weighted else tf.ones_like(examples)
                )
                weight = tf.reduce_sum(per_user)
                update = [
                    tf.math.divide_no_nan(tf.tensordot(per_user, d, 1), weight) for d in delta
                ]
            metrics = collections.OrderedDict(
                loss_total=tf.reduce_sum(sums[0]),
                metric_total=tf.reduce_sum(sums[2]),
                metric_count=tf.reduce_sum(sums[3]),
                num_examples=tf.cast(tf.reduce_sum(examples), tf.int64),
                num_batches=tf.cast(tf.reduce_sum(sums[4]), tf.int64),
            )
            if probe is not None:
                metrics["audit_residual"] = audit
            return tff.learning.templates.ClientResult(update=update, update_weight=weight), metrics

        metrics_type = shard_update.type_signature.result[1]

        @tff.tensorflow.computation(metrics_type)
        def finalize(total):
            examples = tf.cast(total["num_examples"], tf.float32)
            return collections.OrderedDict(
                [
                    (metric, tf.math.divide_no_nan(total["metric_total"], total["metric_count"])),
                    ("loss", tf.math.divide_no_nan(total["loss_total"], examples)),
                    ("num_examples", total["num_examples"]),
                    ("num_batches", total["num_batches"]),
                ]
            )

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
            summed = tff.federated_sum(metrics)
            train = tff.federated_map(finalize, summed)
            measured = collections.OrderedDict(train=train)
            if probe is not None:  # the round's residual per canary record, over the cohort
                measured["audit_residual"] = summed["audit_residual"]
            measurements = tff.federated_zip(measured)
            return tff.templates.MeasuredProcessOutput(state, result, measurements)

        return tff.learning.templates.ClientWorkProcess(init_fn, next_fn)
