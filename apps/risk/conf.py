"""Tunables of the risk app, each overridable by a Django setting of the same name.

The defaults live here (not in `exchange/settings/`, which other apps own) and are
read through `risk_setting` at call time, so a test's `settings` fixture or a
deployment's settings module changes them without a restart of this code.

Calibration of the score (the decision the library left open)
-------------------------------------------------------------
The seed normalizes VaR so that 10% of equity scores 100 and a stress loss of 20%
scores 100. That is a scale for an unlevered portfolio: on a futures exchange every
1× position already loses 30% of equity in the −30% scenario, so a one-symbol
account scores CRITICAL from 0.7× effective leverage and the pre-trade gate would
refuse ordinary orders. The defaults below rescale the two loss metrics to
leveraged accounts and keep the seed's weights and the library's quartile levels
(25 / 50 / 75):

- ``RISK_SCORE_VAR_FULL_SCALE = 5.0``: a one-day VaR of 5× equity scores 100.
- ``RISK_SCORE_STRESS_FULL_SCALE = 20.0``: a worst stress loss of 20× equity
  (the −30% move at about 67× leverage) scores 100.

For a single-symbol account at effective leverage L (gross notional / equity)
and daily volatility σ (no cap reached) the score is
``20 + 95.9·σ·L / 5 + 9·L / 20`` (concentration 1 gives the 20; the −30% move is the
worst scenario while σ < 4.3%). With σ = 4% (BTC) this is 20 + 1.22·L:

======================  =======  ==========
effective leverage L    score    level
======================  =======  ==========
1×                      21       LOW
5×                      26       MEDIUM
10× / 20×               32 / 44  MEDIUM
30×                     57       HIGH
45×                     75       CRITICAL
50× / 125×              81 / 94  CRITICAL
======================  =======  ==========

(σ = 3%: CRITICAL from about 54×; σ = 6%, an altcoin: from about 31×.) The
pre-trade gate refuses orders that end at a level above
``RISK_PRETRADE_MAX_LEVEL`` (HIGH), i.e. CRITICAL: roughly an account whose
one-day 99% VaR is more than 4× its equity, with all of it in one symbol. Such an
account is wiped out by a 2% move, a typical few-hours move, so its losses beyond
equity land on the insurance fund whenever liquidation slips; that is the risk the
exchange refuses to take. Up to ~30× on a major symbol, the leverage the tiers
allow for any sizable position, stays at MEDIUM/HIGH and is accepted. Diversified
and hedged books score lower (Herfindahl concentration < 1, netted VaR and price
moves), so they may carry more gross leverage.
"""
from __future__ import annotations

from django.conf import settings

DEFAULTS: dict[str, object] = {
    # Score calibration (see the module docstring).
    "RISK_SCORE_VAR_FULL_SCALE": 5.0,
    "RISK_SCORE_STRESS_FULL_SCALE": 20.0,
    # Pre-trade gate: the highest accepted level after the order ("LOW".."CRITICAL").
    "RISK_PRETRADE_ENABLED": True,
    "RISK_PRETRADE_MAX_LEVEL": "HIGH",
    # In-process cache of the market model the pre-trade check and margin functions read.
    "RISK_MODEL_CACHE_SECONDS": 60.0,
    # Monte Carlo.
    "RISK_VAR_PATHS": 10_000,
    "RISK_VAR_SEED": 20_240_601,
    # Market model: hourly closes over this many days; below the minimum a symbol gets
    # the default volatility and correlation.
    "RISK_LOOKBACK_DAYS": 30,
    "RISK_MIN_HISTORY_HOURS": 48,
    "RISK_GARCH_MIN_HOURS": 252,
    "RISK_DEFAULT_DAILY_VOLATILITY": 0.05,
    "RISK_DEFAULT_CORRELATION": 0.8,
    # Liquidity score = min(1, 24 h traded notional / this), quote currency.
    "RISK_LIQUIDITY_FULL_NOTIONAL": 10_000_000.0,
    # Beat job: time bucket (one run and one snapshot per account per bucket), chunk size.
    "RISK_ASSESS_INTERVAL_SECONDS": 900,
    "RISK_ASSESS_CHUNK": 500,
    # A run still RUNNING after this long is considered lost and re-dispatched.
    "RISK_RUN_STALE_SECONDS": 600,
    # Snapshots older than this are deleted by the hourly volatility job.
    "RISK_SNAPSHOT_RETENTION_DAYS": 30,
}


def risk_setting(name: str):
    return getattr(settings, name, DEFAULTS[name])
