"""The round loop: sample a cohort, run one TFF round, account, evaluate, write."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from tqdm.auto import tqdm

from dpfed.data.base import FederatedDataset
from dpfed.federated.backends.base import PoissonBatches

DIVERGENCE_FACTOR = 1e6  # a loss this many times the first round's means training diverged
log = logging.getLogger(__name__)


class Simulation:
    """One federated training run, from built components.

    Args:
        dataset: a dataset with ``train``/``eval`` ClientData (`dpfed.data`).
        model: a bound `dpfed.models.gru.GRUModel`.
        plan: the run's `dpfed.privacy.plan.PrivacyPlan` (sampler and accounts).
        parts: the mechanism's `dpfed.privacy.mechanisms.base.MechanismParts`.
        strategy: a strategy (`dpfed.federated.strategy`).
        backend: the client backend (`dpfed.federated.backends`).
        process: the learning process.
        seed: run seed (client shuffling, evaluation cohort).
        progress: show a progress bar.
        checkpoints: where and how often to checkpoint, and what to resume
            from (`dpfed.io.checkpoint.Checkpoints`); None writes none.
        audit: the run's audit (`dpfed.audit.base.Audit`); None audits nothing.

    """

    def __init__(
        self,
        dataset,
        model,
        plan,
        parts,
        strategy,
        backend,
        process,
        seed: int,
        progress: bool = True,
        checkpoints=None,
        audit=None,
    ):
        from dpfed.audit.base import NoAudit

        self.dataset, self.model, self.plan, self.parts = dataset, model, plan, parts
        self.strategy, self.backend, self.process = strategy, backend, process
        self.sampler, self.rounds = plan.sampler, plan.rounds
        self.ledger = plan.new_ledger()
        self.seed, self.progress = seed, progress
        self.epsilon_planned = plan.epsilon()
        self.metric = model.metrics()[0].name
        self._eval_model = None
        self._first_loss = None  # the first training loss seen: the scale divergence is judged by
        self._noise_key = plan.client_key if parts.client_side else None
        self.checkpoints = checkpoints
        self.audit = audit if audit is not None else NoAudit()
        self.codec = strategy.state_codec(process) if checkpoints is not None else None

    # ------------------------------------------------------------------ outputs
    @property
    def columns(self) -> list[str]:
        m = self.metric
        return [
            "round",
            "clients",
            *(a.column for a in self.plan.accounts),
            "delta",
            "train/loss",
            f"train/{m}",
            "train/examples",
            "eval/loss",
            f"eval/{m}",
            "round_seconds",
            "bytes_down",
            "bytes_up",
            *self.parts.metric_columns,
            *self.audit.columns,
        ]

    def privacy_record(self) -> dict:
        """What an independent dp-accounting computation needs to recompute every epsilon."""
        return {**self.plan.describe(), **self.ledger.describe()}

    # ------------------------------------------------------------------ pieces
    def cohort_datasets(self, client_ids, round_num):
        """What the process trains on in round ``round_num`` (None without clients)."""
        if self.strategy.client_update is None:
            return None  # e.g. pooled records: the process holds them
        example_dp, poisson = self.parts.example_dp, self.parts.poisson_batches
        if poisson is not None:
            poisson = PoissonBatches(self.plan.stream_key("record_sampling"), *poisson)
        probe = example_dp.probe if example_dp else None
        return self.backend.cohort_data(
            self.strategy,
            self.dataset.train,
            client_ids,
            round_num,
            self.seed,
            self._noise_key,
            probe,
            poisson,
        )

    def _eval_arrays(self):
        """The held-out data evaluated: of ``strategy.eval_clients`` clients drawn with the
        dataset's seed (``dataset.seed``, the run's unless set), so that a split held fixed
        across seeds is evaluated on the same clients too."""
        n = self.dataset.num_clients
        k = n if self.strategy.eval_clients == -1 else min(n, self.strategy.eval_clients)
        seed = getattr(self.dataset, "seed", self.seed)  # datasets without one: the run's
        ids = np.random.default_rng([seed, 2]).choice(n, size=k, replace=False)
        self._eval_ids = np.sort(ids)
        parts = [self.dataset.eval.arrays(i) for i in self._eval_ids]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def evaluate(self, state) -> dict:
        """Loss and metric of the current global model on held-out client data."""
        if self._eval_model is None:
            self._eval_model = self.model.keras_model()
            self._eval_model.compile(loss=self.model.loss(), metrics=self.model.metrics())
            self._eval_x, self._eval_y = self._eval_arrays()
        self.process.get_model_weights(state).assign_weights_to(self._eval_model)
        loss, metric = self._eval_model.evaluate(
            self._eval_x, self._eval_y, batch_size=512, verbose=0
        )
        return {"eval/loss": float(loss), f"eval/{self.metric}": float(metric)}

    def trivial_predictor(self) -> dict:
        """The held-out metric of a predictor that ignores the inputs, for comparison.

        Classification: always the most frequent class of the evaluation data;
        regression: always their mean (an optimistic baseline: it knows them). Forecasting
        tasks whose inputs hold the current value of their target (`last_value` of the
        dataset) also get the naive forecast's metric, ``eval/last_value_<metric>``, and
        synthetic tasks whose Bayes-optimal forecast is known (`oracle_forecast`) the metric of
        that upper bound, ``eval/oracle_<metric>``.
        """
        if self._eval_model is None:
            self._eval_x, self._eval_y = self._eval_arrays()
        labels = np.asarray(self._eval_y).ravel()
        if self.metric == "mae":
            name, constant = "mean", labels.mean()

            def score(predicted):
                return float(np.mean(np.abs(labels - predicted)))
        else:
            name, constant = "majority class", np.bincount(labels.astype(np.int64)).argmax()

            def score(predicted):
                return float(np.mean(predicted == labels))

        out = {"trivial_predictor": name, f"eval/trivial_{self.metric}": score(constant)}
        forecast = self.dataset.last_value(np.asarray(self._eval_x))
        if forecast is not None:
            out[f"eval/last_value_{self.metric}"] = score(forecast.ravel())
        data, unknown = self.dataset, FederatedDataset.oracle_forecast
        if getattr(type(data), "oracle_forecast", unknown) is not unknown:  # only then read again
            ids = self._eval_ids
            oracle = [data.oracle_forecast(int(i), data.eval.arrays(i)[0]) for i in ids]
            if oracle[0] is not None:
                out[f"eval/oracle_{self.metric}"] = score(np.concatenate(oracle).ravel())
        return out

    def diverged(self, state, row: dict) -> str | None:
        """Why a round's outcome shows divergence, if it does.

        A loss or weight that is not finite, or a loss more than
        `DIVERGENCE_FACTOR` times the first round's training loss.
        """
        first = self._first_loss
        if first is None and row.get("train/loss") is not None and np.isfinite(row["train/loss"]):
            first = self._first_loss = max(float(row["train/loss"]), 1e-3)
        for column in ("train/loss", "eval/loss"):
            value = row.get(column)
            if value is None:
                continue
            if not np.isfinite(value):
                return f"{column} is {value} after round {row['round']}"
            if first is not None and value > DIVERGENCE_FACTOR * first:
                return (
                    f"{column} is {value:.3g} after round {row['round']}, more than "
                    f"{DIVERGENCE_FACTOR:g} times the first round's training loss"
                )
        weights = self.process.get_model_weights(state).trainable
        if not all(np.isfinite(np.asarray(w)).all() for w in weights):
            return f"the model has non-finite weights after round {row['round']}"
        return None

    def _model_bytes(self, state) -> tuple[int, int]:
        weights = self.process.get_model_weights(state)
        down = sum(np.asarray(w).nbytes for w in (*weights.trainable, *weights.non_trainable))
        up = sum(np.asarray(w).nbytes for w in weights.trainable)
        return down, up + (4 if self.strategy.weighted else 0)

    def _due_for_eval(self, round_num: int) -> bool:
        every = self.strategy.eval_every
        return every > 0 and (round_num % every == 0 or round_num == self.rounds)

    # ------------------------------------------------------------------ loop
    def run_round(self, state, round_num: int, cohort: list[str], canaries: list[int] = ()):
        """Trains one round on ``cohort`` (an empty one still releases the aggregator's noise).

        Args:
            state: the process state.
            round_num: the round.
            cohort: the real clients of the round.
            canaries: the audit's canary clients the sampler drew with them.

        Returns:
            (new state, metrics row without the privacy columns).
        """
        start = time.perf_counter()
        state = self.audit.before_round(state, list(canaries))
        result = self.process.next(state, self.cohort_datasets(cohort, round_num))
        state = result.state
        self.audit.observe_round(result.metrics["client_work"])
        train = result.metrics["client_work"]["train"] if cohort else None
        mechanism_metrics = self.parts.round_metrics(result.metrics["aggregator"])
        seconds = time.perf_counter() - start
        row = {
            "round": round_num,
            "clients": len(cohort),
            "delta": self.plan.settings.delta,
            "train/loss": float(train["loss"]) if train else None,
            f"train/{self.metric}": float(train[self.metric]) if train else None,
            "train/examples": int(train["num_examples"]) if train else 0,
            "eval/loss": None,
            f"eval/{self.metric}": None,
            "round_seconds": seconds,
            "bytes_down": self._bytes_per_client[0] * len(cohort),
            "bytes_up": self._bytes_per_client[1] * len(cohort),
            **dict.fromkeys(self.parts.metric_columns),
            **mechanism_metrics,
            **dict.fromkeys(self.audit.columns),
        }
        evaluate = self._due_for_eval(round_num)
        if evaluate:
            row.update(self.evaluate(state))
        row.update(self.audit.after_round(state, round_num, evaluate))
        return state, row

    def run(self, writer, extra_summary: dict | None = None, resume_command: str = "") -> dict:
        """Runs all rounds, writing a metrics row and the summary after each one.

        Args:
            writer: the run's sinks (`dpfed.io.run_writer.RunWriter`).
            extra_summary: fields for summary.json (provenance).
            resume_command: what continues this run, recorded if it is interrupted.

        Raises:
            RunDiverged: a round's loss or the model became non-finite
                (summary.json says ``diverged`` and the round).
        """
        from dpfed.jobs import RunDiverged

        summary = {
            "status": "running",
            "rounds": 0,
            "rounds_planned": self.rounds,
            "epsilon_planned": self.epsilon_planned,
            **_disjoint(
                self.privacy_record(),
                self.strategy.describe(),
                # the client backend that ran (none without clients: centralized)
                self.backend.describe() if self.strategy.client_update else {"backend": None},
                self.audit.describe(),
            ),
            "epsilon": None,  # set once a round has been accounted
            **(extra_summary or {}),
            "total_bytes_down": 0,
            "total_bytes_up": 0,
            "train_seconds": 0.0,
        }
        log.info("privacy: %s", self.plan.describe_line())
        for warning in (*self.plan.warnings(), *self.audit.warnings(self.plan)):
            log.warning(warning)
        if math.isfinite(self.epsilon_planned) and self.epsilon_planned > 10:
            log.warning(
                "the planned epsilon %.3g is above 10: little privacy. Poisson cohorts "
                "(strategy.sampling=poisson), more noise or dp.target_epsilon give a "
                "meaningful budget",
                self.epsilon_planned,
            )
        state = self.process.initialize()
        self._bytes_per_client = self._model_bytes(state)
        self.audit.start(self.process, state)
        first = 1
        if self.checkpoints is not None and self.checkpoints.round > 0:
            state, summary = self.restore(state, summary, writer, extra_summary or {})
            first = self.checkpoints.round + 1
        elif self.checkpoints is not None:
            self.checkpoints.clear()
        bar = tqdm(
            range(first, self.rounds + 1),
            desc="rounds",
            unit="round",
            initial=first - 1,
            total=self.rounds,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        recorded = first - 1
        try:
            for round_num in bar:
                cohort, canaries = self.audit.split(self.sampler.sample(round_num))
                events = self.ledger.preview(round_num, cohort)  # changes nothing yet
                if reason := self.ledger.over_budget(events):
                    summary.update(status="stopped", stop_reason=reason)
                    log.warning("stopping: %s", reason)
                    break
                state, row = self.run_round(state, round_num, cohort, canaries)
                row.update(self.ledger.record(round_num, cohort, events))
                recorded = round_num  # released and accounted, whatever interrupts it now
                writer.write_round(row)
                if reason := self.diverged(state, row):
                    summary.update(
                        status="diverged",
                        diverged_round=round_num,
                        error=reason,
                        rounds=round_num,
                        **self.ledger.describe(),
                    )
                    raise RunDiverged(reason)
                summary.update(
                    {k: v for k, v in row.items() if "/" in k and v is not None},
                    rounds=round_num,
                    **self.ledger.describe(),
                    total_bytes_down=summary["total_bytes_down"] + row["bytes_down"],
                    total_bytes_up=summary["total_bytes_up"] + row["bytes_up"],
                    train_seconds=summary["train_seconds"] + row["round_seconds"],
                )
                writer.write_summary(summary)
                if self.checkpoints is not None and self.checkpoints.due(round_num, self.rounds):
                    self.save_checkpoint(state, summary, writer)
                loss = row["train/loss"]
                bar.set_postfix(eps=f"{row['epsilon']:.3g}", loss=f"{loss:.4f}" if loss else "-")
        except RunDiverged:
            raise
        except BaseException as err:  # keep what finished; say why the run ended early
            interrupted = isinstance(err, KeyboardInterrupt) or type(err).__name__ == (
                "RunInterrupted"
            )
            summary["status"] = "interrupted" if interrupted else "failed"
            summary["error"] = f"{type(err).__name__}: {err}"
            # a signal between a round's accounting and its summary: count what was spent
            summary.update(rounds=max(summary.get("rounds", 0), recorded), **self.ledger.describe())
            if interrupted and resume_command:
                summary["resume_command"] = resume_command
            raise
        else:
            if summary["status"] == "running":
                summary["status"] = "completed"
            if summary.get(f"eval/{self.metric}") is not None:  # beside what was evaluated
                summary.update(self.trivial_predictor())
            writer.write_summary(summary)  # before the checkpoint that says the run is over
            self.save_checkpoint(state, summary, writer, finished=True)
        finally:
            writer.write_summary(summary)
            writer.close()
        return summary

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state, summary: dict, writer, finished: bool = False) -> None:
        """Checkpoints everything the loop needs to continue after round ``summary["rounds"]``.

        The cohort sampler and the evaluation cohort are functions of (seed,
        round), so the round number is their whole state; the ledger holds
        every account's events and the participation counts; the DP noise
        seeds are part of the process state.
        """
        if self.checkpoints is None or self.codec is None:
            return
        writer.sync()  # the checkpoint counts the rows written so far: make them durable
        meta = {
            "round": summary["rounds"],
            "finished": finished,
            "sampler": self.sampler.state_dict(),
            "ledger": self.ledger.state_dict(),
            "audit": self.audit.state_dict(),
            # the DP seed (a secret one too, or a resumed run could not continue its noise)
            "dp_seed": str(self.plan.dp_seed),
            "summary": summary,
        }
        self.checkpoints.save(self.codec.state_to_arrays(state), meta)

    def restore(self, template, summary: dict, writer, extra_summary: dict):
        """The state and summary of the checkpoint resumed from; truncates metrics.csv to it.

        Args:
            template: ``process.initialize()``'s state.
            summary: the fresh summary of this run (keys and their order).
            writer: the run's sinks.
            extra_summary: this run's provenance (it replaces the checkpoint's).

        Returns:
            (state after the checkpoint's round, summary as the interrupted run left it).
        """
        meta, rounds = self.checkpoints.meta, self.checkpoints.round
        state = self.codec.restore_from_arrays(self.checkpoints.arrays)
        self.sampler.load_state_dict(meta["sampler"])
        self.ledger.load_state_dict(meta["ledger"])
        self.audit.load_state_dict(meta.get("audit", {}))
        writer.resume(rounds)
        resumed = [*meta["summary"].get("resumed_from_round", []), rounds]
        summary = {
            **summary,
            **meta["summary"],
            **extra_summary,
            "status": "running",
            "resumed_from_round": resumed,
        }
        summary.pop("error", None)
        log.info(
            "resuming after round %d of %d from %s", rounds, self.rounds, self.checkpoints.path
        )
        return state, summary


def _disjoint(*parts: dict) -> dict:
    """Merges summary sections; a key in two of them is a bug (one would silently win)."""
    merged: dict = {}
    for part in parts:
        clash = merged.keys() & part.keys()
        if clash:
            raise ValueError(f"summary keys {sorted(clash)} come from two components")
        merged.update(part)
    return merged
