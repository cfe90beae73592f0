"""The privacy plan: every mechanism x sampling x neighbouring relation, against dp-accounting.

Each accepted combination's epsilon is recomputed here from first principles (the
event the analysis says one round or participation releases, composed by
dp-accounting alone); each impossible one must be refused naming the key.
"""

from __future__ import annotations

import copy
import functools
import math

import dp_accounting as dpa
import pytest
import yaml
from omegaconf import OmegaConf

from dpfed.build import build_privacy
from dpfed.config import compose
from dpfed.data.base import Population
from dpfed.errors import ConfigError
from dpfed.privacy.mechanisms import SCHEMAS
from tests.helpers import independent_epsilon

N, M, ROUNDS, Z = 200, 20, 25, 1.3  # shuffle: 10 rounds per epoch, so 3 epochs (the last partial)
POPULATION = Population(N, lambda clients: 30 * len(clients), 24)
ARGS = (f"strategy.clients_per_round={M}", f"rounds={ROUNDS}")
POOLED = ("strategy=centralized", "strategy.clients_per_round=null")


@functools.lru_cache(maxsize=64)
def _composed(groups: tuple[str, ...]):
    return compose(*groups)


def plan(*overrides, population=POPULATION, dp_seed=None):
    """The plan of ``overrides``: group choices composed (cached), then keys set as Hydra would
    (``dp_seed``: the secret DP seed a resumed run passes back)."""
    noise = () if "dp=none" in overrides else (f"dp.noise_multiplier={Z}",)
    args = ARGS[1:] if "strategy=centralized" in overrides else ARGS
    every = (*args, *noise, *overrides)
    groups = tuple(o for o in every if "." not in o.split("=")[0] and o.split("=")[0] != "rounds")
    cfg = copy.deepcopy(_composed(groups))
    for item in every:
        if item not in groups:
            key, value = item.split("=", 1)
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return build_privacy(cfg, population, dp_seed=dp_seed)


def factor(neighboring):
    return 2.0 if neighboring == "replace_one" else 1.0


def expected_central(sampling, neighboring, z=Z, rounds=ROUNDS):
    """Epsilon of a Gaussian release of std z * clip on the sum, every round, as sampled."""
    release = dpa.GaussianDpEvent(z / factor(neighboring))
    if sampling == "fixed":
        return independent_epsilon(
            [(dpa.SampledWithoutReplacementDpEvent(N, M, release), rounds)], "replace_one"
        )
    if sampling == "poisson":
        return independent_epsilon([(dpa.PoissonSampledDpEvent(M / N, release), rounds)])
    return independent_epsilon([(release, math.ceil(rounds / (N // M)))], "replace_one")


ALLOWED = {  # sampling -> relations a central release can be accounted under
    "fixed": ("replace_one", "zero_out"),
    "poisson": ("add_remove", "zero_out"),
    "shuffle": ("replace_one", "zero_out"),
}
DEFAULT = {"fixed": "replace_one", "poisson": "add_remove", "shuffle": "replace_one"}
RELATIONS = ("replace_one", "zero_out", "add_remove")


@pytest.mark.parametrize("mechanism", ["gaussian", "adaptive", "per_layer"])
@pytest.mark.parametrize("sampling", list(ALLOWED))
@pytest.mark.parametrize("neighboring", [*RELATIONS, None])
def test_central_user_level_mechanisms(mechanism, sampling, neighboring):
    extra = ["dp.clipped_count_stddev=10"] if mechanism == "adaptive" else []
    overrides = (
        f"dp={mechanism}",
        f"strategy.sampling={sampling}",
        *extra,
        *([f"dp.neighboring={neighboring}"] if neighboring else []),
    )
    relation = neighboring or DEFAULT[sampling]
    if relation not in ALLOWED[sampling]:
        with pytest.raises(ConfigError, match="dp.neighboring"):
            plan(*overrides)
        return
    got = plan(*overrides)
    assert str(got.headline.neighboring) == relation and got.headline.unit == "user"
    assert got.epsilon() == pytest.approx(expected_central(sampling, relation), rel=1e-9)


@pytest.mark.parametrize("neighboring", RELATIONS)
def test_tree_accounts_one_tree_per_epoch_over_the_rounds_it_runs(neighboring):
    overrides = ("dp=tree", f"dp.neighboring={neighboring}")
    if neighboring == "add_remove":
        with pytest.raises(ConfigError, match="dp.neighboring"):
            plan(*overrides)
        return
    got = plan(*overrides)
    tree = [dpa.SingleEpochTreeAggregationDpEvent(Z / factor(neighboring), k) for k in (10, 10, 5)]
    expected = independent_epsilon([(t, 1) for t in tree], "replace_special")
    assert got.epsilon() == pytest.approx(expected, rel=1e-9)


def test_a_run_shorter_than_an_epoch_is_one_tree_over_its_rounds():
    """DP-FTRL StackOverflow: 1600 of 342,477/100 rounds per epoch; a whole epoch gives 20.8."""
    population = Population(342_477)
    got = plan(
        "dp=tree",
        "dp.neighboring=zero_out",
        "dp.noise_multiplier=1.13",
        "rounds=1600",
        "strategy.clients_per_round=100",
        "dp.delta=1e-6",
        "dp.conversion=classic",
        population=population,
    )
    assert got.headline.event(1) == dpa.SingleEpochTreeAggregationDpEvent(1.13, 1600)
    assert round(got.epsilon(), 2) == 19.74  # Kairouz et al. 2021, Table (z=1.13)


def test_andrew_et_al_fixed_cohorts_under_zero_out_give_their_epsilon_5():
    got = plan(
        "strategy.sampling=fixed",
        "dp.neighboring=zero_out",
        "dp.noise_multiplier=0.510",
        "strategy.clients_per_round=510",
        "rounds=1200",
        "dp.delta=2.5119e-7",
        population=Population(1_000_000),
    )
    assert round(got.epsilon(), 2) == 4.98
    strict = plan(
        "strategy.sampling=fixed",
        "dp.noise_multiplier=0.510",
        "rounds=1200",
        "strategy.clients_per_round=510",
        "dp.delta=2.5119e-7",
        population=Population(1_000_000),
    )
    assert strict.epsilon() > 10 * got.epsilon()  # replace-one: the noise counts half


@pytest.mark.parametrize(
    "mechanism,release",
    [("laplace_local", dpa.LaplaceDpEvent), ("gaussian_local", dpa.GaussianDpEvent)],
)
@pytest.mark.parametrize("sampling", list(ALLOWED))
@pytest.mark.parametrize("neighboring", [*RELATIONS, None])
def test_local_dp_composes_one_release_per_participation(mechanism, release, sampling, neighboring):
    overrides = (
        f"dp={mechanism}",
        f"strategy.sampling={sampling}",
        "dp.accountant=rdp",
        *([f"dp.neighboring={neighboring}"] if neighboring else []),
    )
    if neighboring == "add_remove":
        with pytest.raises(ConfigError, match="dp.neighboring"):
            plan(*overrides)
        return
    got = plan(*overrides)
    relation = neighboring or "replace_one"
    one = release(Z / factor(relation))
    participations = got.sampler.max_participations(ROUNDS)
    assert participations == (3 if sampling == "shuffle" else ROUNDS)
    assert got.epsilon() == pytest.approx(independent_epsilon([(one, participations)]), rel=1e-9)
    assert got.epsilon(participations=2) == pytest.approx(independent_epsilon([(one, 2)]), rel=1e-9)


def test_laplace_local_with_the_pure_accountant_is_two_over_z_per_participation():
    got = plan("dp=laplace_local", "dp.noise_multiplier=10", "strategy.sampling=fixed")
    assert got.epsilon(participations=3) == pytest.approx(3 * 2 / 10)


@pytest.mark.parametrize(
    "neighboring,accounted", [("replace_one", Z / 2), ("zero_out", Z), (None, Z / 2)]
)
@pytest.mark.parametrize("local_epochs", [1, 2])
def test_dpsgd_in_clients_accounts_local_epochs_releases_per_participation(
    neighboring, accounted, local_epochs
):
    got = plan(
        "dp=dpsgd",
        f"strategy.local_epochs={local_epochs}",
        *([f"dp.neighboring={neighboring}"] if neighboring else []),
    )
    record = got.account("epsilon_record")
    assert record.unit == "record" and record.per_participation
    expected = independent_epsilon([(dpa.GaussianDpEvent(accounted), local_epochs * 10)])
    assert got.epsilon("epsilon_record", participations=10) == pytest.approx(expected, rel=1e-9)
    assert math.isinf(got.epsilon())  # no user-level protection without user noise
    assert got.budget_account is record


@pytest.mark.parametrize(
    "mechanism,credited", [("dpsgd", False), ("gaussian_local", False), ("gaussian", True)]
)
def test_the_log_line_says_where_sampling_amplification_is_not_credited(mechanism, credited):
    """A record-level line once read "poisson sampling" with the cohort's sampler, not the records'."""
    line = plan(f"dp={mechanism}").describe_line()
    assert "poisson sampling" in line
    assert ("no amplification credited" in line) is not credited


UNEVEN = Population(N, lambda clients: sum(20 + int(c) % 31 for c in clients), 24)  # 20 to 50
POISSON = (
    "dp=dpsgd",
    "dp.record_sampling=poisson",
    "dp.neighboring=zero_out",
    "strategy.batch_size=8",
    "strategy.local_epochs=2",
)


def poisson_records(q, steps, z=Z):
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)


def test_poisson_record_batches_are_the_same_steps_for_every_client():
    """q = b / m and ceil(m / b) steps per epoch for every client, m the mean client size."""
    got = plan(*POISSON, population=UNEVEN)
    mean = sum(20 + c % 31 for c in range(N)) / N
    record = got.account("epsilon_record")
    assert record.per_participation and record.relation == dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    described = got.describe()
    assert described["client_records_mean"] == pytest.approx(mean, rel=1e-12)
    q, steps = 8 / mean, 2 * math.ceil(mean / 8)
    assert described["record_sampling_probability"] == pytest.approx(q, rel=1e-12)
    assert described["record_steps_per_participation"] == steps == 10
    expected = independent_epsilon([(poisson_records(q, steps), 10)])  # add/remove
    assert got.epsilon("epsilon_record", participations=10) == pytest.approx(expected, rel=1e-9)
    assert expected < shuffled_epsilon(UNEVEN)  # amplification


@pytest.mark.parametrize("records", [3, 8, 20, 400])
def test_poisson_record_batches_amplify_unless_a_client_fits_in_one_batch(records):
    """m <= b: q = 1 and one step per epoch, the shuffled batches' accounting exactly."""
    even = Population(N, lambda clients: records * len(clients), 24)
    got = plan(*POISSON, population=even).epsilon("epsilon_record", participations=10)
    q, steps = min(1.0, 8 / records), 2 * math.ceil(records / 8)
    assert got == pytest.approx(independent_epsilon([(poisson_records(q, steps), 10)]), rel=1e-9)
    if records <= 8:
        assert got == pytest.approx(shuffled_epsilon(even), rel=1e-6)
    else:
        assert got < shuffled_epsilon(even)


def shuffled_epsilon(population) -> float:
    return plan(
        "dp=dpsgd",
        "dp.neighboring=zero_out",
        "strategy.batch_size=8",
        "strategy.local_epochs=2",
        population=population,
    ).epsilon("epsilon_record", participations=10)


@pytest.mark.parametrize("neighboring", ["replace_one", "add_remove", None])
def test_poisson_record_batches_are_accounted_under_zero_out_only(neighboring):
    overrides = [o for o in POISSON if not o.startswith("dp.neighboring")]
    if neighboring is None:  # unset: zero_out, the one analysed
        got = plan(*overrides, population=UNEVEN)
        assert got.account("epsilon_record").neighboring == "zero_out"
        return
    with pytest.raises(ConfigError, match="dp.neighboring.*zero_out with dp.record_sampling"):
        plan(*overrides, f"dp.neighboring={neighboring}", population=UNEVEN)


def test_poisson_record_batches_need_the_clients_sizes_and_a_known_sampling():
    with pytest.raises(ConfigError, match="dp.record_sampling.*numbers of records are unknown"):
        plan(*POISSON, population=Population(N, None, 24))
    with pytest.raises(ConfigError, match="dp.record_sampling.*no client holds a training"):
        plan(*POISSON, population=Population(N, lambda clients: 0, 24))
    with pytest.raises(ConfigError, match="dp.record_sampling='uniform'.*shuffle or poisson"):
        plan("dp=dpsgd", "dp.record_sampling=uniform")


def test_poisson_record_batches_with_user_noise_keep_the_user_level_budget():
    got = plan(*POISSON, "dp.user_noise_multiplier=0.9", population=UNEVEN)
    assert got.budget_account is got.headline and got.headline.unit == "user"
    assert got.epsilon() == pytest.approx(
        expected_central("poisson", "add_remove", z=0.9), rel=1e-9
    )
    q = got.describe()["record_sampling_probability"]
    assert got.epsilon("epsilon_record", participations=10) == pytest.approx(
        independent_epsilon([(poisson_records(q, 10), 10)]), rel=1e-9
    )


def test_dpsgd_in_clients_refuses_add_remove_which_shuffled_batches_do_not_satisfy():
    with pytest.raises(ConfigError, match="dp.neighboring"):
        plan("dp=dpsgd", "dp.neighboring=add_remove")


def test_audit_case_record_level_epsilon_is_the_replace_one_one():
    """z=1, 10 participations under replace-one: 10 x local_epochs releases of z/2, 48.8 with 1
    local epoch (the audit's case, where the first version reported 19.1) and 81.1 with 2."""
    for epochs, at_least in ((1, 48.8), (2, 81.1)):
        got = plan("dp=dpsgd", "dp.noise_multiplier=1", f"strategy.local_epochs={epochs}")
        assert got.epsilon("epsilon_record", participations=10) == pytest.approx(
            independent_epsilon([(dpa.GaussianDpEvent(0.5), 10 * epochs)]), rel=1e-9
        )
        assert got.epsilon("epsilon_record", participations=10) > at_least


def test_dpsgd_with_user_noise_has_both_accounts_and_the_budget_is_user_level():
    got = plan("dp=dpsgd", "dp.user_noise_multiplier=0.9")
    assert got.epsilon() == pytest.approx(
        expected_central("poisson", "add_remove", z=0.9), rel=1e-9
    )
    assert got.budget_account is got.headline


@pytest.mark.parametrize("mechanism", ["gaussian", "dpsgd", "none"])
def test_pooled_records_are_poisson_sampled_steps(mechanism):
    got = plan(
        "strategy=centralized",
        f"dp={mechanism}",
        "strategy.batch_size=60",
        "rounds=3",
        population=Population(N, lambda clients: 30 * len(clients)),
    )
    assert got.sampler.num_records == 30 * N and got.headline.unit == "record"
    if mechanism == "none":
        assert math.isinf(got.epsilon())
        return
    steps = math.ceil(3 * 30 * N / 60)
    event = dpa.PoissonSampledDpEvent(60 / (30 * N), dpa.GaussianDpEvent(Z))
    assert got.epsilon() == pytest.approx(independent_epsilon([(event, steps)]), rel=1e-9)


def test_tf_privacy_tutorial_epsilon_with_the_classic_conversion():
    orders = ",".join([str(1 + x / 10.0) for x in range(1, 100)] + [str(o) for o in range(12, 64)])
    got = plan(
        "strategy=centralized",
        "dp.noise_multiplier=1.1",
        "strategy.batch_size=256",
        "rounds=60",
        "dp.conversion=classic",
        f"dp.orders=[{orders}]",
        population=Population(1, lambda clients: 60000),
    )
    assert round(got.epsilon(), 2) == 3.01


@pytest.mark.parametrize(
    "overrides",
    [
        ("dp=adaptive", "dp.clipped_count_stddev=2", "strategy=centralized"),
        ("dp=tree", "strategy=centralized"),
        ("dp=laplace_local", "strategy=centralized"),
        ("dp=input_noise", "strategy=centralized"),
    ],
)
def test_federated_only_mechanisms_are_refused_on_pooled_records(overrides):
    with pytest.raises(Exception, match=r"dp|strategy.sampling"):
        plan(*overrides)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("dp=tree", "dp.accountant=pure"), "dp.accountant"),
        (("dp=tree", "dp.accountant=pld"), "dp.accountant"),
        (("dp=tree", "dp.accountant=pure", "dp.target_epsilon=1"), "dp.accountant"),
        (("dp=dpsgd", "dp.accountant=pure"), "dp.accountant"),
        (("dp=dpsgd", "dp.accountant=pure", *POOLED), "dp.accountant"),
        (("dp=gaussian", "dp.accountant=pure"), "dp.accountant"),
        (("dp=gaussian", "dp.accountant=pld", "strategy.sampling=fixed"), "dp.accountant"),
        (("dp=gaussian_local", "dp.accountant=pure"), "dp.accountant"),
        (("dp=input_noise", "dp.noise=gaussian"), "dp.accountant"),
    ],
)
def test_accountants_that_cannot_compose_a_mechanism_are_refused_at_build(overrides, key):
    """The first version planned epsilon 0 for dp=tree dp.accountant=pure and calibrated to 0.001."""
    with pytest.raises(ConfigError) as err:
        plan(*overrides)
    assert err.value.key == key


@pytest.mark.parametrize(
    "overrides",
    [
        ("strategy.sampling=poisson",),
        ("strategy.sampling=fixed",),
        ("dp=tree",),
        ("dp=dpsgd",),
        ("dp=laplace_local", "dp.accountant=rdp"),
        ("strategy=centralized", "strategy.batch_size=60"),
    ],
)
def test_calibration_reaches_the_target_from_below_and_round_trips(overrides):
    population = Population(N, lambda clients: 30 * len(clients), 24)
    got = plan(*overrides, "dp.target_epsilon=2", population=population)
    budget = got.epsilon(got.budget_account)
    assert 2 * 0.99 <= budget <= 2
    again = plan(*overrides, f"dp.noise_multiplier={got.noise_multiplier}", population=population)
    assert again.epsilon(again.budget_account) == pytest.approx(budget, rel=1e-12)


def test_unreachable_target_is_refused():
    with pytest.raises(ConfigError, match="dp.target_epsilon"):
        plan(
            "dp.target_epsilon=1e-9",
            "rounds=1000",
            "strategy.sampling=fixed",
            f"strategy.clients_per_round={N}",
        )


@pytest.mark.parametrize(
    "overrides",
    [
        ("dp=none", "dp.max_epsilon=2"),
        ("dp.noise_multiplier=0", "dp.max_epsilon=2"),
        ("dp=none", "dp.target_epsilon=2"),
    ],
)
def test_budgets_without_anything_private_are_refused(overrides):
    with pytest.raises(ConfigError, match=r"dp\.(max|target)_epsilon"):
        plan(*overrides)


def test_the_budget_stops_before_a_release_and_records_nothing_it_does_not_run():
    got = plan("dp=dpsgd", "dp.max_epsilon=1", "strategy.sampling=fixed")
    ledger = got.new_ledger()
    events = ledger.preview(1, ["3", "4"])
    assert ledger.over_budget(events) is not None  # one participation already exceeds 1
    assert ledger.participations == {} and ledger.max_participations == 0
    assert ledger.epsilons["epsilon_record"] == 0.0


def test_participations_are_counted_for_the_client_that_took_part_most():
    got = plan("dp=laplace_local", "dp.noise_multiplier=4", "strategy.sampling=fixed")
    ledger = got.new_ledger()
    eps = []
    for r, cohort in enumerate([["a", "b"], ["a", "c"], ["d", "e"], ["a", "b"]], start=1):
        eps.append(ledger.record(r, cohort, ledger.preview(r, cohort))["epsilon"])
    assert eps == pytest.approx([0.5, 1.0, 1.0, 1.5]) and ledger.max_participations == 3
    again = got.new_ledger()
    again.load_state_dict(ledger.state_dict())
    assert again.epsilons == ledger.epsilons and again.participations == ledger.participations


def test_input_noise_is_refused_where_records_share_raw_data_or_are_tokens():
    coupled = Population(N, None, 24, "windows overlap (stride 25 < seq_len 50)")
    with pytest.raises(ConfigError, match="windows overlap"):
        plan("dp=input_noise", population=coupled)
    with pytest.raises(ConfigError, match="text dataset"):
        plan("dp=input_noise", population=Population(N, None, None))


@pytest.mark.parametrize("neighboring,epsilon", [("replace_one", 1.0), ("zero_out", 2.0)])
def test_input_noise_is_one_release_per_record_whatever_the_rounds(neighboring, epsilon):
    got = plan("dp=input_noise", "dp.noise_multiplier=0.5", f"dp.neighboring={neighboring}")
    assert got.epsilon() == pytest.approx(1 / (0.5 / factor(neighboring)))
    assert got.epsilon(rounds=1) == got.epsilon()
    with pytest.raises(ConfigError, match="dp.neighboring"):
        plan("dp=input_noise", "dp.neighboring=add_remove")


def test_adaptive_effective_noise_splits_exactly_under_both_relations():
    """TFF's split z^-2 = z_v^-2 + (2 sigma_b)^-2 composes to one release of z (or z/2)."""
    z, count_std = 1.0, 2.0
    z_value = (z**-2 - (2 * count_std) ** -2) ** -0.5
    q = M / N
    split = dpa.ComposedDpEvent((dpa.GaussianDpEvent(z_value), dpa.GaussianDpEvent(2 * count_std)))
    assert independent_epsilon([(dpa.PoissonSampledDpEvent(q, split), 20)]) == pytest.approx(
        independent_epsilon([(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), 20)]), rel=1e-9
    )
    got = plan("dp=adaptive", "dp.noise_multiplier=1", f"dp.clipped_count_stddev={count_std}")
    assert got.describe()["clipped_count_stddev"] == count_std
    default = plan("dp=adaptive", "dp.noise_multiplier=0.1")  # null: TFF's 0.05 x cohort, recorded
    assert default.describe()["clipped_count_stddev"] == pytest.approx(0.05 * M)


def test_adaptive_records_the_sums_own_noise_and_warns_when_the_count_takes_most():
    """With the count noise far above z / 2 the sum keeps about z; close to it, the sum's own
    multiplier grows without bound, and the plan warns (naming the setting to raise)."""
    z, count_std = 1.0, 5.0
    roomy = plan("dp=adaptive", f"dp.noise_multiplier={z}", f"dp.clipped_count_stddev={count_std}")
    z_sum = roomy.describe()["sum_noise_multiplier"]
    assert z_sum == pytest.approx((z**-2 - (2 * count_std) ** -2) ** -0.5) and z < z_sum < 1.01 * z
    assert roomy.warnings() == ()
    tight = plan("dp=adaptive", f"dp.noise_multiplier={z}", "dp.clipped_count_stddev=0.55")
    assert tight.describe()["sum_noise_multiplier"] > 2 * z
    (warning,) = tight.warnings()
    assert "dp.clipped_count_stddev" in warning and "clipped_count_stddev=0.55" in warning
    assert plan("dp=adaptive", "dp.noise_multiplier=0").describe()["sum_noise_multiplier"] == 0
    assert all(plan(f"dp={option}").warnings() == () for option in SCHEMAS if option != "adaptive")


def test_a_user_level_delta_not_below_one_over_the_population_is_warned_about():
    """(0, 1/N)-DP allows publishing one random user's data: a delta of 1e-5 means little with
    10^5 users or more (an independent review asked for the warning)."""
    big = Population(100_000, None, 24)
    (warning,) = plan("dp=gaussian", "strategy.clients_per_round=100", population=big).warnings()
    assert "dp.delta=1e-05 is not below 1 / population (1/100000)" in warning
    assert f"{100_000**-1.1:.3g}" in warning  # the suggestion: population^-1.1
    below = plan("dp=gaussian", "strategy.clients_per_round=100", "dp.delta=5e-6", population=big)
    assert below.warnings() == ()
    # not private, or private only per record: no user-level delta to warn about
    assert plan("dp=none", population=big).warnings() == ()
    assert plan("dp=dpsgd", "strategy.clients_per_round=100", population=big).warnings() == ()
    # the pure accountant (local Laplace) has no delta at all
    local = plan("dp=laplace_local", "strategy.clients_per_round=100", population=big)
    assert local.settings.accountant == "pure" and local.warnings() == ()


def test_adaptive_refuses_count_noise_that_the_budget_cannot_afford():
    with pytest.raises(ConfigError, match="dp.clipped_count_stddev"):
        plan("dp=adaptive", "strategy.clients_per_round=10")  # default 0.05 * 10 <= 1.3 / 2


def test_every_mechanism_describes_its_unit_relation_and_dp_seed():
    for option in SCHEMAS:
        extra = ["dp.clipped_count_stddev=10"] if option == "adaptive" else []
        got = plan(f"dp={option}", *extra)
        described = got.describe()
        assert described["mechanism"] == got.label
        assert described["neighboring"] in RELATIONS and described["unit"]
        assert described["dp_seed"] == 0


@pytest.mark.parametrize("sampling", ["poisson", "fixed", "shuffle", "min_sep_poisson"])
def test_a_secret_dp_seed_also_hides_who_takes_part(sampling):
    """Amplification by sampling assumes the adversary does not know the cohorts: with
    dp.seed=null they are drawn from the secret (the same again when a resumed run passes it
    back); with a public DP seed from the run seed, whatever the DP seed."""
    extra = [f"strategy.sampling={sampling}"]
    extra += ["strategy.sampling_groups=4"] if sampling == "min_sep_poisson" else []
    public = [plan(*extra, f"dp.seed={s}").sampler for s in (0, 7)]
    assert public[0].seed == public[1].seed == 0  # the run seed of ARGS
    secret = [plan(*extra, "dp.seed=null").sampler for _ in range(2)]
    assert secret[0].seed != secret[1].seed and 2**32 < secret[0].seed < 2**63
    resumed = [plan(*extra, "dp.seed=null", dp_seed=2**100 + 3).sampler for _ in range(2)]
    assert resumed[0].seed == resumed[1].seed != public[0].seed
    if sampling != "fixed":  # TFF's fixed-size sampler is checked in the simulation tests
        draws = [tuple(tuple(s.sample(r)) for r in (1, 2, 3)) for s in (*public, *secret)]
        assert draws[0] == draws[1] and len({draws[0], draws[2], draws[3]}) == 3


def test_a_null_dp_seed_is_drawn_from_entropy_and_never_described():
    first, second = plan("dp.seed=null"), plan("dp.seed=null")
    assert first.secret_seed and first.dp_seed != second.dp_seed
    assert first.dp_seed.bit_length() > 64
    assert "secret" in first.describe()["dp_seed"]
    assert first.stream_key("sum") != second.stream_key("sum")
