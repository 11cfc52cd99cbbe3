"""Account portfolio risk: Monte Carlo and historical VaR, stress tests, concentration,
and the seed's weighted risk score, level and recommendations.

An account is a set of linear futures positions (signed quantity × mark price per
symbol) plus its equity; market behaviour comes from a T×N history of per-period
(daily by default) returns. Monte Carlo VaR draws correlated normal return
scenarios from the history's covariance (Cholesky, or an eigenvalue factor when the
matrix is not positive definite) with a seeded NumPy Generator, all paths at once;
P&L is notional · returns, and the VaR/expected shortfall are order statistics found
with `np.partition`. The same scenario matrix serves one account or, through
`batch_var`, a whole book of accounts in bounded-memory chunks, optionally split
across worker processes. The overall score is the seed's (FuturesRiskAssessor):
0.3·VaR95 + 0.2·VaR99 + 0.3·stress loss + 0.2·concentration, each mapped to 0–100
with VaR as a fraction of equity ×1000 and stress loss ×500 (capped at 100).
The seed leaves the level thresholds, the stress scenarios and the recommendations
undefined; the ones chosen here are module constants, documented where defined.
Floats throughout: these are analytics, never booked amounts.
"""
from __future__ import annotations

import ctypes
import math
import re
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from functools import cached_property
from multiprocessing import get_context
from statistics import NormalDist
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DEFAULT_PATHS",
    "DEFAULT_SEED",
    "CONFIDENCES",
    "SCORE_WEIGHTS",
    "ScoreCalibration",
    "RiskLevel",
    "RISK_LEVEL_THRESHOLDS",
    "Position",
    "ReturnsHistory",
    "VarResult",
    "StressKind",
    "StressScenario",
    "StressResult",
    "DEFAULT_STRESS_SCENARIOS",
    "STRESS_CONFIDENCE",
    "Recommendation",
    "RiskAssessment",
    "BatchVarResult",
    "order_statistic_index",
    "covariance_factor",
    "simulate_scenarios",
    "var_from_pnl",
    "monte_carlo_var",
    "historical_var",
    "parametric_var",
    "run_stress_tests",
    "stress_pnl",
    "herfindahl",
    "concentration_score",
    "score_components",
    "overall_risk_score",
    "risk_level",
    "risk_recommendations",
    "assess_portfolio_risk",
    "notional_matrix",
    "batch_var",
]

DEFAULT_PATHS = 10_000
DEFAULT_SEED = 20_240_601
"""Default seed of the scenario generator. Fixed on purpose: the same account and
market data give the same VaR every time, and a before/after comparison (pre-trade
check) is made on the same scenarios, so the difference is the position change,
not Monte Carlo noise."""
CONFIDENCES = (0.95, 0.99)

SCORE_WEIGHTS: Mapping[str, float] = {
    "var_95": 0.3,
    "var_99": 0.2,
    "stress_loss": 0.3,
    "concentration": 0.2,
}
"""The seed's weights of the overall risk score."""


@dataclass(frozen=True)
class ScoreCalibration:
    """How each metric maps to 0–100 before weighting (seed defaults).

    A VaR of ``var_full_scale`` × equity scores 100 (seed: 10% → ×1000), a stress loss
    of ``stress_full_scale`` × equity scores 100 (seed: 20% → ×500); concentration
    (0–1) is ×100. Everything is capped at 100.
    """

    var_full_scale: float = 0.10
    stress_full_scale: float = 0.20


class RiskLevel(IntEnum):
    """Risk level of an account; ordered, so `level > RiskLevel.MEDIUM` works."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3


RISK_LEVEL_THRESHOLDS: tuple[tuple[float, RiskLevel], ...] = (
    (25.0, RiskLevel.LOW),
    (50.0, RiskLevel.MEDIUM),
    (75.0, RiskLevel.HIGH),
)
"""score < 25 → LOW, < 50 → MEDIUM, < 75 → HIGH, else CRITICAL (the seed names the
levels but not the cut-offs: quartiles of the 0–100 score)."""

_Z = NormalDist()


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Position:
    """One position: signed quantity (long > 0, short < 0) at the symbol's mark price."""

    symbol: str
    quantity: float
    mark_price: float

    @property
    def notional(self) -> float:
        """Signed notional quantity × mark price (contract size 1)."""
        return float(self.quantity) * float(self.mark_price)


@dataclass(frozen=True, eq=False)
class ReturnsHistory:
    """Per-period returns (rows: periods, oldest first; columns: ``symbols``).

    Simple returns of the mark price, daily unless stated otherwise; VaR horizons are
    in these periods. The array is copied and made read-only.
    """

    symbols: tuple[str, ...]
    returns: np.ndarray

    def __post_init__(self):
        symbols = tuple(self.symbols)
        r = np.array(self.returns, dtype=np.float64)
        if r.ndim == 1:
            r = r[:, None]
        if r.ndim != 2 or r.shape[1] != len(symbols):
            raise ValueError(f"returns must be T×{len(symbols)}, got shape {np.shape(self.returns)}")
        if len(set(symbols)) != len(symbols):
            raise ValueError("symbols must be unique")
        if r.shape[0] < 2:
            raise ValueError("need at least two periods of returns")
        if not np.all(np.isfinite(r)):
            raise ValueError("returns must be finite")
        r.setflags(write=False)
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "returns", r)

    @cached_property
    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    @cached_property
    def covariance(self) -> np.ndarray:
        """Sample covariance (ddof=1), N×N."""
        cov = np.atleast_2d(np.cov(self.returns, rowvar=False, ddof=1))
        cov.setflags(write=False)
        return cov

    def notional(self, positions: Iterable[Position]) -> np.ndarray:
        """Signed notional per history symbol (positions in the same symbol add up).
        Raises KeyError for a symbol without history."""
        w = np.zeros(len(self.symbols))
        for p in positions:
            if p.symbol not in self.index:
                raise KeyError(f"no return history for symbol {p.symbol!r}")
            w[self.index[p.symbol]] += p.notional
        return w


# ------------------------------------------------------------------- VaR machinery


def order_statistic_index(confidence: float, n: int) -> int:
    """0-based index into ascending P&L of the VaR at ``confidence``: floor((1 − c)·n),
    the seed's `sorted[int(0.05 * n)]` (10,000 paths: 500 at 95%, 100 at 99%)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    if n < 1:
        raise ValueError("need at least one P&L observation")
    return min(n - 1, int(math.floor((1.0 - confidence) * n + 1e-9)))


def var_from_pnl(pnl: np.ndarray, confidences: Sequence[float] = CONFIDENCES, *, overwrite: bool = False):
    """VaR and expected shortfall (both as positive losses, floored at 0) per row of a
    P&L array (rows × observations, or one 1-D row).

    VaR_c = −x_(k), ES_c = −mean(x_(0..k)) with k = `order_statistic_index` in the
    ascending P&L x. Uses `np.partition` at the largest k, then re-partitions only that
    prefix for the smaller ks (one full partition per row, however many confidences).
    Returns (var, es), each of shape (rows, len(confidences)) (or (len(confidences),)
    for 1-D input). With ``overwrite=True`` the input is partitioned in place.
    """
    x = np.asarray(pnl)
    one_d = x.ndim == 1
    x = np.atleast_2d(x)
    if not overwrite:
        x = x.copy()
    n = x.shape[1]
    ks = [order_statistic_index(c, n) for c in confidences]
    q = {}
    es = {}
    view = x
    for k in sorted(set(ks), reverse=True):
        view.partition(k, axis=1)
        q[k] = view[:, k].astype(np.float64)
        es[k] = view[:, : k + 1].mean(axis=1, dtype=np.float64)
        view = view[:, : k + 1]
    # + 0.0: a flat book's -0.0 losses become 0.0 (else the API prints "-0").
    var = np.maximum(0.0, -np.stack([q[k] for k in ks], axis=1)) + 0.0
    shortfall = np.maximum(0.0, -np.stack([es[k] for k in ks], axis=1)) + 0.0
    if one_d:
        return var[0], shortfall[0]
    return var, shortfall


def covariance_factor(cov) -> tuple[np.ndarray, str]:
    """A matrix L with L·Lᵀ = cov, for drawing correlated normals.

    Cholesky when ``cov`` is positive definite ("cholesky"); otherwise (singular:
    fewer periods than symbols, perfectly correlated or constant series; or slightly
    indefinite from estimation) the symmetric eigen-decomposition with negative
    eigenvalues clipped to 0, L = V·sqrt(Λ₊) ("eigen"), i.e. the nearest positive
    semi-definite matrix in Frobenius norm.
    """
    c = np.atleast_2d(np.asarray(cov, dtype=np.float64))
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError("covariance must be square")
    if not np.all(np.isfinite(c)):
        raise ValueError("covariance must be finite")
    c = 0.5 * (c + c.T)
    try:
        return np.linalg.cholesky(c), "cholesky"
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(c)
        return vecs * np.sqrt(np.clip(vals, 0.0, None)), "eigen"


def simulate_scenarios(
    covariance,
    *,
    paths: int = DEFAULT_PATHS,
    seed: int | np.random.Generator | None = DEFAULT_SEED,
    horizon: float = 1.0,
    mean=None,
    dtype=np.float64,
) -> np.ndarray:
    """Correlated normal return scenarios, shape (paths, N): Z·Lᵀ·sqrt(horizon)
    (+ mean·horizon if a per-period mean vector is given; default zero drift, as the
    seed's N(0, σ) draws). One call, no loop per path."""
    if paths < 1:
        raise ValueError("paths must be >= 1")
    L, _ = covariance_factor(covariance)
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((paths, L.shape[0]))
    scen = z @ (L.T * math.sqrt(horizon))
    if mean is not None:
        scen += np.asarray(mean, dtype=np.float64) * horizon
    return scen.astype(dtype, copy=False)


@dataclass(frozen=True)
class VarResult:
    """Value at risk and expected shortfall, positive numbers in the quote currency
    (losses over the horizon). ``observations``: paths or history periods used."""

    var_95: float
    var_99: float
    es_95: float
    es_99: float
    observations: int


def _var_result(pnl: np.ndarray) -> VarResult:
    var, es = var_from_pnl(pnl, (0.95, 0.99))
    return VarResult(float(var[0]), float(var[1]), float(es[0]), float(es[1]), int(pnl.shape[-1]))


def _as_vector(notional, n: int | None = None) -> np.ndarray:
    w = np.asarray(notional, dtype=np.float64).reshape(-1)
    if n is not None and w.size != n:
        raise ValueError(f"notional has {w.size} symbols, expected {n}")
    if not np.all(np.isfinite(w)):
        raise ValueError("notional must be finite")
    return w


def monte_carlo_var(
    notional,
    covariance=None,
    *,
    paths: int = DEFAULT_PATHS,
    seed: int | np.random.Generator | None = DEFAULT_SEED,
    horizon: float = 1.0,
    scenarios: np.ndarray | None = None,
) -> VarResult:
    """Monte Carlo VaR/ES (95% and 99%) of one portfolio with signed ``notional`` per
    symbol. Give either the per-period ``covariance`` (scenarios are simulated) or a
    precomputed ``scenarios`` matrix (paths × N) to share draws across accounts."""
    if scenarios is None:
        if covariance is None:
            raise ValueError("give covariance or scenarios")
        scenarios = simulate_scenarios(covariance, paths=paths, seed=seed, horizon=horizon)
    w = _as_vector(notional, scenarios.shape[1])
    return _var_result(scenarios @ w)


def historical_var(notional, returns) -> VarResult:
    """Historical-simulation VaR/ES: today's notional revalued with each past period's
    returns (rows of ``returns``, T×N), same order-statistic rule as Monte Carlo."""
    r = np.atleast_2d(np.asarray(returns, dtype=np.float64))
    w = _as_vector(notional, r.shape[1])
    return _var_result(r @ w)


def parametric_var(notional, covariance, confidence: float, *, horizon: float = 1.0) -> float:
    """Closed-form normal VaR z_c · sqrt(wᵀΣw · horizon) (what Monte Carlo converges to
    for zero drift)."""
    c = np.atleast_2d(np.asarray(covariance, dtype=np.float64))
    w = _as_vector(notional, c.shape[0])
    variance = max(0.0, float(w @ c @ w))
    return _Z.inv_cdf(confidence) * math.sqrt(variance * horizon)


# -------------------------------------------------------------------- stress tests


class StressKind(str, Enum):
    PRICE_MOVE = "price_move"
    """Every symbol moves by ``shock`` (relative): P&L = shock × Σ notional."""
    VOLATILITY_SPIKE = "volatility_spike"
    """All volatilities × ``shock``, correlations kept: P&L = −z₉₉ · shock · sqrt(wᵀΣw)."""
    CORRELATION_ONE = "correlation_one"
    """Correlations → 1, volatilities × ``shock``: every symbol moves z₉₉·σᵢ the same way,
    P&L = −z₉₉ · shock · |Σ wᵢσᵢ| (hedges across symbols only offset by their volatilities)."""
    CORRELATION_BREAKDOWN = "correlation_breakdown"
    """Correlations → 0, volatilities × ``shock``: P&L = −z₉₉ · shock · sqrt(Σ (wᵢσᵢ)²).
    The bad case for hedged books (long one symbol, short a correlated one), for which
    correlation one is the good case."""


@dataclass(frozen=True)
class StressScenario:
    name: str
    kind: StressKind
    shock: float


_PRICE_MOVE, _VOLATILITY_SPIKE, _CORRELATION_ONE, _CORRELATION_BREAKDOWN = (
    StressKind.PRICE_MOVE, StressKind.VOLATILITY_SPIKE, StressKind.CORRELATION_ONE, StressKind.CORRELATION_BREAKDOWN)

STRESS_CONFIDENCE = 0.99
"""Quantile used by the volatility scenarios (a 1-in-100 move under stressed parameters)."""
_STRESS_Z = _Z.inv_cdf(STRESS_CONFIDENCE)

DEFAULT_STRESS_SCENARIOS: tuple[StressScenario, ...] = (
    StressScenario("market_up_10", StressKind.PRICE_MOVE, 0.10),
    StressScenario("market_up_20", StressKind.PRICE_MOVE, 0.20),
    StressScenario("market_up_30", StressKind.PRICE_MOVE, 0.30),
    StressScenario("market_down_10", StressKind.PRICE_MOVE, -0.10),
    StressScenario("market_down_20", StressKind.PRICE_MOVE, -0.20),
    StressScenario("market_down_30", StressKind.PRICE_MOVE, -0.30),
    StressScenario("volatility_spike_2x", StressKind.VOLATILITY_SPIKE, 2.0),
    StressScenario("volatility_spike_3x", StressKind.VOLATILITY_SPIKE, 3.0),
    StressScenario("correlation_one", StressKind.CORRELATION_ONE, 1.0),
    StressScenario("correlation_breakdown", StressKind.CORRELATION_BREAKDOWN, 1.0),
)
"""The seed names a stress test but not its scenarios: market-wide moves of ±10/20/30%,
volatility ×2 and ×3, correlations to one, and (added) correlations to zero."""


@dataclass(frozen=True)
class StressResult:
    name: str
    kind: StressKind
    pnl: float
    """Portfolio P&L under the scenario (negative = loss), quote currency."""


def stress_pnl(scenario: StressScenario, *, net, sd, exposure_sum, exposure_norm, horizon: float = 1.0):
    """One scenario's P&L (see `StressKind` for the formulas) from what they read of the
    portfolio: ``net`` Σw, ``sd`` sqrt(wᵀΣw), ``exposure_sum`` Σ wᵢσᵢ and ``exposure_norm``
    sqrt(Σ (wᵢσᵢ)²), per period. Floats for one portfolio, or arrays of one value per
    portfolio (`apps.risk.market.stress_matrix`): the one place of the formulas."""
    kind = scenario.kind  # a StressKind, or its value (a str enum: equal either way)
    if kind == _PRICE_MOVE:
        return scenario.shock * net
    if kind == _VOLATILITY_SPIKE:
        spread = sd
    elif kind == _CORRELATION_ONE:
        spread = abs(exposure_sum)
    elif kind == _CORRELATION_BREAKDOWN:
        spread = exposure_norm
    else:
        raise ValueError(f"unknown stress kind {kind!r}")
    return -_STRESS_Z * scenario.shock * spread * math.sqrt(horizon)


def run_stress_tests(
    notional,
    covariance=None,
    scenarios: Sequence[StressScenario] = DEFAULT_STRESS_SCENARIOS,
    *,
    horizon: float = 1.0,
) -> tuple[StressResult, ...]:
    """P&L of the portfolio under each named scenario (`stress_pnl`). ``covariance``
    (per period) is needed by the volatility scenarios."""
    w = _as_vector(notional)
    scenarios = [sc if isinstance(sc.kind, StressKind) else StressScenario(sc.name, StressKind(sc.kind), sc.shock)
                 for sc in scenarios]
    inputs = {"net": float(w.sum()), "sd": None, "exposure_sum": None, "exposure_norm": None}
    if covariance is not None:
        cov = np.atleast_2d(np.asarray(covariance, dtype=np.float64))
        if cov.shape != (w.size, w.size):
            raise ValueError("covariance does not match notional")
        exposure = w * np.sqrt(np.clip(np.diag(cov), 0.0, None))
        inputs.update(sd=math.sqrt(max(0.0, float(w @ cov @ w))), exposure_sum=float(exposure.sum()),
                      exposure_norm=math.sqrt(float(exposure @ exposure)))
    elif (bad := next((sc for sc in scenarios if sc.kind is not StressKind.PRICE_MOVE), None)) is not None:
        raise ValueError(f"scenario {bad.name!r} needs a covariance matrix")
    return tuple(StressResult(sc.name, sc.kind, float(stress_pnl(sc, **inputs, horizon=horizon)) + 0.0)
                 for sc in scenarios)


# ------------------------------------------------------------------ scoring


def concentration_score(notional) -> float:
    """Herfindahl index of gross notional by symbol: Σ (|wᵢ| / Σ|w|)², from 1/N (evenly
    spread over N symbols) to 1 (one symbol); 0 for an empty portfolio."""
    return herfindahl(_as_vector(notional).tolist())


def herfindahl(values: Sequence[float]) -> float:
    """`concentration_score` of a few finite floats (no array: the pre-trade gate's size)."""
    gross = sum(abs(x) for x in values)
    if gross == 0.0:
        return 0.0
    return sum((abs(x) / gross) ** 2 for x in values)


def _ratio(amount: float, equity: float) -> float:
    if amount <= 0.0:
        return 0.0
    if equity <= 0.0:
        return math.inf
    return amount / equity


def score_components(
    *,
    var_95_ratio: float,
    var_99_ratio: float,
    stress_loss_ratio: float,
    concentration: float,
    calibration: ScoreCalibration = ScoreCalibration(),
) -> dict[str, float]:
    """Each metric mapped to 0–100 (ratios are fractions of equity)."""
    return {
        "var_95": min(100.0, 100.0 * var_95_ratio / calibration.var_full_scale),
        "var_99": min(100.0, 100.0 * var_99_ratio / calibration.var_full_scale),
        "stress_loss": min(100.0, 100.0 * stress_loss_ratio / calibration.stress_full_scale),
        "concentration": min(100.0, 100.0 * concentration),
    }


def overall_risk_score(
    *,
    var_95_ratio: float,
    var_99_ratio: float,
    stress_loss_ratio: float,
    concentration: float,
    calibration: ScoreCalibration = ScoreCalibration(),
) -> float:
    """The seed's weighted score (0–100): 0.3·VaR95 + 0.2·VaR99 + 0.3·stress + 0.2·concentration,
    each normalized by `score_components`."""
    parts = score_components(
        var_95_ratio=var_95_ratio,
        var_99_ratio=var_99_ratio,
        stress_loss_ratio=stress_loss_ratio,
        concentration=concentration,
        calibration=calibration,
    )
    return float(sum(SCORE_WEIGHTS[k] * v for k, v in parts.items()))


def risk_level(score: float, thresholds: Sequence[tuple[float, RiskLevel]] = RISK_LEVEL_THRESHOLDS) -> RiskLevel:
    """Map a 0–100 score to a `RiskLevel` (see `RISK_LEVEL_THRESHOLDS`)."""
    if math.isnan(score):
        raise ValueError("score is NaN")
    for upper, level in thresholds:
        if score < upper:
            return level
    return RiskLevel.CRITICAL


@dataclass(frozen=True)
class Recommendation:
    """An action for the account; ``code`` is stable (for i18n and alert routing)."""

    code: str
    message: str


def risk_recommendations(
    *,
    level: RiskLevel,
    equity: float,
    var_95_ratio: float,
    stress_loss_ratio: float,
    worst_scenario: str | None,
    concentration: float,
    largest_symbol: str | None,
    largest_share: float,
    has_positions: bool,
) -> tuple[Recommendation, ...]:
    """Recommendations, most urgent first. Rules (the seed names the function but not
    its rules): equity ≤ 0 with positions → NEGATIVE_EQUITY; CRITICAL level →
    REDUCE_ONLY; 95% VaR ≥ 5% of equity → REDUCE_LEVERAGE; worst stress loss ≥ 100% of
    equity → STRESS_LIQUIDATION, else ≥ 20% → ADD_MARGIN_OR_HEDGE; concentration
    (Herfindahl) ≥ 0.5 → DIVERSIFY."""
    recs: list[Recommendation] = []
    if not has_positions:
        return ()
    if equity <= 0:
        recs.append(
            Recommendation("NEGATIVE_EQUITY", "Account equity is not positive: deposit margin or close positions now.")
        )
    if level is RiskLevel.CRITICAL:
        recs.append(
            Recommendation(
                "REDUCE_ONLY", "Risk is CRITICAL: accept only orders that reduce exposure until the score falls."
            )
        )
    if var_95_ratio >= 0.05:
        recs.append(
            Recommendation(
                "REDUCE_LEVERAGE",
                f"One-day 95% VaR is {_pct(var_95_ratio)} of equity: reduce position size or leverage.",
            )
        )
    if stress_loss_ratio >= 1.0:
        recs.append(
            Recommendation(
                "STRESS_LIQUIDATION",
                f"Scenario {worst_scenario!r} loses {_pct(stress_loss_ratio)} of equity: "
                "the account would be liquidated; add margin or hedge.",
            )
        )
    elif stress_loss_ratio >= 0.2:
        recs.append(
            Recommendation(
                "ADD_MARGIN_OR_HEDGE",
                f"Scenario {worst_scenario!r} loses {_pct(stress_loss_ratio)} of equity: add margin or hedge.",
            )
        )
    if concentration >= 0.5:
        recs.append(
            Recommendation(
                "DIVERSIFY",
                f"{largest_symbol} is {largest_share:.0%} of gross notional "
                f"(concentration {concentration:.2f}): spread exposure across symbols.",
            )
        )
    return tuple(recs)


def _pct(x: float) -> str:
    return "more than any equity" if math.isinf(x) else f"{x:.1%}"


@dataclass(frozen=True)
class RiskAssessment:
    """Everything `assess_portfolio_risk` measured for one account.

    Amounts (VaR, ES, stress P&L, notionals) are in the quote currency; ``*_ratio``
    fields are fractions of equity (inf when equity ≤ 0 and there is a loss).
    """

    equity: float
    gross_notional: float
    net_notional: float
    monte_carlo: VarResult
    historical: VarResult
    stress: tuple[StressResult, ...]
    stress_loss: float
    worst_scenario: str | None
    concentration: float
    var_95_ratio: float
    var_99_ratio: float
    stress_loss_ratio: float
    components: Mapping[str, float]
    overall_score: float
    level: RiskLevel
    recommendations: tuple[Recommendation, ...]
    covariance_method: str = field(default="cholesky")

    @property
    def var_95(self) -> float:
        return self.monte_carlo.var_95

    @property
    def var_99(self) -> float:
        return self.monte_carlo.var_99


def assess_portfolio_risk(
    positions: Sequence[Position],
    equity: float,
    history: ReturnsHistory,
    *,
    paths: int = DEFAULT_PATHS,
    seed: int | np.random.Generator | None = DEFAULT_SEED,
    horizon: float = 1.0,
    scenarios: np.ndarray | None = None,
    stress_scenarios: Sequence[StressScenario] = DEFAULT_STRESS_SCENARIOS,
    calibration: ScoreCalibration = ScoreCalibration(),
    thresholds: Sequence[tuple[float, RiskLevel]] = RISK_LEVEL_THRESHOLDS,
) -> RiskAssessment:
    """Multi-dimensional risk of one account (the seed's assess_portfolio_risk).

    Monte Carlo VaR/ES over ``paths`` scenarios drawn from the history's covariance
    (or the given ``scenarios``, paths × N in ``history.symbols`` order), historical
    VaR/ES over the history itself, the stress scenarios, concentration, the weighted
    score, its level and recommendations. ``equity`` is the account's equity (wallet
    balance + unrealized P&L) in the quote currency.
    """
    equity = float(equity)
    if not math.isfinite(equity):
        raise ValueError("equity must be finite")
    w = history.notional(positions)
    cov = history.covariance
    _, method = covariance_factor(cov) if scenarios is None else (None, "given")
    mc = monte_carlo_var(w, cov, paths=paths, seed=seed, horizon=horizon, scenarios=scenarios)
    hist = historical_var(w, history.returns)
    stress = run_stress_tests(w, cov, stress_scenarios, horizon=horizon)
    worst = min(stress, key=lambda s: s.pnl, default=None)
    stress_loss = max(0.0, -worst.pnl) if worst is not None else 0.0
    conc = concentration_score(w)
    gross = float(np.abs(w).sum())
    ratios = dict(
        var_95_ratio=_ratio(mc.var_95, equity),
        var_99_ratio=_ratio(mc.var_99, equity),
        stress_loss_ratio=_ratio(stress_loss, equity),
    )
    components = score_components(**ratios, concentration=conc, calibration=calibration)
    score = float(sum(SCORE_WEIGHTS[k] * v for k, v in components.items()))
    if gross > 0 and equity <= 0:
        score = 100.0  # no equity behind open positions: the worst score whatever else
    level = risk_level(score, thresholds)
    largest = int(np.argmax(np.abs(w))) if gross > 0 else None
    recs = risk_recommendations(
        level=level,
        equity=equity,
        var_95_ratio=ratios["var_95_ratio"],
        stress_loss_ratio=ratios["stress_loss_ratio"],
        worst_scenario=worst.name if worst is not None and stress_loss > 0 else None,
        concentration=conc,
        largest_symbol=history.symbols[largest] if largest is not None else None,
        largest_share=abs(w[largest]) / gross if largest is not None else 0.0,
        has_positions=gross > 0,
    )
    return RiskAssessment(
        equity=equity,
        gross_notional=gross,
        net_notional=float(w.sum()),
        monte_carlo=mc,
        historical=hist,
        stress=stress,
        stress_loss=stress_loss,
        worst_scenario=worst.name if worst is not None and stress_loss > 0 else None,
        concentration=conc,
        components=components,
        overall_score=score,
        level=level,
        recommendations=recs,
        covariance_method=method,
        **ratios,
    )


# ----------------------------------------------------------- many accounts at once


def notional_matrix(quantities, mark_prices) -> np.ndarray:
    """Signed notional (accounts × symbols) from a quantity matrix and a mark-price
    vector (one price per symbol)."""
    q = np.asarray(quantities, dtype=np.float64)
    p = np.asarray(mark_prices, dtype=np.float64)
    if q.ndim != 2 or p.shape != (q.shape[1],):
        raise ValueError("quantities must be accounts × symbols and mark_prices one per symbol")
    return q * p


@dataclass(frozen=True, eq=False)
class BatchVarResult:
    """VaR and expected shortfall per account (rows) and confidence (columns), positive
    losses in the quote currency, plus how long each worker computed (seconds,
    excluding process start-up) and the wall time of the whole call."""

    confidences: tuple[float, ...]
    var: np.ndarray
    es: np.ndarray
    worker_seconds: tuple[float, ...]
    wall_seconds: float

    def _col(self, confidence: float) -> int:
        for i, c in enumerate(self.confidences):
            if math.isclose(c, confidence):
                return i
        raise KeyError(f"confidence {confidence} was not computed")

    def var_at(self, confidence: float) -> np.ndarray:
        return self.var[:, self._col(confidence)]

    def es_at(self, confidence: float) -> np.ndarray:
        return self.es[:, self._col(confidence)]

    @property
    def var_95(self) -> np.ndarray:
        return self.var_at(0.95)

    @property
    def var_99(self) -> np.ndarray:
        return self.var_at(0.99)


_BLAS_THREAD_FUNCTIONS = (
    # (getter, setter) per OpenBLAS build: NumPy's and SciPy's wheels bundle their own
    # with prefixed symbols; a system OpenBLAS has the plain names.
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)


def _openblas_thread_controls() -> list[tuple[object, object]]:
    """(get_num_threads, set_num_threads) of every OpenBLAS loaded in this process.

    Best effort and Linux-only (reads /proc/self/maps, like threadpoolctl does);
    returns [] anywhere else, and callers then leave threading alone.
    """
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            libraries = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read())))
    except OSError:
        return []
    controls = []
    for path in libraries:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _BLAS_THREAD_FUNCTIONS:
            getter, setter = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if getter is not None and setter is not None:
                getter.restype = ctypes.c_int
                controls.append((getter, setter))
                break
    return controls


def _limit_blas_threads(n: int) -> None:
    """Worker-process initializer: cap this process's OpenBLAS pools at ``n`` threads."""
    for _, setter in _openblas_thread_controls():
        setter(ctypes.c_int(n))


@contextmanager
def _single_threaded_blas():
    """Run the block with one BLAS thread, then restore the previous counts.

    The P&L product has an inner dimension of N symbols (about 20): too small for
    threads to pay, and OpenBLAS's spinning threads collapse when the cores are busy
    (measured on the 2-core machine under load: 15 s instead of 4.5 s for the
    100k-account book). Each worker already owns a core, so letting every worker's
    BLAS also start one thread per core oversubscribes the machine.
    """
    controls = _openblas_thread_controls()
    previous = [int(getter()) for getter, _ in controls]
    for _, setter in controls:
        setter(ctypes.c_int(1))
    try:
        yield
    finally:
        for (_, setter), count in zip(controls, previous):
            setter(ctypes.c_int(count))


def _batch_block(notional: np.ndarray, scenarios_t: np.ndarray, confidences, chunk_size: int):
    """VaR/ES for a block of accounts against one shared scenario matrix (N × paths,
    already transposed): P&L chunk by chunk, so memory is chunk_size × paths."""
    started = time.perf_counter()
    a = notional.shape[0]
    c = len(confidences)
    var = np.empty((a, c))
    es = np.empty((a, c))
    for lo in range(0, a, chunk_size):
        hi = min(a, lo + chunk_size)
        pnl = notional[lo:hi] @ scenarios_t
        var[lo:hi], es[lo:hi] = var_from_pnl(pnl, confidences, overwrite=True)
    return var, es, time.perf_counter() - started


def batch_var(
    notional,
    *,
    covariance=None,
    scenarios: np.ndarray | None = None,
    paths: int = DEFAULT_PATHS,
    seed: int | np.random.Generator | None = DEFAULT_SEED,
    horizon: float = 1.0,
    confidences: Sequence[float] = CONFIDENCES,
    chunk_size: int = 64,
    workers: int = 1,
    dtype=np.float64,
    start_method: str | None = None,
) -> BatchVarResult:
    """Monte Carlo VaR/ES for many accounts at once.

    ``notional`` is accounts × symbols (signed; see `notional_matrix`). One scenario
    matrix (paths × N) is simulated from ``covariance`` (or passed as ``scenarios``) and
    shared by every account, so each account's result equals `monte_carlo_var` on the
    same scenarios. P&L = notional_chunk @ scenariosᵀ, ``chunk_size`` accounts at a
    time (peak extra memory ≈ chunk_size × paths × itemsize), quantiles by
    `np.partition`. ``workers`` > 1 splits the accounts into that many contiguous
    blocks computed in worker processes (``start_method`` as in multiprocessing,
    default the platform's; a book smaller than two chunks stays in-process). BLAS
    runs single-threaded throughout (in-process: for the duration of the call only),
    so the worker count is the number of cores used. ``dtype=np.float32`` halves memory traffic at
    a relative precision of about 1e-7.
    """
    w = np.asarray(notional, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError("notional must be accounts × symbols")
    if not np.all(np.isfinite(w)):
        raise ValueError("notional must be finite")
    if chunk_size < 1 or workers < 1:
        raise ValueError("chunk_size and workers must be >= 1")
    started = time.perf_counter()
    if scenarios is None:
        if covariance is None:
            raise ValueError("give covariance or scenarios")
        scenarios = simulate_scenarios(covariance, paths=paths, seed=seed, horizon=horizon)
    if scenarios.ndim != 2 or scenarios.shape[1] != w.shape[1]:
        raise ValueError("scenarios must be paths × symbols")
    confidences = tuple(float(c) for c in confidences)
    scen_t = np.ascontiguousarray(scenarios.T, dtype=dtype)
    w = w.astype(dtype, copy=False)

    if workers == 1 or w.shape[0] < 2 * chunk_size:
        with _single_threaded_blas():
            var, es, seconds = _batch_block(w, scen_t, confidences, chunk_size)
        return BatchVarResult(confidences, var, es, (seconds,), time.perf_counter() - started)

    blocks = np.array_split(w, workers)
    ctx = get_context(start_method) if start_method else None
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_limit_blas_threads, initargs=(1,)
    ) as pool:
        futures = [pool.submit(_batch_block, b, scen_t, confidences, chunk_size) for b in blocks]
        parts = [f.result() for f in futures]
    var = np.concatenate([p[0] for p in parts])
    es = np.concatenate([p[1] for p in parts])
    return BatchVarResult(confidences, var, es, tuple(p[2] for p in parts), time.perf_counter() - started)
