"""The round loop: sample a cohort, run one TFF round, account, evaluate, write."""

from __future__ import annotations

import logging
import time

import numpy as np
from tqdm.auto import tqdm


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

    """

    def __init__(self, dataset, model, plan, parts, strategy, backend, process, seed: int,
                 progress: bool = True, checkpoints=None):  # fmt: skip
        self.dataset, self.model, self.plan, self.parts = dataset, model, plan, parts
        self.strategy, self.backend, self.process = strategy, backend, process
        self.sampler, self.rounds = plan.sampler, plan.rounds
        self.ledger = plan.new_ledger()
        self.seed, self.progress = seed, progress
        self.epsilon_planned = plan.epsilon()
        self.metric = model.metrics()[0].name
        self._eval_model = None
        self._noise_key = plan.client_key if parts.client_side else None
        self.checkpoints = checkpoints
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
        ]

    def privacy_record(self) -> dict:
        """What an independent dp-accounting computation needs to recompute every epsilon."""
        return {**self.plan.describe(), **self.ledger.describe()}

    # ------------------------------------------------------------------ pieces
    def cohort_datasets(self, client_ids, round_num):
        """What the process trains on in round ``round_num`` (None without clients)."""
        if self.strategy.client_update is None:
            return None  # e.g. pooled records: the process holds them
        return self.backend.cohort_data(self.strategy, self.dataset.train, client_ids, round_num,
                                        self.seed, self._noise_key)  # fmt: skip

    def _eval_arrays(self):
        n = self.dataset.num_clients
        k = n if self.strategy.eval_clients == -1 else min(n, self.strategy.eval_clients)
        ids = np.random.default_rng([self.seed, 2]).choice(n, size=k, replace=False)
        parts = [self.dataset.eval.arrays(i) for i in np.sort(ids)]
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

    def _model_bytes(self, state) -> tuple[int, int]:
        weights = self.process.get_model_weights(state)
        down = sum(np.asarray(w).nbytes for w in (*weights.trainable, *weights.non_trainable))
        up = sum(np.asarray(w).nbytes for w in weights.trainable)
        return down, up + (4 if self.strategy.weighted else 0)

    def _due_for_eval(self, round_num: int) -> bool:
        every = self.strategy.eval_every
        return every > 0 and (round_num % every == 0 or round_num == self.rounds)

    # ------------------------------------------------------------------ loop
    def run_round(self, state, round_num: int, cohort: list[str]):
        """Trains one round on ``cohort`` (an empty one still releases the aggregator's noise).

        Returns:
            (new state, metrics row without the privacy columns).
        """
        start = time.perf_counter()
        result = self.process.next(state, self.cohort_datasets(cohort, round_num))
        state = result.state
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
        }
        if self._due_for_eval(round_num):
            row.update(self.evaluate(state))
        return state, row

    def run(self, writer, extra_summary: dict | None = None) -> dict:
        """Runs all rounds, writing a metrics row and the summary after each one."""
        summary = {
            "status": "running",
            "rounds": 0,
            "rounds_planned": self.rounds,
            "epsilon_planned": self.epsilon_planned,
            **_disjoint(self.privacy_record(), self.strategy.describe()),
            "epsilon": None,  # set once a round has been accounted
            **(extra_summary or {}),
            "total_bytes_down": 0,
            "total_bytes_up": 0,
            "train_seconds": 0.0,
        }
        log.info("privacy: %s", self.plan.describe_line())
        state = self.process.initialize()
        self._bytes_per_client = self._model_bytes(state)
        first = 1
        if self.checkpoints is not None and self.checkpoints.round > 0:
            state, summary = self.restore(state, summary, writer, extra_summary or {})
            first = self.checkpoints.round + 1
        elif self.checkpoints is not None:
            self.checkpoints.clear()
        bar = tqdm(range(first, self.rounds + 1), desc="rounds", unit="round", initial=first - 1,
                   total=self.rounds, disable=not self.progress, dynamic_ncols=True)  # fmt: skip
        try:
            for round_num in bar:
                cohort = self.sampler.sample(round_num)
                events = self.ledger.preview(round_num, cohort)  # changes nothing yet
                if reason := self.ledger.over_budget(events):
                    summary.update(status="stopped", stop_reason=reason)
                    log.warning("stopping: %s", reason)
                    break
                state, row = self.run_round(state, round_num, cohort)
                row.update(self.ledger.record(round_num, cohort, events))
                writer.write_round(row)
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
        except BaseException as err:  # keep what finished; say why the run ended early
            summary["status"] = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            summary["error"] = f"{type(err).__name__}: {err}"
            raise
        else:
            if summary["status"] == "running":
                summary["status"] = "completed"
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
        writer.resume(rounds)
        resumed = [*meta["summary"].get("resumed_from_round", []), rounds]
        summary = {**summary, **meta["summary"], **extra_summary, "status": "running",
                   "resumed_from_round": resumed}  # fmt: skip
        summary.pop("error", None)
        log.info("resuming after round %d of %d from %s", rounds, self.rounds,
                 self.checkpoints.path)  # fmt: skip
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
