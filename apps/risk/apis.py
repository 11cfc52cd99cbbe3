"""Client risk endpoints (this exchange's extensions, not Binance's).

- `GET /fapi/v1/risk/account` (signed, USER_DATA): the account's latest risk snapshot
  (assessed on the spot when the account has none yet).
- `GET /fapi/v1/risk/options` (public): Black–Scholes prices, the five Greeks and
  implied volatilities for up to 100 European options in one vectorized call.

Amounts go out as strings (Decimal), ratios and scores as numbers, times as ms.
"""
from __future__ import annotations

import math

import numpy as np
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from apps.accounts.api import PublicApi, SignedApi, request_params
from apps.trading.apis import SIGNED, _ms, _s
from exchange import params as p
from exchange.errors import ErrorCode, ExchangeError

from .analytics import IVStatus, bs_greeks, bs_price, implied_volatility_array
from .models import RiskSnapshot
from .selectors import snapshot_latest
from .services import risk_account_assess

MAX_OPTIONS = 100


class StressOut(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField()
    pnl = serializers.FloatField()


class RecommendationOut(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class RiskAccountOut(serializers.Serializer):
    time = serializers.IntegerField(help_text="When the snapshot was computed (ms).")
    riskLevel = serializers.ChoiceField(choices=["LOW", "MEDIUM", "HIGH", "CRITICAL"])
    riskScore = serializers.FloatField(help_text="Weighted score 0–100 (0.3 VaR95, 0.2 VaR99, 0.3 stress, 0.2 "
                                                 "concentration).")
    equity = serializers.CharField()
    grossNotional = serializers.CharField()
    netNotional = serializers.CharField()
    var95 = serializers.CharField(help_text="One-day Monte Carlo VaR at 95% (positive loss, USDT).")
    var99 = serializers.CharField()
    expectedShortfall95 = serializers.CharField()
    expectedShortfall99 = serializers.CharField()
    historicalVar95 = serializers.CharField(allow_null=True)
    historicalVar99 = serializers.CharField(allow_null=True)
    stressLoss = serializers.CharField()
    worstScenario = serializers.CharField()
    concentration = serializers.FloatField(help_text="Herfindahl index of gross notional by symbol (0–1).")
    var95Ratio = serializers.FloatField(allow_null=True, help_text="VaR95 / equity; null when equity ≤ 0.")
    var99Ratio = serializers.FloatField(allow_null=True)
    stressLossRatio = serializers.FloatField(allow_null=True)
    components = serializers.DictField(child=serializers.FloatField())
    stress = StressOut(many=True)
    recommendations = RecommendationOut(many=True)
    paths = serializers.IntegerField()


def snapshot_payload(s: RiskSnapshot) -> dict:
    return {
        "time": _ms(s.computed_at),
        "riskLevel": s.get_level_display().upper(),
        "riskScore": round(s.overall_score, 4),
        "equity": _s(s.equity),
        "grossNotional": _s(s.gross_notional),
        "netNotional": _s(s.net_notional),
        "var95": _s(s.var_95),
        "var99": _s(s.var_99),
        "expectedShortfall95": _s(s.es_95),
        "expectedShortfall99": _s(s.es_99),
        "historicalVar95": _s(s.hist_var_95) if s.hist_var_95 is not None else None,
        "historicalVar99": _s(s.hist_var_99) if s.hist_var_99 is not None else None,
        "stressLoss": _s(s.stress_loss),
        "worstScenario": s.worst_scenario,
        "concentration": s.concentration,
        "var95Ratio": s.var_95_ratio,
        "var99Ratio": s.var_99_ratio,
        "stressLossRatio": s.stress_loss_ratio,
        "components": s.components,
        "stress": s.stress,
        "recommendations": s.recommendations,
        "paths": s.paths,
    }


class RiskAccountApi(SignedApi):
    """GET /fapi/v1/risk/account: the account's latest risk assessment."""

    weight = 5

    @extend_schema(
        summary="Account risk (exchange extension)",
        description="The latest risk snapshot of the account: one-day Monte Carlo VaR/ES (10,000 seeded, "
        "correlated paths), historical VaR, named stress scenarios, concentration, the weighted risk score, "
        "its level and recommendations. Snapshots are computed every 15 minutes for accounts with open "
        "positions; an account without one is assessed on request.",
        parameters=SIGNED, responses=RiskAccountOut,
    )
    def get(self, request):
        request_params(request)
        snapshot = snapshot_latest(user=request.user) or risk_account_assess(user=request.user)
        return Response(snapshot_payload(snapshot))


# ---------------------------------------------------------------- options


def _floats(params: dict, name: str, *, required: bool, low: float | None = None, low_inclusive: bool = True,
            high: float | None = None) -> np.ndarray | None:
    raw = p.optional(params, name)
    if raw is None:
        if required:
            raise p.missing(name)
        return None
    parts = raw.split(",")
    if len(parts) > MAX_OPTIONS:
        raise ExchangeError(f"At most {MAX_OPTIONS} values in '{name}'.", code=ErrorCode.INVALID_PARAMETER)
    try:
        values = np.array([float(x) for x in parts], dtype=np.float64)
    except ValueError as exc:
        raise p.invalid(name, raw) from exc
    bad = ~np.isfinite(values)
    if low is not None:
        bad |= values < low if low_inclusive else values <= low
    if high is not None:
        bad |= values > high
    if bad.any():
        raise p.invalid(name, raw)
    return values


def _types(params: dict) -> np.ndarray:
    raw = p.optional(params, "type") or "CALL"
    kinds = [x.strip().upper() for x in raw.split(",")]
    if len(kinds) > MAX_OPTIONS or any(k not in ("CALL", "PUT") for k in kinds):
        raise p.invalid("type", raw)
    return np.array([k.lower() for k in kinds])


def _nums(x) -> list:
    return [None if not math.isfinite(v) else float(v) for v in np.atleast_1d(x)]


OPTION_PARAMS = [
    OpenApiParameter("spot", str, required=False, description="Underlying price S (> 0). Or give `symbol`."),
    OpenApiParameter("symbol", str, required=False, description="Use this contract's mark price as S."),
    OpenApiParameter("strike", str, required=True, description="Strike(s) K (> 0), comma-separated."),
    OpenApiParameter("expiry", str, required=True,
                     description="Time(s) to expiry T in years (≥ 0, ≤ 100), comma-separated."),
    OpenApiParameter("rate", str, required=False, description="Risk-free rate r, continuous (default 0.02)."),
    OpenApiParameter("volatility", str, required=False,
                     description="Annualized volatility σ (0–5) to price with, comma-separated."),
    OpenApiParameter("price", str, required=False,
                     description="Market price(s) (> 0) to back implied volatility out of (Brent on [0.001, 5])."),
    OpenApiParameter("type", str, required=False, description="CALL or PUT (default CALL), comma-separated."),
]

OPTION_OUT = inline_serializer("OptionQuote", {
    "type": serializers.CharField(), "spot": serializers.FloatField(), "strike": serializers.FloatField(),
    "expiry": serializers.FloatField(), "rate": serializers.FloatField(),
    "volatility": serializers.FloatField(allow_null=True), "price": serializers.FloatField(allow_null=True),
    "delta": serializers.FloatField(allow_null=True), "gamma": serializers.FloatField(allow_null=True),
    "theta": serializers.FloatField(allow_null=True, help_text="Per calendar day."),
    "vega": serializers.FloatField(allow_null=True, help_text="Per 1 volatility point."),
    "rho": serializers.FloatField(allow_null=True, help_text="Per 1 percentage point of rate."),
    "marketPrice": serializers.FloatField(allow_null=True),
    "impliedVolatility": serializers.FloatField(allow_null=True),
    "impliedVolatilityStatus": serializers.CharField(allow_null=True),
}, many=True)


class OptionsApi(PublicApi):
    """GET /fapi/v1/risk/options: Black–Scholes calculator (vectorized)."""

    weight = 1

    @extend_schema(
        summary="Option pricing calculator (exchange extension)",
        description="European options under Black–Scholes (no dividends): price and Greeks (theta per day, "
        "vega and rho per 1%) for each `volatility`, implied volatility for each `price`. List parameters "
        "are comma-separated and broadcast: each has 1 value or the same count n ≤ 100 as the others. "
        "An option without implied volatility gets null and a status (BELOW_LOWER_BOUND, "
        "ABOVE_UPPER_BOUND, OUTSIDE_SEARCH_INTERVAL, EXPIRED).",
        parameters=OPTION_PARAMS, responses=OPTION_OUT,
    )
    def get(self, request):
        params = request_params(request)
        spot = _floats(params, "spot", required=False, low=0, low_inclusive=False, high=1e12)
        if spot is None:
            contract = p.contract(params, required_=False)
            if contract is None:
                raise ExchangeError("Give 'spot' or 'symbol'.", code=ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED)
            from apps.marketdata.selectors import price_latest

            latest = price_latest(contract=contract)
            if latest is None:
                raise ExchangeError(f"No mark price for {contract.symbol} yet.", code=ErrorCode.INVALID_PARAMETER)
            spot = np.array([float(latest.mark_price)])
        strike = _floats(params, "strike", required=True, low=0, low_inclusive=False, high=1e12)
        expiry = _floats(params, "expiry", required=True, low=0, high=100)
        rate = _floats(params, "rate", required=False, low=-1, high=1)
        rate = np.array([0.02]) if rate is None else rate
        vol = _floats(params, "volatility", required=False, low=0, high=5)
        market = _floats(params, "price", required=False, low=0, low_inclusive=False, high=1e12)
        kinds = _types(params)
        if vol is None and market is None:
            raise ExchangeError("Give 'volatility' (to price) or 'price' (for implied volatility), or both.",
                                code=ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED)
        arrays = {"spot": spot, "strike": strike, "expiry": expiry, "rate": rate, "type": kinds}
        if vol is not None:
            arrays["volatility"] = vol
        if market is not None:
            arrays["price"] = market
        lengths = {len(a) for a in arrays.values()} - {1}
        if len(lengths) > 1:
            raise ExchangeError("List parameters must have 1 value or the same number of values.",
                                code=ErrorCode.INVALID_PARAMETER)
        n = lengths.pop() if lengths else 1
        b = {k: np.broadcast_to(v, (n,)) for k, v in arrays.items()}
        nan = np.full(n, np.nan)
        price = greeks = None
        if vol is not None:
            price = bs_price(b["spot"], b["strike"], b["expiry"], b["rate"], b["volatility"], b["type"])
            greeks = bs_greeks(b["spot"], b["strike"], b["expiry"], b["rate"], b["volatility"], b["type"])
        iv = status = None
        if market is not None:
            res = implied_volatility_array(b["price"], b["spot"], b["strike"], b["expiry"], b["rate"], b["type"],
                                           method="vectorized")
            iv, status = res.vol, res.status
        out = []
        cols = {
            "price": _nums(price if price is not None else nan),
            **{g: _nums(getattr(greeks, g) if greeks is not None else nan)
               for g in ("delta", "gamma", "theta", "vega", "rho")},
            "impliedVolatility": _nums(iv if iv is not None else nan),
        }
        for i in range(n):
            out.append({
                "type": str(b["type"][i]).upper(), "spot": float(b["spot"][i]), "strike": float(b["strike"][i]),
                "expiry": float(b["expiry"][i]), "rate": float(b["rate"][i]),
                "volatility": float(b["volatility"][i]) if vol is not None else None,
                **{k: v[i] for k, v in cols.items()},
                "marketPrice": float(b["price"][i]) if market is not None else None,
                "impliedVolatilityStatus": IVStatus(int(status[i])).name if status is not None else None,
            })
        return Response(out)
