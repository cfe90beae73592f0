"""DP mechanisms for federated rounds: the TFF aggregator and the DP event of one round."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np

from dpfed.errors import ConfigError, check
from dpfed.privacy.accounting import PrivacyLedger
from dpfed.privacy.calibration import calibrate_noise_multiplier

REPLACE_SPECIAL = dp_accounting.NeighboringRelation.REPLACE_SPECIAL
NO_CLIP = 1e30  # what clip=inf becomes in TF ops (inf / inf is NaN there; this scales by 1)


def finite_clip(clip: float) -> float:
    """``clip`` for TensorFlow: inf (no clipping, allowed only without noise) becomes NO_CLIP."""
    return NO_CLIP if math.isinf(clip) else clip


def check_clip(clip: float, noise_multiplier: float, key: str = "clip") -> None:
    """A clip is a number > 0; inf (no clipping) only with noise_multiplier=0."""
    check(clip > 0 and (math.isfinite(clip) or noise_multiplier == 0), key, clip,
          "a finite number > 0 (inf only with noise_multiplier=0)")  # fmt: skip


class NoPrivacy:
    """Non-private baseline: TFF's default mean; every round is a non-private event.

    Args:
        delta: delta at which the (infinite) epsilon is reported.
        accountant: accountant name, kept so sweeps over ``dp`` share columns.
    """

    name = "none"
    max_epsilon = None
    metric_columns = ()
    example_dp = None  # (clip, noise_multiplier) of example-level DP-SGD, if any

    def __init__(self, delta: float = 1e-5, accountant: str = "rdp"):
        self.delta, self.accountant = delta, accountant

    def wrap_dataset(self, dataset):
        """The data clients train on: unchanged (only input perturbation alters it)."""
        return dataset

    def aggregator(self, clients_per_round: int, model=None):
        return None  # the learning algorithm's default mean

    def ledger(self, sampler) -> PrivacyLedger:
        return PrivacyLedger(self.accountant, self.delta, sampler.neighboring_relation)

    def model_fn(self, model, strategy):
        """The TFF model clients train: the plain one."""
        return model.tff_model

    def prepare(self, sampler, ledger, rounds: int) -> None:
        """Nothing to calibrate."""

    def round_event(self, sampler, round_num: int, cohort=None, noise_multiplier=None):
        return dp_accounting.NonPrivateDpEvent()

    def round_metrics(self, aggregator_metrics) -> dict:
        return {}

    def state_dict(self) -> dict:
        """What the mechanism counts across rounds (nothing), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restores what `state_dict` returned."""

    def describe(self, sampler) -> dict:
        return {"mechanism": self.name, "noise_multiplier": 0.0, "clip": math.inf}


class GaussianMechanism:
    """User-level DP-FedAvg with fixed clipping (McMahan et al., ICLR 2018).

    Each client's update is clipped to L2 norm ``clip``; Gaussian noise of std
    ``noise_multiplier * clip`` is added to the sum, which is then divided by
    the (expected) cohort size: TFF's ``DifferentiallyPrivateFactory.gaussian_fixed``,
    built here with a seeded Gaussian sum query so that the noise is fixed by
    ``seed`` and checkpointed with the aggregator's state.

    Under replace-one adjacency (fixed-size and shuffled cohorts) one user can
    move the clipped sum by up to ``2 * clip``, so the accountant sees the noise
    multiplier ``noise_multiplier / 2``; under add/remove (Poisson) it is ``clip``.

    Args:
        noise_multiplier: noise std divided by ``clip``; >= 0 (0 means no privacy).
            Ignored when ``target_epsilon`` is set.
        clip: L2 clipping norm of client updates; > 0.
        delta: target delta, in (0, 1).
        accountant: ``rdp`` or ``pld``.
        orders: RDP orders, None for dp-accounting's defaults.
        conversion: RDP conversion, ``improved`` or ``classic``.
        pld_discretization: PLD value discretization interval.
        target_epsilon: if set, the noise multiplier is solved for so that the
            planned epsilon after all rounds is at most this (and within 0.5%).
        max_epsilon: if set, training stops before the first round that would
            take epsilon above it.
        seed: seed of the DP noise (each round draws fresh noise from it).
    """

    name = "gaussian"
    metric_columns = ()

    @property
    def example_dp(self):
        """Under ``strategy=centralized`` (records are the unit): DP-SGD, this noise and clip."""
        if type(self) is not GaussianMechanism:  # adaptive, tree, local: federated only
            return None
        return (finite_clip(self.clip), self.noise_multiplier)

    def __init__(
        self,
        noise_multiplier: float,
        clip: float,
        delta: float = 1e-5,
        accountant: str = "rdp",
        orders=None,
        conversion: str = "improved",
        pld_discretization: float = 1e-4,
        target_epsilon: float | None = None,
        max_epsilon: float | None = None,
        seed: int = 0,
    ):
        check(0 <= noise_multiplier < math.inf, "noise_multiplier", noise_multiplier,
              "a finite number >= 0")  # fmt: skip
        check_clip(clip, noise_multiplier)
        check(target_epsilon is None or target_epsilon > 0, "target_epsilon", target_epsilon,
              "null or > 0")  # fmt: skip
        check(max_epsilon is None or max_epsilon > 0, "max_epsilon", max_epsilon, "null or > 0")
        self.noise_multiplier, self.clip, self.delta = noise_multiplier, clip, delta
        self.accountant, self.orders, self.conversion = accountant, orders, conversion
        self.pld_discretization = pld_discretization
        self.target_epsilon, self.max_epsilon = target_epsilon, max_epsilon
        self.calibrated_epsilon = None
        self.seed = seed

    def wrap_dataset(self, dataset):
        """The data clients train on: unchanged (only input perturbation alters it)."""
        return dataset

    def aggregator(self, clients_per_round: int, model=None):
        import tensorflow_privacy as tfp

        from dpfed.federated.runtime import tff
        from dpfed.privacy.local import SeededGaussianSumQuery, noise_key

        # What gaussian_fixed builds, with the seeded sum query.
        clip = finite_clip(self.clip)
        query = SeededGaussianSumQuery(clip, clip * self.noise_multiplier,
                                       noise_key(self.seed, "sum"))  # fmt: skip
        return tff.aggregators.DifferentiallyPrivateFactory(
            tfp.NormalizedQuery(query, denominator=float(clients_per_round))
        )

    def state_dict(self) -> dict:
        """What the mechanism counts across rounds, JSON-ready (for checkpoints)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restores what `state_dict` returned."""

    def ledger(self, sampler) -> PrivacyLedger:
        ledger = PrivacyLedger(
            self.accountant,
            self.delta,
            sampler.neighboring_relation,
            self.orders,
            self.conversion,
            self.pld_discretization,
        )
        if not ledger.supports(self.round_event(sampler, 1, noise_multiplier=1.0)):
            raise ConfigError(
                "accountant",
                self.accountant,
                f"one that supports {sampler.name} sampling (dp-accounting's "
                f"{self.accountant.upper()} accountant cannot compose it; use rdp)",
            )
        return ledger

    def prepare(self, sampler, ledger: PrivacyLedger, rounds: int) -> None:
        """Solves for the noise multiplier when ``target_epsilon`` is set (before training)."""
        if self.target_epsilon is None:
            return

        def events_for(z):
            return (self.round_event(sampler, r, noise_multiplier=z) for r in range(1, rounds + 1))

        self.noise_multiplier, self.calibrated_epsilon = calibrate_noise_multiplier(
            events_for, ledger, self.target_epsilon
        )

    def round_metrics(self, aggregator_metrics) -> dict:
        """Per-round values of the mechanism worth a metrics.csv column (none here)."""
        return {}

    def model_fn(self, model, strategy):
        """The TFF model clients train: the plain one (user-level DP acts on the aggregate)."""
        return model.tff_model

    def sensitivity(self, neighboring_relation) -> float:
        """L2 sensitivity of the clipped sum under the given adjacency."""
        if neighboring_relation == dp_accounting.NeighboringRelation.REPLACE_ONE:
            return 2 * self.clip
        return self.clip

    def round_event(self, sampler, round_num: int, cohort=None, noise_multiplier=None):
        """The DP event of round ``round_num`` given how ``sampler`` draws cohorts.

        Central mechanisms do not depend on who is in the cohort; ``cohort``
        is for mechanisms accounted per client.
        """
        z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        if z == 0:
            return dp_accounting.NonPrivateDpEvent()  # clipping alone gives no DP
        sensitivity = self.sensitivity(sampler.neighboring_relation)
        gaussian = dp_accounting.GaussianDpEvent(z * self.clip / sensitivity)
        return sampler.round_event(round_num, gaussian)

    def describe(self, sampler) -> dict:
        """Settings, plus the sensitivity and noise multiplier the accountant sees."""
        sensitivity = self.sensitivity(sampler.neighboring_relation)
        return {
            "mechanism": self.name,
            "noise_multiplier": self.noise_multiplier,
            "clip": self.clip,
            "sensitivity": sensitivity,
            "accounted_noise_multiplier": self.noise_multiplier / (sensitivity / self.clip),
            "target_epsilon": self.target_epsilon,
            "max_epsilon": self.max_epsilon,
        }


class AdaptiveGaussianMechanism(GaussianMechanism):
    """DP-FedAvg with adaptive clipping to a quantile of update norms (Andrew et al., NeurIPS 2021).

    TFF's ``DifferentiallyPrivateFactory.gaussian_adaptive`` privately
    estimates, each round, which share of clients' update norms fall below the
    current clip (a count with Gaussian noise of std ``clipped_count_stddev``)
    and moves the clip geometrically towards ``target_quantile``. Here
    ``noise_multiplier`` is the *effective* multiplier of the two releases
    together: TFF splits it so that ``z^-2 = z_value^-2 + (2 * count_std)^-2``,
    which is what the accountant composes (the quantile estimate's privacy cost
    is included). The clip in use is logged per round as ``dp/clip``.
    Both noises (sum and clipped count) are seeded.

    Args:
        initial_clip: the clip of the first round, > 0.
        target_quantile: share of updates meant to be unclipped, in (0, 1).
        clip_learning_rate: step size of the geometric clip update, > 0.
        clipped_count_stddev: noise std on the clipped count; null takes TFF's
            default ``0.05 * clients_per_round``. Must exceed noise_multiplier / 2.
        **kwargs: as for `GaussianMechanism` (``clip`` excluded).
    """

    name = "adaptive"
    metric_columns = ("dp/clip",)

    def __init__(self, noise_multiplier: float, initial_clip: float, target_quantile: float,
                 clip_learning_rate: float, clipped_count_stddev: float | None = None,
                 **kwargs):  # fmt: skip
        check_clip(initial_clip, noise_multiplier, "initial_clip")
        check(0 < target_quantile < 1, "target_quantile", target_quantile, "in (0, 1)")
        check(clip_learning_rate > 0, "clip_learning_rate", clip_learning_rate, "> 0")
        check(clipped_count_stddev is None or clipped_count_stddev > 0, "clipped_count_stddev",
              clipped_count_stddev, "null or > 0")  # fmt: skip
        super().__init__(noise_multiplier, clip=initial_clip, **kwargs)
        self.target_quantile, self.clip_learning_rate = target_quantile, clip_learning_rate
        self.clipped_count_stddev = clipped_count_stddev

    def aggregator(self, clients_per_round: int, model=None):
        from dpfed.federated.runtime import tff

        count_std = self.clipped_count_stddev or 0.05 * clients_per_round
        if self.noise_multiplier > 0 and count_std <= self.noise_multiplier / 2:
            raise ConfigError("clipped_count_stddev", count_std,
                              f"> noise_multiplier / 2 = {self.noise_multiplier / 2:g} (TFF's "
                              "default is 0.05 * clients_per_round; set it explicitly or use "
                              "larger cohorts)")  # fmt: skip
        import tensorflow_privacy as tfp
        from tensorflow_federated.python.aggregators.differential_privacy import (
            adaptive_clip_noise_params,
        )

        from dpfed.privacy.local import SeededQuantileAdaptiveClipSumQuery, noise_key

        # What gaussian_adaptive builds (TFF's own noise split), with seeded noise.
        value_z, count_std = adaptive_clip_noise_params(
            self.noise_multiplier, float(clients_per_round), count_std
        )
        query = SeededQuantileAdaptiveClipSumQuery(
            initial_l2_norm_clip=finite_clip(self.clip),
            noise_multiplier=value_z,
            target_unclipped_quantile=self.target_quantile,
            learning_rate=self.clip_learning_rate,
            clipped_count_stddev=count_std,
            expected_num_records=float(clients_per_round),
            geometric_update=True,
            sum_key=noise_key(self.seed, "sum"),
            count_key=noise_key(self.seed, "clipped_count"),
        )
        return tff.aggregators.DifferentiallyPrivateFactory(
            tfp.NormalizedQuery(query, denominator=float(clients_per_round))
        )

    def round_metrics(self, aggregator_metrics) -> dict:
        """The clip the round used, from TFF's DP query metrics."""
        return {"dp/clip": float(aggregator_metrics["dp_query_metrics"]["clip"])}

    def describe(self, sampler) -> dict:
        return {**super().describe(sampler), "clip": None, "initial_clip": self.clip,
                "target_quantile": self.target_quantile,
                "clip_learning_rate": self.clip_learning_rate,
                "clipped_count_stddev": self.clipped_count_stddev}  # fmt: skip


class LocalMechanism(GaussianMechanism):
    """Local DP (Warner 1965; Duchi et al. 2013): each client randomizes its own update.

    A client clips its model update (L1 for Laplace, L2 for Gaussian) to
    ``clip`` and adds noise of scale ``noise_multiplier * clip`` on the device;
    the server averages what it receives. Any two updates of one client differ
    by at most ``2 * clip``, so one participation is a Laplace (or Gaussian)
    release with noise multiplier ``noise_multiplier / 2``. Epsilon is per
    client, composed over the rounds that client took part in; ``epsilon`` in
    metrics.csv is that of the client that took part most often so far (the
    worst case), ``epsilon_planned`` assumes one client could be in every
    round the sampler allows (once per epoch for ``shuffle``). Cohort sampling
    is not credited (no amplification).
    """

    norm = noise = None

    def __init__(self, noise_multiplier: float, clip: float, **kwargs):
        super().__init__(noise_multiplier, clip, **kwargs)
        self.participations: dict[str, int] = {}
        self.max_participations = 0

    def aggregator(self, clients_per_round: int, model=None):
        import tensorflow_privacy as tfp

        from dpfed.federated.runtime import tff
        from dpfed.privacy.local import LocalRandomizerQuery, noise_key

        scale = 0.0 if self.noise_multiplier == 0 else self.noise_multiplier * self.clip
        query = LocalRandomizerQuery(self.norm, finite_clip(self.clip), self.noise, scale,
                                     noise_key(self.seed, "local"))  # fmt: skip
        return tff.aggregators.DifferentiallyPrivateFactory(
            tfp.NormalizedQuery(query, denominator=float(clients_per_round))
        )

    def sensitivity(self, neighboring_relation) -> float:
        return 2 * self.clip  # any two updates of one client, in the clipping norm

    def state_dict(self) -> dict:
        return {"participations": self.participations,
                "max_participations": self.max_participations}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.participations = dict(state["participations"])
        self.max_participations = state["max_participations"]

    def release(self, noise_multiplier: float) -> dp_accounting.DpEvent:
        raise NotImplementedError

    def round_event(self, sampler, round_num: int, cohort=None, noise_multiplier=None):
        z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        one = (dp_accounting.NonPrivateDpEvent() if z == 0
               else self.release(z * self.clip / self.sensitivity(None)))  # fmt: skip
        if cohort is None:  # planning: the worst case the sampler allows
            return sampler.participation_event(round_num, one)
        for client in cohort:
            self.participations[client] = self.participations.get(client, 0) + 1
        most = max((self.participations[c] for c in cohort), default=0)
        if most > self.max_participations:
            self.max_participations = most
            return one
        return dp_accounting.NoOpDpEvent()

    def describe(self, sampler) -> dict:
        one = (dp_accounting.NonPrivateDpEvent() if self.noise_multiplier == 0
               else self.release(self.noise_multiplier / 2))  # fmt: skip
        ledger = PrivacyLedger(self.accountant, self.delta, sampler.neighboring_relation,
                               self.orders, self.conversion, self.pld_discretization)  # fmt: skip
        return {**super().describe(sampler), "local": True, "clip_norm": self.norm,
                "epsilon_per_participation": ledger.planned_epsilon([one]),
                "max_participations": self.max_participations}  # fmt: skip


class LaplaceLocalMechanism(LocalMechanism):
    """Local DP with L1 clipping and Laplace noise: pure 2 / noise_multiplier per participation."""

    name, norm, noise = "laplace_local", "l1", "laplace"

    def __init__(self, noise_multiplier: float, clip: float, accountant: str = "pure",
                 norm: str = "l1", **kwargs):  # fmt: skip
        check(norm == "l1", "norm", norm, "l1 for Laplace noise (it is calibrated to the L1 "
              "sensitivity, which an L2 clip does not bound)")  # fmt: skip
        super().__init__(noise_multiplier, clip, accountant=accountant, **kwargs)

    def release(self, noise_multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.LaplaceDpEvent(noise_multiplier)


class GaussianLocalMechanism(LocalMechanism):
    """Local DP with L2 clipping and Gaussian noise, (epsilon, delta) per client."""

    name, norm, noise = "gaussian_local", "l2", "gaussian"

    def __init__(self, noise_multiplier: float, clip: float, norm: str = "l2", **kwargs):
        check(norm == "l2", "norm", norm, "l2 for Gaussian noise (its accounting uses the L2 "
              "sensitivity)")  # fmt: skip
        super().__init__(noise_multiplier, clip, **kwargs)

    def release(self, noise_multiplier: float) -> dp_accounting.DpEvent:
        return dp_accounting.GaussianDpEvent(noise_multiplier)


class TreeMechanism(GaussianMechanism):
    """DP-FTRL (Kairouz et al., ICML 2021): tree-aggregated noise, restarted every epoch.

    Clients' updates are clipped to ``clip``; TF Privacy's ``TreeResidualSumQuery``
    adds Gaussian noise of std ``noise_multiplier * clip`` at every node of a
    binary tree over the rounds, so each round's aggregate is the difference of
    two noised prefix sums; the tree restarts every epoch. No sampling
    amplification is needed or credited: cohorts come from shuffled epochs
    (``strategy.sampling=shuffle``), each client at most once per tree, and an
    epoch is accounted as one ``SingleEpochTreeAggregationDpEvent`` with
    dp-accounting's tree-aggregation RDP (replace-with-special adjacency,
    sensitivity ``clip``), counted in full when it starts.
    """

    name = "tree"

    def ledger(self, sampler) -> PrivacyLedger:
        if sampler.name != "shuffle":
            raise ConfigError("strategy.sampling", sampler.name,
                              "shuffle with dp=tree (DP-FTRL accounts each client once per "
                              "restarted tree, without sampling amplification)",
                              absolute=True)  # fmt: skip
        self.restart_period = sampler.rounds_per_epoch
        return PrivacyLedger(self.accountant, self.delta, REPLACE_SPECIAL, self.orders,
                             self.conversion, self.pld_discretization)  # fmt: skip

    def sensitivity(self, neighboring_relation) -> float:
        return self.clip  # replacing a client's update by the special (zero) record

    def round_event(self, sampler, round_num: int, cohort=None, noise_multiplier=None):
        z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
        if z == 0:
            return dp_accounting.NonPrivateDpEvent()
        tree = dp_accounting.SingleEpochTreeAggregationDpEvent(z, sampler.rounds_per_epoch)
        return sampler.round_event(round_num, tree)

    def aggregator(self, clients_per_round: int, model=None):
        import tensorflow_privacy as tfp
        from tensorflow_privacy.privacy.dp_query.restart_query import (
            PeriodicRoundRestartIndicator,
        )

        from dpfed.federated.runtime import tff
        from dpfed.privacy.local import noise_key

        tree = tfp.TreeResidualSumQuery.build_l2_gaussian_query(
            finite_clip(self.clip),
            self.noise_multiplier,
            model.trainable_weight_specs(),
            noise_seed=noise_key(self.seed, "tree"),
        )
        restarted = tfp.RestartQuery(tree, PeriodicRoundRestartIndicator(self.restart_period))
        return tff.aggregators.DifferentiallyPrivateFactory(
            tfp.NormalizedQuery(restarted, denominator=float(clients_per_round))
        )

    def describe(self, sampler) -> dict:
        return {**super().describe(sampler), "restart_period": sampler.rounds_per_epoch}


class DPSGDMechanism:
    """Example-level DP-SGD inside every client (Abadi et al., CCS 2016), optionally with
    user-level DP-FedAvg on top.

    Local training clips each example's gradient to ``clip`` and adds Gaussian
    noise of std ``noise_multiplier * clip`` to every batch's sum (see
    `dpfed.privacy.dpsgd`). Record-level privacy is for the records of one
    client under add/remove adjacency: a record is in one batch per local epoch
    (shuffled batches; no subsampling amplification is credited), so each
    participation of its client composes ``local_epochs`` Gaussian releases, and
    ``epsilon_record`` is that of the client that took part most often so far.
    ``epsilon`` is user-level: infinite unless ``user_noise_multiplier > 0``,
    which adds TFF's fixed-clip Gaussian aggregator (clip ``user_clip``)
    accounted exactly as ``dp=gaussian``.

    Args:
        noise_multiplier: example-level noise std / clip, > 0.
        clip: per-example L2 clipping norm, > 0.
        user_noise_multiplier: user-level noise multiplier; 0 turns user-level DP off.
        user_clip: user-level clip of client updates.
        delta, accountant, orders, conversion, pld_discretization, max_epsilon:
            as for `GaussianMechanism`; both epsilons use the same accountant
            settings, and ``max_epsilon`` bounds the user-level epsilon.
    """

    name = "dpsgd"
    metric_columns = ("epsilon_record",)

    def __init__(self, noise_multiplier: float, clip: float, delta: float = 1e-5,
                 accountant: str = "rdp", orders=None, conversion: str = "improved",
                 pld_discretization: float = 1e-4, user_noise_multiplier: float = 0.0,
                 user_clip: float = 1.0, target_epsilon=None, max_epsilon=None,
                 seed: int = 0):  # fmt: skip
        check(0 <= noise_multiplier < math.inf, "noise_multiplier", noise_multiplier,
              "a finite number >= 0")  # fmt: skip
        check_clip(clip, noise_multiplier)
        check(target_epsilon is None, "target_epsilon", target_epsilon,
              "null with dp=dpsgd (not calibrated yet)")  # fmt: skip
        self.noise_multiplier, self.clip = noise_multiplier, clip
        settings = dict(delta=delta, accountant=accountant, orders=orders, conversion=conversion,
                        pld_discretization=pld_discretization)  # fmt: skip
        self.settings = settings
        self.example_dp = (finite_clip(clip), noise_multiplier)
        self.seed = seed
        self.user = (GaussianMechanism(user_noise_multiplier, user_clip, max_epsilon=max_epsilon,
                                       seed=seed, **settings)
                     if user_noise_multiplier > 0 else NoPrivacy(delta, accountant))  # fmt: skip
        self.max_epsilon = max_epsilon if user_noise_multiplier > 0 else None
        self.record_ledger = PrivacyLedger(
            accountant, delta, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, orders,
            conversion, pld_discretization,
        )  # fmt: skip
        self.participations: dict[str, int] = {}
        self.max_participations = 0
        self.local_epochs = 1

    def wrap_dataset(self, dataset):
        """The data clients train on: unchanged (only input perturbation alters it)."""
        return dataset

    def aggregator(self, clients_per_round: int, model=None):
        return self.user.aggregator(clients_per_round, model)

    def ledger(self, sampler) -> PrivacyLedger:
        if sampler.name == "poisson_records":  # centralized: records are the unit of privacy
            check(isinstance(self.user, NoPrivacy), "user_noise_multiplier", "> 0",
                  "0 with strategy=centralized (no users to protect separately)")  # fmt: skip
            s = self.settings
            return PrivacyLedger(s["accountant"], s["delta"], sampler.neighboring_relation,
                                 s["orders"], s["conversion"], s["pld_discretization"])  # fmt: skip
        return self.user.ledger(sampler)

    def prepare(self, sampler, ledger, rounds: int) -> None:
        self.user.prepare(sampler, ledger, rounds)

    def model_fn(self, model, strategy):
        """Clients train with DP-SGD: per-example (ghost) clipping and noise."""
        from dpfed.privacy.dpsgd import DPSGDModel
        from dpfed.privacy.local import noise_key

        self.local_epochs = strategy.local_epochs
        if strategy.name == "centralized":
            return None  # it trains with `example_dp` directly
        if not hasattr(strategy, "client_optimizer"):
            raise ConfigError("strategy", strategy.name, "one with local training (not fedsgd) "
                              "for dp=dpsgd", absolute=True)  # fmt: skip

        def model_fn():
            keras = model.keras_model()  # ghost clipping needs no unrolled GRUs
            clip, z = self.example_dp
            return DPSGDModel(model.tff_model(keras), keras, model.loss("none"), clip, z,
                              strategy.batch_size, noise_key(self.seed, "dpsgd"))  # fmt: skip

        return model_fn

    def participation_release(self) -> dp_accounting.DpEvent:
        """One client participation, for one of its records: a Gaussian release per local epoch."""
        if self.noise_multiplier == 0:
            return dp_accounting.NonPrivateDpEvent()
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.GaussianDpEvent(self.noise_multiplier), self.local_epochs
        )

    def round_event(self, sampler, round_num: int, cohort=None, noise_multiplier=None):
        if sampler.name == "poisson_records":  # centralized DP-SGD on Poisson batches
            z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
            event = (sampler.round_event(round_num, dp_accounting.GaussianDpEvent(z)) if z
                     else dp_accounting.NonPrivateDpEvent())  # fmt: skip
            if cohort is not None:
                self.record_ledger.record(event)
            return event
        if cohort is not None:
            for client in cohort:
                self.participations[client] = self.participations.get(client, 0) + 1
            most = max((self.participations[c] for c in cohort), default=0)
            if most > self.max_participations:
                self.max_participations = most
                self.record_ledger.record(self.participation_release())
        return self.user.round_event(sampler, round_num, cohort, noise_multiplier)

    def round_metrics(self, aggregator_metrics) -> dict:
        return {"epsilon_record": self.record_ledger.epsilon}

    def state_dict(self) -> dict:
        """Participation counts and the record-level ledger, JSON-ready (for checkpoints)."""
        return {"participations": self.participations,
                "max_participations": self.max_participations,
                "record_ledger": self.record_ledger.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.participations = dict(state["participations"])
        self.max_participations = state["max_participations"]
        self.record_ledger.load_state_dict(state["record_ledger"])

    def describe(self, sampler) -> dict:
        user = self.user.describe(sampler)
        return {**user, "mechanism": self.name, "user_level": user["mechanism"],
                "example_noise_multiplier": self.noise_multiplier, "example_clip": self.clip,
                "epsilon_record": self.record_ledger.epsilon,
                "record_dp_events": self.record_ledger.events(),
                "max_participations": self.max_participations,
                "local_epochs": self.local_epochs}  # fmt: skip


class InputNoiseMechanism:
    """The textbook input-perturbation baseline: noise every training sample's features once.

    Each feature value is clipped to ``[-bound, bound]`` and Laplace (or
    Gaussian) noise of scale ``noise_multiplier * sensitivity`` is added, where
    the sensitivity is that of one whole input sequence (``seq_len *
    num_features`` values): L1 ``2 * bound * n`` for Laplace, L2 ``2 * bound *
    sqrt(n)`` for Gaussian, under replacement of one record. The noisy copy is
    drawn once per client (seeded), so training on it again is post-processing:
    the reported epsilon is per record, for its features, and does not grow with
    rounds. Labels, the number of records and which client holds them are NOT
    protected; model updates are averaged as usual. Evaluation uses clean data.

    Args:
        noise: ``laplace`` or ``gaussian``.
        noise_multiplier: noise scale / sensitivity, > 0 (Laplace: epsilon = 1 / it).
        bound: clipping bound of every feature value, > 0.
        delta, accountant: reporting delta and accountant (``pure`` for Laplace).
        seed: seed of the noise draw.
    """

    name = "input_noise"
    metric_columns = ()
    example_dp = None
    max_epsilon = None
    NOISES = ("laplace", "gaussian")

    def __init__(self, noise: str, noise_multiplier: float, bound: float, delta: float = 1e-5,
                 accountant: str = "pure", seed: int = 0):  # fmt: skip
        check(noise in self.NOISES, "noise", noise, f"one of {', '.join(self.NOISES)}")
        check(0 < noise_multiplier < math.inf, "noise_multiplier", noise_multiplier,
              "a finite number > 0")  # fmt: skip
        check(0 < bound < math.inf, "bound", bound, "a finite number > 0")
        self.noise, self.noise_multiplier, self.bound = noise, noise_multiplier, bound
        self.delta, self.accountant, self.seed = delta, accountant, seed
        self.released = False

    def wrap_dataset(self, dataset):
        """Replaces the training split by its clipped, noised copy (eval stays clean)."""
        from dpfed.data.client_data import LazyClientData

        if getattr(dataset, "vocab_size", None):
            raise ConfigError("dp", "input_noise", "a mechanism other than input_noise for a "
                              "text dataset (its inputs are token ids, not bounded real values)",
                              absolute=True)  # fmt: skip
        n = dataset.seq_len * dataset.num_features
        self.sensitivity = 2 * self.bound * (n if self.noise == "laplace" else math.sqrt(n))
        scale = self.noise_multiplier * self.sensitivity
        clean = dataset.train

        def noisy(index: int):
            x, y = clean.arrays(index)
            rng = np.random.default_rng([self.seed, index, 31])
            x = np.clip(x, -self.bound, self.bound)
            draw = rng.laplace if self.noise == "laplace" else rng.normal
            return (x + draw(0.0, scale, size=x.shape)).astype(np.float32), y

        dataset.train = LazyClientData(clean.num_clients, noisy, clean.element_type_structure)
        return dataset

    def aggregator(self, clients_per_round: int, model=None):
        return None

    def model_fn(self, model, strategy):
        return model.tff_model

    def ledger(self, sampler) -> PrivacyLedger:
        ledger = PrivacyLedger(self.accountant, self.delta,
                               dp_accounting.NeighboringRelation.REPLACE_ONE)  # fmt: skip
        if not ledger.supports(self._release()):
            raise ConfigError("accountant", self.accountant,
                              "pure, rdp or pld for laplace; rdp or pld for gaussian")  # fmt: skip
        return ledger

    def prepare(self, sampler, ledger, rounds: int) -> None:
        """Nothing to calibrate."""

    def _release(self) -> dp_accounting.DpEvent:
        if self.noise == "laplace":
            return dp_accounting.LaplaceDpEvent(self.noise_multiplier)
        return dp_accounting.GaussianDpEvent(self.noise_multiplier)

    def round_event(self, sampler, round_num: int, cohort=None, noise_multiplier=None):
        # The one release (the noisy data set) is accounted with the first round.
        return self._release() if round_num == 1 else dp_accounting.NoOpDpEvent()

    def round_metrics(self, aggregator_metrics) -> dict:
        return {}

    def state_dict(self) -> dict:
        """Nothing changes across rounds (the noisy copy is redrawn from ``seed``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restores what `state_dict` returned."""

    def describe(self, sampler) -> dict:
        return {"mechanism": self.name, "epsilon_scope": "per record, features only",
                "noise": self.noise, "noise_multiplier": self.noise_multiplier,
                "bound": self.bound, "sensitivity": getattr(self, "sensitivity", None)}  # fmt: skip
