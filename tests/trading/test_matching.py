"""Order entry → journal → C book → one booked batch: positions, fees, margin, invariants."""
from decimal import Decimal

import pytest

from apps.ledger.models import AccountKind, Balance, LedgerTransaction
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create, system_account
from apps.ops.invariants import run_all_invariants
from apps.positions.models import MarginType, Position
from apps.trading.engine import SymbolEngine
from apps.trading.errors import BadPrecision, MarginInsufficient, OrderRejected
from apps.trading.matching import batch_process
from apps.trading.models import CommandStatus, Order, OrderCommand, OrderStatus, Trade
from apps.trading.services import order_cancel, order_place

D = Decimal


def wallet_of(user):
    return balance_amount(account=account_get_or_create(kind=AccountKind.WALLET, user=user), asset_code="USDT")


def held_of(user):
    return balance_amount(account=account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=user), asset_code="USDT")


def state():
    return (Order.objects.count(), OrderCommand.objects.count(), LedgerTransaction.objects.count(),
            sorted(Balance.objects.values_list("account_id", "amount")))


def test_cross_trade_books_positions_fees_and_releases_margin(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    buy = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.5"), price=D("50000"))
    # hold = 0.5 × 50,000 × (1/20 + 0.0004) = 25,000 × 0.0504 = 1,260
    assert buy.margin_held == D("1260") and held_of(alice) == D("1260") and wallet_of(alice) == D("98740")
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.2"), price=D("49990"))
    result = batch_process(engine)
    assert result.commands == 2 and len(result.trades) == 1

    trade = Trade.objects.get()
    assert (trade.price, trade.quantity, trade.taker_side) == (D("50000"), D("0.2"), "SELL")
    # taker fee 0.2 × 50,000 × 0.04% = 4; maker fee 0.02% = 2
    assert (trade.taker_fee, trade.maker_fee) == (D("4"), D("2"))
    buy.refresh_from_db()
    assert buy.status == OrderStatus.PARTIALLY_FILLED and buy.executed_qty == D("0.2")
    # 0.2 of 0.5 filled: 2/5 of the 1,260 hold released
    assert buy.margin_held == D("756") and held_of(alice) == D("756")
    assert wallet_of(alice) == D("100000") - D("756") - D("2")
    assert wallet_of(bob) == D("100000") - D("4")  # bob's IOC-like remainder: fully filled, hold released
    assert held_of(bob) == 0
    long, short = Position.objects.get(user=alice), Position.objects.get(user=bob)
    assert (long.size, long.entry_price) == (D("0.2"), D("50000"))
    assert (short.size, short.entry_price) == (D("-0.2"), D("50000"))
    assert balance_amount(account=system_account(AccountKind.FEE_INCOME), asset_code="USDT") == D("6")
    assert run_all_invariants() == []

    order_cancel(user=alice, order_id=buy.pk)
    batch_process(engine)
    buy.refresh_from_db()
    assert buy.status == OrderStatus.CANCELED and buy.margin_held == 0 and held_of(alice) == 0
    assert wallet_of(alice) == D("99998")
    assert OrderCommand.objects.filter(status=CommandStatus.PENDING).count() == 0
    assert run_all_invariants() == []


def test_reducing_realizes_pnl_against_clearing(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    batch_process(engine)
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.4"), price=D("51000"))
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.4"), price=D("51000"))
    batch_process(engine)
    long, short = Position.objects.get(user=alice), Position.objects.get(user=bob)
    assert (long.size, long.entry_price, long.realized_pnl) == (D("0.6"), D("50000"), D("400"))
    assert (short.size, short.entry_price, short.realized_pnl) == (D("-0.6"), D("50000"), D("-400"))
    # fees: trade 1 at 50,000: taker(bob) 20, maker(alice) 10; trade 2 at 51,000 × 0.4: taker(alice) 8.16, maker(bob) 4.08
    assert wallet_of(alice) == D("100000") - 10 + 400 - D("8.16")
    assert wallet_of(bob) == D("100000") - 20 - 400 - D("4.08")
    assert balance_amount(account=system_account(AccountKind.PNL_CLEARING), asset_code="USDT") == 0
    assert run_all_invariants() == []


def test_isolated_position_moves_initial_margin(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    Position.objects.create(user=alice, contract=btcusdt, margin_type=MarginType.ISOLATED, leverage=10)
    engine = SymbolEngine(btcusdt)
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("30000"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1"), price=D("30000"))
    batch_process(engine)
    isolated = account_get_or_create(kind=AccountKind.ISOLATED_MARGIN, user=alice, contract=btcusdt)
    assert balance_amount(account=isolated, asset_code="USDT") == D("3000")  # 30,000 / 10
    assert wallet_of(alice) == D("100000") - D("3000") - D("6")
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.5"), price=D("30000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.5"), price=D("30000"))
    batch_process(engine)
    assert balance_amount(account=isolated, asset_code="USDT") == D("1500")
    assert run_all_invariants() == []


def test_isolated_margin_beyond_the_hold_never_comes_from_the_insurance_fund(funded, usdt, btcusdt):
    """A sell holds at its limit price and fills higher (price improvement): the isolated margin
    the fill asks for is more than the hold returned. What the wallet cannot give stays out of
    the position's margin; the fund pays nothing."""
    from apps.ledger.models import TransactionKind
    from apps.ledger.services import Leg, ledger_post

    ledger_post(kind=TransactionKind.INSURANCE, legs=[Leg(system_account(AccountKind.INSURANCE_FUND), usdt, D("1000")),
                                                      Leg(system_account(AccountKind.EXTERNAL), usdt, D("-1000"))])
    alice, bob = funded("alice", D("858.42")), funded("bob")
    Position.objects.create(user=alice, contract=btcusdt, margin_type=MarginType.ISOLATED, leverage=10)
    engine = SymbolEngine(btcusdt)
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.19"), price=D("52000"))
    batch_process(engine)
    # hold = 0.19 × 45,000 × (1/10 + 0.0004) = 858.42: all of alice's wallet.
    sell = order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.19"), price=D("45000"))
    assert sell.margin_held == D("858.42") and wallet_of(alice) == 0
    batch_process(engine)  # fills at 52,000: margin 988 and taker fee 3.952 asked, 858.42 there
    isolated = account_get_or_create(kind=AccountKind.ISOLATED_MARGIN, user=alice, contract=btcusdt)
    assert Position.objects.get(user=alice).size == D("-0.19")
    assert balance_amount(account=isolated, asset_code="USDT") == D("858.42") - D("3.952")
    assert wallet_of(alice) == 0
    assert balance_amount(account=system_account(AccountKind.INSURANCE_FUND), asset_code="USDT") == D("1000")
    assert run_all_invariants() == []


def test_rebuilt_book_equals_the_live_book(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    for i in range(5):
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("49000") + i)
        order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.01"), price=D("51000") - i)
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.015"), price=D("49003"))
    batch_process(engine)
    rebuilt = SymbolEngine(btcusdt)
    rebuilt.rebuild()
    rebuilt.book.validate()
    assert rebuilt.book.state_hash() == engine.book.state_hash()
    assert rebuilt.next_priority == engine.next_priority


def test_bad_orders_are_refused_and_persist_nothing(funded, btcusdt):
    alice = funded("alice", D("100"))
    before = state()
    with pytest.raises(BadPrecision) as off_grid:
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("50000.05"))
    assert off_grid.value.code == -1111
    with pytest.raises(BadPrecision):
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.0001"), price=D("50000"))
    with pytest.raises(MarginInsufficient) as margin:
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"))
    assert margin.value.code == -2019
    with pytest.raises(OrderRejected, match="notional"):
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.001"), price=D("1000"))
    with pytest.raises(OrderRejected, match="side"):
        order_place(user=alice, contract=btcusdt, side="HOLD", quantity=D("0.01"), price=D("50000"))
    with pytest.raises(OrderRejected, match="positive"):
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("-1"), price=D("50000"))
    assert state() == before


def insurance_fund(usdt, amount):
    from apps.ledger.services import Leg, ledger_post

    ledger_post(kind="INSURANCE", legs=[Leg(system_account(AccountKind.INSURANCE_FUND), usdt, amount),
                                        Leg(system_account(AccountKind.EXTERNAL), usdt, -amount)])


def losing_round_trip(funded, btcusdt):
    """bob (3,000 USDT) buys 1 BTC at 50,000 from alice, then sells it to alice at 40,000."""
    alice, bob = funded("alice"), funded("bob", D("3000"))
    engine = SymbolEngine(btcusdt)
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"))
    batch_process(engine)
    assert wallet_of(bob) == D("2980")  # taker fee 20
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("40000"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1"), price=D("40000"))
    batch_process(engine)
    return bob


def test_loss_beyond_the_wallet_is_covered_by_the_insurance_fund(funded, usdt, btcusdt):
    insurance_fund(usdt, D("5000"))
    bob = losing_round_trip(funded, btcusdt)
    # 2,980 − 10,000 loss − 16 fee = −7,036: 5,000 from the fund, 2,036 recorded as bad debt
    assert wallet_of(bob) == 0
    assert balance_amount(account=system_account(AccountKind.INSURANCE_FUND), asset_code="USDT") == 0
    assert balance_amount(account=system_account(AccountKind.BAD_DEBT), asset_code="USDT") == D("-2036")
    assert Position.objects.get(user=bob).size == 0
    assert run_all_invariants() == []


def test_duplicate_client_order_id_is_refused(funded, btcusdt):
    alice = funded("alice")
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("50000"), client_order_id="a-1")
    before = state()
    with pytest.raises(OrderRejected) as duplicate:
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("50000"),
                    client_order_id="a-1")
    assert duplicate.value.code == -4116
    for bad in ("x" * 37, "bad id", ""):
        with pytest.raises(OrderRejected, match="ClientOrderId"):
            order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("50000"),
                        client_order_id=bad)
    with pytest.raises(OrderRejected, match="selfTradePreventionMode"):
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("50000"), stp_mode="X")
    assert state() == before


def test_a_failed_batch_books_nothing_and_the_matcher_replays_it(funded, btcusdt, monkeypatch):
    from apps.trading import matching
    from apps.trading.matcher import Matcher

    alice, bob = funded("alice"), funded("bob")
    matcher = Matcher(["BTCUSDT"])
    engine = SymbolEngine(btcusdt)
    matcher.engines["BTCUSDT"] = engine
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.5"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.2"), price=D("50000"))
    real = matching.fills_book
    monkeypatch.setattr(matching, "fills_book", lambda **kw: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert matcher.step() == 0
    assert not Trade.objects.exists() and OrderCommand.objects.filter(status=CommandStatus.PENDING).count() == 2
    assert len(engine.book) == 0 and matcher.engines  # book rebuilt from the database, lease kept
    monkeypatch.setattr(matching, "fills_book", real)
    assert matcher.step() == 2
    assert Trade.objects.get().quantity == D("0.2") and len(engine.book) == 1
    assert run_all_invariants() == []
