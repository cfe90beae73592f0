"""``python -m dpfed.privacy``: published epsilons, round trips, and rejected settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dpfed.privacy.__main__ import main

TUTORIAL_ORDERS = ",".join(
    [str(1 + x / 10.0) for x in range(1, 100)] + [str(o) for o in range(12, 64)]
)


def cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if captured.out else None), captured.err


def test_tf_privacy_tutorial_epsilon_with_classic_conversion(capsys):
    code, out, _ = cli(capsys, "epsilon", "--sampling", "poisson", "--q", str(256 / 60000),
                       "--noise-multiplier", "1.1", "--steps", str(60 * 60000 // 256),
                       "--conversion", "classic", "--orders", TUTORIAL_ORDERS)  # fmt: skip
    assert code == 0 and round(out["epsilon"], 2) == 3.01
    assert out["q"] == pytest.approx(256 / 60000) and out["conversion"] == "classic"
    assert out["orders"][0] == pytest.approx(1.1) and out["steps"] == 14062


@pytest.mark.parametrize(
    "sampling,accountant",  # fixed with pld does not exist; its rejection is tested below
    [("poisson", "rdp"), ("poisson", "pld"), ("fixed", "rdp"), ("none", "rdp"), ("none", "pld")],
)
def test_noise_then_epsilon_round_trip(capsys, sampling, accountant):
    common = ["--sampling", sampling, "--population", "1000", "--sample-size", "20",
              "--steps", "50", "--accountant", accountant]  # fmt: skip
    code, noise, _ = cli(capsys, "noise", "--epsilon", "3", *common)
    assert code == 0 and 3 * 0.98 <= noise["epsilon_reached"] <= 3
    code, eps, _ = cli(
        capsys, "epsilon", "--noise-multiplier", str(noise["noise_multiplier"]), *common
    )
    assert eps["epsilon"] == pytest.approx(noise["epsilon_reached"], rel=1e-9)


def test_laplace_without_sampling_is_pure_epsilon_per_step(capsys):
    code, out, _ = cli(capsys, "epsilon", "--mechanism", "laplace", "--sampling", "none",
                       "--noise-multiplier", "4", "--steps", "8", "--accountant", "pld")  # fmt: skip
    assert code == 0 and out["epsilon"] == pytest.approx(8 / 4, rel=0.01)


@pytest.mark.parametrize(
    "args,flag",
    [
        (["epsilon", "--q", "0.1", "--noise-multiplier", "1", "--steps", "5", "--delta", "1"], "--delta"),
        (["epsilon", "--q", "1.5", "--noise-multiplier", "1", "--steps", "5"], "--q"),
        (["epsilon", "--q", "0", "--noise-multiplier", "1", "--steps", "5"], "--q"),
        (["epsilon", "--q", "0.1", "--noise-multiplier", "1", "--steps", "0"], "--steps"),
        (["epsilon", "--sampling", "fixed", "--population", "100", "--sample-size", "10",
          "--noise-multiplier", "1", "--steps", "5", "--accountant", "pld"], "--accountant"),
        (["epsilon", "--mechanism", "laplace", "--q", "0.1", "--noise-multiplier", "1",
          "--steps", "5"], "--accountant"),
        (["noise", "--q", "0.5", "--steps", "1000", "--epsilon", "1e-9"], "--epsilon"),
    ],
)  # fmt: skip
def test_impossible_settings_are_rejected_with_the_flag_named(capsys, args, flag):
    code, out, err = cli(capsys, *args)
    assert code == 2 and out is None
    assert err.startswith(f"error: {flag}=") and "must be" in err


def test_module_entry_point_prints_one_json_object():
    done = subprocess.run(
        [sys.executable, "-m", "dpfed.privacy", "epsilon", "--q", "0.01",
         "--noise-multiplier", "1.0", "--steps", "100"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["epsilon"] > 0 and out["accountant"] == "rdp" and out["delta"] == 1e-5


def test_tree_epsilon_is_tree_aggregation_rdp_per_restarted_epoch(capsys):
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    code, out, _ = cli(capsys, "epsilon", "--mechanism", "tree", "--sampling", "none",
                       "--population", "60000", "--sample-size", "256", "--noise-multiplier", "4",
                       "--steps", "2340")  # fmt: skip
    reference = RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL
    )
    reference.compose(dp_accounting.SingleEpochTreeAggregationDpEvent(4.0, 234), 10)  # 10 epochs
    assert code == 0 and out["epsilon"] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-9)


def test_tree_with_poisson_sampling_is_rejected(capsys):
    code, _, err = cli(capsys, "epsilon", "--mechanism", "tree", "--sampling", "poisson", "--q", "0.1",
                       "--noise-multiplier", "4", "--steps", "10")  # fmt: skip
    assert code == 2 and err.startswith("error: --sampling=")
