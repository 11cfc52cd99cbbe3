"""A small market built through order entry and the matcher, at controlled times.

Times (UTC, 2026-01-05 is a Monday), with T0 = 10:00:00:
  T0       book:  alice SELL 0.5 @ 50100, SELL 0.3 @ 50100, SELL 1.0 @ 50200
                  bob   BUY  0.4 @ 49900, BUY  0.6 @ 49800, BUY  0.2 @ 49900
  T0+30s   carol BUY 1.0 @ 50200   -> t1 0.5@50100, t2 0.3@50100, t3 0.2@50200 (taker buys)
  T0+90s   carol SELL 0.5 @ 49800  -> t4 0.4@49900, t5 0.1@49900 (taker sells)
  T0+65m   dave BUY 0.1 @ 50200    -> t6 0.1@50200
  T0+70m   bob BUY 0.3 @ 49700, cancelled in the same batch (never in the book)
  T0+75m   erin SELL 1 @ 50300 placed but not matched yet (pending: not in the book)
Book after: bids 49900 x 0.1, 49800 x 0.6; asks 50200 x 0.7.
"""
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import time_machine

from apps.ledger.services import wallet_deposit
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.models import CommandStatus, OrderCommand, Trade
from apps.trading.services import order_cancel, order_place
from exchange.redis import get_redis

D = Decimal
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)


def ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


@pytest.fixture(autouse=True)
def limiter_isolation(settings):
    """Each test counts request weight under its own Redis key prefix (and cleans it up)."""
    prefix = f"pubtest:{uuid.uuid4().hex}:"
    settings.API_REDIS_PREFIX = prefix
    yield
    redis = get_redis()
    keys = list(redis.scan_iter(match=prefix + "*", count=1000))
    if keys:
        redis.delete(*keys)


@pytest.fixture
def funded(make_user, usdt):
    def make(name: str):
        user = make_user(name)
        wallet_deposit(user=user, asset=usdt, amount=D("1000000"))
        return user

    return make


@dataclass
class Market:
    contract: object
    trade_ids: list[int]  # t1..t6
    last_done_seq: int


@pytest.fixture
def market(funded, btcusdt) -> Market:
    alice, bob, carol, dave, erin = (funded(n) for n in ("alice", "bob", "carol", "dave", "erin"))
    engine = SymbolEngine(btcusdt)

    def place(user, side, qty, price):
        return order_place(user=user, contract=btcusdt, side=side, quantity=D(qty), price=D(price))

    with time_machine.travel(T0, tick=False):
        place(alice, "SELL", "0.5", "50100")
        place(alice, "SELL", "0.3", "50100")
        place(alice, "SELL", "1.0", "50200")
        place(bob, "BUY", "0.4", "49900")
        place(bob, "BUY", "0.6", "49800")
        place(bob, "BUY", "0.2", "49900")
        batch_process(engine)
    with time_machine.travel(T0 + timedelta(seconds=30), tick=False):
        place(carol, "BUY", "1.0", "50200")
        batch_process(engine)
    with time_machine.travel(T0 + timedelta(seconds=90), tick=False):
        place(carol, "SELL", "0.5", "49800")
        batch_process(engine)
    with time_machine.travel(T0 + timedelta(minutes=65), tick=False):
        place(dave, "BUY", "0.1", "50200")
        batch_process(engine)
    with time_machine.travel(T0 + timedelta(minutes=70), tick=False):
        order = place(bob, "BUY", "0.3", "49700")
        order_cancel(user=bob, order_id=order.pk)
        batch_process(engine)
    with time_machine.travel(T0 + timedelta(minutes=75), tick=False):
        place(erin, "SELL", "1", "50300")

    trade_ids = list(Trade.objects.order_by("id").values_list("id", flat=True))
    assert len(trade_ids) == 6
    last_done = OrderCommand.objects.filter(contract=btcusdt, status=CommandStatus.DONE).order_by("-seq").first()
    return Market(contract=btcusdt, trade_ids=trade_ids, last_done_seq=last_done.seq)


@pytest.fixture
def at():
    """Run a request at a fixed time: `with at(T0 + ...)`."""
    def travel(moment: datetime):
        return time_machine.travel(moment, tick=False)

    return travel
