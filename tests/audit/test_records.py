"""Canary records in DP-SGD on pooled records (``audit=canary_gradients``): one-run auditing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpfed.build import build_privacy
from dpfed.errors import ConfigError
from tests.conftest import compose_config
from tests.helpers import build, run_in_process

# DP-SGD inside 20 of 40 smoke-sized clients per round (about 12 records, 2 batches each), 4
# rounds: almost every client, and so almost every canary record, takes part 1 to 4 times.
IN_CLIENTS = (
    "dp=dpsgd",
    "backend=vectorized",
    "audit=canary_gradients",
    "audit.canaries=1000",
    "strategy.clients_per_round=20",
    "strategy.sampling=fixed",
    "rounds=4",
    "strategy.eval_every=2",
    "dp.neighboring=zero_out",
)
# DP-SGD on the pooled records of 40 smoke-sized clients (about 480 records), 4 epochs of
# Poisson batches of 32 (about 60 steps): each included canary is drawn about 4 times.
AUDIT = (
    "strategy=centralized",
    "strategy.clients_per_round=null",
    "dp=dpsgd",
    "audit=canary_gradients",
    "audit.canaries=1000",
    "rounds=4",
    "strategy.batch_size=32",
    "strategy.eval_every=2",
)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (("audit.canaries=1",), r"^audit\.canaries=1 .* >= 2"),
        (("audit.significance=0.5",), r"^audit\.significance=0\.5 .* in \(0, 0\.5\)"),
        (("audit.planted_noise_factor=-1",), r"^audit\.planted_noise_factor=-1\.0 .* in \[0, 1\]"),
    ],
)
def test_bad_audit_settings_are_refused_before_training(overrides, match):
    from dpfed.data.base import Population

    cfg = compose_config(*AUDIT, *overrides)
    with pytest.raises(ConfigError, match=match):
        build_privacy(cfg, Population(1000, lambda clients: 5000, 80), dp_seed=0)


def test_canary_records_in_clients_are_refused_with_poisson_record_batches():
    """Canaries sit in one batch per local epoch, which Poisson batches do not have; canary
    clients (user-level, crafted updates, no records) still audit such a run."""
    from dpfed.data.base import Population

    population = Population(40, lambda clients: 12 * len(clients), 80)
    cfg = compose_config(*IN_CLIENTS, "dp.record_sampling=poisson")
    with pytest.raises(
        ConfigError, match=r"^audit='canary_gradients' .* dp\.record_sampling=poisson"
    ):
        build_privacy(cfg, population, dp_seed=0)
    clients = compose_config(
        "dp=dpsgd",
        "dp.record_sampling=poisson",
        "dp.neighboring=zero_out",
        "dp.user_noise_multiplier=1",
        "audit=canaries",
    )
    plan = build_privacy(clients, population, dp_seed=0)
    assert plan.describe()["client_records_mean"] == 12  # canary clients hold no records
    pooled = compose_config(*AUDIT, "dp.record_sampling=poisson")  # always Poisson batches there
    assert build_privacy(pooled, Population(1000, lambda c: 5000, 80), dp_seed=0).label == "dpsgd"


def test_canary_records_leave_the_accountant_and_population_alone():
    """Canaries are records the accountant's Poisson rate q already covers: same plan."""
    from dpfed.data.base import Population

    population = Population(1000, lambda clients: 5000, 80)
    overrides = ("strategy=centralized", "dp=dpsgd", "dp.seed=0")
    plain = build_privacy(compose_config(*overrides), population)
    audited = build_privacy(compose_config(*overrides, "audit=canary_gradients"), population)
    assert audited.epsilon() == plain.epsilon()
    assert audited.sampler.q == plain.sampler.q


def test_more_canaries_than_model_weights_and_non_dpsgd_mechanisms_are_refused(runtime):
    with pytest.raises(ConfigError, match=r"^audit\.canaries=100000000 .* <= \d+, the model's"):
        build(*AUDIT, "audit.canaries=100000000")
    with pytest.raises(ConfigError, match=r"^audit='canary_gradients' .* none with dp=none"):
        build(*AUDIT, "dp=none")
    # in clients: user-level mechanisms have no records to audit; TFF's client work is refused
    with pytest.raises(ConfigError, match=r"^audit='canary_gradients' .* none with dp=gaussian"):
        build(*IN_CLIENTS, "dp=gaussian")
    with pytest.raises(ConfigError, match=r"^backend='reference' .* vectorized for canary rec"):
        build(*IN_CLIENTS, "backend=reference")


def test_canary_draws_are_a_function_of_their_position_and_only_the_included_are_drawn():
    from types import SimpleNamespace

    from dpfed.audit.records import GradientCanaryAudit
    from dpfed.privacy.mechanisms.base import ExampleDP, MechanismParts

    class Model:
        def keras_model(self):
            return SimpleNamespace(trainable_weights=[np.zeros((30, 20)), np.zeros(400)])

    plan = SimpleNamespace(sampler=SimpleNamespace(q=0.25, unit="record"), label="dpsgd")

    def wrapped(seed):
        audit = GradientCanaryAudit(canaries=500, run_seed=seed)
        parts = audit.wrap(MechanismParts(example_dp=ExampleDP(0.7, 1.0)), plan, Model())
        assert parts.example_dp.probe is audit and parts.example_dp.clip == 0.7
        return audit

    audit, again, other = wrapped(3), wrapped(3), wrapped(4)
    assert 200 < audit.included.sum() < 300  # each canary included with probability 1/2
    assert len(set(audit.coordinates)) == 500 and audit.coordinates.max() < 1000
    draws = np.stack([audit.step_gradient(1, step) for step in range(40)])
    np.testing.assert_array_equal(draws, np.stack([again.step_gradient(1, s) for s in range(40)]))
    assert not np.array_equal(draws, np.stack([other.step_gradient(1, s) for s in range(40)]))
    assert set(np.unique(draws)) == {0.0, np.float32(0.7)}  # a canary's gradient is the clip
    drawn = draws[:, audit.coordinates] > 0
    assert not drawn[:, ~audit.included].any()  # excluded canaries are never in a batch
    rate = drawn[:, audit.included].mean()
    assert abs(rate - 0.25) < 0.03, rate  # included ones in each Poisson batch with q
    assert not np.any(np.delete(draws, audit.coordinates, axis=1))  # nothing off the canaries


@pytest.mark.slow
def test_without_noise_the_iterates_statistic_is_exactly_the_canaries_gradients(runtime, tmp_path):
    """Noise 0: every step's residual (noised sum minus the real clipped sum) is the canaries'
    gradients alone, so an included canary scores clip x (times drawn) and an excluded one 0."""
    sim, summary, rows = run_in_process(tmp_path, *AUDIT, "dp.noise_multiplier=0")
    audit = sim.audit
    clip = summary["example_clip"]
    drawn = audit._residual / clip
    np.testing.assert_allclose(drawn, np.round(drawn), atol=1e-5)
    assert (drawn[~audit.included] == 0).all()
    assert (
        drawn[audit.included].mean() > 1 and rows["audit/canaries"].sum() == np.round(drawn).sum()
    )
    assert summary["epsilon"] == math.inf  # noise 0 claims nothing; the bound is finite
    assert summary["audit/epsilon_lower_iterates"] > 0


def test_the_bound_stays_below_epsilon_and_finds_a_planted_noise_bug(runtime, tmp_path):
    """The honest run's bounds are below the accountant's epsilon; with a tenth of the noise
    (the accountant told the original) both bounds exceed the claimed epsilon."""
    from scripts.recompute_epsilon import check_run

    _, honest, rows = run_in_process(tmp_path / "honest", *AUDIT, "dp.noise_multiplier=2.0")
    _, planted, _ = run_in_process(
        tmp_path / "planted", *AUDIT, "dp.noise_multiplier=2.0", "audit.planted_noise_factor=0.1"
    )
    for column in ("audit/canaries", "audit/epsilon_lower", "audit/epsilon_lower_iterates"):
        assert column in rows.columns and column in honest
    assert list(rows["audit/epsilon_lower"].notna()) == [False, True] * 2
    assert planted["epsilon"] == honest["epsilon"]
    for key in ("audit/epsilon_lower", "audit/epsilon_lower_iterates"):
        assert 0 <= honest[key] < honest["epsilon"], (key, honest[key], honest["epsilon"])
    assert planted["audit/epsilon_lower_iterates"] > planted["epsilon"], planted
    assert planted["audit/epsilon_lower"] > planted["epsilon"], planted
    assert honest["audit_neighboring"].startswith("zero_out")
    assert honest["num_clients"] == 40  # canaries are records, not clients
    records = check_run(tmp_path / "honest")  # the epsilon is recomputable as before
    assert records and all(r["match"] for r in records), records


def test_the_audit_statistic_survives_a_checkpoint():
    from dpfed.audit.records import GradientCanaryAudit

    audit = GradientCanaryAudit(canaries=5)
    audit.initial = np.arange(10.0)
    audit._residual = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    restored = GradientCanaryAudit(canaries=5)
    restored.initial = np.arange(10.0)
    restored.load_state_dict(audit.state_dict())
    np.testing.assert_array_equal(restored._residual, audit._residual)
    moved = GradientCanaryAudit(canaries=5)
    moved.initial = np.ones(10)
    with pytest.raises(RuntimeError, match="initial model differs"):
        moved.load_state_dict(audit.state_dict())


def test_the_last_line_names_the_larger_of_the_two_bounds():
    from dpfed.io.provenance import result_line

    summary = {
        "epsilon": 2.5,
        "delta": 1e-5,
        "unit": "record",
        "neighboring": "add_remove",
        "accountant": "rdp",
        "rounds": 20,
        "status": "completed",
        "audit/epsilon_lower": 0.17,
        "audit/epsilon_lower_iterates": 0.42,
        "audit_significance": 0.05,
    }
    assert "audit: epsilon >= 0.42 (95% confidence)" in result_line(summary, "out")
    summary["audit/epsilon_lower_iterates"] = math.nan
    assert "audit: epsilon >= 0.17 (95% confidence)" in result_line(summary, "out")


def test_every_seed_builds_and_too_few_canaries_on_one_side_prove_nothing():
    """Stream keys are signed: every seed must give the canaries a generator (a review found
    half of them raising), and an audit whose canaries all fell in (or out) reports NaN."""
    from types import SimpleNamespace

    from dpfed.audit.records import GradientCanaryAudit
    from dpfed.privacy.mechanisms.base import ExampleDP, MechanismParts

    model = SimpleNamespace(keras_model=lambda: SimpleNamespace(trainable_weights=[np.zeros(50)]))
    plan = SimpleNamespace(sampler=SimpleNamespace(q=0.5, unit="record"), label="dpsgd")
    for seed in range(20):
        audit = GradientCanaryAudit(canaries=10, run_seed=seed)
        audit.wrap(MechanismParts(example_dp=ExampleDP(1.0, 1.0)), plan, model)
        assert audit.step_gradient(1, 0).shape == (50,)
    audit.initial = np.zeros(50)
    audit._residual = np.arange(1.0, 11.0)
    audit.included = np.ones(10, bool)
    assert all(math.isnan(v) for v in audit.estimates(np.ones(50)).values())


def test_canary_records_in_clients_sit_in_one_batch_per_epoch_drawn_from_the_position():
    from types import SimpleNamespace

    from dpfed.audit.records import GradientCanaryAudit
    from dpfed.privacy.mechanisms.base import ExampleDP, MechanismParts

    model = SimpleNamespace(keras_model=lambda: SimpleNamespace(trainable_weights=[np.zeros(900)]))
    plan = SimpleNamespace(
        sampler=SimpleNamespace(unit="user"),
        label="dpsgd",
        population=SimpleNamespace(num_clients=30),
    )

    def wrapped(seed):
        audit = GradientCanaryAudit(canaries=300, run_seed=seed, planted_noise_factor=0.5)
        parts = audit.wrap(MechanismParts(example_dp=ExampleDP(0.7, 2.0)), plan, model)
        assert parts.example_dp.noise_multiplier == 1.0  # the planted bug: example noise only
        return audit

    audit, again = wrapped(3), wrapped(3)
    assert audit.in_clients and audit.describe()["audit_bounds"] == "epsilon_record"
    owned = sorted(int(c) for ids in audit._owned.values() for c in ids)
    assert owned == list(range(300)) and set(audit._owned) <= set(range(30))  # each one owner
    np.testing.assert_array_equal(audit.values, np.where(audit.included, np.float32(0.7), 0))
    client = max(audit._owned, key=lambda c: len(audit._owned[c]))
    placed = audit.placements(5, client, batches_per_epoch=4, epochs=3)
    assert audit._count == 3 * int(audit.included[audit._owned[client]].sum())  # included ones
    assert placed == again.placements(5, client, 4, 3)
    assert placed != audit.placements(6, client, 4, 3)  # another round, other batches
    for canary in audit._owned[client]:  # every canary in one batch of every epoch
        steps = sorted(step for step, c in placed if c == canary)
        assert [step // 4 for step in steps] == [0, 1, 2], (canary, steps)
    assert audit.placements(5, 999, 4, 3) == [] and audit.placements(5, client, 0, 3) == []


@pytest.mark.slow
def test_canary_records_in_clients_stay_below_epsilon_record_and_find_a_planted_bug(
    runtime, tmp_path
):
    """The honest bounds are below the record-level epsilon the accountant states; with no
    noise in the clients' DP-SGD (the accountant told noise 8), the bound exceeds it. Without
    noise, each canary's residual, summed by the vectorized clients, is exactly clip x (times
    its batch was trained) for an included canary and 0 for an excluded one."""
    from scripts.recompute_epsilon import check_run

    _, honest, _ = run_in_process(tmp_path / "honest", *IN_CLIENTS, "dp.noise_multiplier=8")
    sim, planted, rows = run_in_process(
        tmp_path / "planted", *IN_CLIENTS, "dp.noise_multiplier=8", "audit.planted_noise_factor=0"
    )
    audit = sim.audit
    drawn = audit._residual / audit.clip
    np.testing.assert_allclose(drawn, np.round(drawn), atol=1e-5)
    assert (drawn[~audit.included] == 0).all() and drawn[audit.included].max() >= 2
    assert rows["audit/canaries"].sum() == np.round(drawn).sum()
    assert honest["audit_bounds"] == "epsilon_record" and math.isinf(honest["epsilon"])
    assert planted["epsilon_record"] == honest["epsilon_record"] < 5
    for key in ("audit/epsilon_lower", "audit/epsilon_lower_iterates"):
        assert 0 <= honest[key] < honest["epsilon_record"], (key, honest)
    assert planted["audit/epsilon_lower_iterates"] > planted["epsilon_record"], planted
    records = check_run(tmp_path / "honest")
    assert records and all(r["match"] for r in records), records


def test_canary_steps_follow_each_user_of_a_shard_and_never_a_padded_step():
    from dpfed.federated.backends.vectorized import _canary_steps

    steps = _canary_steps([[(0, 7), (2, 3), (2, 5)], [], [(1, 0)]], steps=3)
    assert steps.shape == (3, 3, 2)  # [step, user, canaries in that user's step]
    assert sorted(steps[2, 0]) == [3, 5] and list(steps[0, 0]) == [7, -1]
    assert (steps[:, 1] == -1).all() and list(steps[1, 2]) == [0, -1]
    assert (steps[0, 2] == -1).all() and (steps[2, 2] == -1).all()


def test_a_canary_placed_beyond_its_users_batches_is_refused_not_scored():
    """A padded step releases nothing: a canary there would be scored on noise never added."""
    from types import SimpleNamespace

    from dpfed.federated.backends.base import ClientRound
    from dpfed.federated.backends.vectorized import VectorizedBackend

    strategy = SimpleNamespace(client_update=SimpleNamespace(batch_size=2))
    data = [ClientRound([(np.zeros((n, 3, 1), np.float32), np.zeros(n, np.int32))]) for n in (4, 2)]
    backend = VectorizedBackend(users_per_shard=4)
    (shard,) = backend.pack(strategy, data, None, [[(1, 0)], [(0, 1)]])
    assert shard.get_single_element()[4].shape == (2, 2, 1)
    with pytest.raises(RuntimeError, match="beyond user 1's 1 batches"):
        backend.pack(strategy, data, None, [[(1, 0)], [(1, 1)]])


@pytest.mark.parametrize(
    "neighboring,warned",
    [("zero_out", False), ("replace_one", True), (None, True)],  # None: shuffled: replace-one
)
def test_an_audit_against_a_replace_one_epsilon_is_warned_about(neighboring, warned):
    """The canaries realise zero-out; with dp.neighboring unset, DP-SGD in clients with
    shuffled batches is accounted under replace-one (noise z / 2): a larger epsilon, so a
    looser check (an independent review). A run logs the warning; pooled Poisson batches
    (add/remove, accounted as zero-out) give none."""
    from dpfed.build import build_audit, build_privacy
    from dpfed.data.base import Population

    overrides = [o for o in IN_CLIENTS if not o.startswith("dp.neighboring")]
    if neighboring:
        overrides.append(f"dp.neighboring={neighboring}")
    cfg = compose_config(*overrides, "dp.noise_multiplier=2")
    population = Population.with_mean_records(100, 30.0, 24)
    plan = build_privacy(cfg, population)
    assert str(plan.account("epsilon_record").neighboring) == (neighboring or "replace_one")
    warnings = build_audit(cfg).warnings(plan)
    assert bool(warnings) == warned
    if warned:
        assert "epsilon_record is accounted under replace_one" in warnings[0]
        assert "dp.neighboring=zero_out" in warnings[0]
    pooled = compose_config(*AUDIT, "dp.noise_multiplier=2")
    pooled_plan = build_privacy(pooled, Population(1, lambda clients: 480, 24))
    pooled_audit = build_audit(pooled)
    assert str(pooled_plan.account("epsilon").neighboring) == "add_remove"
    assert pooled_audit.warnings(pooled_plan) == ()
