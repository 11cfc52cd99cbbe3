"""Realized volatility annualization and GARCH(1,1) against the `arch` package."""
import math

import numpy as np
import pytest

from apps.risk.analytics.volatility import (
    ANNUALIZATION_FACTORS,
    GARCH_MIN_OBSERVATIONS,
    fit_garch,
    garch_forecast,
    garch_volatility,
    log_returns,
    realized_volatility,
    sample_volatility,
    simulate_garch,
)

TRUE = dict(omega=0.05, alpha=0.10, beta=0.85)  # percent returns: long-run variance 1.0


@pytest.fixture(scope="module")
def garch_returns():
    # Percent-scale returns keep arch's data-scale check quiet without rescaling.
    return simulate_garch(3000, **TRUE, mu=0.02, rng=np.random.default_rng(20240601))


@pytest.fixture(scope="module")
def arch_model():
    from arch import arch_model as reference

    return reference


def test_annualization_factors_are_the_seeds():
    assert ANNUALIZATION_FACTORS == {"daily": 252, "hourly": 6048, "minute": 362880}


@pytest.mark.parametrize(
    "frequency, expected",
    [("daily", 0.01 * math.sqrt(252)), ("hourly", 0.01 * math.sqrt(252 * 24)), ("minute", 0.01 * math.sqrt(252 * 24 * 60))],
)
def test_realized_volatility_hand_example(frequency, expected):
    # Log returns alternate +1% / -1%: mean square 1e-4 whatever the window length.
    prices = 100 * np.exp(np.cumsum([0.0] + [0.01, -0.01] * 10))
    assert realized_volatility(prices, frequency) == pytest.approx(expected, rel=1e-12)
    assert realized_volatility(prices[:5], frequency) == pytest.approx(expected, rel=1e-12)


def test_realized_volatility_recovers_simulated_hourly_volatility():
    rng = np.random.default_rng(3)
    sigma_annual = 0.8
    step = sigma_annual / math.sqrt(252 * 24)
    prices = 30000 * np.exp(np.cumsum(rng.normal(0, step, 20000)))
    assert realized_volatility(prices, "hourly") == pytest.approx(sigma_annual, rel=0.02)


def test_realized_volatility_edge_cases():
    assert realized_volatility([100.0]) == 0.0
    assert realized_volatility([]) == 0.0
    with pytest.raises(ValueError):
        realized_volatility([100.0, 0.0])
    with pytest.raises(ValueError):
        realized_volatility([100.0, 101.0], "weekly")
    np.testing.assert_allclose(log_returns([100, 110, 99]), [math.log(1.1), math.log(0.9)])


@pytest.mark.parametrize("mean, arch_mean", [("constant", "Constant"), ("zero", "Zero")])
def test_garch_matches_arch(garch_returns, arch_model, mean, arch_mean):
    ours = fit_garch(garch_returns, mean=mean)
    ref = arch_model(garch_returns, mean=arch_mean, vol="GARCH", p=1, q=1, dist="normal", rescale=False).fit(
        disp="off"
    )
    p = ref.params
    assert ours.converged
    assert ours.omega == pytest.approx(p["omega"], rel=5e-3)
    assert ours.alpha == pytest.approx(p["alpha[1]"], abs=1e-3)
    assert ours.beta == pytest.approx(p["beta[1]"], abs=1e-3)
    if mean == "constant":
        assert ours.mu == pytest.approx(p["mu"], abs=1e-3)
    # Same likelihood definition (backcast included): the maxima agree closely and
    # ours is not worse than arch's.
    assert ours.loglikelihood == pytest.approx(ref.loglikelihood, abs=1e-3)
    assert ours.loglikelihood >= ref.loglikelihood - 1e-6
    np.testing.assert_allclose(ours.conditional_variance, ref.conditional_volatility**2, rtol=5e-3)
    arch_forecast = ref.forecast(horizon=10, reindex=False).variance.to_numpy()[0]
    np.testing.assert_allclose(ours.forecast_variance(10), arch_forecast, rtol=1e-3)


def test_garch_recovers_known_parameters(garch_returns):
    fit = fit_garch(garch_returns)
    assert fit.alpha == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit.beta == pytest.approx(TRUE["beta"], abs=0.05)
    assert fit.long_run_variance == pytest.approx(1.0, rel=0.25)
    assert fit.persistence < 1.0


def test_garch_is_scale_invariant(garch_returns):
    pct = fit_garch(garch_returns)
    frac = fit_garch(garch_returns / 100.0)
    assert frac.alpha == pytest.approx(pct.alpha, abs=1e-6)
    assert frac.beta == pytest.approx(pct.beta, abs=1e-6)
    assert frac.omega == pytest.approx(pct.omega / 1e4, rel=1e-4)
    # y = r/100 shifts the Gaussian log-likelihood by n ln 100.
    assert frac.loglikelihood == pytest.approx(pct.loglikelihood + pct.nobs * math.log(100), abs=1e-4)


def test_garch_respects_stationarity_on_near_integrated_data():
    r = simulate_garch(2000, omega=0.01, alpha=0.12, beta=0.875, rng=5)
    fit = fit_garch(r)
    assert fit.alpha >= 0 and fit.beta >= 0 and fit.omega > 0
    assert fit.persistence <= 1 - 1e-6 + 1e-12


def test_garch_forecast_mean_reverts_to_long_run(garch_returns):
    fit = fit_garch(garch_returns)
    var = fit.forecast_variance(500)
    assert var[0] == pytest.approx(fit.next_variance())
    gaps = np.abs(var - fit.long_run_variance)
    assert np.all(np.diff(gaps) <= 1e-15)
    assert var[-1] == pytest.approx(fit.long_run_variance, rel=1e-6)
    vols = fit.forecast_volatility(30, periods_per_year=252)
    np.testing.assert_allclose(vols, np.sqrt(var[:30] * 252))


def test_garch_volatility_falls_back_below_threshold(garch_returns):
    short = garch_returns[: GARCH_MIN_OBSERVATIONS - 1]
    est = garch_volatility(short)
    assert est.method == "sample" and est.fit is None
    assert est.volatility == pytest.approx(sample_volatility(short, 252))
    assert est.volatility == pytest.approx(np.std(short, ddof=1) * math.sqrt(252))
    flat = garch_forecast(short, horizon=5)
    np.testing.assert_allclose(flat, est.volatility)

    full = garch_volatility(garch_returns[:GARCH_MIN_OBSERVATIONS])
    assert full.method == "garch"
    assert full.volatility == pytest.approx(math.sqrt(full.fit.next_variance() * 252))
    np.testing.assert_allclose(garch_forecast(garch_returns[:GARCH_MIN_OBSERVATIONS], horizon=3)[0], full.volatility)


def test_garch_rejects_degenerate_input():
    with pytest.raises(ValueError):
        fit_garch(np.zeros(50))
    with pytest.raises(ValueError):
        fit_garch([0.01] * 5)
    with pytest.raises(ValueError):
        simulate_garch(10, omega=0.1, alpha=0.5, beta=0.6)


def test_garch_falls_back_to_the_sample_volatility_on_flat_returns():
    estimate = garch_volatility(np.zeros(300))
    assert (estimate.method, estimate.volatility) == ("sample", 0.0)
