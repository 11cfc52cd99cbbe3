"""Order entry rules: types, filters, the mark-price band, reduce-only, limits, conditional orders.

Every refusal is checked to leave the database exactly as it was.
"""
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.ledger.models import Income, IncomeType, LedgerTransaction
from apps.marketdata.services import price_publish
from apps.ops.invariants import run_all_invariants
from apps.positions.models import Position
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.models import Order, OrderCommand, OrderStatus, Trade
from apps.trading.services import order_cancel, order_place, orders_cancel_all
from exchange.errors import ExchangeError

from .test_matching import held_of, state, wallet_of

D = Decimal


def mark(contract, price):
    price_publish(contract=contract, index_price=D(price), mark_price=D(price), at=timezone.now())


def refused(code, call=order_place, **kwargs):
    """`call(**kwargs)` is refused with `code` and changes nothing."""
    before = state()
    with pytest.raises(ExchangeError) as caught:
        call(**kwargs)
    assert caught.value.code == code, caught.value.msg
    assert state() == before
    return caught.value


def open_long(contract, buyer, seller, qty="0.1", price="50000"):
    engine = SymbolEngine(contract)
    order_place(user=seller, contract=contract, side="SELL", quantity=D(qty), price=D(price))
    order_place(user=buyer, contract=contract, side="BUY", quantity=D(qty), price=D(price))
    batch_process(engine)
    return engine


def test_parameter_rules_per_type(funded, btcusdt):
    alice = funded("alice")
    base = dict(user=alice, contract=btcusdt, side="BUY")
    refused(-1102, **base, order_type="LIMIT", quantity="0.1")  # no price
    refused(-1106, **base, order_type="MARKET", quantity="0.1", price="50000")
    refused(-1102, **base, order_type="STOP", quantity="0.1", price="50000")  # no stopPrice
    refused(-1102, **base, order_type="TRAILING_STOP_MARKET", quantity="0.1")  # no callbackRate
    refused(-1130, **base, order_type="TRAILING_STOP_MARKET", quantity="0.1", callback_rate="11")
    refused(-1128, **base, order_type="LIMIT", quantity="0.1", price="50000", close_position=True)
    refused(-1106, **base, order_type="STOP_MARKET", stop_price="51000", close_position=True, quantity="0.1")
    refused(-1116, **base, order_type="LIQUIDATION", quantity="0.1")
    refused(-1117, user=alice, contract=btcusdt, side="LONG", quantity="0.1", price="50000")
    refused(-1115, **base, quantity="0.1", price="50000", time_in_force="DAY")
    refused(-1102, **base, quantity="abc", price="50000")
    refused(-1130, **base, quantity="-1", price="50000")
    refused(-1111, **base, quantity="0.0001", price="50000")
    refused(-1111, **base, quantity="0.1", price="50000.05")
    refused(-4005, **base, quantity="1001", price="50000")
    refused(-4005, **base, order_type="MARKET", quantity="121")
    refused(-4164, **base, quantity="0.001", price="4000")  # notional 4 < 5
    btcusdt.min_qty, btcusdt.min_price = D("0.01"), D("100")
    btcusdt.save()
    refused(-4004, **base, quantity="0.005", price="50000")
    refused(-4013, **base, quantity="0.1", price="99.9")


def test_limit_price_band_around_the_mark(funded, btcusdt):
    alice = funded("alice")
    mark(btcusdt, "50000")
    refused(-4016, user=alice, contract=btcusdt, side="BUY", quantity="0.1", price="57500.1")
    refused(-4024, user=alice, contract=btcusdt, side="SELL", quantity="0.1", price="42499.9")
    assert order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("57500")).pk
    assert order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("42500")).pk


def test_market_order_fills_inside_its_protection_price(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    refused(-2010, user=alice, contract=btcusdt, side="BUY", order_type="MARKET", quantity="0.1")  # no mark yet
    mark(btcusdt, "50000")
    engine = SymbolEngine(btcusdt)
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50010"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("65000.1"))  # beyond protection
    batch_process(engine)
    buy = order_place(user=alice, contract=btcusdt, side="BUY", order_type="MARKET", quantity=D("0.2"))
    assert buy.protection_price == D("65000")  # 50,000 × 1.30
    # held at the protection price: 0.2 × 65,000 × (1/20 + 0.0004)
    assert buy.margin_held == D("655.2")
    batch_process(engine)
    buy.refresh_from_db()
    assert buy.status == OrderStatus.EXPIRED and buy.executed_qty == D("0.1") and buy.margin_held == 0
    assert held_of(alice) == 0
    assert Trade.objects.get().price == D("50010")
    assert run_all_invariants() == []


def test_reduce_only_and_close_position(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    kwargs = dict(user=alice, contract=btcusdt, reduce_only=True)
    refused(-2022, **kwargs, side="SELL", quantity="0.1", price="50000")  # no position
    open_long(btcusdt, alice, bob)
    refused(-2022, **kwargs, side="BUY", quantity="0.1", price="50000")  # same side as the long
    refused(-2022, **kwargs, side="SELL", quantity="0.2", price="50000")  # more than the position
    first = order_place(**kwargs, side="SELL", quantity=D("0.06"), price=D("51000"))
    assert first.margin_held == 0  # reduce-only orders hold nothing; the fee is charged at the fill
    refused(-2022, **kwargs, side="SELL", quantity="0.05", price="51000")  # 0.06 already reducing
    assert order_place(**kwargs, side="SELL", quantity=D("0.04"), price=D("51000")).pk
    stop = order_place(user=alice, contract=btcusdt, side="SELL", order_type="STOP_MARKET", stop_price=D("45000"),
                       close_position=True)
    assert stop.quantity == D("0.1") and stop.close_position and stop.status == OrderStatus.NEW
    # reduce-only orders are exempt from the min notional
    assert order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.001"), price=D("1000"),
                       reduce_only=True).pk


def test_open_order_limit(funded, btcusdt):
    alice = funded("alice")
    btcusdt.max_open_orders = 3
    btcusdt.save()
    for i in range(3):
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D(40000 + i))
    refused(-2025, user=alice, contract=btcusdt, side="BUY", quantity="0.01", price="40000")


def test_leverage_must_fit_the_tier_of_the_resulting_position(funded, btcusdt):
    whale = funded("whale", D("10000000"))
    Position.objects.create(user=whale, contract=btcusdt, leverage=125)
    # 125x allows a notional up to 50,000: 0.9 BTC @ 50,000 = 45,000 fits, one more 0.2 does not
    order_place(user=whale, contract=btcusdt, side="BUY", quantity=D("0.9"), price=D("50000"))
    refused(-2027, user=whale, contract=btcusdt, side="BUY", quantity="0.2", price="50000")
    # the other side is judged on its own exposure
    assert order_place(user=whale, contract=btcusdt, side="SELL", quantity=D("0.8"), price=D("60000")).pk


def test_margin_insufficient_persists_nothing(funded, btcusdt):
    poor = funded("poor", D("100"))
    refused(-2019, user=poor, contract=btcusdt, side="BUY", quantity="0.1", price="50000")


def test_conditional_orders_wait_outside_the_book(funded, btcusdt):
    alice = funded("alice")
    mark(btcusdt, "50000")
    refused(-2021, user=alice, contract=btcusdt, side="BUY", order_type="STOP_MARKET", stop_price="49000",
            quantity="0.1", working_type="MARK_PRICE")
    stop = order_place(user=alice, contract=btcusdt, side="BUY", order_type="STOP", stop_price=D("52000"),
                       price=D("52100"), quantity=D("0.1"), working_type="MARK_PRICE")
    assert stop.status == OrderStatus.NEW and stop.is_waiting
    assert not OrderCommand.objects.filter(order=stop).exists()
    assert stop.margin_held == held_of(alice) > 0
    order_cancel(user=alice, contract=btcusdt, order_id=stop.pk)  # closes at once: never in the book
    stop.refresh_from_db()
    assert stop.status == OrderStatus.CANCELED and held_of(alice) == 0 and wallet_of(alice) == D("100000")
    assert run_all_invariants() == []


def test_cancel_all_journals_live_orders_and_closes_waiting_ones(funded, btcusdt):
    alice = funded("alice")
    engine = SymbolEngine(btcusdt)
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("40000"))
    order_place(user=alice, contract=btcusdt, side="SELL", order_type="TAKE_PROFIT_MARKET", stop_price=D("60000"),
                quantity=D("0.1"))
    batch_process(engine)
    assert orders_cancel_all(user=alice, contract=btcusdt) == 2
    batch_process(engine)
    assert set(Order.objects.values_list("status", flat=True)) == {OrderStatus.CANCELED}
    assert held_of(alice) == 0 and wallet_of(alice) == D("100000")


def test_trades_write_income_lines(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    open_long(btcusdt, alice, bob)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("51000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("51000"))
    batch_process(SymbolEngine(btcusdt))
    lines = Income.objects.filter(user=alice).exclude(income_type=IncomeType.TRANSFER)
    pnl = lines.filter(income_type=IncomeType.REALIZED_PNL).get()
    assert pnl.amount == D("100") and pnl.symbol == "BTCUSDT" and pnl.trade_id == Trade.objects.first().pk
    fees = sorted(lines.filter(income_type=IncomeType.COMMISSION).values_list("amount", flat=True))
    assert fees == [D("-2"), D("-1.02")]  # taker when opening at 50,000, maker when closing at 51,000
    total = sum(Income.objects.filter(user=alice).values_list("amount", flat=True))
    assert total == wallet_of(alice)
    assert LedgerTransaction.objects.filter(pk=pnl.transaction_id).exists()


def test_reduce_only_orders_left_without_a_position_expire(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = open_long(btcusdt, alice, bob, qty="0.1")
    keep = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.04"), price=D("52000"),
                       reduce_only=True)
    extra = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.06"), price=D("53000"),
                        reduce_only=True)
    batch_process(engine)
    # a plain sell of 0.05 leaves a 0.05 long: the older 0.04 still fits, the newer 0.06 does not
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.05"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.05"), price=D("50000"))
    batch_process(engine)
    keep.refresh_from_db()
    extra.refresh_from_db()
    assert keep.status == OrderStatus.NEW
    assert extra.status == OrderStatus.EXPIRED and extra.margin_held == 0
    assert engine.book.get(extra.pk) is None and engine.book.get(keep.pk) is not None
    assert run_all_invariants() == []


def test_a_position_closes_even_from_an_empty_wallet(funded, btcusdt):
    """Reduce-only orders hold nothing: an isolated position closes with nothing left in the wallet."""
    from apps.ledger.services import wallet_withdraw
    from apps.positions.services import margin_type_change

    alice, bob = funded("alice"), funded("bob")
    margin_type_change(user=alice, contract=btcusdt, margin_type="ISOLATED")
    open_long(btcusdt, alice, bob, qty="1")  # isolated margin 1 × 50,000 / 20 = 2,500
    wallet_withdraw(user=alice, asset="USDT", amount=wallet_of(alice))
    assert wallet_of(alice) == 0
    close = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"),
                        reduce_only=True)
    assert close.margin_held == 0 and held_of(alice) == 0
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"))
    batch_process(SymbolEngine(btcusdt))
    assert Position.objects.get(user=alice).size == 0
    assert wallet_of(alice) == D("2500") - D("10")  # the margin back less the maker fee (0.02% of 50,000)
    assert run_all_invariants() == []


def test_a_limit_order_is_four_statements_and_the_risk_check_reads_the_same_exposure(funded, btcusdt, monkeypatch):
    """Entry locks, entry state with the risk check's reads, the order with its journal row, the hold."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from apps.risk import services as risk
    from apps.trading.services import _entry_state

    alice = funded("alice")
    mark(btcusdt, "50000")
    engine = open_long(btcusdt, alice, funded("bob"), qty="0.2")
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("49000"))  # resting
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.05"), price=D("51000"), reduce_only=True)
    seen = []
    check = risk.risk_pretrade_check

    def spy(**kwargs):
        seen.append(kwargs["rows"])
        return check(**kwargs)

    monkeypatch.setattr("apps.trading.services.risk_pretrade_check", spy)
    with CaptureQueriesContext(connection) as queries:
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("49500"))
    # Not counted: what a test's never-committed transaction cannot cache (the mark, read from the
    # stored samples, and the user's accounts, remembered after commit).
    counted = [q["sql"] for q in queries.captured_queries
               if not any(s in q["sql"] for s in ("SAVEPOINT", "marketdata_pricesample", 'FROM "ledger_account"'))]
    assert len(counted) == 4, counted
    assert len(seen) == 1 and seen[0]
    with connection.cursor() as cursor:
        cursor.execute(risk.exposure_sql(), risk.exposure_params(users=[alice]))
        now = [row[:7] for row in cursor.fetchall()]
    # What the check saw is what its own query reads (before this order: one open buy less).
    assert [r for r in seen[0] if r[0] != "O"] == [r for r in now if r[0] != "O"]
    assert {r[6]: r[4] for r in seen[0] if r[0] == "O"} == {"BUY": D("0.1")}
    assert {r[6]: r[4] for r in now if r[0] == "O"} == {"BUY": D("0.2")}
    with transaction.atomic():
        state_ = _entry_state(user=alice, contract=btcusdt, exposure=False)
    assert (state_["count"], state_["reducing_sells"], state_["exposure"]) == (3, D("0.05"), None)
    assert state_["buy_notional"] == D("0.1") * D("49000") + D("0.1") * D("49500") and not state_["frozen"]
    engine.book.validate()


def test_order_rows_are_written_as_the_fields_prepare_them(funded, btcusdt):
    from django.db import connection

    from apps.trading.models import OrderCommand
    from apps.trading.services import _insert_parts
    from exchange.pgbulk import array_literal

    alice = funded("alice")
    order = order_place(user=alice, contract=btcusdt, side="BUY", order_type="STOP", quantity=D("0.1"),
                        price=D("50000"), stop_price=D("50100"), working_type="MARK_PRICE")
    stored = Order.objects.get(pk=order.pk)
    assert [getattr(stored, f.attname) for f in Order._meta.concrete_fields] == \
        [getattr(order, f.attname) for f in Order._meta.concrete_fields]
    command = OrderCommand(contract_id=btcusdt.pk, kind="NEW", order_id=order.pk)
    for instance in (order, command):  # (pre_save stamps the auto_now times again: compared after)
        columns, values = _insert_parts(instance)
        by_field = [f.get_db_prep_save(getattr(instance, f.attname), connection)
                    for f in instance._meta.concrete_fields if not f.primary_key]
        # What the insert sends: each value as an element of its column's array literal.
        assert values == by_field and [array_literal([v]) for v in values] == [array_literal([v]) for v in by_field]
