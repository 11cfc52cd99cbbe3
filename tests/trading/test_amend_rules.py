"""Order amendment (PUT /fapi/v1/order) runs order entry's rules, and leverage changes judge
the tier on what the open orders can become.

Every refusal is checked to leave the database exactly as it was; money tests end with the
invariants.
"""
from decimal import Decimal

import pytest

from apps.ops.invariants import run_all_invariants
from apps.positions.models import Position
from apps.positions.services import leverage_change
from apps.trading import services
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.models import CommandKind, CommandStatus, Order, OrderCommand, OrderStatus
from apps.trading.services import order_amend, order_place
from exchange.errors import ErrorCode, ExchangeError

from .test_matching import held_of
from .test_order_entry import open_long, refused

D = Decimal


def amend_refused(code, **kwargs):
    return refused(code, call=order_amend, **kwargs)


def test_reduce_only_amend_cannot_exceed_what_the_position_still_allows(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = open_long(btcusdt, alice, bob)  # alice long 0.1
    first = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.06"), price=D("51000"),
                        reduce_only=True)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.04"), price=D("52000"), reduce_only=True)
    batch_process(engine)
    kwargs = dict(user=alice, contract=btcusdt, order_id=first.pk)
    # 0.07 + the other 0.04 reducing = 0.11 > 0.1; the order's own 0.06 is not counted twice
    err = amend_refused(-2022, **kwargs, quantity="0.07", price="51000")
    assert "ReduceOnly" in err.msg
    amend_refused(-2022, **kwargs, quantity="0.2", price="51000")
    order_amend(**kwargs, quantity=D("0.06"), price=D("51500"))  # same quantity, new price: fine
    batch_process(engine)
    order_amend(**kwargs, quantity=D("0.05"), price=D("51500"))  # smaller: fine
    batch_process(engine)
    # back up to 0.06: 0.06 + 0.04 = the position; the order's own 0.05 is replaced, not added
    order_amend(**kwargs, quantity=D("0.06"), price=D("51500"))
    batch_process(engine)
    first.refresh_from_db()
    assert (first.quantity, first.price, first.status) == (D("0.06"), D("51500"), OrderStatus.NEW)
    assert run_all_invariants() == []


def test_amend_price_filters_are_order_entrys(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = open_long(btcusdt, alice, bob)
    closing = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.05"), price=D("51000"),
                          reduce_only=True)
    buy = order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("40000"))
    batch_process(engine)
    # above max price: refused with order entry's code, and the matcher has nothing to choke on
    amend_refused(-4016, user=alice, contract=btcusdt, order_id=closing.pk, quantity="0.05",
                  price="99999999999999999999")
    amend_refused(-4016, user=bob, contract=btcusdt, order_id=buy.pk, quantity="0.1", price="1000000.1")
    btcusdt.min_price = D("100")
    btcusdt.save()
    amend_refused(-4013, user=alice, contract=btcusdt, order_id=closing.pk, quantity="0.05", price="99.9")
    amend_refused(-4013, user=bob, contract=btcusdt, order_id=buy.pk, quantity="0.1", price="99.9")
    batch_process(engine)
    closing.refresh_from_db()
    assert (closing.price, closing.status) == (D("51000"), OrderStatus.NEW)
    assert run_all_invariants() == []


def test_amend_min_quantity_and_min_notional(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = open_long(btcusdt, alice, bob)
    buy = order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("1000"))
    closing = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.05"), price=D("51000"),
                          reduce_only=True)
    batch_process(engine)
    # notional 0.001 × 1,000 = 1 < 5
    amend_refused(-4164, user=bob, contract=btcusdt, order_id=buy.pk, quantity="0.001", price="1000")
    # reduce-only orders are exempt from the min notional, as at entry
    order_amend(user=alice, contract=btcusdt, order_id=closing.pk, quantity=D("0.001"), price=D("1000.1"))
    btcusdt.min_qty = D("0.01")
    btcusdt.save()
    amend_refused(-4004, user=bob, contract=btcusdt, order_id=buy.pk, quantity="0.005", price="1000")
    batch_process(engine)
    buy.refresh_from_db()
    assert (buy.quantity, buy.price) == (D("0.1"), D("1000"))
    closing.refresh_from_db()
    assert (closing.quantity, closing.price) == (D("0.001"), D("1000.1"))
    assert run_all_invariants() == []


def test_amend_up_must_fit_the_leverage_tier(funded, btcusdt):
    whale = funded("whale", D("10000000"))
    Position.objects.create(user=whale, contract=btcusdt, leverage=125)
    engine = SymbolEngine(btcusdt)
    # 125x allows a notional up to 50,000
    order = order_place(user=whale, contract=btcusdt, side="BUY", quantity=D("0.9"), price=D("50000"))
    batch_process(engine)
    amend_refused(-2027, user=whale, contract=btcusdt, order_id=order.pk, quantity="1.1", price="50000")
    amend_refused(-2027, user=whale, contract=btcusdt, order_id=order.pk, quantity="0.9", price="56000")
    # 0.95 × 50,000 = 47,500 fits: the order's current 45,000 is replaced, not added
    order_amend(user=whale, contract=btcusdt, order_id=order.pk, quantity=D("0.95"), price=D("50000"))
    batch_process(engine)
    order.refresh_from_db()
    assert order.quantity == D("0.95")
    assert order.margin_held == held_of(whale)
    assert run_all_invariants() == []


def test_amend_that_raises_the_notional_runs_the_pretrade_risk_check(funded, btcusdt, monkeypatch):
    alice = funded("alice")
    engine = SymbolEngine(btcusdt)
    order = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    batch_process(engine)
    calls = []

    def gate(**kwargs):
        calls.append(kwargs)
        if kwargs["quantity"] > D("0.15"):
            raise ExchangeError("risk too high", code=ErrorCode.RISK_TOO_HIGH)

    monkeypatch.setattr(services, "risk_pretrade_check", gate)
    amend_refused(-2030, user=alice, contract=btcusdt, order_id=order.pk, quantity="0.2", price="50000")
    assert calls[-1]["side"] == "BUY" and calls[-1]["price"] == D("50000")
    # the exposure the gate sees leaves out the order's own current quantity (it is replaced)
    rows = calls[-1]["rows"]
    assert rows is not None
    assert not [r for r in rows if r[0] == "O" and r[1] == btcusdt.pk and r[6] == "BUY" and r[4]]
    calls.clear()
    order_amend(user=alice, contract=btcusdt, order_id=order.pk, quantity=D("0.1"), price=D("49000"))  # lowers it
    assert calls == []
    batch_process(engine)
    calls.clear()
    order_amend(user=alice, contract=btcusdt, order_id=order.pk, quantity=D("0.12"), price=D("49000"))
    assert calls and calls[-1]["quantity"] == D("0.12")
    batch_process(engine)
    assert run_all_invariants() == []


def test_a_second_amend_waits_for_the_first(funded, btcusdt):
    alice = funded("alice")
    engine = SymbolEngine(btcusdt)
    order = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    batch_process(engine)
    order_amend(user=alice, contract=btcusdt, order_id=order.pk, quantity=D("0.05"), price=D("50000"))
    # the first amend is still in the journal: a second one would be priced off a stale hold
    err = amend_refused(-5026, user=alice, contract=btcusdt, order_id=order.pk, quantity="0.2", price="50000")
    assert "pending" in err.msg.lower()
    assert OrderCommand.objects.filter(order=order, kind=CommandKind.AMEND, status=CommandStatus.PENDING).count() == 1
    batch_process(engine)
    order.refresh_from_db()
    assert order.quantity == D("0.05") and order.margin_held == D("126")  # 0.05 × 50,000 × 0.0504
    order_amend(user=alice, contract=btcusdt, order_id=order.pk, quantity=D("0.2"), price=D("50000"))
    batch_process(engine)
    order.refresh_from_db()
    assert order.quantity == D("0.2") and order.margin_held == D("504") == held_of(alice)
    assert run_all_invariants() == []


def test_leverage_change_judges_the_tier_on_open_orders_too(funded, btcusdt):
    whale = funded("whale", D("10000000"))
    engine = SymbolEngine(btcusdt)
    # no position; 500,000 of open buys at the default 20x
    order_place(user=whale, contract=btcusdt, side="BUY", quantity=D("10"), price=D("50000"))
    order_place(user=whale, contract=btcusdt, side="SELL", quantity=D("1"), price=D("60000"))
    batch_process(engine)
    with pytest.raises(ExchangeError) as caught:
        leverage_change(user=whale, contract=btcusdt, leverage=125)  # 125x caps the notional at 50,000
    assert caught.value.code == ErrorCode.MAX_LEVERAGE_RATIO
    with pytest.raises(ExchangeError) as caught:
        leverage_change(user=whale, contract=btcusdt, leverage=100)  # 100x: 250,000
    assert caught.value.code == ErrorCode.MAX_LEVERAGE_RATIO
    assert Position.objects.get(user=whale, contract=btcusdt).leverage == 20
    assert leverage_change(user=whale, contract=btcusdt, leverage=50).leverage == 50  # 50x: 3,000,000
    # reduce-only orders add nothing to the exposure; the smaller side does not decide
    assert Order.objects.filter(user=whale, status=OrderStatus.NEW).count() == 2
    assert run_all_invariants() == []


def test_leverage_change_with_a_position_counts_its_open_orders(funded, btcusdt):
    alice, bob = funded("alice", D("10000000")), funded("bob", D("10000000"))
    engine = open_long(btcusdt, alice, bob, qty="0.5")  # 25,000 long
    assert leverage_change(user=alice, contract=btcusdt, leverage=125).leverage == 125  # fits 50,000
    leverage_change(user=alice, contract=btcusdt, leverage=50)
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("49000"))  # + 49,000
    batch_process(engine)
    with pytest.raises(ExchangeError) as caught:
        leverage_change(user=alice, contract=btcusdt, leverage=125)  # 74,000 > 50,000
    assert caught.value.code == ErrorCode.MAX_LEVERAGE_RATIO
    assert leverage_change(user=alice, contract=btcusdt, leverage=100).leverage == 100  # fits 250,000
    assert run_all_invariants() == []
