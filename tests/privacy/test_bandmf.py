"""dp=bandmf: matrix-factorization DP-FTRL (banded, BLT, square-root Toeplitz).

The accounting is checked against brute force over participation patterns and
dp-accounting alone; the server's query against the factorization it streams
(noise 0 is the clipped sum; the noise's covariance over rounds is
``sigma^2 C^-1 C^-T``); Gboard's published pt-BR epsilon through the CLI.
"""

from __future__ import annotations

import itertools
import json
import math

import dp_accounting as dpa
import numpy as np
import pytest

from dpfed.data.base import Population
from dpfed.privacy import factorization as mf
from dpfed.privacy.mechanisms.bandmf import BandMFMechanism, prefix_sensitivity
from tests.helpers import independent_epsilon
from tests.privacy.test_plan import plan

N, M = 200, 20  # test_plan's population: 10 rounds per epoch


def test_selecting_bandmf_selects_cyclic_cohorts_that_return_every_epoch():
    got = plan("dp=bandmf", "rounds=25")
    sampler = got.sampler
    assert sampler.label == "cyclic" and sampler.min_separation == sampler.rounds_per_epoch == 10
    first = [set(sampler.sample(r)) for r in range(1, 11)]
    assert set().union(*first) == {str(i) for i in range(N)}  # every client once per epoch
    assert all(set(sampler.sample(r + 10)) == first[r - 1] for r in range(1, 11))


@pytest.mark.parametrize("factorization", ["banded", "blt", "sqrt_toeplitz"])
@pytest.mark.parametrize("neighboring", ["replace_one", "zero_out"])
@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_is_one_gaussian_of_noise_over_the_factorizations_sensitivity(
    factorization, neighboring, accountant
):
    z, rounds = 3.0, 25
    extra = ("dp.bands=5",) if factorization == "banded" else ()
    got = plan(
        "dp=bandmf",
        f"dp.factorization={factorization}",
        f"dp.neighboring={neighboring}",
        f"dp.accountant={accountant}",
        f"dp.noise_multiplier={z}",
        f"rounds={rounds}",
        *extra,
    )
    described = got.describe()
    coefficients = got.mechanism.strategy(got.context).coefficients
    C = mf.toeplitz(coefficients, rounds)
    sens = mf.sensitivity(C, 3, 10)  # 3 participations, 10 rounds apart
    assert described["factorization_sensitivity"] == pytest.approx(sens, rel=1e-9)
    factor = 2.0 if neighboring == "replace_one" else 1.0
    release = dpa.GaussianDpEvent(z / (factor * sens))
    want = independent_epsilon([(release, 1)], accountant=accountant)
    assert got.epsilon() == pytest.approx(want, rel=1e-6 if accountant == "rdp" else 1e-3)
    assert described["accounted_noise_multiplier"] == pytest.approx(z / (factor * sens))
    # per round: epoch e's first round counts the epoch; epsilon grows epoch by epoch
    per_round = [got.epsilon(rounds=r) for r in range(1, rounds + 1)]
    assert per_round[0] > 0 and per_round[-1] == pytest.approx(got.epsilon(), rel=1e-12)
    assert per_round[1:10] == [per_round[0]] * 9 and per_round[10] > per_round[9]
    after_one = mf.sensitivity(mf.toeplitz(coefficients[:10], 10), 1, 10)
    want_one = independent_epsilon(
        [(dpa.GaussianDpEvent(z / (factor * after_one)), 1)], accountant=accountant
    )
    assert per_round[0] == pytest.approx(want_one, rel=1e-6 if accountant == "rdp" else 1e-3)


def test_cyclic_sensitivity_equals_brute_force_over_every_participation_pattern():
    """n = 12, a client every 4 rounds (at most 3 times), 3 bands: all patterns enumerated."""
    n, sep = 12, 4
    for factorization in ("banded", "blt", "sqrt_toeplitz"):
        mechanism = BandMFMechanism(1.0, 1.0, factorization, bands=3)
        ctx = plan(
            "dp=bandmf",
            "strategy.clients_per_round=50",
            f"rounds={n}",
            population=Population(sep * 50, None, 1),
        ).context
        coefficients = mechanism.strategy(ctx).coefficients
        C = mf.toeplitz(coefficients, n)
        gram = C.T @ C
        brute = max(
            gram[np.ix_(p, p)].sum()
            for k in range(1, 4)
            for p in itertools.combinations(range(n), k)
            if all(b - a >= sep for a, b in itertools.pairwise(p))
        )
        got = mechanism.epoch_sensitivities(ctx)[-1]
        assert got**2 == pytest.approx(brute, rel=1e-9), factorization


def test_shuffled_epochs_are_bounded_by_back_to_back_participations():
    """With shuffle a client comes once per epoch, anywhere in it: the bound covers every case."""
    n, per_epoch = 12, 4
    ctx = plan(
        "dp=bandmf",
        "strategy.sampling=shuffle",
        "strategy.clients_per_round=50",
        f"rounds={n}",
        "dp.bands=3",
        population=Population(200, None, 1),
    ).context
    mechanism = BandMFMechanism(1.0, 1.0, "banded", bands=3)
    C = mf.toeplitz(mechanism.strategy(ctx).coefficients, n)
    gram = C.T @ C
    one_per_epoch = max(
        gram[np.ix_(p, p)].sum()
        for p in itertools.product(*(range(e * per_epoch, (e + 1) * per_epoch) for e in range(3)))
    )
    bound = mechanism.epoch_sensitivities(ctx)[-1] ** 2
    assert one_per_epoch <= bound + 1e-12
    assert bound == pytest.approx(prefix_sensitivity(C[:, 0], n, 3, 1) ** 2)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (("strategy.sampling=poisson",), "strategy.sampling"),
        (("strategy.sampling=fixed",), "strategy.sampling"),
        (("dp.neighboring=add_remove",), "dp.neighboring"),
        (("dp.bands=11", "rounds=25"), "dp.bands"),  # more bands than the separation (10)
        (("dp.bands=30", "rounds=25", "strategy.sampling=shuffle"), "dp.bands"),
        (("dp.buffers=0", "dp.factorization=blt"), "dp.buffers"),
        (("dp.factorization=dense",), "dp.factorization"),
    ],
)
def test_settings_the_analysis_does_not_cover_are_refused(overrides, key):
    with pytest.raises(Exception) as raised:
        plan("dp=bandmf", *overrides)
    assert key in str(raised.value)


def test_more_bands_than_the_separation_are_fine_when_no_client_returns():
    got = plan("dp=bandmf", "dp.bands=10", "rounds=10")  # one epoch: one participation each
    assert got.describe()["bands"] == 10 and got.describe()["participations"] == 1
    assert got.describe()["factorization_sensitivity"] == pytest.approx(1.0)  # unit-norm columns


def test_gboard_pt_br_row_through_the_calculator(capsys):
    """Xu et al. 2023: 1000 bands, z = 8.35, 2 participations > 1000 rounds apart, delta 1e-10."""
    from dpfed.privacy.__main__ import main

    assert (
        main(
            [
                "epsilon",
                "--mechanism",
                "bandmf",
                "--bands",
                "1000",
                "--steps",
                "2000",
                "--participations",
                "2",
                "--noise-multiplier",
                "8.35",
                "--neighboring",
                "zero_out",
                "--accountant",
                "pld",
                "--delta",
                "1e-10",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["factorization_sensitivity"] ** 2 == pytest.approx(2.0)
    assert out["min_separation"] == 1000 and out["participations"] == 2
    assert round(out["epsilon"], 5) == 0.99355


def test_bandmf_beats_tree_aggregation_at_equal_epsilon():
    """Error of the prefix sums (what the model accumulates) per unit accounted noise."""
    rounds, epochs = 64, 4
    ctx = plan(
        "dp=bandmf",
        "strategy.clients_per_round=12",
        f"rounds={rounds}",
        population=Population(12 * rounds // epochs, None, 1),
    ).context
    tree = mf.tree_prefix_sum_error(rounds, "rmse", participations=epochs)
    for factorization in ("banded", "blt"):
        mechanism = BandMFMechanism(1.0, 1.0, factorization)
        coefficients = mechanism.strategy(ctx).coefficients
        sens = mechanism.epoch_sensitivities(ctx)[-1]
        error = sens * mf.toeplitz_prefix_sum_error(coefficients, rounds, "rmse")
        assert error < 0.8 * tree, factorization


# ---------------------------------------------------------------------- the server's query
def streamed(strategy, sigma, rounds, shape=(4000,), clip=1e9, records=None):
    """The query's noised sums over ``rounds`` rounds (records: per round, else zeros)."""
    import tensorflow as tf

    from dpfed.privacy.queries import FactorizedGaussianSumQuery

    query = FactorizedGaussianSumQuery(
        clip,
        sigma,
        7,
        [tf.TensorSpec(shape)],
        strategy.stream,
        strategy.scale,
        strategy.mix,
        strategy.decay,
    )
    state, out = query.initial_global_state(), []
    for t in range(rounds):
        record = [np.zeros(shape, np.float32) if records is None else records[t]]
        params = query.derive_sample_params(state)
        sample = query.accumulate_record(params, query.initial_sample_state(record), record)
        result, state, _ = query.get_noised_result(sample, state)
        out.append(np.asarray(result[0], np.float64))
    return np.stack(out)


@pytest.mark.parametrize("factorization", ["banded", "blt"])
def test_noise_over_rounds_has_the_factorizations_covariance(factorization):
    rounds, sigma = 8, 2.0
    ctx = plan(
        "dp=bandmf",
        f"dp.factorization={factorization}",
        "strategy.clients_per_round=50",
        f"rounds={rounds}",
        population=Population(200, None, 1),
    ).context
    strategy = BandMFMechanism(1.0, 1.0, factorization, bands=3).strategy(ctx)
    noise = streamed(strategy, sigma, rounds)  # (rounds, coordinates): coordinates independent
    C = mf.toeplitz(strategy.coefficients, rounds)
    inverse = np.linalg.inv(C)
    want = sigma**2 * inverse @ inverse.T
    got = np.cov(noise)
    assert np.abs(got - want).max() < 0.1 * sigma**2  # 4000 samples per entry
    white = C @ noise  # the release C x + z, with x = 0
    assert np.abs(np.cov(white) - sigma**2 * np.eye(rounds)).max() < 0.1 * sigma**2
    assert np.abs(noise - streamed(strategy, sigma, rounds)).max() == 0  # seeded


def test_without_noise_the_query_releases_the_clipped_sum():
    ctx = plan("dp=bandmf", "rounds=5").context
    strategy = BandMFMechanism(1.0, 1.0, "banded", bands=3).strategy(ctx)
    rng = np.random.default_rng(0)
    records = [rng.normal(size=50).astype(np.float32) for _ in range(5)]
    got = streamed(strategy, 0.0, 5, shape=(50,), clip=1.0, records=records)
    for t, record in enumerate(records):
        want = record / max(1.0, np.linalg.norm(record))
        np.testing.assert_allclose(got[t], want, rtol=1e-6)


@pytest.mark.slow
def test_a_round_without_noise_is_a_plain_fedavg_round(runtime):
    from tests.helpers import first_rounds

    cyclic = ("strategy.sampling=cyclic", "strategy.weighted=false")
    plain = first_rounds(*cyclic, "dp=none", rounds=2)
    factorized = first_rounds("dp=bandmf", "dp.noise_multiplier=0", "dp.clip=inf", rounds=2)
    for a, b in zip(plain[1], factorized[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not all(np.allclose(a, b) for a, b in zip(plain[0], plain[1], strict=True))


def test_bands_default_to_an_epoch_and_the_noise_state_is_described():
    got = plan("dp=bandmf", "rounds=25").describe()
    assert got["bands"] == 10 and got["noise_state_vectors"] == 9
    assert got["rounds_per_epoch"] == 10 and got["min_separation"] == 10
    assert math.isfinite(got["prefix_sum_rmse_per_noise_multiplier"])
