"""Fixtures of the risk service and endpoint tests: a second contract, accounts with
positions booked directly (the risk code only reads them), marks, hourly history."""
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

import pytest

from apps.ledger.services import wallet_deposit
from apps.marketdata.models import PriceMinute
from apps.marketdata.services import price_cache_clear, price_publish
from apps.positions.models import Position
from apps.risk.services import risk_caches_clear

D = Decimal
NOW = datetime(2025, 3, 3, 12, 7, 30, tzinfo=dt_timezone.utc)


@pytest.fixture(autouse=True)
def _risk_caches(settings):
    risk_caches_clear()
    price_cache_clear(symbols=["BTCUSDT", "ETHUSDT"])
    yield
    risk_caches_clear()


def set_mark(contract, price, at=None):
    price_publish(contract=contract, index_price=D(price), mark_price=D(price), at=at or NOW)


def hold(user, contract, size, entry, *, leverage=20):
    """Book a position row directly (size signed)."""
    Position.objects.update_or_create(user=user, contract=contract,
                                      defaults={"size": D(size), "entry_price": D(entry), "leverage": leverage})


def fund(user, usdt, amount):
    wallet_deposit(user=user, asset=usdt, amount=D(amount))


def write_hourly(contract, prices, *, end=NOW):
    """One PriceMinute row per hour (at :59) with these marks, the last in the hour before `end`."""
    last_hour = end.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    rows = [
        PriceMinute(contract=contract, minute=last_hour - timedelta(hours=len(prices) - 1 - i) + timedelta(minutes=59),
                    index_price=D(str(round(p, 8))), mark_price=D(str(round(p, 8))), venues={})
        for i, p in enumerate(prices)
    ]
    PriceMinute.objects.bulk_create(rows)
