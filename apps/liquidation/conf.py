"""Tunables of the liquidation app, each overridable by a Django setting of the same name.

Read at call time through `liquidation_setting`, so a test's `settings` fixture or a
deployment's settings module changes them without touching this code.
"""
from decimal import Decimal

from django.conf import settings

DEFAULTS = {
    # Margin ratio levels (equity / maintenance margin): at or below each is that level.
    "LIQUIDATION_WARNING_RATIO": Decimal("1.5"),
    "LIQUIDATION_DANGER_RATIO": Decimal("1.2"),
    "LIQUIDATION_RATIO": Decimal("1.0"),
    # A scope's margin call is pushed again at the same level after this many seconds
    # (a worse level is pushed at once).
    "LIQUIDATION_MARGIN_CALL_REPEAT_SECONDS": 300,
    # Run the NumPy screen in the process that publishes marks (the pricefeed), after each
    # published mark, at most once per this many seconds per process. The beat sweep runs anyway.
    "LIQUIDATION_SCREEN_ON_MARK": False,
    "LIQUIDATION_SCREEN_MIN_INTERVAL_SECONDS": 0.5,
    # The screen's float arithmetic flags at ratio <= 1 + this margin; each flagged scope is
    # then judged exactly in Decimal before anything happens to it.
    "LIQUIDATION_SCREEN_TOLERANCE": 1e-6,
    # A cross liquidation waits for the cancels of its orders on other symbols (their holds
    # back in the wallet) at most this long after it started: a matcher that is down must not
    # hold the positions' liquidation up (the fund may then cover holds not yet returned).
    "LIQUIDATION_CANCEL_WAIT_SECONDS": 10,
}


def liquidation_setting(name: str):
    return getattr(settings, name, DEFAULTS[name])
