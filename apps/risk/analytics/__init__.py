"""Quantitative risk library of the back office: pure Python/NumPy/SciPy, no Django.

`volatility` (realized volatility, GARCH(1,1) by maximum likelihood and its forecast),
`options` (Black–Scholes prices, Greeks, implied volatility), `portfolio` (Monte Carlo
and historical VaR, stress tests, concentration, the weighted risk score and level,
batch VaR for the whole book), `margin_adjustment` (volatility/liquidity adjustments
to margin rates, returned as Decimal because they feed booked margin) and `pretrade`
(the risk level an order would lead to, for the order-entry check). It lives apart
from the Django app so the numbers can be tested and benchmarked without a database
and called from web requests, Celery tasks and scripts alike. The names below are
the public API; import them from here.
"""
from .margin_adjustment import (
    adjusted_initial_margin_rate,
    daily_volatility_from_hourly_prices,
    initial_margin_multiplier,
    liquidity_adjustment,
    maintenance_volatility_addon,
    maintenance_volatility_addon_from_prices,
    risk_adjustment_factor,
    volatility_adjustment,
)
from .options import (
    Greeks,
    ImpliedVolResult,
    IVStatus,
    NoImpliedVolatility,
    bs_greeks,
    bs_price,
    implied_volatility,
    implied_volatility_array,
)
from .portfolio import (
    DEFAULT_STRESS_SCENARIOS,
    BatchVarResult,
    Position,
    Recommendation,
    ReturnsHistory,
    RiskAssessment,
    RiskLevel,
    ScoreCalibration,
    StressKind,
    StressResult,
    StressScenario,
    VarResult,
    assess_portfolio_risk,
    batch_var,
    concentration_score,
    covariance_factor,
    historical_var,
    monte_carlo_var,
    notional_matrix,
    overall_risk_score,
    parametric_var,
    risk_level,
    run_stress_tests,
    simulate_scenarios,
)
from .pretrade import RISK_TOO_HIGH, OrderIntent, PreTradeRiskResult, pretrade_risk_check
from .volatility import (
    ANNUALIZATION_FACTORS,
    GARCH_MIN_OBSERVATIONS,
    GarchFit,
    VolatilityEstimate,
    fit_garch,
    garch_forecast,
    garch_volatility,
    log_returns,
    realized_volatility,
    sample_volatility,
    simulate_garch,
)

__all__ = [
    # volatility
    "ANNUALIZATION_FACTORS",
    "GARCH_MIN_OBSERVATIONS",
    "GarchFit",
    "VolatilityEstimate",
    "fit_garch",
    "garch_forecast",
    "garch_volatility",
    "log_returns",
    "realized_volatility",
    "sample_volatility",
    "simulate_garch",
    # options
    "Greeks",
    "ImpliedVolResult",
    "IVStatus",
    "NoImpliedVolatility",
    "bs_greeks",
    "bs_price",
    "implied_volatility",
    "implied_volatility_array",
    # portfolio
    "DEFAULT_STRESS_SCENARIOS",
    "BatchVarResult",
    "Position",
    "Recommendation",
    "ReturnsHistory",
    "RiskAssessment",
    "RiskLevel",
    "ScoreCalibration",
    "StressKind",
    "StressResult",
    "StressScenario",
    "VarResult",
    "assess_portfolio_risk",
    "batch_var",
    "concentration_score",
    "covariance_factor",
    "historical_var",
    "monte_carlo_var",
    "notional_matrix",
    "overall_risk_score",
    "parametric_var",
    "risk_level",
    "run_stress_tests",
    "simulate_scenarios",
    # margin adjustments (Decimal)
    "adjusted_initial_margin_rate",
    "daily_volatility_from_hourly_prices",
    "initial_margin_multiplier",
    "liquidity_adjustment",
    "maintenance_volatility_addon",
    "maintenance_volatility_addon_from_prices",
    "risk_adjustment_factor",
    "volatility_adjustment",
    # pre-trade
    "RISK_TOO_HIGH",
    "OrderIntent",
    "PreTradeRiskResult",
    "pretrade_risk_check",
]
