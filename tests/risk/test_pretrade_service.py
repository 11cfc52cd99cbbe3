"""The pre-trade gate as order entry calls it, and the score calibration behind it."""
from decimal import Decimal

import numpy as np
import pytest

from apps.risk.analytics import RISK_LEVEL_THRESHOLDS, RiskLevel, ScoreCalibration
from apps.risk.market import MarketModel, parametric_score
from apps.risk.services import risk_assess_all, risk_pretrade_check, risk_pretrade_evaluate
from apps.trading.models import Order, OrderStatus
from exchange.errors import ErrorCode, ExchangeError

from .conftest import NOW, fund, hold, set_mark

D = Decimal
CALIBRATED = ScoreCalibration(var_full_scale=5.0, stress_full_scale=20.0)


def one_symbol(vol):
    return MarketModel(symbols=("BTCUSDT",), daily_vols=np.array([vol]), correlation=np.eye(1),
                       vol_sources=("garch",))


@pytest.mark.parametrize("leverage, level", [
    (1, RiskLevel.LOW), (5, RiskLevel.MEDIUM), (10, RiskLevel.MEDIUM), (20, RiskLevel.MEDIUM),
    (30, RiskLevel.HIGH), (40, RiskLevel.HIGH), (50, RiskLevel.CRITICAL), (125, RiskLevel.CRITICAL),
])
def test_calibration_table_at_4pct_daily_volatility(leverage, level):
    """The table in apps/risk/conf.py: score = 20 + 1.22·L for one symbol at σ = 4%."""
    score, got = parametric_score(one_symbol(0.04), np.array([leverage * 1_000.0]), 1_000.0,
                                  calibration=CALIBRATED, thresholds=RISK_LEVEL_THRESHOLDS)
    assert got is level
    if leverage <= 50:
        assert score == pytest.approx(20 + 1.2167 * leverage, abs=0.05)


def test_the_seed_calibration_refuses_ordinary_leverage():
    """Why the scale was changed: with the seed's (10% VaR, 20% stress = 100) even 1× is CRITICAL."""
    _, level = parametric_score(one_symbol(0.04), np.array([1_000.0]), 1_000.0,
                                calibration=ScoreCalibration(), thresholds=RISK_LEVEL_THRESHOLDS)
    assert level is RiskLevel.CRITICAL


@pytest.fixture
def trader(alice, usdt, btcusdt):
    fund(alice, usdt, "10000")
    set_mark(btcusdt, "50000")
    return alice


def test_normal_leveraged_orders_pass(trader, btcusdt):
    # No volatility estimate yet: default 5% daily. 2 BTC on 10,000 equity is 10×: MEDIUM.
    risk_pretrade_check(user=trader, contract=btcusdt, side="BUY", quantity=D("2"), price=D("50000"))
    result = risk_pretrade_evaluate(user=trader, contract=btcusdt, side="BUY", quantity=D("2"), price=D("50000"))
    assert result.level_before is RiskLevel.LOW and result.level_after is RiskLevel.MEDIUM and not result.reject
    # 20× short is fine as well.
    risk_pretrade_check(user=trader, contract=btcusdt, side="SELL", quantity=D("4"), price=D("50000"))


def test_an_extreme_order_is_refused(trader, btcusdt):
    with pytest.raises(ExchangeError) as err:  # 20 BTC on 10,000 is 100×
        risk_pretrade_check(user=trader, contract=btcusdt, side="BUY", quantity=D("20"), price=D("50000"))
    assert err.value.code == ErrorCode.RISK_TOO_HIGH == -2030
    assert err.value.msg.startswith("风险过高 (risk too high)") and "CRITICAL" in err.value.msg
    assert err.value.as_body()["code"] == -2030


def test_reducing_a_critical_position_is_accepted_adding_is_not(trader, btcusdt):
    hold(trader, btcusdt, "15", "50000")  # 75×: CRITICAL already
    risk_pretrade_check(user=trader, contract=btcusdt, side="SELL", quantity=D("5"), price=D("50000"))
    with pytest.raises(ExchangeError):
        risk_pretrade_check(user=trader, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    with pytest.raises(ExchangeError):  # flipping to a larger short is not a reduction
        risk_pretrade_check(user=trader, contract=btcusdt, side="SELL", quantity=D("35"), price=D("50000"))


def test_resting_orders_count_worst_side(trader, btcusdt):
    # 5 BTC alone is 25×: accepted.
    risk_pretrade_check(user=trader, contract=btcusdt, side="BUY", quantity=D("5"), price=D("50000"))
    Order.objects.create(user=trader, contract=btcusdt, client_order_id="rest-1", side="BUY", order_type="LIMIT",
                         price=D("49000"), quantity=D("5"), status=OrderStatus.NEW)
    # With 5 BTC of buys resting, another 5 would make 50×: refused. A sell of 5 is not
    # worse than the resting buys: accepted.
    with pytest.raises(ExchangeError):
        risk_pretrade_check(user=trader, contract=btcusdt, side="BUY", quantity=D("5"), price=D("50000"))
    risk_pretrade_check(user=trader, contract=btcusdt, side="SELL", quantity=D("5"), price=D("51000"))


def test_gate_can_be_switched_off_or_loosened(trader, btcusdt, settings):
    settings.RISK_PRETRADE_MAX_LEVEL = "CRITICAL"
    risk_pretrade_check(user=trader, contract=btcusdt, side="BUY", quantity=D("20"), price=D("50000"))
    settings.RISK_PRETRADE_MAX_LEVEL = "HIGH"
    settings.RISK_PRETRADE_ENABLED = False
    risk_pretrade_check(user=trader, contract=btcusdt, side="BUY", quantity=D("20"), price=D("50000"))


def test_parametric_level_agrees_with_the_monte_carlo_snapshot(trader, btcusdt):
    hold(trader, btcusdt, "6", "50000")  # 30×
    run = risk_assess_all(now=NOW)
    snap = run.snapshots.get()
    result = risk_pretrade_evaluate(user=trader, contract=btcusdt, side="BUY", quantity=D("0.001"),
                                    price=D("50000"))
    assert result.level_before == snap.level == RiskLevel.HIGH
    assert result.score_before == pytest.approx(snap.overall_score, abs=1.0)  # Monte Carlo error only


def test_bad_arguments(trader, btcusdt):
    with pytest.raises(ValueError):
        risk_pretrade_evaluate(user=trader, contract=btcusdt, side="HOLD", quantity=D("1"), price=D("1"))
    with pytest.raises(ValueError):
        risk_pretrade_evaluate(user=trader, contract=btcusdt, side="BUY", quantity=D("0"), price=D("1"))


def test_parametric_score_is_the_library_formulas():
    """The gate's float arithmetic on the non-zero weights gives the score the library's
    array functions give (closed-form VaR, `run_stress_tests`, `concentration_score`)."""
    from apps.risk.analytics import SCORE_WEIGHTS, concentration_score, risk_level, run_stress_tests, score_components
    from apps.risk.market import _Z95, _Z99, _ratio

    rng = np.random.default_rng(7)
    vols = rng.uniform(0.02, 0.09, 6)
    corr = np.full((6, 6), 0.5) + 0.5 * np.eye(6)
    model = MarketModel(symbols=tuple(f"S{i}" for i in range(6)), daily_vols=vols, correlation=corr,
                        vol_sources=("garch",) * 6)
    for _ in range(300):
        w = rng.normal(0, 20_000, 6) * (rng.random(6) < 0.5)
        equity = float(rng.choice([-500.0, 0.0, rng.uniform(100, 50_000)]))
        sd = float(np.sqrt(max(0.0, w @ model.covariance @ w)))
        stress_loss = max(0.0, -min(s.pnl for s in run_stress_tests(w, model.covariance)))
        parts = score_components(var_95_ratio=_ratio(_Z95 * sd, equity), var_99_ratio=_ratio(_Z99 * sd, equity),
                                 stress_loss_ratio=_ratio(stress_loss, equity), concentration=concentration_score(w),
                                 calibration=CALIBRATED)
        expected = sum(SCORE_WEIGHTS[k] * v for k, v in parts.items())
        if np.any(w) and equity <= 0:
            expected = 100.0
        score, level = parametric_score(model, w, equity, calibration=CALIBRATED, thresholds=RISK_LEVEL_THRESHOLDS)
        assert score == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert level is risk_level(score, RISK_LEVEL_THRESHOLDS)
