"""An amend journalled behind a fill of the same order, both matched in one batch: the new total
quantity counts that fill (the book takes open quantities), and the hold follows."""
from decimal import Decimal

from apps.ops.invariants import run_all_invariants
from apps.trading.engine import SymbolEngine
from apps.trading.margin import order_hold
from apps.trading.matching import batch_process
from apps.trading.models import OrderStatus
from apps.trading.services import order_amend, order_place

from .test_matching import held_of

D = Decimal


def test_an_amend_after_a_fill_in_the_same_batch_sets_the_total_quantity(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    order = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("2"), price=D("50000"))
    batch_process(engine)
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1.5"), price=D("50000"))
    order_amend(user=alice, contract=btcusdt, order_id=order.pk, quantity=D("1.6"), price=D("50000"))
    batch_process(engine)
    order.refresh_from_db()
    # 1.5 filled, then the total becomes 1.6: 0.1 left open (not 1.6 more), holding 0.1's margin.
    assert (order.quantity, order.executed_qty, order.status) == (D("1.6"), D("1.5"), OrderStatus.PARTIALLY_FILLED)
    assert engine.book.get(order.pk)[2] == 100  # lots of 0.001
    required = order_hold(quantity=D("0.1"), price=D("50000"), contract=btcusdt, leverage=order.leverage,
                          reduce_only=False)
    assert order.margin_held == required == held_of(alice)
    assert run_all_invariants() == []


def test_an_amend_the_fills_overtook_is_refused_by_the_book(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    order = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("2"), price=D("50000"))
    batch_process(engine)
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1.5"), price=D("50000"))
    order_amend(user=alice, contract=btcusdt, order_id=order.pk, quantity=D("1.2"), price=D("50000"))
    batch_process(engine)
    order.refresh_from_db()
    # 1.5 already filled is more than the new total 1.2: the amend does nothing; 0.5 stays open.
    assert (order.quantity, order.executed_qty, order.status) == (D("2"), D("1.5"), OrderStatus.PARTIALLY_FILLED)
    assert engine.book.get(order.pk)[2] == 500
    assert order.margin_held == held_of(alice)
    assert run_all_invariants() == []
