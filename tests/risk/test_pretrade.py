"""Pre-trade risk check: the level an order leads to, and when it is refused."""
import numpy as np
import pytest

from apps.risk.analytics.portfolio import Position, ReturnsHistory, RiskLevel
from apps.risk.analytics.pretrade import (
    RISK_TOO_HIGH,
    OrderIntent,
    positions_after_order,
    pretrade_risk_check,
)


@pytest.fixture(scope="module")
def history():
    rng = np.random.default_rng(12)
    cov = np.array([[0.04**2, 0.8 * 0.04 * 0.05], [0.8 * 0.04 * 0.05, 0.05**2]])
    return ReturnsHistory(("BTCUSDT", "ETHUSDT"), rng.multivariate_normal([0, 0], cov, 500))


def test_small_order_on_small_account_passes(history):
    res = pretrade_risk_check(
        positions=[Position("ETHUSDT", 0.5, 3_000)],
        equity=100_000,
        order=OrderIntent("BTCUSDT", 0.01, 50_000),
        history=history,
    )
    assert res.level is RiskLevel.LOW and not res.exceeds and not res.reject and res.reason is None
    assert res.score_after >= 0


def test_order_making_the_account_critical_is_rejected(history):
    res = pretrade_risk_check(
        positions=[Position("ETHUSDT", 0.5, 3_000)],
        equity=100_000,
        order=OrderIntent("BTCUSDT", 10, 50_000),  # 5x notional
        history=history,
    )
    assert res.level_before is RiskLevel.LOW
    assert res.level_after is RiskLevel.CRITICAL
    assert res.exceeds and res.reject and res.reason == RISK_TOO_HIGH == "风险过高"


def test_accepted_level_is_configurable(history):
    kwargs = dict(
        positions=[],
        equity=100_000,
        order=OrderIntent("BTCUSDT", 0.6, 50_000),
        history=history,
    )
    loose = pretrade_risk_check(**kwargs, max_level=RiskLevel.CRITICAL)
    assert not loose.exceeds
    strict = pretrade_risk_check(**kwargs, max_level=RiskLevel.LOW)
    assert strict.level_after > RiskLevel.LOW and strict.exceeds and strict.reject


def test_reducing_a_critical_position_is_never_rejected(history):
    positions = [Position("BTCUSDT", 10, 50_000)]
    res = pretrade_risk_check(
        positions=positions, equity=100_000, order=OrderIntent("BTCUSDT", -3, 50_000), history=history
    )
    assert res.level_after is RiskLevel.CRITICAL and res.exceeds
    assert not res.reject
    hedge = pretrade_risk_check(
        positions=positions, equity=100_000, order=OrderIntent("BTCUSDT", -25, 50_000), history=history
    )  # flips to a larger short: more risk, refused
    assert hedge.reject


def test_positions_after_order():
    book = [Position("BTCUSDT", 2, 50_000), Position("ETHUSDT", -1, 3_000)]
    assert positions_after_order(book, OrderIntent("BTCUSDT", -2, 51_000)) == (Position("ETHUSDT", -1, 3_000),)
    after = positions_after_order(book, OrderIntent("BTCUSDT", -5, 51_000))
    assert after == (Position("ETHUSDT", -1, 3_000), Position("BTCUSDT", -3.0, 51_000.0))
    assert positions_after_order([], OrderIntent("ETHUSDT", 1, 3_000)) == (Position("ETHUSDT", 1.0, 3_000.0),)
    with pytest.raises(ValueError):
        positions_after_order(book, OrderIntent("BTCUSDT", 1, 0.0))


def test_unknown_symbol_and_determinism(history):
    with pytest.raises(KeyError):
        pretrade_risk_check(positions=[], equity=1_000, order=OrderIntent("XRPUSDT", 1, 0.5), history=history)
    kwargs = dict(positions=[], equity=10_000, order=OrderIntent("BTCUSDT", 0.1, 50_000), history=history)
    assert pretrade_risk_check(**kwargs).score_after == pretrade_risk_check(**kwargs).score_after
