"""The privacy cost of releasing the best of a random number of runs (Papernot & Steinke 2022)."""

from __future__ import annotations

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.dp_event import RepeatAndSelectDpEvent
from dp_accounting.rdp import RdpAccountant

from dpfed.privacy.tuning import tuning_epsilon

ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
ORDERS = [1 + x / 10 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024]


def run(noise: float, rounds: int = 100, q: float = 0.05):
    return [(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise)), rounds)]


@pytest.mark.parametrize(
    ("distribution", "shape"), [("poisson", math.inf), ("geometric", 1.0), ("logarithmic", 0.0)]
)
def test_identical_runs_equal_dp_accountings_repeat_and_select_event(distribution, shape):
    """The public event of dp-accounting on one run's composed releases gives the same number."""
    events = run(1.0)
    ours = tuning_epsilon([events] * 10, ADD_REMOVE, 1e-5, distribution=distribution)
    composed = dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(e, c) for e, c in events]
    )
    reference = RdpAccountant(ORDERS, ADD_REMOVE)
    reference.compose(RepeatAndSelectDpEvent(composed, 10.0, shape))
    assert ours == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)


def test_geometric_bound_follows_theorem_2_of_the_paper():
    """Papernot & Steinke (2022), Theorem 2 with eta = 1 (geometric K, gamma = 1/E[K]):
    eps'(l) = eps(l) + 2 min_lh [(1 - 1/lh) eps(lh) + log(1/gamma)/lh] + log(E[K])/(l - 1),
    computed here for a Gaussian mechanism, whose RDP is l / (2 sigma^2), with the standard
    conversion to (epsilon, delta)."""
    sigma, mean, delta = 5.0, 20.0, 1e-6
    events = [(dp_accounting.GaussianDpEvent(sigma), 1)]
    orders = np.array(ORDERS)
    rdp = orders / (2 * sigma**2)
    c = 2 * np.min((1 - 1 / orders) * rdp + math.log(mean) / orders)
    tuned = rdp + c + math.log(mean) / (orders - 1)
    tuned = np.minimum.accumulate(tuned[::-1])[::-1]  # RDP is monotone in the order
    # the conversion dp-accounting uses (Canonne, Kamath, Steinke 2020, Proposition 12)
    usable = orders > 1.01  # below, the conversion is numerically unstable and not used
    hand = np.min((tuned + np.log1p(-1 / orders) - np.log(delta * orders) / (orders - 1))[usable])
    ours = tuning_epsilon(
        [events],
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
        delta,
        mean=mean,
        distribution="geometric",
        orders=ORDERS,
    )
    assert ours == pytest.approx(max(hand, 0.0), rel=1e-9)


@pytest.mark.parametrize(("distribution", "shape"), [("geometric", 1.0), ("logarithmic", 0.0)])
@pytest.mark.parametrize(("eps", "mean"), [(0.5, 10.0), (1.0, 1000.0), (2.0, 3.0)])
def test_a_pure_dp_base_costs_2_plus_eta_times_its_epsilon(distribution, shape, eps, mean):
    """Papernot & Steinke (2022), Corollary 3: K from the truncated negative binomial with
    shape eta and an eps-DP base release give a (2 + eta) eps-DP best-of-K, whatever E[K]
    (dp-accounting checks its event against the same corollary). A Laplace release of scale
    1/eps is eps-DP; a single huge RDP order stands for pure DP."""
    runs = [[(dp_accounting.LaplaceDpEvent(1 / eps), 1)]] * 3
    ours = tuning_epsilon(
        runs, ADD_REMOVE, 1e-10, mean=mean, distribution=distribution, orders=[1e10]
    )
    assert ours == pytest.approx((2 + shape) * eps, rel=1e-6)


@pytest.mark.parametrize("distribution", ["geometric", "logarithmic"])
def test_tuning_costs_more_than_one_run_and_grows_with_the_log_of_the_trials(distribution):
    """Theorem 2: the truncated negative binomial's cost grows with log E[K]."""
    one = RdpAccountant(ORDERS, ADD_REMOVE)
    for event, count in run(1.0):
        one.compose(event, count)
    single = one.get_epsilon(1e-5)
    costs = [
        tuning_epsilon([run(1.0)], ADD_REMOVE, 1e-5, mean=m, distribution=distribution)
        for m in (10, 100, 1000)
    ]
    assert single < costs[0] < costs[1] < costs[2] < 5 * single
    steps = np.diff(costs)
    assert steps[1] < 1.5 * steps[0]  # x10 trials adds about the same each time: log, not linear


def test_the_worst_run_sets_the_per_trial_curve():
    """A sweep over noise: every trial may be the least private run."""
    low, high = run(0.8), run(2.0)
    both = tuning_epsilon([low, high], ADD_REMOVE, 1e-5, mean=2)
    assert both == tuning_epsilon([low, low], ADD_REMOVE, 1e-5, mean=2)
    assert both > tuning_epsilon([high, high], ADD_REMOVE, 1e-5, mean=2)


def test_non_private_runs_and_bad_arguments():
    non_private = [(dp_accounting.NonPrivateDpEvent(), 1)]
    assert tuning_epsilon([non_private], ADD_REMOVE, 1e-5) == math.inf
    for kwargs, match in [
        ({"mean": 0.5}, "mean number of trials"),
        ({"distribution": "uniform"}, "distribution must be one of"),
        ({"delta": 0.0}, "delta must be in"),
    ]:
        args = {"delta": 1e-5, **kwargs}
        with pytest.raises(ValueError, match=match):
            tuning_epsilon([run(1.0)], ADD_REMOVE, **args)
    with pytest.raises(ValueError, match="at least one run"):
        tuning_epsilon([], ADD_REMOVE, 1e-5)


@pytest.mark.parametrize("distribution", ["poisson", "geometric", "logarithmic"])
def test_a_private_search_draws_its_number_of_trials_with_the_stated_mean(distribution):
    """K's law (Papernot & Steinke 2022): Poisson on 0, 1, ...; the truncated negative
    binomial (shape 1: geometric, 0: logarithmic) on 1, 2, ...; mean E[K] as stated."""
    from dpfed.privacy.tuning import draw_trials

    draws = np.array([draw_trials(8, distribution, seed) for seed in range(4000)])
    assert draws.mean() == pytest.approx(8, rel=0.06), draws.mean()
    assert draws.min() >= (0 if distribution == "poisson" else 1)
    assert draw_trials(8, distribution, 3) == draw_trials(8, distribution, 3)
    if distribution == "geometric":  # P(K = 1) = gamma = 1 / E[K]
        assert (draws == 1).mean() == pytest.approx(1 / 8, abs=0.02)
    if distribution == "logarithmic":  # heavier head and tail than the geometric
        assert (draws == 1).mean() > 0.25 and draws.max() > 40
    with pytest.raises(ValueError, match="mean number of trials must be >= 1"):
        draw_trials(0.5, distribution)


def test_the_search_resolver_draws_once_and_refuses_an_empty_poisson_search():
    from omegaconf import OmegaConf

    from dpfed.config import register_configs
    from dpfed.privacy.tuning import draw_trials, random_trials

    register_configs()
    cfg = OmegaConf.create({"n_trials": "${dpfed.random_trials:6,geometric}"})
    first = cfg.n_trials
    assert first >= 1 and all(cfg.n_trials == first for _ in range(5))  # cached: one draw
    seeded = OmegaConf.create({"n_trials": "${dpfed.random_trials:6,poisson,11}"})
    assert seeded.n_trials == draw_trials(6, "poisson", 11)
    empty = next(seed for seed in range(10_000) if draw_trials(1, "poisson", seed) == 0)
    with pytest.raises(ValueError, match="drew 0 trials"):
        random_trials(1, "poisson", empty)
