"""``python -m dpfed.privacy``: published epsilons, round trips, every mechanism, refused settings.

That the calculator prints what a run reports is tested against real runs in
`tests.test_agreement`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import dp_accounting
import pytest

from dpfed.privacy.__main__ import main, parse_orders
from dpfed.privacy.mechanisms import SCHEMAS
from tests.helpers import independent_epsilon

# Run by `pytest -m slow` (and CI), not by default: the fixed-size round trip (fixed-size
# calibration runs by default in test_plan).
SLOW_CASES = {
    "test_noise_then_epsilon_round_trip[fixed-rdp]",
}

TUTORIAL_ORDERS = "1.1:10.9:0.1,12:63"
COHORT = ("--population", "1000", "--sample-size", "50", "--steps", "20")


def cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out else None), captured.err


def test_orders_accept_ranges_and_lists():
    assert parse_orders("1.1:1.4:0.1,2,12:14") == pytest.approx([1.1, 1.2, 1.3, 1.4, 2, 12, 13, 14])
    assert len(parse_orders(TUTORIAL_ORDERS)) == 99 + 52


def test_tf_privacy_tutorial_epsilon_with_the_dp_sgd_helper(capsys):
    code, out, _ = cli(
        capsys,
        "epsilon",
        "--dataset-size",
        "60000",
        "--batch-size",
        "256",
        "--epochs",
        "60",
        "--noise-multiplier",
        "1.1",
        "--conversion",
        "classic",
        "--orders",
        TUTORIAL_ORDERS,
    )
    assert code == 0 and round(out["epsilon"], 2) == 3.01
    assert out["unit"] == "record" and out["neighboring"] == "add_remove"
    assert out["sampling_probability"] == pytest.approx(256 / 60000)


def test_andrew_et_al_table_1_row(capsys):
    code, out, _ = cli(
        capsys,
        "epsilon",
        "--sampling",
        "fixed",
        "--population",
        "1000000",
        "--sample-size",
        "510",
        "--noise-multiplier",
        "0.510",
        "--steps",
        "1200",
        "--delta",
        "2.5119e-7",
        "--neighboring",
        "zero_out",
    )
    assert code == 0 and round(out["epsilon"], 2) == 4.98
    assert out["neighboring"] == "zero_out" and out["accounting_relation"] == "replace_one"


def test_dp_ftrl_stackoverflow_row(capsys):
    code, out, _ = cli(
        capsys,
        "epsilon",
        "--mechanism",
        "tree",
        "--population",
        "342477",
        "--sample-size",
        "100",
        "--steps",
        "1600",
        "--noise-multiplier",
        "1.13",
        "--delta",
        "1e-6",
        "--neighboring",
        "zero_out",
        "--conversion",
        "classic",
    )
    assert code == 0 and round(out["epsilon"], 2) == 19.74


@pytest.mark.parametrize(
    "sampling,accountant",
    [("poisson", "rdp"), ("fixed", "rdp"), ("shuffle", "rdp"), ("shuffle", "pld")],
)
def test_noise_then_epsilon_round_trip(capsys, sampling, accountant):
    common = ["--sampling", sampling, *COHORT, "--accountant", accountant]
    code, noise, _ = cli(capsys, "noise", "--epsilon", "3", *common)
    assert code == 0 and 3 * 0.99 <= noise["epsilon_reached"] <= 3
    code, eps, _ = cli(
        capsys, "epsilon", "--noise-multiplier", str(noise["noise_multiplier"]), *common
    )
    assert eps["epsilon"] == pytest.approx(noise["epsilon_reached"], rel=1e-9)


def test_laplace_local_uses_the_runs_convention_and_credits_no_sampling(capsys):
    """The first calculator printed 1/z per step (runs: 2/z) and credited Poisson amplification."""
    for sampling in ("poisson", "fixed"):
        code, out, _ = cli(
            capsys,
            "epsilon",
            "--mechanism",
            "laplace_local",
            "--sampling",
            sampling,
            *COHORT,
            "--noise-multiplier",
            "10",
        )
        assert code == 0 and out["epsilon"] == pytest.approx(20 * 2 / 10)
    code, out, _ = cli(
        capsys,
        "epsilon",
        "--mechanism",
        "laplace_local",
        *COHORT,
        "--noise-multiplier",
        "10",
        "--participations",
        "3",
    )
    assert out["epsilon"] == pytest.approx(3 * 2 / 10)


def test_dpsgd_in_clients_prints_both_epsilons(capsys):
    code, out, _ = cli(
        capsys,
        "epsilon",
        "--mechanism",
        "dpsgd",
        *COHORT,
        "--noise-multiplier",
        "1",
        "--local-epochs",
        "2",
        "--participations",
        "10",
    )
    assert code == 0 and math.isinf(out["epsilon"])
    expected = independent_epsilon([(dp_accounting.GaussianDpEvent(0.5), 20)])
    assert out["epsilon_record"] == pytest.approx(expected, rel=1e-9)
    # each epsilon with its own relation: the top level is the users' (Poisson cohorts:
    # add/remove), the records' is replace-one (shuffled batches), hence the 0.5 above
    users, records = out["accounts"]
    assert out["neighboring"] == users["neighboring"] == "add_remove"
    assert (records["column"], records["unit"], records["neighboring"]) == (
        "epsilon_record",
        "record",
        "replace_one",
    )
    assert records["sensitivity"] == 2 and records["epsilon"] == out["epsilon_record"]
    assert math.isinf(users["epsilon"])


def test_dpsgd_with_poisson_record_batches_names_their_zero_out_relation(capsys):
    """Poisson record batches are accounted under zero-out only; with --neighboring unset the
    users' account is replace-one (shuffled cohorts). A review found the users' relation printed
    as the only one, beside the records' epsilon."""
    code, out, err = cli(
        capsys,
        "epsilon",
        "--mechanism",
        "dpsgd",
        "--record-sampling",
        "poisson",
        "--client-records",
        "760.6",
        "--client-batch-size",
        "64",
        "--sampling",
        "shuffle",
        "--population",
        "10",
        "--sample-size",
        "3",
        "--steps",
        "20",
        "--local-epochs",
        "2",
    )
    assert code == 0, err
    users, records = out["accounts"]
    assert out["neighboring"] == users["neighboring"] == "replace_one"
    assert records["neighboring"] == "zero_out" and records["accounting_relation"] == (
        "add_or_remove_one"
    )
    # 20 rounds of 3 of 10 clients, shuffled: at most 7 participations (6 full epochs, then a
    # 7th started), each 2 local epochs of ceil(760.6 / 64) = 12 Poisson steps at q = 64 / 760.6
    step = dp_accounting.PoissonSampledDpEvent(64 / 760.6, dp_accounting.GaussianDpEvent(1.0))
    expected = independent_epsilon([(step, 7 * 2 * 12)])
    assert out["epsilon_record"] == records["epsilon"] == pytest.approx(expected, rel=1e-9)


def test_dpsgd_noise_prints_each_multiplier_under_the_flag_that_sets_it(capsys):
    """With user-level noise on, noise calibrates --user-noise-multiplier: the printed values,
    passed back under their own flags, reach the target (--noise-multiplier is example-level)."""
    args = (
        "--mechanism",
        "dpsgd",
        *COHORT,
        "--neighboring",
        "zero_out",
        "--noise-multiplier",
        "2",
        "--user-noise-multiplier",
        "1",
    )
    code, out, err = cli(capsys, "noise", "--epsilon", "1", *args)
    assert code == 0, err
    assert out["noise_multiplier"] == 2 and out["user_noise_multiplier"] != 1
    again = (
        "--noise-multiplier",
        repr(out["noise_multiplier"]),
        "--user-noise-multiplier",
        repr(out["user_noise_multiplier"]),
    )
    code, back, err = cli(capsys, "epsilon", *args[:-4], *again)
    assert code == 0, err
    assert back["epsilon"] == out["epsilon_reached"] and 0.99 < back["epsilon"] <= 1


def test_adaptive_noise_calibrates_below_its_count_noise_limit_or_says_why_not(capsys):
    """The noise must stay below twice the clipped-count noise (2.5 by default here): a target
    reachable below that limit is reached; one that is not names the limit, not a trial value."""
    args = (
        "--mechanism",
        "adaptive",
        "--population",
        "1000",
        "--sample-size",
        "50",
        "--steps",
        "100",
    )
    code, out, err = cli(capsys, "noise", "--epsilon", "0.41", *args)
    assert code == 0, err
    assert 4 < out["noise_multiplier"] < 5 and 0.405 < out["epsilon_reached"] <= 0.41
    # so close to the limit the count takes most of the budget: the sum's own noise says so
    assert out["sum_noise_multiplier"] > 4 * out["noise_multiplier"]
    assert len(out["warnings"]) == 1 and "dp.clipped_count_stddev" in out["warnings"][0]
    code, out, err = cli(capsys, "noise", "--epsilon", "0.2", *args)
    assert code == 2 and out is None
    assert err.startswith("error: --epsilon=0.2 is not allowed") and "must stay below 5" in err


def noise_flags(mechanism: str) -> list[str]:
    """Flags that give ``mechanism`` noise an accountant can compose (none for ``none``)."""
    args = ["--clipped-count-stddev", "5"] if mechanism == "adaptive" else []
    return args + ([] if mechanism == "none" else ["--noise-multiplier", "2"])


@pytest.mark.parametrize("mechanism", sorted(SCHEMAS))
def test_every_mechanism_a_run_accepts_is_available(capsys, mechanism):
    args = noise_flags(mechanism)
    code, out, err = cli(capsys, "epsilon", "--mechanism", mechanism, *COHORT, *args)
    assert code == 0, err
    assert out["mechanism"] == mechanism and out["neighboring"] in ("replace_one", "add_remove")
    assert out["epsilon"] > 0


@pytest.mark.parametrize(
    "args,flag",
    [
        (["epsilon", *COHORT, "--noise-multiplier", "1", "--delta", "1"], "--delta"),
        (
            [
                "epsilon",
                "--population",
                "100",
                "--sample-size",
                "101",
                "--steps",
                "5",
                "--noise-multiplier",
                "1",
            ],
            "--sample-size",
        ),
        (
            [
                "epsilon",
                "--population",
                "100",
                "--sample-size",
                "10",
                "--steps",
                "0",
                "--noise-multiplier",
                "1",
            ],
            "--steps",
        ),
        (["epsilon", *COHORT, "--noise-multiplier", "-1"], "--noise-multiplier"),
        (
            [
                "epsilon",
                "--sampling",
                "fixed",
                *COHORT,
                "--noise-multiplier",
                "1",
                "--accountant",
                "pld",
            ],
            "--accountant",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "tree",
                *COHORT,
                "--noise-multiplier",
                "1",
                "--accountant",
                "pure",
            ],
            "--accountant",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "tree",
                "--sampling",
                "poisson",
                *COHORT,
                "--noise-multiplier",
                "1",
            ],
            "--sampling",
        ),
        (
            [
                "epsilon",
                "--sampling",
                "poisson",
                "--neighboring",
                "replace_one",
                *COHORT,
                "--noise-multiplier",
                "1",
            ],
            "--neighboring",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "dpsgd",
                "--neighboring",
                "add_remove",
                *COHORT,
                "--noise-multiplier",
                "1",
            ],
            "--neighboring",
        ),
        (["noise", *COHORT[:4], "--steps", "1000", "--epsilon", "1e-9"], "--epsilon"),
        (["noise", *COHORT], "--epsilon"),
        (["epsilon", "--noise-multiplier", "1"], "--population"),
        (["epsilon", "--dataset-size", "100", "--noise-multiplier", "1"], "--dataset-size"),
        (
            ["epsilon", "--mechanism", "none", *COHORT, "--noise-multiplier", "1"],
            "--noise-multiplier",
        ),
        (
            [
                "epsilon",
                *COHORT,
                "--noise-multiplier",
                "1",
                "--accountant",
                "pld",
                "--conversion",
                "classic",
            ],
            "--conversion",
        ),
        (
            [
                "epsilon",
                *COHORT,
                "--noise-multiplier",
                "1",
                "--accountant",
                "pld",
                "--orders",
                "2:8",
            ],
            "--orders",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "dpsgd",
                *COHORT,
                "--noise-multiplier",
                "2",
                "--neighboring",
                "zero_out",
                "--local-epochs",
                "0",
            ],
            "--local-epochs",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "dpsgd",
                *COHORT,
                "--noise-multiplier",
                "2",
                "--neighboring",
                "zero_out",
                "--local-epochs",
                "-1",
                "--record-sampling",
                "poisson",
                "--client-records",
                "100",
                "--client-batch-size",
                "10",
            ],
            "--local-epochs",
        ),
        # participations no cyclic spacing gives (1 client: 10, 2 clients: 5), none, or where
        # no account takes them (the sampling fixes them): refused, not silently changed or
        # ignored (a review found 6 turned into 5, and ignored with --population)
        (
            [
                "epsilon",
                "--mechanism",
                "bandmf",
                "--steps",
                "10",
                "--participations",
                "6",
                "--noise-multiplier",
                "3",
                "--neighboring",
                "zero_out",
            ],
            "--participations",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "laplace_local",
                *COHORT,
                "--noise-multiplier",
                "10",
                "--participations",
                "0",
            ],
            "--participations",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "bandmf",
                *COHORT,
                "--participations",
                "6",
                "--noise-multiplier",
                "3",
                "--neighboring",
                "zero_out",
            ],
            "--participations",
        ),
        (
            ["epsilon", *COHORT, "--noise-multiplier", "1", "--participations", "3"],
            "--participations",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "bandmf",
                "--sampling",
                "min_sep_poisson",
                "--sampling-groups",
                "2",
                "--steps",
                "10",
                "--participations",
                "5",
                "--noise-multiplier",
                "3",
                "--neighboring",
                "zero_out",
            ],
            "--participations",
        ),
        # a PLD of so little noise would take petabytes: refused, not a MemoryError traceback
        (["epsilon", *COHORT, "--noise-multiplier", "1e-6", "--accountant", "pld"], "--accountant"),
        # ... or tens of GB, which swapped for over 10 minutes before (z = 0.01; at 0.05 it
        # takes 43 s and 1.9 GB): refused from the size it would span
        (
            [
                "epsilon",
                "--population",
                "100",
                "--sample-size",
                "10",
                "--steps",
                "10",
                "--noise-multiplier",
                "0.02",
                "--accountant",
                "pld",
            ],
            "--accountant",
        ),
        # ... or larger than numpy can index, which it reports as a ValueError (a review found
        # that traceback), Gaussian and Laplace alike
        (
            [
                "epsilon",
                "--population",
                "100",
                "--sample-size",
                "10",
                "--steps",
                "10",
                "--noise-multiplier",
                "1e-9",
                "--accountant",
                "pld",
            ],
            "--accountant",
        ),
        (
            [
                "epsilon",
                "--mechanism",
                "laplace_local",
                "--population",
                "10",
                "--sample-size",
                "10",
                "--steps",
                "3",
                "--noise-multiplier",
                "1e-300",
                "--accountant",
                "pld",
            ],
            "--accountant",
        ),
    ],
)
def test_impossible_settings_are_rejected_with_the_flag_named(capsys, args, flag):
    code, out, err = cli(capsys, *args)
    assert code == 2 and out is None
    assert err.startswith(f"error: {flag}=") and "must be" in err


def test_a_coarser_pld_discretization_accounts_what_the_fine_one_refuses(capsys):
    """The refusal names its way out: at a 100 x coarser discretization the same releases
    span about 100 x fewer points, and PLD's epsilon stays at or below RDP's."""
    args = (
        "epsilon",
        "--population",
        "100",
        "--sample-size",
        "10",
        "--steps",
        "10",
        "--noise-multiplier",
        "0.02",
    )
    code, _, err = cli(capsys, *args, "--accountant", "pld")
    assert code == 2 and "3.3e+07 points (one release" in err and "pld_discretization" in err
    code, coarse, err = cli(capsys, *args, "--accountant", "pld", "--pld-discretization", "0.01")
    assert code == 0, err
    code, rdp, _ = cli(capsys, *args)
    assert 0 < coarse["epsilon"] <= rdp["epsilon"] < math.inf


def test_module_entry_point_prints_one_json_object_and_shows_defaults_in_help():
    done = subprocess.run(
        [sys.executable, "-m", "dpfed.privacy", "epsilon", *COHORT, "--noise-multiplier", "1.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["epsilon"] > 0 and out["accountant"] == "rdp" and out["delta"] == 1e-5
    helped = subprocess.run(
        [sys.executable, "-m", "dpfed.privacy", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "(default: 1e-05)" in helped.stdout and "1.1:10.9:0.1,12:63" in helped.stdout
    assert "(default: None)" not in helped.stdout  # a default is shown once, in words


def test_every_flag_in_the_flag_tables_is_an_option():
    """The tables the overrides and error messages come from name options the parser has."""
    from dpfed.privacy.__main__ import FLAGS, flag_value, parse_args

    parsed = parse_args(["epsilon"])
    for key, flag in FLAGS.items():
        flag_value(parsed, flag)  # AttributeError: a flag the parser does not define
        assert flag.startswith("--"), key


def perturbed(value, annotation) -> list:
    """Other values a schema field can take, to see whether it moves an epsilon."""
    import enum
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    kind = args[0]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [member.value for member in kind if member.value != value]
    if kind is bool:
        return [not value]
    if kind in (int, float):
        if value is None:
            return [kind(2), kind(5)]
        return [kind(value * 2 + 1), value / 2 if kind is float else value + 1]
    raise AssertionError(f"no perturbation for a field of type {annotation!r}: add one")


@pytest.mark.parametrize("mechanism", sorted(SCHEMAS))
def test_a_setting_the_calculator_has_no_flag_for_changes_no_epsilon(mechanism):
    """Every dp schema field and strategy setting without a flag is perturbed: the plan's
    epsilons stay the same, so the calculator cannot miss a setting that moves them (a new
    mechanism's accounting setting needs a row in DP_FLAGS), at each mechanism's own sampling
    and accountant. Left out: max_epsilon, which stops a run early (its rounds are the
    calculator's --steps) and _target_. Checked to fail with --user-noise-multiplier or
    --local-epochs taken out of the tables."""
    import copy
    import typing

    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError

    from dpfed.build import build_privacy
    from dpfed.config import compose
    from dpfed.errors import ConfigError
    from dpfed.privacy.__main__ import DP_FLAGS, RUN_FLAGS, overrides, parse_args

    args = noise_flags(mechanism)
    # 60 rounds: three epochs of the cohorts, so that every client takes part more than once
    cohort = ("--population", "1000", "--sample-size", "50", "--steps", "60")
    base, population = overrides(parse_args(["epsilon", "--mechanism", mechanism, *cohort, *args]))
    cfg = compose(*base)
    reference = build_privacy(cfg, population).epsilons()
    assert reference and all(v > 0 for v in reference.values()), reference

    hints = typing.get_type_hints(SCHEMAS[mechanism])
    settings = [
        (f"dp.{name}", cfg.dp.get(name), hint)
        for name, hint in hints.items()
        if name not in DP_FLAGS
        and name not in ("_target_", "max_epsilon")
        and not name.startswith("_")
    ]
    settings += [
        (f"strategy.{name}", value, type(value))
        for name, value in OmegaConf.to_container(cfg.strategy).items()
        if f"strategy.{name}" not in RUN_FLAGS
        and isinstance(value, (bool, int, float))
        and name != "clients_per_round"
    ]
    settings += [
        (f"strategy.{name}.learning_rate", cfg.strategy[name].learning_rate, float)
        for name in ("client_optimizer", "server_optimizer")
    ]
    assert len(settings) >= 5, settings
    for key, value, hint in settings:
        accepted = 0
        for other in perturbed(value, hint):
            varied = copy.deepcopy(cfg)
            try:
                OmegaConf.update(varied, key, other)  # the schema's type checks, as in compose
                changed = build_privacy(varied, population).epsilons()
            except (ConfigError, ValidationError):
                continue  # a value a run refuses: it cannot be a run's setting
            accepted += 1
            assert changed == reference, (
                f"{key}={other} changes the epsilon of --mechanism {mechanism}, and "
                f"python -m dpfed.privacy has no flag for it: {changed} against {reference}"
            )
        assert accepted, f"no perturbed value of {key} was accepted: {perturbed(value, hint)}"
