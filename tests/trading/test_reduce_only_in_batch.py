"""Reduce-only and close-position orders never open or flip a position, however a batch's
commands interleave: the book follows every position and cuts them as it matches. Each case
was an audit finding: all in ONE batch, an earlier command closed the position first."""
from decimal import Decimal

from apps.marketdata.services import price_publish
from apps.ops.invariants import run_all_invariants
from apps.positions.models import Position
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.models import OrderStatus
from apps.trading.services import order_place
from django.utils import timezone

D = Decimal


def size(user):
    return Position.objects.get(user=user).size


def mark(contract, price):
    price_publish(contract=contract, index_price=D(price), mark_price=D(price), at=timezone.now())


def long_alice(funded, btcusdt):
    """alice long 0.1 (bought from bob) and the engine that booked it."""
    alice, bob, carol = funded("alice"), funded("bob"), funded("carol")
    engine = SymbolEngine(btcusdt)
    mark(btcusdt, "50000")
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50000"))
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    batch_process(engine)
    return alice, bob, carol, engine


def test_a_reduce_only_taker_after_the_position_closed_in_the_batch_expires(funded, btcusdt):
    alice, bob, carol, engine = long_alice(funded, btcusdt)
    order_place(user=carol, contract=btcusdt, side="BUY", quantity=D("1"), price=D("49900"))
    batch_process(engine)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("49900"))
    reducing = order_place(user=alice, contract=btcusdt, side="SELL", order_type="MARKET", quantity=D("0.1"),
                           reduce_only=True)
    batch_process(engine)
    reducing.refresh_from_db()
    assert size(alice) == 0
    assert (reducing.status, reducing.executed_qty) == (OrderStatus.EXPIRED, 0)
    assert run_all_invariants() == []


def test_a_reduce_only_taker_larger_than_the_position_is_cut_to_it(funded, btcusdt):
    alice, bob, carol, engine = long_alice(funded, btcusdt)
    order_place(user=carol, contract=btcusdt, side="BUY", quantity=D("1"), price=D("49900"))
    batch_process(engine)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.06"), price=D("49900"))
    reducing = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("49900"),
                           reduce_only=True)
    batch_process(engine)
    reducing.refresh_from_db()
    # 0.04 left to reduce: the order's quantity becomes 0.04, all filled.
    assert size(alice) == 0
    assert (reducing.quantity, reducing.executed_qty, reducing.status) == (D("0.04"), D("0.04"), OrderStatus.FILLED)
    assert run_all_invariants() == []


def test_a_resting_reduce_only_maker_is_not_hit_after_the_position_closed(funded, btcusdt):
    alice, bob, carol, engine = long_alice(funded, btcusdt)
    dave = funded("dave")
    take_profit = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("51000"),
                              reduce_only=True)
    order_place(user=carol, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("49900"))
    batch_process(engine)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("49900"))
    order_place(user=dave, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("51000"))
    batch_process(engine)
    take_profit.refresh_from_db()
    assert size(alice) == 0 and size(dave) == 0
    assert (take_profit.status, take_profit.executed_qty) == (OrderStatus.EXPIRED, 0)
    assert engine.book.get(take_profit.pk) is None
    assert run_all_invariants() == []


def test_one_sweep_through_a_normal_and_a_reduce_only_ask_of_one_account(funded, btcusdt):
    """alice long 0.1 rests a normal ask 0.1 and a reduce-only ask 0.1; one bid takes both
    levels: the first closes her position, so the reduce-only ask leaves the book unfilled."""
    alice, bob, carol, engine = long_alice(funded, btcusdt)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50100"))
    take_profit = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50200"),
                              reduce_only=True)
    batch_process(engine)
    order_place(user=carol, contract=btcusdt, side="BUY", quantity=D("0.2"), price=D("50200"))
    batch_process(engine)
    take_profit.refresh_from_db()
    assert size(alice) == 0 and size(carol) == D("0.1")
    assert take_profit.status == OrderStatus.EXPIRED
    assert run_all_invariants() == []


def test_two_close_position_stops_firing_together_close_the_position_once(funded, btcusdt):
    alice, bob, carol, engine = long_alice(funded, btcusdt)
    stops = [order_place(user=alice, contract=btcusdt, side="SELL", order_type="STOP_MARKET", stop_price=D(p),
                         close_position=True, working_type="MARK_PRICE") for p in ("49000", "49500")]
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.5"), price=D("48000"))
    batch_process(engine)
    mark(btcusdt, "48500")
    batch_process(engine)
    for stop in stops:
        stop.refresh_from_db()
    assert size(alice) == 0
    assert sorted(s.status for s in stops) == [OrderStatus.EXPIRED, OrderStatus.FILLED]
    assert run_all_invariants() == []


def test_the_rebuilt_book_follows_the_positions(funded, btcusdt):
    alice, bob, carol, engine = long_alice(funded, btcusdt)
    assert engine.book.position(alice.pk) == 100 and engine.book.position(bob.pk) == -100
    rebuilt = SymbolEngine(btcusdt)
    rebuilt.rebuild()
    assert rebuilt.book.state_hash() == engine.book.state_hash()
