"""The market model every assessment of a run shares, and the per-account maths on it.

A `MarketModel` is what the library needs about the market, for one set of symbols:
one-day volatilities (each contract's latest `VolatilityEstimate`: the GARCH one-day
forecast, else the sample or default volatility), a correlation matrix (sample
correlation of aligned hourly log returns over the lookback; the configured default
for symbols with too little history) and, when there is enough history, the
overlapping one-day simple returns for historical VaR. The one-day covariance is
D·C·D (D the volatilities): GARCH sets the level, history the co-movement.

`assess_matrix` is the library's `assess_portfolio_risk` for many accounts at once:
one seeded scenario matrix and `batch_var` for the Monte Carlo VaR of every account,
one matrix product for the historical VaR, then the stress tests, concentration,
score, level and recommendations per account (closed forms, microseconds each). On
the same covariance and scenarios it gives the same numbers as the library function
(tested). `parametric_assess` is the pre-trade variant: the closed-form normal VaR
(what 10,000 Monte Carlo paths converge to) instead of simulation.

Pure NumPy: no database here; `selectors` and `services` feed it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from statistics import NormalDist

import numpy as np

from .analytics import (
    DEFAULT_STRESS_SCENARIOS,
    SCORE_WEIGHTS,
    StressKind,
    StressResult,
    RiskLevel,
    ScoreCalibration,
    batch_var,
    concentration_score,
    herfindahl,
    risk_level,
    risk_recommendations,
    run_stress_tests,
    score_components,
    simulate_scenarios,
    stress_pnl,
    var_from_pnl,
)

HOURS_PER_DAY = 24
_Z95 = NormalDist().inv_cdf(0.95)
_Z99 = NormalDist().inv_cdf(0.99)


@dataclass(frozen=True, eq=False)
class MarketModel:
    symbols: tuple[str, ...]
    daily_vols: np.ndarray
    correlation: np.ndarray
    vol_sources: tuple[str, ...]
    history_symbols: tuple[str, ...] = ()
    """Symbols whose columns of ``daily_returns`` are real history (others are zero)."""
    daily_returns: np.ndarray | None = None
    built_at: datetime | None = None
    key: str = ""
    """Identifies the model (run bucket or "default"), for caches."""
    _scenarios: dict = field(default_factory=dict, repr=False)

    @cached_property
    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    @cached_property
    def covariance(self) -> np.ndarray:
        d = np.asarray(self.daily_vols, dtype=np.float64)
        return self.correlation * np.outer(d, d)

    @cached_property
    def covariance_rows(self) -> list[list[float]]:
        """`covariance` as Python floats (`parametric_score`)."""
        return self.covariance.tolist()

    @cached_property
    def sigmas(self) -> list[float]:
        """Each symbol's volatility, sqrt of the covariance's diagonal, as Python floats."""
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None)).tolist()

    def scenarios(self, *, paths: int, seed: int) -> np.ndarray:
        """The seeded one-day scenario matrix (paths × symbols), built once per model."""
        cached = self._scenarios.get((paths, seed))
        if cached is None:
            cached = simulate_scenarios(self.covariance, paths=paths, seed=seed)
            self._scenarios[(paths, seed)] = cached
        return cached

    def to_json(self) -> tuple[dict, dict]:
        market = {
            "symbols": list(self.symbols),
            "daily_vols": [float(v) for v in self.daily_vols],
            "vol_sources": list(self.vol_sources),
            "correlation": [[float(x) for x in row] for row in self.correlation],
            "history_symbols": list(self.history_symbols),
        }
        history = {"daily_returns": self.daily_returns.tolist() if self.daily_returns is not None else None}
        return market, history

    @classmethod
    def from_json(cls, market: dict, history: dict | None = None, *, key: str = "", built_at=None) -> MarketModel:
        returns = (history or {}).get("daily_returns")
        n = len(market["symbols"])
        return cls(
            symbols=tuple(market["symbols"]),
            daily_vols=np.asarray(market["daily_vols"], dtype=np.float64),
            correlation=np.asarray(market["correlation"], dtype=np.float64).reshape(n, n),
            vol_sources=tuple(market["vol_sources"]),
            history_symbols=tuple(market.get("history_symbols", ())),
            daily_returns=np.asarray(returns, dtype=np.float64).reshape(-1, n) if returns else None,
            built_at=built_at,
            key=key,
        )


def align_hourly(closes: dict[str, list[tuple[datetime, float]]], hours: list[datetime]) -> np.ndarray:
    """Closes on a common hourly grid (hours × symbols), forward-filled; NaN before a
    symbol's first close."""
    pos = {h: i for i, h in enumerate(hours)}
    out = np.full((len(hours), len(closes)), np.nan)
    for j, series in enumerate(closes.values()):
        for hour, price in series:
            i = pos.get(hour)
            if i is not None:
                out[i, j] = price
        col = out[:, j]
        valid = ~np.isnan(col)
        if valid.any():
            idx = np.where(valid, np.arange(col.size), 0)
            np.maximum.accumulate(idx, out=idx)
            filled = col[idx]
            filled[: int(np.argmax(valid))] = np.nan
            out[:, j] = filled
    return out


def build_market_model(
    *,
    symbols: list[str],
    prices: np.ndarray,
    daily_vols: dict[str, float],
    vol_sources: dict[str, str],
    min_history_hours: int,
    default_vol: float,
    default_correlation: float,
    built_at: datetime | None = None,
    key: str = "",
) -> MarketModel:
    """A `MarketModel` from aligned hourly closes (hours × symbols, NaN where missing).

    Symbols with at least ``min_history_hours`` hourly returns over the window where all
    such symbols have prices are "history symbols": their correlations are the sample
    correlations of hourly log returns over that common window, and their overlapping
    one-day returns feed historical VaR (when the window has more than a day). The other
    symbols get ``default_correlation`` with everything and a zero historical column
    (accounts holding them get no historical VaR). Volatilities come from
    ``daily_vols`` (the contracts' estimates), else ``default_vol``.
    """
    n = len(symbols)
    prices = np.asarray(prices, dtype=np.float64).reshape(-1, n)
    counts = np.sum(~np.isnan(prices), axis=0)
    qualified = [j for j in range(n) if counts[j] - 1 >= min_history_hours]
    # The common window: from the latest first price among qualified symbols.
    common = None
    if qualified:
        starts = [int(np.argmax(~np.isnan(prices[:, j]))) for j in qualified]
        common = prices[max(starts):, qualified]
        if common.shape[0] - 1 < min_history_hours:
            qualified, common = [], None
    corr = np.full((n, n), float(default_correlation))
    np.fill_diagonal(corr, 1.0)
    daily_returns = None
    if common is not None:
        logret = np.diff(np.log(common), axis=0)
        std = logret.std(axis=0)
        live = [k for k in range(len(qualified)) if std[k] > 0]
        if len(live) > 1:
            sub = np.corrcoef(logret[:, live], rowvar=False)
            for a, ka in enumerate(live):
                for b, kb in enumerate(live):
                    corr[qualified[ka], qualified[kb]] = sub[a, b]
        if logret.shape[0] >= HOURS_PER_DAY + 1:
            csum = np.vstack([np.zeros((1, len(qualified))), np.cumsum(logret, axis=0)])
            day = csum[HOURS_PER_DAY:] - csum[:-HOURS_PER_DAY]
            daily_returns = np.zeros((day.shape[0], n))
            daily_returns[:, qualified] = np.expm1(day)
    vols = np.array([float(daily_vols.get(s, default_vol)) for s in symbols])
    sources = tuple(vol_sources.get(s, "default") for s in symbols)
    return MarketModel(
        symbols=tuple(symbols),
        daily_vols=vols,
        correlation=corr,
        vol_sources=sources,
        history_symbols=tuple(symbols[j] for j in qualified) if daily_returns is not None else (),
        daily_returns=daily_returns,
        built_at=built_at,
        key=key,
    )


# ------------------------------------------------------------------ assessment


@dataclass
class AccountRisk:
    """One account's numbers, as `assess_matrix` / `parametric_assess` return them."""

    equity: float
    gross_notional: float
    net_notional: float
    var_95: float
    var_99: float
    es_95: float
    es_99: float
    hist_var_95: float | None
    hist_var_99: float | None
    stress: list[dict]
    stress_loss: float
    worst_scenario: str
    concentration: float
    var_95_ratio: float
    var_99_ratio: float
    stress_loss_ratio: float
    components: dict
    overall_score: float
    level: RiskLevel
    recommendations: list[dict]


def _ratio(amount: float, equity: float) -> float:
    if amount <= 0.0:
        return 0.0
    if equity <= 0.0:
        return math.inf
    return amount / equity


def stress_matrix(w: np.ndarray, cov: np.ndarray, scenarios=DEFAULT_STRESS_SCENARIOS) -> np.ndarray:
    """`run_stress_tests` for many accounts at once (accounts × scenarios P&L, one-day
    horizon): `stress_pnl` on arrays of one value per account."""
    sigma = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    exposure = w * sigma
    inputs = dict(net=w.sum(axis=1), sd=np.sqrt(np.clip(np.einsum("ij,jk,ik->i", w, cov, w), 0.0, None)),
                  exposure_sum=exposure.sum(axis=1), exposure_norm=np.sqrt((exposure * exposure).sum(axis=1)))
    out = np.empty((w.shape[0], len(scenarios)))
    for k, sc in enumerate(scenarios):
        out[:, k] = stress_pnl(sc, **inputs)
    return out + 0.0


def _score_one(
    *, model: MarketModel, w: np.ndarray, equity: float, var95: float, var99: float, es95: float, es99: float,
    hist95, hist99, calibration: ScoreCalibration, thresholds, stress_row: np.ndarray | None = None,
) -> AccountRisk:
    """Everything after the VaR: stress, concentration, score, level, recommendations
    (the tail of the library's `assess_portfolio_risk`, same rules)."""
    if stress_row is None:
        stress = run_stress_tests(w, model.covariance, DEFAULT_STRESS_SCENARIOS)
    else:
        stress = tuple(StressResult(sc.name, StressKind(sc.kind), float(x))
                       for sc, x in zip(DEFAULT_STRESS_SCENARIOS, stress_row))
    worst = min(stress, key=lambda s: s.pnl, default=None)
    stress_loss = max(0.0, -worst.pnl) if worst is not None else 0.0
    worst_name = worst.name if worst is not None and stress_loss > 0 else ""
    conc = concentration_score(w)
    gross = float(np.abs(w).sum())
    ratios = dict(
        var_95_ratio=_ratio(var95, equity),
        var_99_ratio=_ratio(var99, equity),
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
        worst_scenario=worst_name or None,
        concentration=conc,
        largest_symbol=model.symbols[largest] if largest is not None else None,
        largest_share=abs(w[largest]) / gross if largest is not None else 0.0,
        has_positions=gross > 0,
    )
    return AccountRisk(
        equity=equity,
        gross_notional=gross,
        net_notional=float(w.sum()),
        var_95=var95,
        var_99=var99,
        es_95=es95,
        es_99=es99,
        hist_var_95=hist95,
        hist_var_99=hist99,
        stress=[{"name": s.name, "kind": s.kind.value, "pnl": s.pnl} for s in stress],
        stress_loss=stress_loss,
        worst_scenario=worst_name,
        concentration=conc,
        components=components,
        overall_score=score,
        level=level,
        recommendations=[{"code": r.code, "message": r.message} for r in recs],
        **ratios,
    )


def assess_matrix(
    model: MarketModel,
    notional: np.ndarray,
    equity: np.ndarray,
    *,
    paths: int,
    seed: int,
    calibration: ScoreCalibration,
    thresholds,
) -> list[AccountRisk]:
    """Assess many accounts (rows of ``notional``, accounts × model symbols) at once."""
    w = np.asarray(notional, dtype=np.float64).reshape(-1, len(model.symbols))
    eq = np.asarray(equity, dtype=np.float64).reshape(-1)
    if w.shape[0] == 0:
        return []
    mc = batch_var(w, scenarios=model.scenarios(paths=paths, seed=seed))
    hist = [None] * w.shape[0]
    if model.daily_returns is not None:
        hv, _ = var_from_pnl(w @ model.daily_returns.T)
        no_history = [model.index[s] for s in model.symbols if s not in model.history_symbols]
        missing = np.any(w[:, no_history] != 0, axis=1) if no_history else np.zeros(w.shape[0], dtype=bool)
        hist = [None if missing[i] else (float(hv[i, 0]), float(hv[i, 1])) for i in range(w.shape[0])]
    stress = stress_matrix(w, model.covariance)
    out = []
    for i in range(w.shape[0]):
        h = hist[i]
        out.append(_score_one(
            model=model, w=w[i], equity=float(eq[i]),
            var95=float(mc.var[i, 0]), var99=float(mc.var[i, 1]),
            es95=float(mc.es[i, 0]), es99=float(mc.es[i, 1]),
            hist95=h[0] if h else None, hist99=h[1] if h else None,
            calibration=calibration, thresholds=thresholds, stress_row=stress[i],
        ))
    return out


def parametric_score(
    model: MarketModel, w: np.ndarray, equity: float, *, calibration: ScoreCalibration, thresholds
) -> tuple[float, RiskLevel]:
    """Score and level with the closed-form normal VaR (no simulation): z·sqrt(wᵀΣw).

    The pre-trade gate scores every order with this, for a portfolio of a few symbols: it
    works on the non-zero weights as Python floats (small NumPy calls cost more than the
    arithmetic), with the stress scenarios from the same four sums as `run_stress_tests`."""
    held = [(i, x) for i, x in enumerate(w.tolist()) if x]
    cov, sigma = model.covariance_rows, model.sigmas
    sd = math.sqrt(max(0.0, sum(x * y * cov[i][j] for i, x in held for j, y in held)))
    exposure = [x * sigma[i] for i, x in held]
    inputs = dict(net=sum(x for _, x in held), sd=sd, exposure_sum=sum(exposure),
                  exposure_norm=math.sqrt(sum(e * e for e in exposure)))
    worst = min((stress_pnl(sc, **inputs) for sc in DEFAULT_STRESS_SCENARIOS), default=0.0)
    components = score_components(
        var_95_ratio=_ratio(_Z95 * sd, equity),
        var_99_ratio=_ratio(_Z99 * sd, equity),
        stress_loss_ratio=_ratio(max(0.0, -worst), equity),
        concentration=herfindahl([x for _, x in held]),
        calibration=calibration,
    )
    score = float(sum(SCORE_WEIGHTS[k] * v for k, v in components.items()))
    if held and equity <= 0:
        score = 100.0
    return score, risk_level(score, thresholds)
