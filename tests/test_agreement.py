"""One epsilon everywhere: a run's summary.json, ``python -m dpfed.privacy`` with the same
settings, and ``scripts/recompute_epsilon.py`` on the run's folder agree, for every ``dp``
option and every sampling a run accepts (and refuse the same combinations).

The grid runs the real round loop (sampler, ledger, budget, summary writer) with a
learning process that does not train, since training does not change what is
released; `test_real_runs_agree` repeats the check on real TFF runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf

from dpfed.build import build_privacy
from dpfed.config import compose
from dpfed.errors import ConfigError
from dpfed.privacy.__main__ import main as privacy_cli
from dpfed.privacy.mechanisms import SCHEMAS
from tests.conftest import ROOT

# Run by `pytest -m slow` (and CI), not by default: real runs beyond gaussian and DP-SGD's records
# (every mechanism and sampling agrees in the calculator cases above, which all run by default).
SLOW_CASES = {
    "test_real_runs_agree[none-fixed]",
    "test_real_runs_agree[laplace_local-poisson]",
    "test_real_runs_agree[gaussian_local-shuffle]",
    "test_real_runs_agree[input_noise-poisson]",
    "test_real_runs_agree[per_layer-shuffle]",
    "test_real_runs_agree[bandmf-min_sep_poisson]",
    "test_real_runs_agree[dpsgd-fixed]",
    "test_real_runs_agree[bandmf-cyclic]",
    "test_real_runs_agree[tree-shuffle]",
    "test_real_runs_agree[adaptive-fixed]",
}

SAMPLINGS = ("fixed", "poisson", "shuffle", "cyclic", "min_sep_poisson", "records")
SMALL = (
    "debug=smoke",
    "rounds=3",
    "strategy.eval_every=0",
    "logger.tensorboard=false",
    "logger.progress=false",
)
spec = importlib.util.spec_from_file_location(
    "recompute", ROOT / "scripts" / "recompute_epsilon.py"
)
recompute = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recompute)


def overrides_for(option: str, sampling: str) -> list[str]:
    out = [*SMALL, f"dp={option}"]
    if option == "adaptive":
        out.append("dp.clipped_count_stddev=5")
    if sampling == "records":
        out += ["strategy=centralized", "strategy.batch_size=8"]
    else:
        out += [f"strategy.sampling={sampling}", "strategy.local_epochs=2"]
    if sampling == "min_sep_poisson":  # 40 smoke clients in 4 groups of 10, 5 per round
        out.append("strategy.sampling_groups=4")
    return out


class NoTraining:
    """A learning process that keeps its weights: the loop, ledger and writer run for real."""

    def initialize(self):
        return SimpleNamespace(trainable=[np.zeros(3, np.float32)], non_trainable=[])

    def next(self, state, data=None):
        metrics = {
            "client_work": {"train": {"loss": 0.0, "accuracy": 0.0, "num_examples": 0}},
            "aggregator": {},
        }
        return SimpleNamespace(state=state, metrics=metrics)

    def get_model_weights(self, state):
        return state


def loop_simulation(cfg):
    """`Simulation` of ``cfg`` with a non-training process, and its privacy plan."""
    from dpfed.build import build_dataset
    from dpfed.federated.simulation import Simulation
    from dpfed.privacy.mechanisms.base import MechanismParts

    dataset = build_dataset(cfg)
    plan = build_privacy(cfg, dataset.population())
    strategy = SimpleNamespace(
        client_update=None,
        eval_every=0,
        weighted=False,
        describe=lambda: {},
        state_codec=lambda p: None,
    )
    model = SimpleNamespace(metrics=lambda: [SimpleNamespace(name="accuracy")])
    sim = Simulation(
        dataset,
        model,
        plan,
        MechanismParts(),
        strategy,
        None,
        NoTraining(),
        seed=cfg.seed,
        progress=False,
    )
    return sim, plan


def loop_run(cfg, tmp_path):
    """The summary of a run of ``cfg`` through `Simulation` with a non-training process."""
    from dpfed.io.run_writer import RunWriter

    sim, _ = loop_simulation(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    return sim.run(RunWriter(tmp_path, sim.columns), {"config": config})


def cli_flags(cfg, summary) -> list[str]:
    """The calculator's flags for the settings of ``cfg`` (and the run's participations)."""
    dp, strategy = cfg.dp, cfg.strategy
    flags = ["epsilon", "--mechanism", summary["mechanism"], "--delta", str(dp.delta)]
    if any(a["per"] == "participation" for a in summary.get("accounts", ())):  # elsewhere refused
        flags += ["--participations", str(summary["max_participations"])]
    for key in ("noise_multiplier", "user_noise_multiplier", "clipped_count_stddev"):
        if key in dp and dp[key] is not None:
            flags += [f"--{key.replace('_', '-')}", str(dp[key])]
    if dp.get("accountant") != "rdp":
        flags += ["--accountant", str(dp.accountant)]
    if str(strategy.sampling) == "records":
        return flags + [
            "--dataset-size",
            str(summary["num_records"]),
            "--batch-size",
            str(strategy.batch_size),
            "--epochs",
            str(cfg.rounds),
        ]
    if strategy.get("sampling_groups") is not None:
        flags += ["--sampling-groups", str(strategy.sampling_groups)]
    if dp.get("record_sampling") == "poisson":
        flags += [
            "--record-sampling",
            "poisson",
            "--neighboring",
            str(dp.neighboring),
            "--client-batch-size",
            str(strategy.batch_size),
            "--client-records",
            repr(summary["client_records_mean"]),
        ]
    return flags + [
        "--sampling",
        str(strategy.sampling),
        "--population",
        str(summary["num_clients"]),
        "--sample-size",
        str(strategy.clients_per_round),
        "--steps",
        str(cfg.rounds),
        "--local-epochs",
        str(strategy.local_epochs),
    ]


def check_agreement(summary, cfg, run_dir, capsys):
    code = privacy_cli(cli_flags(cfg, summary))
    printed = json.loads(capsys.readouterr().out)
    assert code == 0
    for account in summary["accounts"]:
        column = account["column"]
        ran = math.inf if summary[column] is None else summary[column]
        assert printed[column] == pytest.approx(ran, rel=1e-9), column
        assert printed["neighboring"] == summary["neighboring"]
    for record in recompute.check_run(run_dir):
        assert record["match"], record


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("option", sorted(SCHEMAS))
def test_run_cli_and_recompute_agree_for_every_mechanism_and_sampling(
    option, sampling, tmp_path, capsys
):
    try:
        cfg = compose(*overrides_for(option, sampling))
    except Exception as err:  # tree and bandmf select epochs, which pooled records have not
        assert option in ("tree", "bandmf") and sampling == "records" and "sampling" in str(err)
        code = privacy_cli(
            [
                "epsilon",
                "--mechanism",
                option,
                "--dataset-size",
                "100",
                "--batch-size",
                "8",
                "--epochs",
                "3",
                "--noise-multiplier",
                "1",
            ]
        )
        assert code == 2 and "is not allowed" in capsys.readouterr().err
        return
    try:
        summary = loop_run(cfg, tmp_path)
    except ConfigError as refused:  # what a run refuses, the calculator refuses with its flag
        code = privacy_cli(
            cli_flags(
                cfg,
                {
                    "mechanism": option,
                    "max_participations": 1,
                    "num_records": 100,
                    "num_clients": 40,
                },
            )
        )
        assert code == 2, f"the calculator accepted what a run refused: {refused}"
        assert "is not allowed" in capsys.readouterr().err
        return
    assert summary["status"] == "completed" and summary["rounds"] == 3
    check_agreement(summary, cfg, tmp_path, capsys)


POISSON_RECORDS = (
    "dp.record_sampling=poisson",
    "dp.neighboring=zero_out",
    "dp.user_noise_multiplier=0",
    "strategy.batch_size=5",
)


@pytest.mark.parametrize("sampling", ["fixed", "poisson", "shuffle"])
def test_poisson_record_batches_in_clients_agree(sampling, tmp_path, capsys):
    """DP-SGD's Poisson record sampling: the run's epsilon_record, the calculator's from the
    recorded client sizes, the recompute script's, and dp-accounting's own from (q, steps)."""
    import dp_accounting as dpa

    cfg = compose(*overrides_for("dpsgd", sampling), *POISSON_RECORDS)
    summary = loop_run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["record_sampling"] == "poisson"
    check_agreement(summary, cfg, tmp_path, capsys)
    mean = summary["client_records_mean"]
    q, steps = summary["record_sampling_probability"], summary["record_steps_per_participation"]
    assert 5 < mean and q == 5 / mean and steps == 2 * math.ceil(mean / 5)
    # the recorded mean is taken as it is, not recounted (no last-digit drift)
    code = privacy_cli(cli_flags(cfg, summary))
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and printed["client_records_mean"] == mean
    assert printed["record_sampling_probability"] == q
    accountant = dpa.rdp.RdpAccountant(
        neighboring_relation=dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    step = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(cfg.dp.noise_multiplier))
    accountant.compose(step, steps * summary["max_participations"])
    assert summary["epsilon_record"] == pytest.approx(
        accountant.get_epsilon(cfg.dp.delta), rel=1e-9
    )


REAL = [
    ("gaussian", "poisson"),
    ("adaptive", "fixed"),
    ("tree", "shuffle"),
    ("laplace_local", "poisson"),
    ("gaussian_local", "shuffle"),
    ("dpsgd", "fixed"),
    ("input_noise", "poisson"),
    ("per_layer", "shuffle"),
    ("none", "fixed"),
    ("dpsgd", "records"),
    ("bandmf", "cyclic"),
    ("bandmf", "min_sep_poisson"),
]


@pytest.mark.parametrize("option,sampling", REAL)
def test_real_runs_agree(runtime, option, sampling, tmp_path, capsys):
    from dpfed.build import build_simulation
    from dpfed.io.run_writer import RunWriter

    cfg = compose(*overrides_for(option, sampling), "rounds=2")
    sim = build_simulation(cfg)
    summary = sim.run(
        RunWriter(tmp_path, sim.columns), {"config": OmegaConf.to_container(cfg, resolve=True)}
    )
    assert summary["status"] == "completed"
    check_agreement(summary, cfg, tmp_path, capsys)


def test_an_interruption_after_a_rounds_accounting_still_counts_its_privacy(tmp_path):
    """A signal between a round's release (accounted) and its summary update: the interrupted
    summary must count that round and its epsilon, not report the rounds before it."""
    from dpfed.io.run_writer import RunWriter

    sim, plan = loop_simulation(compose(*overrides_for("gaussian", "poisson")))

    class SignalledWriter(RunWriter):
        def write_round(self, row):
            super().write_round(row)
            if row["round"] == 2:
                raise KeyboardInterrupt  # SIGINT right after round 2's row

    with pytest.raises(KeyboardInterrupt):
        sim.run(SignalledWriter(tmp_path, sim.columns), {})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds"] == 2
    two_rounds = plan.new_ledger()
    for round_num in (1, 2):
        for account in plan.accounts:
            for event in plan.planned_events(account)[round_num - 1 : round_num]:
                two_rounds.accountants[account.column].record(event)
    assert summary["epsilon"] == pytest.approx(two_rounds.describe()["epsilon"], rel=1e-12)
    assert summary["epsilon"] > 0


def test_recompute_refuses_a_folder_without_a_run_before_printing_anything(tmp_path, capsys):
    """A mistyped folder gets one message and exit code 2, not a traceback after the good
    folders' lines."""
    (tmp_path / "empty").mkdir()
    assert recompute.main([str(tmp_path / "empty"), str(tmp_path / "missing")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: no summary.json in ")
    assert "empty" in err and "missing" in err and "Traceback" not in err


def test_recompute_skips_a_sweeps_files_and_runs_that_released_nothing(tmp_path, capsys):
    """A glob over a sweep folder also names its multirun.yaml, and a run that failed before
    its first round has no accounts: both are skipped with a note (a review found the first
    refused and the second a KeyError traceback)."""
    sweep = tmp_path / "sweep"
    (sweep / "0_failed").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "0_failed" / "summary.json").write_text(json.dumps({"status": "failed"}))
    assert recompute.main([str(sweep / "0_failed"), str(sweep / "multirun.yaml")]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "skipping" in err and "multirun.yaml: a file" in err
    assert "no accounts recorded (status failed)" in err
