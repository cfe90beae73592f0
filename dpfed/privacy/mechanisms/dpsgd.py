"""Example-level DP-SGD in every client (Abadi et al., CCS 2016), with optional user-level DP."""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting

from dpfed.errors import ConfigError, check
from dpfed.privacy.mechanisms.base import (
    ExampleDP,
    Mechanism,
    MechanismParts,
    NoisyConfig,
    central_account,
    central_parts,
    check_clip,
    check_noise,
    finite_clip,
)
from dpfed.privacy.neighboring import Neighboring, Relation
from dpfed.privacy.plan import Account, participation_account


class DPSGDMechanism(Mechanism):
    """Example-level DP-SGD inside every client (Abadi et al., CCS 2016), optionally with
    user-level DP-FedAvg on top (McMahan et al., ICLR 2018).

    Local training clips each example's gradient to ``clip`` and adds Gaussian
    noise of std ``noise_multiplier * clip`` to every batch's sum, divided by
    the configured batch size ``b``. How a client's batches are drawn is
    ``record_sampling``:

    - ``shuffle``: a client's data is shuffled and cut into batches within each
      local epoch, so every record is in exactly one batch per epoch and the
      number of steps does not depend on any one record: a participation of its
      client is ``local_epochs`` Gaussian releases per record, with noise
      multiplier ``z`` under zero-out (a record replaced by one with zero
      gradient) and ``z / 2`` under replace-one. No subsampling amplification is
      credited, and add/remove is not analysed (adding a record shifts the batches).
    - ``poisson``: every client takes ``local_epochs * ceil(m / b)`` steps, ``m`` the
      mean number of records of a client (public, like every client's count), and
      each step takes each of its records independently with probability
      ``q = min(1, b / m)`` (Abadi et al. 2016 within each client: a client of
      ``n`` records has batches of ``q n`` records on average, and a step that
      takes none still releases its noise). Under zero-out, a record with zero
      gradient adds nothing to any step's noised sum, drawn or not, while the
      steps stay as they are, so every step is a Poisson-subsampled Gaussian
      under add/remove (`dp_accounting.PoissonSampledDpEvent`), the same for
      every client; replace-one and add/remove are not analysed. What a client
      sends must not depend on how many records were drawn: weighting clients
      by their examples (``strategy.weighted``) is refused, and the train
      metrics (``train/examples``, loss, accuracy), which are diagnostics that no
      DP covers, count the drawn records.

    ``epsilon_record`` is that of a record of the client that took part most
    often so far. ``epsilon`` is user-level: infinite unless
    ``user_noise_multiplier > 0``, which adds TFF's fixed-clip Gaussian
    aggregator (clip ``user_clip``), accounted as ``dp=gaussian``.

    Under ``strategy=centralized`` it is DP-SGD on Poisson batches of the
    pooled records, accounted per step (user-level noise does not apply).

    Args:
        noise_multiplier: example-level noise std / clip, >= 0.
        clip: per-example L2 clipping norm, > 0.
        user_noise_multiplier: user-level noise multiplier; 0 turns user-level DP off.
        user_clip: user-level clip of client updates.
        record_sampling: ``shuffle`` or ``poisson``: how a client's batches are drawn.
    """

    label = "dpsgd"
    pooled_records = True

    def __init__(
        self,
        noise_multiplier: float,
        clip: float,
        user_noise_multiplier: float = 0.0,
        user_clip: float = 1.0,
        record_sampling: str = "shuffle",
    ):
        check_noise(noise_multiplier)
        check_clip(clip, noise_multiplier)
        check_noise(user_noise_multiplier, "user_noise_multiplier")
        check_clip(user_clip, user_noise_multiplier, "user_clip")
        check(
            record_sampling in RECORD_SAMPLINGS,
            "record_sampling",
            record_sampling,
            " or ".join(RECORD_SAMPLINGS),
        )
        self.noise_multiplier, self.clip = noise_multiplier, clip
        self.user_noise_multiplier, self.user_clip = user_noise_multiplier, user_clip
        self.record_sampling = record_sampling

    @property
    def tunable_noise(self) -> float:
        return self.user_noise_multiplier or self.noise_multiplier

    def split(self, noise_multiplier: float) -> tuple[float, float]:
        """(user, example) noise multipliers when the tunable one is ``noise_multiplier``."""
        if self.user_noise_multiplier > 0:
            return noise_multiplier, self.noise_multiplier
        return 0.0, noise_multiplier

    def accounts(self, ctx, noise_multiplier: float) -> tuple[Account, ...]:
        user_z, example_z = self.split(noise_multiplier)
        if ctx.sampler.unit == "record":  # pooled records: DP-SGD on Poisson batches
            check(
                user_z == 0,
                "user_noise_multiplier",
                user_z,
                "0 with strategy=centralized (no users to protect separately)",
            )
            return (central_account(ctx, example_z),)
        if self.record_sampling == "poisson":
            record = poisson_record_account(ctx, example_z)
        else:
            epochs = ctx.local_epochs

            def per_participation(accounted):
                return dp_accounting.SelfComposedDpEvent(
                    dp_accounting.GaussianDpEvent(accounted), epochs
                )

            record = participation_account(
                ctx, "epsilon_record", "record", example_z, per_participation
            )
        return central_account(ctx, user_z), record

    def setup(self, plan, model) -> MechanismParts:
        user_z, example_z = self.split(plan.noise_multiplier)
        poisson = self.record_sampling == "poisson" and plan.sampler.unit != "record"
        example = ExampleDP(
            finite_clip(self.clip),
            example_z,
            poisson_batches=poisson_record_steps(plan.context) if poisson else None,
        )
        if user_z == 0:
            return MechanismParts(example_dp=example)
        from dpfed.privacy.queries import SeededGaussianSumQuery

        clip = finite_clip(self.user_clip)
        query = SeededGaussianSumQuery(clip, clip * user_z, plan.stream_key("sum"))
        return central_parts(query, plan, example_dp=example)

    def describe(self, plan) -> dict:
        user_z, example_z = self.split(plan.noise_multiplier)
        pooled = plan.sampler.unit == "record"  # pooled records: always Poisson batches
        out = {
            "clip": self.user_clip if user_z else None,
            "user_noise_multiplier": user_z,
            "example_noise_multiplier": example_z,
            "example_clip": self.clip,
            "record_sampling": "poisson" if pooled else self.record_sampling,
        }
        if self.record_sampling == "poisson" and not pooled:
            ctx = plan.context
            q, per_epoch = poisson_record_steps(ctx)
            out.update(
                record_sampling_probability=q,
                record_steps_per_participation=per_epoch * ctx.local_epochs,
                client_records_mean=ctx.mean_client_records,
            )
        if plan.population.coupled_records:
            out["record_note"] = (
                f"a record is one window as released; {plan.population.coupled_records}"
            )
        return out


RECORD_SAMPLINGS = ("shuffle", "poisson")


def poisson_record_steps(ctx) -> tuple[float, int]:
    """``(q, steps per local epoch)`` of Poisson record batches, the same for every client:
    ``q = min(1, b / m)`` and ``ceil(m / b)`` steps, ``m`` the mean records of a client.

    Raises:
        ConfigError: the clients do not batch, or their numbers of records are unknown.
    """
    b = ctx.batch_size
    check(
        b is not None and b >= 1,
        "record_sampling",
        "poisson",
        "shuffle where clients take no minibatch steps",
    )
    try:
        mean = ctx.mean_client_records
    except ValueError as err:
        raise ConfigError(
            "record_sampling",
            "poisson",
            f"shuffle with this dataset ({err}, and Poisson batches are accounted from them)",
        ) from None
    return min(1.0, b / mean), math.ceil(mean / b)


def poisson_record_account(ctx, noise_multiplier: float) -> Account:
    """``epsilon_record`` of Poisson record batches in clients: per participation,
    ``local_epochs`` times `poisson_record_steps` Poisson-sampled Gaussian steps."""
    neighboring = ctx.neighboring or Neighboring.zero_out
    if neighboring != Neighboring.zero_out:
        raise ConfigError(
            "neighboring",
            str(neighboring),
            "zero_out with "
            "dp.record_sampling=poisson (a record with zero gradient adds nothing "
            "to any noised sum, while the steps stay as they are; replacing, "
            "adding or removing a record is not analysed)",
        )
    q, per_epoch = poisson_record_steps(ctx)
    steps = ctx.local_epochs * per_epoch
    if noise_multiplier == 0:
        event = dp_accounting.NonPrivateDpEvent()
    else:
        event = dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier)),
            steps,
        )
    return Account(
        "epsilon_record",
        "record",
        neighboring,
        Relation.ADD_OR_REMOVE_ONE,
        True,
        lambda _: event,
        noise_multiplier,
        1.0,
        f"Poisson sampling of records in clients credited (q {q:.4g}, {steps} steps "
        "a participation)",
    )


@dataclass
class DPSGDConfig(NoisyConfig):
    """Example-level DP-SGD inside clients, optionally with user-level DP-FedAvg.

    Attributes:
        clip: per-example L2 clipping norm.
        user_noise_multiplier: user-level noise multiplier (0: no user-level DP).
        user_clip: user-level clip of client updates.
        record_sampling: how a client's batches are drawn: ``shuffle`` (every record
            once per local epoch, no amplification credited) or ``poisson`` (each
            step takes each record with probability min(1, batch_size / the mean
            records of a client); amplification credited, zero_out adjacency only).
    """

    _target_: str = "dpfed.privacy.mechanisms.dpsgd.DPSGDMechanism"
    clip: float = 1.0
    user_noise_multiplier: float = 0.0
    user_clip: float = 1.0
    record_sampling: str = "shuffle"


CONFIGS = {"dpsgd": DPSGDConfig}
