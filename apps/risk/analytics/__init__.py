"""Quantitative risk library of the back office: pure Python/NumPy/SciPy, no Django.

`volatility` (realized volatility, GARCH(1,1) by maximum likelihood and its forecast),
`options` (Black–Scholes prices, Greeks, implied volatility), `portfolio` (Monte Carlo
and historical VaR, stress tests, concentration, the weighted risk score and level,
batch VaR for the whole book), `margin_adjustment` (volatility/liquidity adjustments
to margin rates, returned as Decimal because they feed booked margin) and `pretrade`
(the risk level an order would lead to, for the order-entry check). It lives apart
from the Django app so the numbers can be tested and benchmarked without a database
and called from web requests, Celery tasks and scripts alike. The names re-exported
here (each module's ``__all__``) are the public API; import them from here.
"""
from . import margin_adjustment, options, portfolio, pretrade, volatility
from .margin_adjustment import *  # noqa: F401,F403
from .options import *  # noqa: F401,F403
from .portfolio import *  # noqa: F401,F403
from .pretrade import *  # noqa: F401,F403
from .volatility import *  # noqa: F401,F403

__all__ = [
    *volatility.__all__,
    *options.__all__,
    *portfolio.__all__,
    *margin_adjustment.__all__,
    *pretrade.__all__,
]
