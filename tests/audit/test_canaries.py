"""Canary clients in runs (``audit=canaries``): what the aggregator adds, what the audit measures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dpfed.build import build_privacy
from dpfed.errors import ConfigError
from tests.conftest import compose_config
from tests.helpers import run_in_process

# Run by `pytest -m slow` (and CI), not by default: the audited mechanisms beyond gaussian.
SLOW_CASES = {
    "test_the_lower_bound_stays_below_the_accountants_epsilon[adaptive]",
    "test_the_lower_bound_stays_below_the_accountants_epsilon[tree]",
    "test_the_lower_bound_stays_below_the_accountants_epsilon[bandmf]",
}

SHAPES = [(3, 2), (4,)]


def _flat(leaves) -> np.ndarray:
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in leaves])


def test_canary_query_adds_the_sampled_canaries_clipped_before_the_noise():
    import tensorflow as tf
    import tensorflow_privacy as tfp

    from dpfed.audit.canaries import CANARY_NORM, CanaryAudit, canary_direction, canary_query
    from dpfed.privacy.queries import SeededGaussianSumQuery

    audit = CanaryAudit(inserted=3, held_out=2, run_seed=7)
    clip = 0.5
    inner = tfp.NormalizedQuery(SeededGaussianSumQuery(clip, 0.0, key=1), denominator=2.0)
    query = canary_query(inner, audit.seeds[:3], SHAPES)
    template = [tf.TensorSpec(s, tf.float32) for s in SHAPES]
    state = query.initial_global_state()
    assert not np.any(state.inserted.numpy()) and state.inserted.shape == (3,)
    state = state._replace(inserted=tf.constant([True, False, True]))
    params = query.derive_sample_params(state)
    record = [tf.fill(s, 10.0) for s in SHAPES]  # a real client's update, clipped to 0.5
    sample = query.accumulate_record(params, query.initial_sample_state(template), record)
    result, new_state, _ = query.get_noised_result(sample, state)

    directions = [_flat(canary_direction(s, SHAPES)) for s in audit.seeds]
    assert all(math.isclose(np.linalg.norm(d), 1.0, rel_tol=1e-6) for d in directions)
    clipped_real = _flat(record) * clip / np.linalg.norm(_flat(record))
    want = (clipped_real + clip * (directions[0] + directions[2])) / 2.0  # canaries at the clip
    np.testing.assert_allclose(_flat(result), want, rtol=1e-5, atol=1e-6)
    assert not np.any(new_state.inserted.numpy())  # the release resets the mask
    assert CANARY_NORM > 100 * clip  # canaries are clipped by the query, not sent at the clip
    # the directions are those of the seeds alone: another audit seed, other directions
    other = CanaryAudit(inserted=3, held_out=2, run_seed=8)
    assert not np.allclose(_flat(canary_direction(other.seeds[0], SHAPES)), directions[0])


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("audit.inserted=1",), r"^audit\.inserted=1 .* >= 2"),
        (("audit.significance=0.5",), r"^audit\.significance=0\.5 .* in \(0, 0\.5\)"),
        (("audit.planted_noise_factor=2",), r"^audit\.planted_noise_factor=2\.0 .* in \[0, 1\]"),
        (
            ("strategy=centralized",),
            r"^audit='canaries' .* canary_gradients with strategy=centralized",
        ),
    ],
)
def test_bad_audit_settings_are_refused_before_training(overrides, match):
    from dpfed.data.base import Population

    cfg = compose_config("audit=canaries", *overrides)
    with pytest.raises(ConfigError, match=match):
        build_privacy(cfg, Population(1000, lambda clients: 5000, 80), dp_seed=0)


def test_canaries_join_the_population_the_accountant_sees():
    from dpfed.data.base import Population

    plain = build_privacy(compose_config("dp.seed=0"), Population(1000))
    audited = build_privacy(
        compose_config("dp.seed=0", "audit=canaries", "audit.inserted=50"), Population(1000)
    )
    assert audited.sampler.population == 1050 and plain.sampler.population == 1000
    assert audited.epsilon() < plain.epsilon()  # q = 50/1050 < 50/1000


@pytest.mark.parametrize(
    "overrides,warned",
    [
        (("strategy.sampling=fixed",), True),  # dp.neighboring unset: replace-one
        (("strategy.sampling=fixed", "dp.neighboring=zero_out"), False),
        (("strategy.sampling=poisson",), False),  # add/remove: accounted as zero-out
    ],
)
def test_a_canary_client_audit_against_a_replace_one_epsilon_is_warned_about(overrides, warned):
    """A canary client's clipped update is in the sum or not (zero-out); a replace-one epsilon
    (sensitivity 2 x clip) is larger, so its check catches less, as for canary records."""
    from dpfed.build import build_audit
    from dpfed.data.base import Population

    cfg = compose_config("dp.seed=0", "audit=canaries", "dp.noise_multiplier=1", *overrides)
    plan = build_privacy(cfg, Population(1000))
    warnings = build_audit(cfg).warnings(plan)
    assert bool(warnings) == warned
    assert (str(plan.account("epsilon").neighboring) == "replace_one") == warned
    if warned:
        assert "a canary client's update present or zero" in warnings[0]
        assert "epsilon is accounted under replace_one" in warnings[0]


def test_local_mechanisms_are_refused(runtime):
    with pytest.raises(ConfigError, match=r"^audit='canaries' .* none with dp=laplace_local"):
        from tests.helpers import build

        build("audit=canaries", "dp=laplace_local")


AUDIT = (
    "audit=canaries",
    "audit.inserted=40",
    "audit.held_out=40",
    "rounds=6",
    "strategy.sampling=shuffle",
    "strategy.clients_per_round=20",
    "strategy.eval_every=3",
    "dp.neighboring=zero_out",
)


@pytest.mark.slow
def test_an_audited_run_reports_its_estimates_beside_epsilon(runtime, tmp_path):
    """The audit's columns, its settings in summary.json, and an epsilon recomputable as before."""
    from scripts.recompute_epsilon import check_run

    sim, summary, rows = run_in_process(tmp_path, *AUDIT, "dp.noise_multiplier=1.0")
    for column in (
        "audit/canaries",
        "audit/epsilon_lower",
        "audit/epsilon_estimate",
        "audit/epsilon_estimate_iterates",
    ):
        assert column in rows.columns and column in summary
    assert list(rows["audit/epsilon_lower"].notna()) == [False, False, True, False, False, True]
    # shuffled epochs of 80 clients (40 real + 40 canaries) in cohorts of 20: every inserted
    # canary takes part once per 4 rounds
    assert rows["audit/canaries"].iloc[:4].sum() == 40
    assert summary["num_clients"] == 80 and summary["audit_inserted"] == 40
    assert rows["clients"].iloc[:4].sum() == 40  # the real clients only
    assert summary["audit_delta"] == summary["delta"]
    assert 0 <= summary["audit/epsilon_lower"] < summary["epsilon"]
    # recomputable from the events, and replanned from the config (with the canaries) as run.py
    # records it
    from omegaconf import OmegaConf

    cfg = compose_config(
        "debug=smoke", "logger.tensorboard=false", *AUDIT, "dp.noise_multiplier=1.0"
    )
    path = tmp_path / "summary.json"
    path.write_text(
        json.dumps(
            {**json.loads(path.read_text()), "config": OmegaConf.to_container(cfg, resolve=True)}
        )
    )
    records = check_run(tmp_path)
    assert records and all(r["match"] for r in records), records


@pytest.mark.parametrize(
    "mechanism",
    [
        ("dp=gaussian", "dp.noise_multiplier=0.5"),
        ("dp=adaptive", "dp.noise_multiplier=1.0"),
        ("dp=tree", "dp.noise_multiplier=1.0"),
        ("dp=bandmf", "dp.noise_multiplier=1.0"),
    ],
    ids=["gaussian", "adaptive", "tree", "bandmf"],
)
def test_the_lower_bound_stays_below_the_accountants_epsilon(runtime, tmp_path, mechanism):
    """On the audit experiment's backend; the reference backend audits the same run (below)."""
    _, summary, rows = run_in_process(tmp_path, *AUDIT, *mechanism, "backend=vectorized")
    bounds = rows["audit/epsilon_lower"].dropna()
    assert len(bounds) == 2 and (bounds >= 0).all()
    assert (bounds <= rows.loc[bounds.index, "epsilon"]).all()
    assert summary["audit/epsilon_lower"] < summary["epsilon"]


@pytest.mark.slow
def test_the_audit_finds_a_planted_noise_bug(runtime, tmp_path):
    """The noise cut to a tenth while the accountant is told the original: the lower bound
    exceeds the claimed epsilon (and the same run with the noise it claims stays below)."""
    vectorized = ("dp.noise_multiplier=1.0", "backend=vectorized")  # as the audit experiment
    _, honest, _ = run_in_process(tmp_path / "honest", *AUDIT, *vectorized)
    _, planted, _ = run_in_process(
        tmp_path / "planted", *AUDIT, *vectorized, "audit.planted_noise_factor=0.1"
    )
    assert planted["epsilon"] == honest["epsilon"]  # the accountant is told the same noise
    assert planted["audit_planted_noise_factor"] == 0.1
    assert honest["audit/epsilon_lower"] < honest["epsilon"] < planted["audit/epsilon_lower"]
    assert planted["audit/epsilon_estimate"] > planted["epsilon"]


@pytest.mark.slow
def test_the_vectorized_backend_audits_the_same_run(runtime, tmp_path):
    """Canaries enter the same DP query when users train in lockstep (UserLevelQuery)."""
    _, reference, _ = run_in_process(
        tmp_path / "reference", *AUDIT, "dp.noise_multiplier=1.0", "backend=reference"
    )
    _, vectorized, _ = run_in_process(
        tmp_path / "vectorized", *AUDIT, "dp.noise_multiplier=1.0", "backend=vectorized"
    )
    assert (reference["backend"], vectorized["backend"]) == ("reference", "vectorized")
    for key in ("audit/epsilon_lower", "audit/epsilon_estimate", "audit/epsilon_estimate_iterates"):
        assert vectorized[key] == pytest.approx(reference[key], rel=1e-3, abs=1e-6)


def test_clopper_pearson_bound_is_below_jeffreys_and_a_still_model_proves_nothing():
    from dpfed.audit.canaries import CanaryAudit
    from dpfed.audit.estimators import threshold_epsilon_lower_bound

    scores = np.linspace(0.02, 0.06, 40)
    args = (scores, None, 1e-5, 0.05 / 40)
    exact = threshold_epsilon_lower_bound(*args, dim=20_000, interval="clopper_pearson")
    jeffreys = threshold_epsilon_lower_bound(*args, dim=20_000, interval="jeffreys")
    assert 0 < exact < jeffreys
    audit = CanaryAudit(inserted=3, held_out=2)
    audit.initial = np.ones(10)
    assert all(math.isnan(v) for v in audit.estimates(np.ones(10)).values())


def test_the_last_line_of_an_audited_run_names_the_bound():
    from dpfed.io.provenance import result_line

    summary = {
        "epsilon": 2.03,
        "delta": 1e-5,
        "unit": "user",
        "neighboring": "add_remove",
        "accountant": "rdp",
        "rounds": 10,
        "status": "completed",
        "audit/epsilon_lower": 0.1777,
        "audit_significance": 0.05,
    }
    line = result_line(summary, "out")
    assert (
        "epsilon 2.03 at delta 1e-05" in line and "audit: epsilon >= 0.178 (95% confidence)" in line
    )
    del summary["audit/epsilon_lower"]
    assert "audit" not in result_line(summary, "out")
