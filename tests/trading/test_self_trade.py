"""Self-trade prevention in a booked batch: the maker an order would trade with belongs to the
same account. EXPIRE_MAKER and EXPIRE_BOTH take that maker out of the book without a fill of
its own in the batch: it is EXPIRED and its whole hold returns (hand-computed holds)."""
from decimal import Decimal

import pytest

from apps.ops.invariants import run_all_invariants
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.models import OrderStatus, Trade
from apps.trading.services import order_place

from .test_matching import held_of, wallet_of

D = Decimal
HOLD = D("2520")  # 1 × 50,000 × (1/20 + 0.0004)


@pytest.mark.parametrize("mode, taker_status", [("EXPIRE_MAKER", OrderStatus.NEW),
                                                ("EXPIRE_BOTH", OrderStatus.EXPIRED)])
def test_the_expired_maker_leaves_the_book_and_its_hold_returns(funded, btcusdt, mode, taker_status):
    alice = funded("alice")
    engine = SymbolEngine(btcusdt)
    maker = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    batch_process(engine)
    taker = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"), stp_mode=mode)
    assert held_of(alice) == 2 * HOLD
    result = batch_process(engine)
    maker.refresh_from_db()
    taker.refresh_from_db()
    assert (maker.status, maker.margin_held) == (OrderStatus.EXPIRED, 0)
    assert taker.status == taker_status and result.trades == [] and not Trade.objects.exists()
    # EXPIRE_MAKER: the taker rests and keeps its hold; EXPIRE_BOTH: it is expired too.
    kept = HOLD if taker_status == OrderStatus.NEW else 0
    assert (taker.margin_held, held_of(alice), wallet_of(alice)) == (kept, kept, D("100000") - kept)
    assert engine.book.get(maker.pk) is None
    assert run_all_invariants() == []


def test_an_expired_maker_after_a_fill_in_the_same_command(funded, btcusdt):
    """The taker first fills bob's better ask, then meets its own account's ask: expired."""
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.4"), price=D("49990"))
    own = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    batch_process(engine)
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"), stp_mode="EXPIRE_MAKER")
    result = batch_process(engine)
    own.refresh_from_db()
    assert len(result.trades) == 1 and own.status == OrderStatus.EXPIRED and own.margin_held == 0
    assert run_all_invariants() == []
