"""Conditional orders fire inside the matcher's batch when their working price crosses the trigger."""
from decimal import Decimal

from django.utils import timezone

from apps.marketdata.services import price_publish
from apps.ops.invariants import run_all_invariants
from apps.positions.models import Position
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.models import Order, OrderStatus, Trade
from apps.trading.services import order_place

from .test_matching import held_of

D = Decimal


def mark(contract, price):
    price_publish(contract=contract, index_price=D(price), mark_price=D(price), at=timezone.now())


def test_stop_market_fires_on_the_mark_and_fills(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    mark(btcusdt, "50000")
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("52000"))
    stop = order_place(user=alice, contract=btcusdt, side="BUY", order_type="STOP_MARKET", stop_price=D("52000"),
                       quantity=D("0.1"), working_type="MARK_PRICE")
    batch_process(engine)
    mark(btcusdt, "51999.9")
    batch_process(engine)
    stop.refresh_from_db()
    assert stop.status == OrderStatus.NEW and stop.triggered_at is None
    mark(btcusdt, "52000")
    batch_process(engine)
    stop.refresh_from_db()
    assert stop.status == OrderStatus.FILLED and stop.triggered_at is not None
    assert stop.protection_price == D("67600")  # 52,000 × 1.3
    assert Trade.objects.get().price == D("52000")
    assert Position.objects.get(user=alice).size == D("0.1")
    assert held_of(alice) == 0
    assert run_all_invariants() == []


def test_take_profit_limit_fires_on_the_last_trade_price(funded, btcusdt):
    alice, bob, carol = funded("alice"), funded("bob"), funded("carol")
    engine = SymbolEngine(btcusdt)
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50000"))
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    batch_process(engine)
    take = order_place(user=alice, contract=btcusdt, side="SELL", order_type="TAKE_PROFIT", stop_price=D("51000"),
                       price=D("51000"), quantity=D("0.1"), reduce_only=True)
    batch_process(engine)
    assert Order.objects.get(pk=take.pk).triggered_at is None
    order_place(user=carol, contract=btcusdt, side="SELL", quantity=D("0.01"), price=D("51000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("51000"))
    batch_process(engine)  # the trade at 51,000 happens here...
    batch_process(engine)  # ...and the take-profit fires on it in the next round, resting at 51,000
    take.refresh_from_db()
    assert take.triggered_at is not None and take.status == OrderStatus.NEW and take.priority is not None


def test_trailing_stop_tracks_the_high_and_fires_on_the_callback(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    mark(btcusdt, "50000")
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50000"))
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    batch_process(engine)
    trail = order_place(user=alice, contract=btcusdt, side="SELL", order_type="TRAILING_STOP_MARKET",
                        quantity=D("0.1"), reduce_only=True, activation_price=D("51000"), callback_rate=D("1"),
                        working_type="MARK_PRICE")
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("51000"))
    steps = [("50500", None), ("51000", D("51000")), ("52000", D("52000")), ("51500", D("52000"))]
    for price, extreme in steps:
        mark(btcusdt, price)
        batch_process(engine)
        trail.refresh_from_db()
        assert (trail.trail_extreme, trail.triggered_at) == (extreme, None), price
    mark(btcusdt, "51480")  # 1% under the 52,000 high
    batch_process(engine)
    trail.refresh_from_db()
    assert trail.status == OrderStatus.FILLED and Position.objects.get(user=alice).size == 0


def test_close_position_stop_expires_when_nothing_is_left_to_close(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    mark(btcusdt, "50000")
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50000"))
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    batch_process(engine)
    stop = order_place(user=alice, contract=btcusdt, side="SELL", order_type="STOP_MARKET", stop_price=D("49000"),
                       close_position=True, working_type="MARK_PRICE")
    assert stop.margin_held == 0 and held_of(alice) == 0  # closing orders hold nothing
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    batch_process(engine)  # alice is flat now
    mark(btcusdt, "48000")
    batch_process(engine)
    stop.refresh_from_db()
    assert stop.status == OrderStatus.EXPIRED and stop.margin_held == 0 and held_of(alice) == 0
    assert run_all_invariants() == []
