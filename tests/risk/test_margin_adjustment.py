"""Volatility/liquidity margin adjustments: the seed's bands, edges and Decimal output."""
import math
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from apps.risk.analytics.margin_adjustment import (
    adjusted_initial_margin_rate,
    daily_volatility_from_hourly_prices,
    initial_margin_multiplier,
    liquidity_adjustment,
    maintenance_volatility_addon,
    maintenance_volatility_addon_from_prices,
    risk_adjustment_factor,
    volatility_adjustment,
)


@pytest.mark.parametrize(
    "vol, expected",
    [(0.0, "0"), (0.03, "0"), (0.05, "0"), (0.0500001, "0.1"), (0.08, "0.1"), (0.10, "0.1"), (0.1000001, "0.2"), (0.9, "0.2")],
)
def test_initial_volatility_adjustment_bands(vol, expected):
    out = volatility_adjustment(vol)
    assert type(out) is Decimal and out == Decimal(expected)


@pytest.mark.parametrize(
    "score, expected",
    [(0.0, "0.3"), (0.49, "0.3"), (0.5, "0.1"), (0.79, "0.1"), (0.8, "0"), (1.0, "0")],
)
def test_liquidity_adjustment_bands(score, expected):
    out = liquidity_adjustment(score)
    assert type(out) is Decimal and out == Decimal(expected)


def test_risk_adjustment_combines_both_and_multiplies_the_base_rate():
    assert risk_adjustment_factor(daily_volatility=0.12, liquidity_score=0.3) == Decimal("0.5")
    assert risk_adjustment_factor(daily_volatility=0.01, liquidity_score=0.95) == Decimal("0")
    assert initial_margin_multiplier(daily_volatility=0.07, liquidity_score=0.6) == Decimal("1.2")
    # 20x leverage: base 5%, high volatility and low liquidity: 5% * 1.5 = 7.5% exactly.
    rate = adjusted_initial_margin_rate(Decimal("0.05"), daily_volatility=0.2, liquidity_score=0.1)
    assert rate == Decimal("0.075") and str(rate) == "0.075"
    with pytest.raises(TypeError):
        adjusted_initial_margin_rate(0.05, daily_volatility=0.2, liquidity_score=0.1)


@pytest.mark.parametrize(
    "vol, expected",
    [(0.0, "0"), (0.0199, "0"), (0.02, "0.001"), (0.049, "0.001"), (0.05, "0.002"), (0.099, "0.002"), (0.10, "0.005"), (1.5, "0.005")],
)
def test_maintenance_volatility_addon_bands(vol, expected):
    out = maintenance_volatility_addon(vol)
    assert type(out) is Decimal and out == Decimal(expected)


def test_daily_volatility_from_hourly_prices_by_hand():
    # Simple hourly returns alternate +0.5% / -0.5%: std 0.005, daily 0.005 * sqrt(24) = 2.449%.
    returns = np.array([0.005, -0.005] * 12)
    prices = 100 * np.concatenate([[1.0], np.cumprod(1 + returns)])  # 25 prices = 24 hours
    vol = daily_volatility_from_hourly_prices(prices)
    assert vol == pytest.approx(0.005 * math.sqrt(24), rel=1e-9)
    assert maintenance_volatility_addon_from_prices(prices) == Decimal("0.001")
    calm = 100 * np.concatenate([[1.0], np.cumprod(1 + returns / 10)])
    assert maintenance_volatility_addon_from_prices(calm) == Decimal("0")
    wild = 100 * np.concatenate([[1.0], np.cumprod(1 + returns * 5)])  # 12.2% daily
    assert maintenance_volatility_addon_from_prices(wild) == Decimal("0.005")


def test_too_few_prices_means_no_addon():
    assert maintenance_volatility_addon_from_prices([]) == Decimal("0")
    assert maintenance_volatility_addon_from_prices([42_000.0]) == Decimal("0")
    assert daily_volatility_from_hourly_prices([42_000.0, 42_000.0]) == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.01])
def test_bad_statistics_are_refused(bad):
    with pytest.raises(ValueError):
        volatility_adjustment(bad)
    with pytest.raises(ValueError):
        maintenance_volatility_addon(bad)
    with pytest.raises(ValueError):
        liquidity_adjustment(bad)


def test_bad_prices_and_scores_are_refused():
    with pytest.raises(ValueError):
        liquidity_adjustment(1.2)
    with pytest.raises(ValueError):
        daily_volatility_from_hourly_prices([100.0, -1.0])
    with pytest.raises(ValueError):
        daily_volatility_from_hourly_prices([100.0, math.nan])


@given(st.floats(0, 10), st.floats(0, 10))
def test_bands_are_monotone(v1, v2):
    lo, hi = sorted((v1, v2))
    assert volatility_adjustment(lo) <= volatility_adjustment(hi)
    assert maintenance_volatility_addon(lo) <= maintenance_volatility_addon(hi)
    a, b = sorted((v1 / 10, v2 / 10))
    assert liquidity_adjustment(a) >= liquidity_adjustment(b)
