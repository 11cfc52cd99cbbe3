"""What a matcher batch asks of the database when there is little or nothing to do."""
from decimal import Decimal

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.marketdata.services import price_publish
from apps.ops.invariants import run_all_invariants
from apps.positions.models import Position
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.models import Order, OrderStatus
from apps.trading.services import order_cancel, order_place

from .test_matching import held_of

D = Decimal


def test_an_idle_batch_is_one_statement_even_with_stop_orders_waiting(funded, btcusdt):
    alice = funded("alice")
    engine = SymbolEngine(btcusdt)
    price_publish(contract=btcusdt, index_price=D("50000"), mark_price=D("50000"), at=timezone.now())
    stop = order_place(user=alice, contract=btcusdt, side="BUY", order_type="STOP_MARKET", stop_price=D("52000"),
                       quantity=D("0.1"), working_type="MARK_PRICE")
    batch_process(engine)
    for _ in range(2):
        with CaptureQueriesContext(connection) as queries:
            assert batch_process(engine) is None
        # The status lock, whether a command is pending and the waiting stop, in one statement (besides
        # the mark price the stop is judged by, and the savepoint the test's transaction adds).
        own = [q["sql"] for q in queries if "marketdata_" not in q["sql"] and "SAVEPOINT" not in q["sql"]]
        assert len(own) == 1, own
    stop.refresh_from_db()
    assert stop.status == OrderStatus.NEW and stop.triggered_at is None


def test_a_batch_that_only_releases_margin_locks_no_position(funded, btcusdt):
    alice = funded("alice")
    engine = SymbolEngine(btcusdt)
    order = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    batch_process(engine)
    order_cancel(user=alice, order_id=order.pk)
    with CaptureQueriesContext(connection) as queries:
        assert batch_process(engine).commands == 1
    assert not [q for q in queries if "positions_position" in (q["sql"] or "") and "FOR UPDATE" in q["sql"]]
    assert Order.objects.get(pk=order.pk).status == OrderStatus.CANCELED
    assert held_of(alice) == 0
    assert run_all_invariants() == []


def test_a_fill_batch_writes_positions_orders_and_journal_in_one_statement(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50000"))
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    with CaptureQueriesContext(connection) as queries:
        assert len(batch_process(engine).trades) == 1
    writes = [q["sql"] for q in queries if "UPDATE positions_position" in (q["sql"] or "")]
    assert len(writes) == 1 and "UPDATE trading_order" in writes[0] and "UPDATE trading_ordercommand" in writes[0]
    assert dict(Position.objects.filter(contract=btcusdt).values_list("user_id", "size")) == \
        {alice.pk: D("0.1"), bob.pk: D("-0.1")}
    assert set(Order.objects.values_list("status", flat=True)) == {OrderStatus.FILLED}
    assert run_all_invariants() == []
