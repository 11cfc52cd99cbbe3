"""Risk adjustments to margin rates: volatility and liquidity bands, as Decimals.

The seed raises initial margin by a risk-adjustment factor (FuturesMarginCalculator.
get_risk_adjustment: +10%/+20% of margin for daily volatility above 5%/10%, +10%/+30%
for a liquidity score below 0.8/0.5) and adds a volatility add-on to the maintenance
rate (PerpetualMarginCalculator.get_volatility_adjustment: 0 / 0.1% / 0.2% / 0.5% for
daily volatility below 2% / 5% / 10% / above, the daily volatility being the standard
deviation of the last 24 hourly returns × √24). These numbers feed booked margin, so
every function returns `Decimal`: the statistic is computed in float, then mapped
through a table of Decimal band values; no float ever reaches the returned amount.
The band edges are compared as floats, exactly as the seed's `if volatility < 0.02`
does (comparing a float with `Decimal("0.05")` would move the boundary by the float's
representation error). Caching and fetching prices are the caller's business.
"""
from __future__ import annotations

import math
from decimal import Decimal

import numpy as np

__all__ = [
    "INITIAL_VOLATILITY_BANDS",
    "INITIAL_LIQUIDITY_BANDS",
    "MAINTENANCE_VOLATILITY_BANDS",
    "HOURS_PER_DAY",
    "daily_volatility_from_hourly_prices",
    "volatility_adjustment",
    "liquidity_adjustment",
    "risk_adjustment_factor",
    "initial_margin_multiplier",
    "adjusted_initial_margin_rate",
    "maintenance_volatility_addon",
    "maintenance_volatility_addon_from_prices",
]

HOURS_PER_DAY = 24

INITIAL_VOLATILITY_BANDS: tuple[tuple[float, Decimal], ...] = (
    (0.10, Decimal("0.2")),  # daily volatility > 10%: +20% initial margin
    (0.05, Decimal("0.1")),  # daily volatility > 5%:  +10%
)
"""(exclusive lower edge, adjustment), highest edge first; below every edge: 0."""

INITIAL_LIQUIDITY_BANDS: tuple[tuple[float, Decimal], ...] = (
    (0.5, Decimal("0.3")),  # liquidity score < 0.5 (low):    +30% initial margin
    (0.8, Decimal("0.1")),  # liquidity score < 0.8 (medium): +10%
)
"""(exclusive upper edge, adjustment), lowest edge first; at or above every edge: 0."""

MAINTENANCE_VOLATILITY_BANDS: tuple[tuple[float, Decimal], ...] = (
    (0.02, Decimal("0")),
    (0.05, Decimal("0.001")),
    (0.10, Decimal("0.002")),
    (math.inf, Decimal("0.005")),
)
"""(exclusive upper edge of daily volatility, maintenance-rate add-on)."""


def _check_statistic(value: float, name: str) -> float:
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return x


def daily_volatility_from_hourly_prices(hourly_prices) -> float:
    """Daily volatility as the seed measures it: population standard deviation of the
    simple hourly returns p_t/p_{t-1} − 1, times √24. Fewer than two prices give 0.0
    (no evidence of volatility: the seed's "no adjustment" case)."""
    p = np.asarray(hourly_prices, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError("hourly_prices must be one-dimensional")
    if p.size < 2:
        return 0.0
    if not np.all(np.isfinite(p)) or np.any(p <= 0):
        raise ValueError("hourly_prices must be finite and positive")
    returns = p[1:] / p[:-1] - 1.0
    return float(np.std(returns) * math.sqrt(HOURS_PER_DAY))


def volatility_adjustment(daily_volatility: float) -> Decimal:
    """Initial-margin adjustment for volatility: 0.2 above 10% daily volatility,
    0.1 above 5%, else 0 (edges belong to the lower band, as in the seed's `>`)."""
    v = _check_statistic(daily_volatility, "daily_volatility")
    for edge, adjustment in INITIAL_VOLATILITY_BANDS:
        if v > edge:
            return adjustment
    return Decimal("0")


def liquidity_adjustment(liquidity_score: float) -> Decimal:
    """Initial-margin adjustment for liquidity (score in [0, 1], 1 = deep book):
    0.3 below 0.5, 0.1 below 0.8, else 0."""
    s = _check_statistic(liquidity_score, "liquidity_score")
    if s > 1:
        raise ValueError(f"liquidity_score must be in [0, 1], got {liquidity_score!r}")
    for edge, adjustment in INITIAL_LIQUIDITY_BANDS:
        if s < edge:
            return adjustment
    return Decimal("0")


def risk_adjustment_factor(*, daily_volatility: float, liquidity_score: float) -> Decimal:
    """The seed's get_risk_adjustment: volatility adjustment + liquidity adjustment
    (0 to 0.5). Initial margin rate = base rate × (1 + factor)."""
    return volatility_adjustment(daily_volatility) + liquidity_adjustment(liquidity_score)


def initial_margin_multiplier(*, daily_volatility: float, liquidity_score: float) -> Decimal:
    """1 + `risk_adjustment_factor`: the multiplier applied to the base initial margin."""
    return Decimal("1") + risk_adjustment_factor(daily_volatility=daily_volatility, liquidity_score=liquidity_score)


def adjusted_initial_margin_rate(base_rate: Decimal, *, daily_volatility: float, liquidity_score: float) -> Decimal:
    """base_rate × (1 + factor), exact in Decimal (no quantization here: the ledger
    quantizes amounts, not rates)."""
    if not isinstance(base_rate, Decimal):
        raise TypeError("base_rate must be a Decimal")
    return base_rate * initial_margin_multiplier(daily_volatility=daily_volatility, liquidity_score=liquidity_score)


def maintenance_volatility_addon(daily_volatility: float) -> Decimal:
    """Maintenance-rate add-on: 0 below 2% daily volatility, 0.001 below 5%, 0.002
    below 10%, 0.005 from 10% up (an edge belongs to the upper band, as the seed's `<`)."""
    v = _check_statistic(daily_volatility, "daily_volatility")
    for edge, addon in MAINTENANCE_VOLATILITY_BANDS:
        if v < edge:
            return addon
    raise AssertionError("unreachable: the last band is open-ended")


def maintenance_volatility_addon_from_prices(hourly_prices) -> Decimal:
    """`maintenance_volatility_addon` of `daily_volatility_from_hourly_prices` (the seed
    looks back 24 hours, i.e. 25 hourly prices; fewer than two prices give 0)."""
    return maintenance_volatility_addon(daily_volatility_from_hourly_prices(hourly_prices))
