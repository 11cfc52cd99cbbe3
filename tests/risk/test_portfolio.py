"""Portfolio risk: VaR against closed forms, hand-computed historical VaR, stress
P&L, concentration, the weighted score and level, batch VaR."""
import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from apps.risk.analytics.portfolio import (
    DEFAULT_STRESS_SCENARIOS,
    Position,
    ReturnsHistory,
    RiskLevel,
    StressKind,
    StressScenario,
    assess_portfolio_risk,
    batch_var,
    concentration_score,
    covariance_factor,
    historical_var,
    monte_carlo_var,
    notional_matrix,
    order_statistic_index,
    overall_risk_score,
    parametric_var,
    risk_level,
    run_stress_tests,
    score_components,
    simulate_scenarios,
    var_from_pnl,
)

Z = NormalDist()
Z95, Z99 = Z.inv_cdf(0.95), Z.inv_cdf(0.99)


def quantile_error(confidence, paths):
    """Standard error of an empirical quantile of N(0, 1) over `paths` draws."""
    p = 1 - confidence
    return math.sqrt(p * (1 - p) / paths) / Z.pdf(Z.inv_cdf(confidence))


def btc_eth_history(n=750, seed=1):
    rng = np.random.default_rng(seed)
    cov = np.array([[0.04**2, 0.8 * 0.04 * 0.05], [0.8 * 0.04 * 0.05, 0.05**2]])
    return ReturnsHistory(("BTCUSDT", "ETHUSDT"), rng.multivariate_normal([0, 0], cov, n))


@pytest.mark.parametrize("quantity", [20.0, -20.0])
def test_monte_carlo_var_matches_closed_form_for_one_normal_position(quantity):
    sigma, price, paths = 0.04, 50_000.0, 10_000
    notional = abs(quantity * price)
    res = monte_carlo_var([quantity * price], [[sigma**2]], paths=paths, seed=123)
    for conf, var, es in ((0.95, res.var_95, res.es_95), (0.99, res.var_99, res.es_99)):
        z = Z.inv_cdf(conf)
        expected = z * sigma * notional
        assert abs(var - expected) < 4 * quantile_error(conf, paths) * sigma * notional
        assert parametric_var([quantity * price], [[sigma**2]], conf) == pytest.approx(expected)
        # ES of a normal: sigma * pdf(z) / (1 - c); loose, it is a tail mean.
        assert es == pytest.approx(sigma * notional * Z.pdf(z) / (1 - conf), rel=0.05)
    assert res.observations == paths


def test_monte_carlo_var_correlated_matches_parametric():
    cov = np.array([[0.04**2, 0.8 * 0.04 * 0.05], [0.8 * 0.04 * 0.05, 0.05**2]])
    w = np.array([50_000.0, -30_000.0])
    sigma_p = math.sqrt(w @ cov @ w)
    res = monte_carlo_var(w, cov, paths=200_000, seed=9)
    assert abs(res.var_95 - Z95 * sigma_p) < 4 * quantile_error(0.95, 200_000) * sigma_p
    assert abs(res.var_99 - Z99 * sigma_p) < 4 * quantile_error(0.99, 200_000) * sigma_p


def test_simulated_scenarios_have_the_target_covariance_and_are_seeded():
    cov = np.array([[4.0, 1.2, 0.0], [1.2, 1.0, -0.3], [0.0, -0.3, 0.25]]) * 1e-4
    s = simulate_scenarios(cov, paths=100_000, seed=1)
    assert s.shape == (100_000, 3)
    np.testing.assert_allclose(np.cov(s, rowvar=False), cov, atol=3e-6)
    np.testing.assert_array_equal(s, simulate_scenarios(cov, paths=100_000, seed=1))
    assert not np.array_equal(s, simulate_scenarios(cov, paths=100_000, seed=2))
    np.testing.assert_allclose(simulate_scenarios(cov, paths=10, seed=1, horizon=4.0), 2 * s[:10])


def test_non_positive_definite_covariance_falls_back_to_eigen_factor():
    sigma = 0.05
    singular = np.full((2, 2), sigma**2)  # perfectly correlated: Cholesky fails
    L, method = covariance_factor(singular)
    assert method == "eigen"
    np.testing.assert_allclose(L @ L.T, singular, atol=1e-15)
    # Long 1 + long 1 of perfectly correlated assets = one asset with twice the notional.
    two = monte_carlo_var([1000.0, 1000.0], singular, seed=4)
    one = monte_carlo_var([2000.0], [[sigma**2]], seed=4)
    assert two.var_99 == pytest.approx(Z99 * sigma * 2000, rel=0.05)
    assert two.var_99 == pytest.approx(one.var_99, rel=0.05)
    # Slightly indefinite (an estimation artefact): clipped to the nearest PSD matrix.
    bad = np.array([[1.0, 0.9, 0.7], [0.9, 1.0, 0.3], [0.7, 0.3, 1.0]]) * 1e-4
    bad[0, 1] = bad[1, 0] = 1.2e-4
    assert np.linalg.eigvalsh(bad).min() < 0
    L, method = covariance_factor(bad)
    assert method == "eigen" and np.all(np.isfinite(L))
    assert covariance_factor(np.eye(3))[1] == "cholesky"


def test_short_history_with_more_symbols_than_periods_still_works():
    rng = np.random.default_rng(0)
    history = ReturnsHistory(tuple(f"S{i}" for i in range(5)), rng.normal(0, 0.03, (3, 5)))
    res = assess_portfolio_risk([Position("S0", 1, 100), Position("S4", -2, 50)], 1000.0, history, paths=2000)
    assert res.covariance_method == "eigen"
    assert res.var_99 >= res.var_95 >= 0


def test_historical_var_hand_example():
    # One symbol, notional 1,000; 20 daily returns (in %): losses -7, -5, -4, ...
    returns = np.array([-7, 3, -5, 1, 2, -4, 0.5, 1.5, -1, 2.5, -2, 0, 1, -3, 4, -0.5, 0.7, 1.2, -1.5, 2.2]) / 100
    res = historical_var([1000.0], returns[:, None])
    # 20 observations: 95% -> index floor(0.05*20) = 1 (second worst), 99% -> index 0 (worst).
    assert order_statistic_index(0.95, 20) == 1 and order_statistic_index(0.99, 20) == 0
    assert res.var_95 == pytest.approx(50.0)
    assert res.var_99 == pytest.approx(70.0)
    assert res.es_95 == pytest.approx((70 + 50) / 2)
    assert res.es_99 == pytest.approx(70.0)
    assert res.observations == 20
    # A short position loses on the up days: worst +4%, second +3%.
    short = historical_var([-1000.0], returns[:, None])
    assert (short.var_95, short.var_99) == (pytest.approx(30.0), pytest.approx(40.0))


def test_order_statistic_index_is_the_seeds():
    assert order_statistic_index(0.95, 10_000) == 500
    assert order_statistic_index(0.99, 10_000) == 100


def test_var_from_pnl_matches_sorting():
    rng = np.random.default_rng(5)
    pnl = rng.normal(0, 1, (7, 1234))
    var, es = var_from_pnl(pnl, (0.95, 0.99, 0.975))
    s = np.sort(pnl, axis=1)
    for j, c in enumerate((0.95, 0.99, 0.975)):
        k = int((1 - c) * 1234 + 1e-9)
        np.testing.assert_allclose(var[:, j], -s[:, k])
        np.testing.assert_allclose(es[:, j], -s[:, : k + 1].mean(axis=1))
    v1, e1 = var_from_pnl(pnl[0], (0.95,))
    assert v1.shape == (1,) and v1[0] == var[0, 0]


HAND_COV = np.array([[0.04**2, 0.5 * 0.04 * 0.05], [0.5 * 0.04 * 0.05, 0.05**2]])


def test_stress_scenarios_by_hand():
    # Long 1 BTC at 50,000 and short 10 ETH at 3,000: notional +50,000 / -30,000, net +20,000.
    w = np.array([50_000.0, -30_000.0])
    res = {r.name: r.pnl for r in run_stress_tests(w, HAND_COV)}
    assert res["market_up_10"] == pytest.approx(2_000.0)
    assert res["market_up_20"] == pytest.approx(4_000.0)
    assert res["market_up_30"] == pytest.approx(6_000.0)
    assert res["market_down_10"] == pytest.approx(-2_000.0)
    assert res["market_down_20"] == pytest.approx(-4_000.0)
    assert res["market_down_30"] == pytest.approx(-6_000.0)
    # Portfolio sigma: sqrt(2000^2 + 1500^2 - 2*0.5*2000*1500) = sqrt(3,250,000) = 1802.78
    sigma_p = math.sqrt(2000**2 + 1500**2 - 2 * 0.5 * 2000 * 1500)
    assert res["volatility_spike_2x"] == pytest.approx(-Z99 * 2 * sigma_p)
    assert res["volatility_spike_3x"] == pytest.approx(-Z99 * 3 * sigma_p)
    # Correlation one: BTC and ETH move z*sigma the same way: |2000 - 1500| = 500.
    assert res["correlation_one"] == pytest.approx(-Z99 * 500.0)
    # Correlation zero: sqrt(2000^2 + 1500^2) = 2500.
    assert res["correlation_breakdown"] == pytest.approx(-Z99 * 2500.0)
    assert list(res) == [s.name for s in DEFAULT_STRESS_SCENARIOS]


def test_stress_custom_scenario_and_missing_covariance():
    only_moves = [StressScenario("crash_50", StressKind.PRICE_MOVE, -0.5)]
    (r,) = run_stress_tests([10_000.0, 5_000.0], None, only_moves)
    assert (r.name, r.pnl) == ("crash_50", -7_500.0)
    with pytest.raises(ValueError):
        run_stress_tests([1.0], None)


def test_a_stress_kind_given_as_its_value_is_that_kind():
    # A scenario's kind may be the StressKind or its string value (run_stress_tests converts it):
    # the same formula and the same need for a covariance, and an unknown kind is refused.
    w = np.array([50_000.0, -30_000.0])
    for kind in StressKind:
        as_enum, as_value = StressScenario("s", kind, 2.0), StressScenario("s", kind.value, 2.0)
        assert run_stress_tests(w, HAND_COV, [as_value])[0].pnl == run_stress_tests(w, HAND_COV, [as_enum])[0].pnl
    (r,) = run_stress_tests([10_000.0, 5_000.0], None, [StressScenario("crash_50", "price_move", -0.5)])
    assert r.pnl == -7_500.0
    with pytest.raises(ValueError, match="needs a covariance"):
        run_stress_tests(w, None, [StressScenario("vol", "volatility_spike", 2.0)])
    with pytest.raises(ValueError, match="sideways"):
        run_stress_tests(w, HAND_COV, [StressScenario("odd", "sideways", 1.0)])


@pytest.mark.parametrize(
    "notional, expected",
    [
        ([50_000.0], 1.0),
        ([10_000.0, -10_000.0], 0.5),
        ([50_000.0, -30_000.0], 0.625**2 + 0.375**2),
        ([1.0, 1.0, 1.0, 1.0], 0.25),
        ([0.0, 0.0], 0.0),
    ],
)
def test_concentration_is_herfindahl_of_gross_notional(notional, expected):
    assert concentration_score(notional) == pytest.approx(expected)


def test_overall_score_hand_example():
    # VaR95 2% of equity -> 20, VaR99 3% -> 30, stress 10% -> 50, concentration 0.5 -> 50.
    kw = dict(var_95_ratio=0.02, var_99_ratio=0.03, stress_loss_ratio=0.10, concentration=0.5)
    assert score_components(**kw) == pytest.approx({"var_95": 20, "var_99": 30, "stress_loss": 50, "concentration": 50})
    score = overall_risk_score(**kw)
    assert score == pytest.approx(0.3 * 20 + 0.2 * 30 + 0.3 * 50 + 0.2 * 50)  # 37
    assert risk_level(score) is RiskLevel.MEDIUM
    # Each component caps at 100.
    assert overall_risk_score(var_95_ratio=0.5, var_99_ratio=2, stress_loss_ratio=math.inf, concentration=1) == 100
    assert overall_risk_score(var_95_ratio=0, var_99_ratio=0, stress_loss_ratio=0, concentration=0) == 0


@pytest.mark.parametrize(
    "score, level",
    [(0, RiskLevel.LOW), (24.99, RiskLevel.LOW), (25, RiskLevel.MEDIUM), (49.9, RiskLevel.MEDIUM),
     (50, RiskLevel.HIGH), (74.9, RiskLevel.HIGH), (75, RiskLevel.CRITICAL), (100, RiskLevel.CRITICAL)],
)
def test_risk_level_bands(score, level):
    assert risk_level(score) is level


def test_assessment_hand_example_with_given_scenarios():
    # Two symbols, four scenario rows chosen by hand so every number can be checked.
    history = ReturnsHistory(("BTCUSDT", "ETHUSDT"), HAND_COV_RETURNS)
    positions = [Position("BTCUSDT", 1, 50_000), Position("ETHUSDT", -10, 3_000)]
    scenarios = np.array([[-0.10, -0.05], [0.02, 0.01], [-0.02, 0.03], [0.0, 0.0]])
    # P&L per row: -5000+1500=-3500, 1000-300=700, -1000-900=-1900, 0.
    res = assess_portfolio_risk(positions, 100_000, history, scenarios=scenarios)
    assert res.monte_carlo.var_95 == pytest.approx(3500.0)  # index floor(0.05*4) = 0
    assert res.gross_notional == 80_000 and res.net_notional == 20_000
    assert res.var_95_ratio == pytest.approx(0.035)
    assert res.concentration == pytest.approx(0.53125)
    worst = min(res.stress, key=lambda s: s.pnl)
    assert res.stress_loss == pytest.approx(-worst.pnl) and res.worst_scenario == worst.name
    expected = overall_risk_score(
        var_95_ratio=0.035, var_99_ratio=0.035, stress_loss_ratio=res.stress_loss / 100_000, concentration=0.53125
    )
    assert res.overall_score == pytest.approx(expected)
    codes = [r.code for r in res.recommendations]
    assert "DIVERSIFY" in codes  # 62.5% of gross notional in BTC


HAND_COV_RETURNS = np.array([[0.01, 0.02], [-0.02, -0.01], [0.03, 0.0], [0.0, 0.01], [-0.01, -0.03]])


def test_assessment_levels_from_empty_to_critical():
    history = btc_eth_history()
    empty = assess_portfolio_risk([], 10_000, history)
    assert empty.overall_score == 0 and empty.level is RiskLevel.LOW and empty.recommendations == ()

    small = assess_portfolio_risk(
        [Position("BTCUSDT", 0.01, 50_000), Position("ETHUSDT", 0.2, 3_000)], 100_000, history
    )
    assert small.level is RiskLevel.LOW

    levered = assess_portfolio_risk([Position("BTCUSDT", 10, 50_000)], 100_000, history)  # 5x
    assert levered.level is RiskLevel.CRITICAL and levered.overall_score == pytest.approx(100.0)
    codes = [r.code for r in levered.recommendations]
    assert codes == ["REDUCE_ONLY", "REDUCE_LEVERAGE", "STRESS_LIQUIDATION", "DIVERSIFY"]

    broke = assess_portfolio_risk([Position("BTCUSDT", 0.01, 50_000)], -5.0, history)
    assert broke.level is RiskLevel.CRITICAL and broke.recommendations[0].code == "NEGATIVE_EQUITY"


def test_unknown_symbol_is_refused():
    with pytest.raises(KeyError):
        assess_portfolio_risk([Position("DOGEUSDT", 1, 0.1)], 100, btc_eth_history())


def test_assessment_is_deterministic_with_default_seed():
    history = btc_eth_history()
    positions = [Position("BTCUSDT", 1, 50_000)]
    a = assess_portfolio_risk(positions, 100_000, history)
    b = assess_portfolio_risk(positions, 100_000, history)
    assert a.monte_carlo == b.monte_carlo


covariances = hnp.arrays(np.float64, (3, 3), elements=st.floats(-0.05, 0.05)).map(lambda a: a @ a.T + 1e-6 * np.eye(3))
notionals = hnp.arrays(np.float64, 3, elements=st.floats(-1e6, 1e6))


@given(notional=notionals, cov=covariances, scale=st.floats(0.01, 100))
@settings(max_examples=50, deadline=None)
def test_var_is_monotone_in_confidence_and_homogeneous(notional, cov, scale):
    res = monte_carlo_var(notional, cov, paths=2000, seed=3)
    assert 0 <= res.var_95 <= res.var_99
    assert res.var_95 <= res.es_95 <= res.es_99 + 1e-9 * (1 + res.es_99)
    var, _ = var_from_pnl(simulate_scenarios(cov, paths=2000, seed=3) @ notional, (0.9, 0.95, 0.975, 0.99, 0.999))
    assert np.all(np.diff(var) >= 0)
    scaled = monte_carlo_var(notional * scale, cov, paths=2000, seed=3)
    assert scaled.var_99 == pytest.approx(scale * res.var_99, rel=1e-9, abs=1e-9)


@given(notional=notionals, cov=covariances)
@settings(max_examples=30, deadline=None)
def test_stress_losses_are_ordered(notional, cov):
    res = {r.name: r.pnl for r in run_stress_tests(notional, cov)}
    assert res["volatility_spike_3x"] <= res["volatility_spike_2x"] <= 0
    assert res["market_down_30"] == pytest.approx(-res["market_up_30"])
    assert abs(res["market_down_30"]) >= abs(res["market_down_10"])


def test_batch_var_equals_single_account_var_on_shared_scenarios():
    rng = np.random.default_rng(8)
    n_symbols = 6
    a = rng.normal(size=(n_symbols, n_symbols))
    cov = (a @ a.T / n_symbols + np.eye(n_symbols)) * 4e-4
    quantities = rng.normal(0, 1, (300, n_symbols))
    quantities[5] = 0.0  # an account without positions
    prices = rng.uniform(1, 50_000, n_symbols)
    w = notional_matrix(quantities, prices)
    res = batch_var(w, covariance=cov, paths=5000, seed=77, chunk_size=32)
    assert res.var.shape == (300, 2) and res.confidences == (0.95, 0.99)
    scen = simulate_scenarios(cov, paths=5000, seed=77)
    for i in (0, 5, 17, 299):
        single = monte_carlo_var(w[i], scenarios=scen)
        assert res.var_95[i] == pytest.approx(single.var_95, rel=1e-12, abs=1e-9)
        assert res.var_99[i] == pytest.approx(single.var_99, rel=1e-12, abs=1e-9)
        assert res.es_at(0.99)[i] == pytest.approx(single.es_99, rel=1e-12, abs=1e-9)
    assert res.var_95[5] == 0 and res.var_99[5] == 0
    assert np.all(res.var_99 >= res.var_95)
    # Chunking changes nothing; float32 changes little.
    other = batch_var(w, scenarios=scen, chunk_size=299)
    np.testing.assert_allclose(other.var, res.var, rtol=1e-12)
    single_precision = batch_var(w, scenarios=scen, dtype=np.float32)
    np.testing.assert_allclose(single_precision.var, res.var, rtol=1e-4)


@pytest.mark.parametrize("start_method", [None, pytest.param("spawn", marks=pytest.mark.slow)])
def test_batch_var_worker_processes_give_the_same_numbers(start_method):
    rng = np.random.default_rng(2)
    cov = np.diag(rng.uniform(0.02, 0.06, 4) ** 2)
    w = rng.normal(0, 1e4, (400, 4))
    one = batch_var(w, covariance=cov, paths=3000, chunk_size=50)
    two = batch_var(w, covariance=cov, paths=3000, chunk_size=50, workers=2, start_method=start_method)
    assert len(two.worker_seconds) == 2
    np.testing.assert_allclose(two.var, one.var, rtol=1e-12)
    np.testing.assert_allclose(two.es, one.es, rtol=1e-12)


def test_inputs_are_validated():
    with pytest.raises(ValueError):
        ReturnsHistory(("A", "B"), np.zeros((10, 3)))
    with pytest.raises(ValueError):
        ReturnsHistory(("A", "A"), np.zeros((10, 2)))
    with pytest.raises(ValueError):
        ReturnsHistory(("A",), [[np.nan], [0.0]])
    with pytest.raises(ValueError):
        monte_carlo_var([1.0, 2.0], [[1e-4]])
    with pytest.raises(ValueError):
        batch_var(np.ones(3), covariance=[[1e-4]])
    with pytest.raises(ValueError):
        order_statistic_index(1.0, 100)


def test_score_calibration_rescales_the_components():
    from apps.risk.analytics.portfolio import ScoreCalibration

    kw = dict(var_95_ratio=0.05, var_99_ratio=0.07, stress_loss_ratio=0.3, concentration=1.0)
    seed = score_components(**kw)
    assert seed == pytest.approx({"var_95": 50, "var_99": 70, "stress_loss": 100, "concentration": 100})
    loose = score_components(**kw, calibration=ScoreCalibration(var_full_scale=0.5, stress_full_scale=1.0))
    assert loose == pytest.approx({"var_95": 10, "var_99": 14, "stress_loss": 30, "concentration": 100})


def test_batch_var_restores_the_callers_blas_threads():
    from apps.risk.analytics.portfolio import _openblas_thread_controls

    before = [getter() for getter, _ in _openblas_thread_controls()]
    batch_var(np.ones((10, 2)), covariance=np.eye(2) * 1e-4, paths=500)
    assert [getter() for getter, _ in _openblas_thread_controls()] == before
