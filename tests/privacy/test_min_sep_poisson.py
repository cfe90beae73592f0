"""b-min-separation Poisson sampling (``strategy.sampling=min_sep_poisson``) and amplified banded
matrix factorization (Choquette-Choo et al., NeurIPS 2023, Section 4), against dp-accounting."""

from __future__ import annotations

import json
import math

import dp_accounting as dpa
import numpy as np
import pytest

from dpfed.errors import ConfigError
from dpfed.privacy.sampling import MinSepPoissonSampler
from tests.helpers import independent_epsilon
from tests.privacy.test_plan import ROUNDS, N, Z, plan

GROUPS = 5  # 200 clients in 5 groups of 40; 20 expected per round: q = 1/2
AMPLIFIED = ("strategy.sampling=min_sep_poisson", f"strategy.sampling_groups={GROUPS}")


def test_each_client_takes_part_only_in_its_groups_rounds_poisson_sampled():
    sampler = MinSepPoissonSampler(N, 20, seed=3, groups=GROUPS)
    assert sampler.q == 0.5
    groups = [set(sampler.members(g).tolist()) for g in range(GROUPS)]
    assert set().union(*groups) == set(range(N)) and sum(map(len, groups)) == N  # a partition
    rounds = {t: [int(c) for c in sampler.sample(t)] for t in range(1, 201)}
    seen: dict[int, list[int]] = {}
    for t, cohort in rounds.items():
        members = set(sampler.members(sampler.group(t)).tolist())
        assert set(cohort) <= members
        for c in cohort:
            seen.setdefault(c, []).append(t)
    gaps = [b - a for ts in seen.values() for a, b in zip(ts, ts[1:], strict=False)]
    assert min(gaps) >= GROUPS and all(g % GROUPS == 0 for g in gaps)
    sizes = np.array([len(c) for c in rounds.values()])
    assert abs(sizes.mean() - 20) < 1.0 and sizes.std() > 1  # Poisson: sizes vary around 20
    assert max(len(ts) for ts in seen.values()) <= sampler.max_participations(200) == 40
    # a client's group and coins are its own: more clients (at the same q) change no other's
    bigger = MinSepPoissonSampler(2 * N, 40, seed=3, groups=GROUPS)
    assert bigger.q == sampler.q
    for t in (1, 2, 17):
        assert [c for c in bigger.sample(t) if int(c) < N] == sampler.sample(t)
    again = MinSepPoissonSampler(N, 20, seed=3, groups=GROUPS)
    assert again.sample(17) == sampler.sample(17)
    assert MinSepPoissonSampler(N, 20, seed=4, groups=GROUPS).sample(17) != sampler.sample(17)


def test_amplified_banded_mf_is_poisson_sampled_gaussians_over_the_groups_rounds():
    """One Poisson-sampled Gaussian of noise z / ||C e_i|| per round of the first group:
    ceil(rounds / groups) of them, under add/remove (and zero_out, which equals it)."""
    for neighboring in ("add_remove", "zero_out"):
        got = plan("dp=bandmf", *AMPLIFIED, f"dp.neighboring={neighboring}")
        coefficients = got.mechanism.strategy(got.context).coefficients
        bands = got.describe()["bands"]
        assert bands == GROUPS  # bands default to the separation
        norm = float(np.linalg.norm(coefficients[:bands]))
        release = dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(Z / norm))
        want = independent_epsilon([(release, math.ceil(ROUNDS / GROUPS))], "add_or_remove_one")
        assert got.epsilon() == pytest.approx(want, rel=1e-9)
    cyclic = plan("dp=bandmf", "strategy.sampling=cyclic", "dp.neighboring=zero_out")
    assert got.epsilon() < cyclic.epsilon()  # the same cohort size, amplified


def test_gaussian_with_separated_poisson_composes_only_the_first_groups_rounds():
    got = plan("dp=gaussian", *AMPLIFIED)
    release = dpa.PoissonSampledDpEvent(0.5, dpa.GaussianDpEvent(Z))
    want = independent_epsilon([(release, math.ceil(ROUNDS / GROUPS))], "add_or_remove_one")
    assert got.epsilon() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (("dp=bandmf", *AMPLIFIED, "dp.bands=6"), "dp.bands"),
        (("dp=bandmf", *AMPLIFIED, "dp.factorization=blt"), "dp.factorization"),
        (("dp=bandmf", *AMPLIFIED, "dp.factorization=sqrt_toeplitz"), "dp.factorization"),
        (("dp=bandmf", *AMPLIFIED, "dp.neighboring=replace_one"), "dp.neighboring"),
        (("dp=tree", *AMPLIFIED), "strategy.sampling"),
        (("dp=gaussian", "strategy.sampling=min_sep_poisson"), "strategy.sampling_groups"),
        (
            ("dp=gaussian", "strategy.sampling=poisson", "strategy.sampling_groups=5"),
            "strategy.sampling_groups",
        ),
        (
            ("dp=gaussian", "strategy.sampling=min_sep_poisson", "strategy.sampling_groups=20"),
            "strategy.clients_per_round",
        ),
    ],
)
def test_settings_the_analysis_does_not_cover_are_refused(overrides, key):
    with pytest.raises(ConfigError) as err:
        plan(*overrides)
    assert str(err.value).startswith(key + "="), str(err.value)


def test_the_calculator_and_the_plan_agree(capsys):
    from dpfed.data.base import Population
    from dpfed.privacy.__main__ import main

    args = [
        "epsilon",
        "--mechanism",
        "bandmf",
        "--sampling",
        "min_sep_poisson",
        "--sampling-groups",
        "10",
        "--population",
        "1000",
        "--sample-size",
        "20",
        "--steps",
        "100",
        "--noise-multiplier",
        "1",
    ]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["amplified"] is True and out["sampling_probability"] == 0.2
    want = plan(
        "dp=bandmf",
        "strategy.sampling=min_sep_poisson",
        "strategy.sampling_groups=10",
        "strategy.clients_per_round=20",
        "rounds=100",
        "dp.noise_multiplier=1",
        population=Population(1000, None, 1),
    ).epsilon()
    assert out["epsilon"] == pytest.approx(want, rel=1e-12)
    release = dpa.PoissonSampledDpEvent(0.2, dpa.GaussianDpEvent(1 / out["sensitivity"]))
    assert out["epsilon"] == pytest.approx(
        independent_epsilon([(release, 10)], "add_or_remove_one"), rel=1e-9
    )
