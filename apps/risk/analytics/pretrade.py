"""Pre-trade risk check: the account's risk level if a prospective order filled.

The seed's order path (FuturesTradeSystem.process_contract_order) rejects an order
with 风险过高 ("risk too high") when `assess_order_risk(order).risk_level` is above an
acceptable level. This module is that assessment as a pure function for the Django
order-entry service: it takes the account's current positions, equity and market
history plus the order, assesses the portfolio before and after (same scenario
draws for both, so the difference is the order, not Monte Carlo noise) and says
whether the resulting level exceeds the accepted one. It never touches the database;
the caller maps `PreTradeRiskResult.reject` to its error code and message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .portfolio import (
    DEFAULT_PATHS,
    DEFAULT_SEED,
    RISK_LEVEL_THRESHOLDS,
    Position,
    ReturnsHistory,
    RiskAssessment,
    RiskLevel,
    ScoreCalibration,
    assess_portfolio_risk,
    simulate_scenarios,
)

__all__ = [
    "RISK_TOO_HIGH",
    "RISK_TOO_HIGH_EN",
    "DEFAULT_MAX_LEVEL",
    "OrderIntent",
    "PreTradeRiskResult",
    "positions_after_order",
    "pretrade_risk_check",
]

RISK_TOO_HIGH = "风险过高"
"""The seed's rejection reason."""
RISK_TOO_HIGH_EN = "risk too high"

DEFAULT_MAX_LEVEL = RiskLevel.HIGH
"""Highest level an order may lead to (the seed's RiskLevel.ACCEPTABLE is not
defined; only CRITICAL is refused by default). Mind the calibration: with the seed's
normalization (VaR of 10% of equity and a stress loss of 20% score 100) a
single-symbol account at 4% daily volatility is CRITICAL from about 0.7× effective
leverage, so pass a `ScoreCalibration` suited to the leverage the product allows
before using this as a hard gate."""


@dataclass(frozen=True)
class OrderIntent:
    """A prospective order: signed quantity (buy > 0, sell < 0) in ``symbol`` and the
    symbol's current mark price (risk is measured at mark, whatever the limit price)."""

    symbol: str
    quantity: float
    mark_price: float


@dataclass(frozen=True)
class PreTradeRiskResult:
    """Outcome of `pretrade_risk_check`.

    ``exceeds``: the level after the fill is above ``max_level``.
    ``reject``: ``exceeds`` and the order does not lower the risk score: an order that
    reduces risk (closing, hedging) is never refused, or an account above the accepted
    level could not get out of it. ``reason`` is `RISK_TOO_HIGH` when rejected.
    """

    level_before: RiskLevel
    level_after: RiskLevel
    score_before: float
    score_after: float
    max_level: RiskLevel
    exceeds: bool
    reject: bool
    reason: str | None
    before: RiskAssessment
    after: RiskAssessment

    @property
    def level(self) -> RiskLevel:
        """The resulting risk level (after the order fills)."""
        return self.level_after


def positions_after_order(positions: Sequence[Position], order: OrderIntent) -> tuple[Position, ...]:
    """Positions as they would be after the order fills completely (one-way mode:
    the order's quantity adds to the symbol's signed size; every position in that
    symbol is re-marked at the order's mark price)."""
    if not (math.isfinite(order.quantity) and math.isfinite(order.mark_price) and order.mark_price > 0):
        raise ValueError("order quantity must be finite and mark price positive")
    out = []
    size = float(order.quantity)
    for p in positions:
        if p.symbol == order.symbol:
            size += float(p.quantity)
        else:
            out.append(p)
    if size != 0.0:
        out.append(Position(order.symbol, size, float(order.mark_price)))
    return tuple(out)


def pretrade_risk_check(
    *,
    positions: Sequence[Position],
    equity: float,
    order: OrderIntent,
    history: ReturnsHistory,
    max_level: RiskLevel = DEFAULT_MAX_LEVEL,
    paths: int = DEFAULT_PATHS,
    seed: int | np.random.Generator | None = DEFAULT_SEED,
    calibration: ScoreCalibration = ScoreCalibration(),
    thresholds=RISK_LEVEL_THRESHOLDS,
) -> PreTradeRiskResult:
    """Assess the account before and after ``order`` fills and compare the resulting
    level with ``max_level``. Equity is taken as unchanged by the fill (opening at
    mark moves no P&L; fees are the margin check's business). Raises KeyError when
    the order's symbol has no return history (no basis to accept the risk)."""
    if order.symbol not in history.index:
        raise KeyError(f"no return history for symbol {order.symbol!r}")
    scenarios = simulate_scenarios(history.covariance, paths=paths, seed=seed)
    common = dict(scenarios=scenarios, calibration=calibration, thresholds=thresholds)
    before = assess_portfolio_risk(positions, equity, history, **common)
    after = assess_portfolio_risk(positions_after_order(positions, order), equity, history, **common)
    exceeds = after.level > max_level
    reject = exceeds and after.overall_score >= before.overall_score and after.gross_notional > 0
    # Pure reduction of every exposure (|size| shrinks, no flip) is never rejected either.
    if reject and _reduces_only(positions, order):
        reject = False
    return PreTradeRiskResult(
        level_before=before.level,
        level_after=after.level,
        score_before=before.overall_score,
        score_after=after.overall_score,
        max_level=max_level,
        exceeds=exceeds,
        reject=reject,
        reason=RISK_TOO_HIGH if reject else None,
        before=before,
        after=after,
    )


def _reduces_only(positions: Sequence[Position], order: OrderIntent) -> bool:
    size = sum(float(p.quantity) for p in positions if p.symbol == order.symbol)
    after = size + float(order.quantity)
    return size != 0.0 and abs(after) < abs(size) and (after == 0.0 or (after > 0) == (size > 0))
