"""Delivery contracts with controlled time: lifecycle, close-only, the settlement price, settlement.

Positions come from real trades (order entry → journal → C book → booking), so margins,
fees and the PnL clearing account are what production would hold when delivery comes.
"""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import psycopg
import pytest
from django.db import connection

from apps.contracts.calendar import last_friday
from apps.contracts.lifecycle import contract_halt, contract_resume
from apps.contracts.models import Contract, ContractStatus, ContractStatusChange, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ledger.models import AccountKind, Income, IncomeType, LedgerTransaction, TransactionKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import Leg, account_get_or_create, ledger_post, system_account, wallet_deposit
from apps.marketdata.models import IndexConstituent, PriceMinute
from apps.ops.demo import QUARTERLY_BRACKETS
from apps.ops.invariants import run_all_invariants
from apps.ops.models import Alert
from apps.positions.models import Position
from apps.positions.services import leverage_change, margin_type_change
from apps.settlement import delivery
from apps.settlement.delivery import (
    delivery_advance,
    delivery_list,
    delivery_roll,
    delivery_settle,
    parse_delivery_date,
)
from apps.settlement.models import DeliveryNotice, DeliverySettlement, DeliveryStatus
from apps.trading.engine import SymbolEngine
from apps.trading.errors import OrderRejected
from apps.trading.matching import batch_process
from apps.trading.models import CommandStatus, Order, OrderCommand, OrderStatus
from apps.trading.services import order_amend, order_place
from exchange.errors import ErrorCode

D = Decimal
S = ContractStatus
DT = datetime(2026, 12, 25, 8, 0, tzinfo=timezone.utc)  # last Friday of December 2026
ONBOARD = datetime(2026, 11, 1, tzinfo=timezone.utc)
WEIGHTS = {"binance": D("2"), "okx": D("1"), "bybit": D("1")}


@pytest.fixture(params=["one transaction", "chunks"])
def delivery_path(request, settings):
    """Both ways a delivery books: in its one transaction, and in chunks of one position each
    (`DELIVERY_CHUNK_POSITIONS` = 1: a plan, then a transaction per position)."""
    if request.param == "chunks":
        settings.DELIVERY_CHUNK_POSITIONS = 1
    return request.param


# Every test runs on both ways a settlement locks balances (conftest.lock_path) and both ways
# a delivery books.
pytestmark = pytest.mark.usefixtures("lock_path", "delivery_path")


@pytest.fixture(autouse=True)
def _no_roll(settings):
    """Only the roll test lists further quarterlies."""
    settings.DELIVERY_ROLL_ENABLED = False


@pytest.fixture
def quarterly(usdt, btc):
    contract = contract_create(
        tiers=tiers_from_brackets(QUARTERLY_BRACKETS), symbol="BTCUSDT_261225", contract_type=ContractType.DELIVERY,
        status=S.PENDING, base_asset=btc, quote_asset=usdt, settle_asset=usdt, max_leverage=25,
        delivery_time=DT, onboard_time=ONBOARD, settlement_window_minutes=60,
    )
    IndexConstituent.objects.bulk_create(IndexConstituent(contract=contract, venue=v, source_symbol="BTCUSDT", weight=w)
                                         for v, w in WEIGHTS.items())
    return contract


@pytest.fixture
def funded(make_user, usdt):
    def make(name: str, amount: str = "100000"):
        user = make_user(name)
        wallet_deposit(user=user, asset=usdt, amount=D(amount))
        return user

    return make


def minutes(contract, start: datetime, rows: list[dict]) -> None:
    """rows[i] = {venue: (price, volume)} for minute start + i."""
    PriceMinute.objects.bulk_create(
        PriceMinute(contract=contract, minute=start + timedelta(minutes=i), index_price=D("50000"),
                    mark_price=D("50000"),
                    venues={v: {"price": str(p), "volume": str(vol), "quotes": 1, "last_ts": 0}
                            for v, (p, vol) in row.items()})
        for i, row in enumerate(rows)
    )


def flat_hour(contract, price: str = "52000") -> None:
    minutes(contract, DT - timedelta(hours=1), [{"binance": (price, "10"), "okx": (price, "5")}] * 60)


def wallet_of(user) -> Decimal:
    return balance_amount(account=account_get_or_create(kind=AccountKind.WALLET, user=user), asset_code="USDT")


def held_of(user) -> Decimal:
    return balance_amount(account=account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=user), asset_code="USDT")


def system(kind) -> Decimal:
    return balance_amount(account=system_account(kind), asset_code="USDT")


def trade(contract, buyer, seller, qty: str, price: str) -> None:
    engine = SymbolEngine(contract)
    order_place(user=buyer, contract=contract, side="BUY", quantity=D(qty), price=D(price))
    order_place(user=seller, contract=contract, side="SELL", quantity=D(qty), price=D(price))
    batch_process(engine)


def trading_pair(contract, funded):
    """Alice long and bob short 1 at 50000 on the contract, listed and trading."""
    alice, bob = funded("alice"), funded("bob")
    delivery_advance(now=ONBOARD)
    contract.refresh_from_db()
    trade(contract, alice, bob, "1", "50000")
    return alice, bob


def open_interest(contract) -> tuple[Decimal, Decimal]:
    sizes = list(Position.objects.filter(contract=contract).values_list("size", flat=True))
    return sum((s for s in sizes if s > 0), D(0)), -sum((s for s in sizes if s < 0), D(0))


def test_full_lifecycle_from_listing_to_settled(quarterly, funded):
    alice, bob, carol = funded("alice"), funded("bob"), funded("carol")
    assert delivery_advance(now=ONBOARD - timedelta(minutes=1)) == []
    quarterly.refresh_from_db()
    assert quarterly.status == S.PENDING

    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    assert quarterly.status == S.TRADING
    margin_type_change(user=bob, contract=quarterly, margin_type="ISOLATED")
    trade(quarterly, alice, bob, "1", "50000")  # alice long 1, bob short 1 (isolated)
    trade(quarterly, carol, alice, "0.4", "51000")  # alice sells 0.4 to carol: long 0.6 left
    assert open_interest(quarterly) == (D("1"), D("1"))

    delivery_advance(now=DT - timedelta(hours=25))
    assert DeliveryNotice.objects.count() == 0
    delivery_advance(now=DT - timedelta(hours=24))
    assert sorted(DeliveryNotice.objects.values_list("user__username", "position_size")) == [
        ("alice", D("0.6")), ("bob", D("-1")), ("carol", D("0.4"))]
    delivery_advance(now=DT - timedelta(hours=23))
    assert DeliveryNotice.objects.count() == 3  # once per holder

    delivery_advance(now=DT - timedelta(minutes=30))
    quarterly.refresh_from_db()
    assert quarterly.status == S.CLOSE_ONLY
    # A resting order at delivery is expired and its hold released.
    order_place(user=carol, contract=quarterly, side="SELL", quantity=D("0.1"), price=D("53000"), reduce_only=True)
    batch_process(SymbolEngine(quarterly))

    flat_hour(quarterly, "52000")
    wallets = {u.username: wallet_of(u) + held_of(u) for u in (alice, bob, carol)}  # holds come back
    delivery_advance(now=DT)
    quarterly.refresh_from_db()
    assert quarterly.status == S.SETTLED and quarterly.settlement_price == D("52000")
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert run.status == DeliveryStatus.DONE and run.positions == 3 and run.orders_expired == 1
    assert (run.long_quantity, run.short_quantity) == (D("1"), D("1"))

    # PnL at 52,000: alice 0.6 long from 50,000: +1,200; carol 0.4 long from 51,000: +400;
    # bob short 1 from 50,000: −2,000. Delivery fee 0.02% of 52,000 per contract.
    fee = {"alice": D("6.24"), "bob": D("10.4"), "carol": D("4.16")}
    assert wallet_of(alice) == wallets["alice"] + D("1200") - fee["alice"]
    assert wallet_of(carol) == wallets["carol"] + D("400") - fee["carol"]
    bob_isolated = account_get_or_create(kind=AccountKind.ISOLATED_MARGIN, user=bob, contract=quarterly)
    assert balance_amount(account=bob_isolated, asset_code="USDT") == 0
    # bob's isolated margin (1 × 50,000 / 20 = 2,500) came back less his loss and fee.
    assert wallet_of(bob) == wallets["bob"] + D("2500") - D("2000") - fee["bob"]
    assert held_of(carol) == 0
    assert Order.objects.get(user=carol, status=OrderStatus.EXPIRED)
    assert open_interest(quarterly) == (0, 0)
    assert run.realized_pnl == D("-400") and run.fees == sum(fee.values())
    incomes = Income.objects.filter(symbol=quarterly.symbol, income_type=IncomeType.DELIVERED_SETTELMENT)
    assert sorted(incomes.values_list("user__username", "amount")) == [
        ("alice", D("1200")), ("bob", D("-2000")), ("carol", D("400"))]
    assert run_all_invariants() == []
    history = list(ContractStatusChange.objects.filter(contract=quarterly).values_list("to_status", "at"))
    assert history == [(S.TRADING, ONBOARD), (S.CLOSE_ONLY, DT - timedelta(minutes=30)), (S.SETTLING, DT),
                       (S.SETTLED, DT)]


def test_close_only_rejects_opening_and_accepts_reducing(quarterly, funded):
    alice, bob = trading_pair(quarterly, funded)
    delivery_advance(now=DT - timedelta(minutes=29))
    quarterly.refresh_from_db()
    assert quarterly.status == S.CLOSE_ONLY
    before = Order.objects.count()
    with pytest.raises(OrderRejected) as refused:
        order_place(user=alice, contract=quarterly, side="BUY", quantity=D("0.1"), price=D("50000"))
    assert refused.value.code == ErrorCode.INVALID_SYMBOL_STATUS == -4140
    with pytest.raises(OrderRejected) as refused:  # not flagged reduce-only: refused even though it would reduce
        order_place(user=alice, contract=quarterly, side="SELL", quantity=D("0.1"), price=D("50000"))
    assert refused.value.code == -4140
    assert Order.objects.count() == before
    order_place(user=alice, contract=quarterly, side="SELL", quantity=D("0.5"), price=D("50000"), reduce_only=True)
    order_place(user=bob, contract=quarterly, side="BUY", quantity=D("0.5"), price=D("50000"), reduce_only=True)
    batch_process(SymbolEngine(quarterly))
    assert open_interest(quarterly) == (D("0.5"), D("0.5"))
    assert run_all_invariants() == []


def test_close_only_takes_opening_orders_out_of_the_book_before_anything_matches(quarterly, funded):
    """Orders accepted while the contract traded may not open positions once it is close-only:
    those resting leave the book (expired, holds back), those still in the journal are refused."""
    alice, bob = trading_pair(quarterly, funded)  # alice long 1, bob short 1
    carol, dave = funded("carol"), funded("dave")
    engine = SymbolEngine(quarterly)
    engine.rebuild()
    opening_buy = order_place(user=carol, contract=quarterly, side="BUY", quantity=D("1"), price=D("49000"))
    opening_sell = order_place(user=carol, contract=quarterly, side="SELL", quantity=D("1"), price=D("51000"))
    reducing = order_place(user=alice, contract=quarterly, side="SELL", quantity=D("0.4"), price=D("52000"),
                           reduce_only=True)
    batch_process(engine)
    journaled = order_place(user=dave, contract=quarterly, side="BUY", quantity=D("0.3"), price=D("48000"))
    assert held_of(carol) > 0 and held_of(dave) > 0

    delivery_advance(now=DT - timedelta(minutes=29))
    quarterly.refresh_from_db()
    assert quarterly.status == S.CLOSE_ONLY
    # Bob's reduce-only buy would have filled against carol's sell and opened her a short.
    order_place(user=bob, contract=quarterly, side="BUY", quantity=D("1"), price=D("51000"), reduce_only=True)
    result = batch_process(engine)
    assert result.trades == []
    statuses = dict(Order.objects.filter(pk__in=[opening_buy.pk, opening_sell.pk, reducing.pk, journaled.pk])
                    .values_list("pk", "status"))
    assert statuses == {opening_buy.pk: OrderStatus.EXPIRED, opening_sell.pk: OrderStatus.EXPIRED,
                        reducing.pk: OrderStatus.NEW, journaled.pk: OrderStatus.REJECTED}
    assert held_of(carol) == 0 and held_of(dave) == 0
    assert open_interest(quarterly) == (D("1"), D("1"))
    assert engine.book.get(opening_buy.pk) is None and engine.book.get(opening_sell.pk) is None
    assert engine.book.best_bid() == engine.grid.ticks(D("51000"))  # bob's reduce-only buy rests alone
    assert run_all_invariants() == []

    # The close-only sweep ran once; an idle batch does nothing, and reducing orders still match.
    assert batch_process(engine) is None
    order_place(user=alice, contract=quarterly, side="SELL", quantity=D("0.5"), price=D("51000"), reduce_only=True)
    assert len(batch_process(engine).trades) == 1
    assert open_interest(quarterly) == (D("0.5"), D("0.5"))
    assert run_all_invariants() == []


def test_a_close_only_sweep_without_commands_runs_on_the_matchers_idle_step(quarterly, funded):
    from apps.trading.matcher import Matcher

    alice, bob = trading_pair(quarterly, funded)
    matcher = Matcher([quarterly.symbol])
    engine = matcher.engines[quarterly.symbol] = SymbolEngine(quarterly)
    engine.rebuild()
    resting = order_place(user=alice, contract=quarterly, side="BUY", quantity=D("0.2"), price=D("49000"))
    assert matcher.step() == 1
    delivery_advance(now=DT - timedelta(minutes=29))
    assert matcher.step() == 0 and not matcher._failures  # no command: only the sweep
    resting.refresh_from_db()
    assert resting.status == OrderStatus.EXPIRED and held_of(alice) == 0
    assert engine.book.get(resting.pk) is None and engine.book.best_bid() is None
    assert batch_process(engine) is None
    engine.rebuild()  # a restarted matcher looks once more, and finds nothing to take out
    assert batch_process(engine) is None and not engine.book.order_count
    assert run_all_invariants() == []


def test_orders_journaled_before_settling_are_refused_by_the_matcher(quarterly, funded):
    alice, bob = funded("alice"), funded("bob")
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    engine = SymbolEngine(quarterly)
    resting = order_place(user=alice, contract=quarterly, side="BUY", quantity=D("1"), price=D("49000"))
    batch_process(engine)
    late = order_place(user=bob, contract=quarterly, side="SELL", quantity=D("1"), price=D("49000"))
    order_amend(user=alice, contract=quarterly, order_id=resting.pk, quantity=D("2"), price=D("49000"))
    assert held_of(alice) > resting.margin_held
    contract_halt(contract=quarterly, actor=None)
    batch_process(engine)  # the contract does not match: the new order is refused, the amend's hold returned
    late.refresh_from_db()
    resting.refresh_from_db()
    assert late.status == OrderStatus.REJECTED and held_of(bob) == 0
    assert resting.status == OrderStatus.NEW and resting.quantity == D("1") and held_of(alice) == resting.margin_held
    assert not Position.objects.filter(contract=quarterly).exclude(size=0).exists()
    assert run_all_invariants() == []
    contract_resume(contract=quarterly, actor=None)
    quarterly.refresh_from_db()
    assert quarterly.status == S.TRADING


def test_settlement_price_from_samples_with_an_outlier_by_hand(quarterly):
    Contract.objects.filter(pk=quarterly.pk).update(settlement_window_minutes=2)
    quarterly.refresh_from_db()
    minutes(quarterly, DT - timedelta(minutes=2), [
        # median 50,100: bybit at 60,000 is 19.8% away and dropped.
        # (50,000 × 2×10 + 50,100 × 1×20) / (20 + 20) = 50,050
        {"binance": ("50000", "10"), "okx": ("50100", "20"), "bybit": ("60000", "5")},
        # (50,200 × 2×10 + 50,300 × 1×10) / 30 = 50,233.333…
        {"binance": ("50200", "10"), "okx": ("50300", "10")},
    ])
    minutes(quarterly, DT - timedelta(minutes=3), [{"binance": ("1", "1000")}])  # before the window: ignored
    result, _ = delivery.settlement_price_compute(contract=quarterly)
    # (50,050 + 50,233.333…) / 2 = 50,141.666… → 50,141.7 on the 0.1 tick
    assert result.price == D("50141.7")
    assert [m.value for m in result.minutes][0] == D("50050")
    assert [d.quote.venue for d in result.minutes[0].dropped] == ["bybit"]


def test_no_valid_samples_no_settlement_and_an_alert(quarterly, funded):
    alice, bob = trading_pair(quarterly, funded)
    transactions = LedgerTransaction.objects.count()
    delivery_advance(now=DT + timedelta(minutes=1))
    quarterly.refresh_from_db()
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert quarterly.status == S.SETTLING and quarterly.settlement_price is None
    assert run.status == DeliveryStatus.NO_PRICE and "no valid sample" in run.error
    assert LedgerTransaction.objects.count() == transactions
    assert Alert.objects.filter(key=f"delivery_no_price:{quarterly.symbol}", level="CRITICAL").exists()
    assert open_interest(quarterly) == (1, 1)

    flat_hour(quarterly, "50500")  # the minutes arrive (a backfill): the next run settles
    delivery_advance(now=DT + timedelta(minutes=2))
    quarterly.refresh_from_db()
    assert quarterly.status == S.SETTLED and quarterly.settlement_price == D("50500")
    assert open_interest(quarterly) == (0, 0)
    assert run_all_invariants() == []


def test_settling_twice_books_once(quarterly, funded):
    alice, bob = trading_pair(quarterly, funded)
    flat_hour(quarterly)
    delivery_advance(now=DT)
    balances = (wallet_of(alice), wallet_of(bob))
    quarterly.refresh_from_db()
    again = delivery_settle(contract=quarterly, now=DT + timedelta(minutes=5))
    delivery_advance(now=DT + timedelta(minutes=6))
    assert again.status == DeliveryStatus.DONE and again.attempts == 1
    # One posting, or one per chunk and the chunks' results (the plan moved nothing here): each
    # under its own key, once.
    assert LedgerTransaction.objects.filter(kind=TransactionKind.DELIVERY).count() == 1 + again.chunks
    assert (wallet_of(alice), wallet_of(bob)) == balances
    assert Income.objects.filter(income_type=IncomeType.DELIVERED_SETTELMENT).count() == 2


def test_a_runner_that_priced_late_leaves_a_settled_run_settled(quarterly, funded):
    # Two runners read the run unpriced; the first prices and settles it; the second's price
    # comes after: it must not turn the DONE run back into PRICED (it then saw SETTLED and failed).
    alice, bob = trading_pair(quarterly, funded)
    flat_hour(quarterly)
    delivery_advance(now=DT - timedelta(minutes=1))
    quarterly.refresh_from_db()
    assert "settlement DONE" in " ".join(delivery_advance(now=DT))
    run = DeliverySettlement.objects.get(contract=quarterly)
    stale = DeliverySettlement.objects.get(pk=run.pk)
    stale.settlement_price, stale.status = None, DeliveryStatus.PENDING  # as the late runner read it
    again = delivery._price(stale, quarterly, DT + timedelta(minutes=1))
    assert again.status == DeliveryStatus.DONE and again.settlement_price == run.settlement_price
    assert run_all_invariants() == []


def test_a_failure_half_way_books_nothing_and_the_next_run_settles(quarterly, funded, monkeypatch, delivery_path):
    alice, bob = trading_pair(quarterly, funded)
    order_place(user=alice, contract=quarterly, side="BUY", quantity=D("0.5"), price=D("45000"))
    batch_process(SymbolEngine(quarterly))
    flat_hour(quarterly)
    before = (wallet_of(alice), wallet_of(bob), held_of(alice), LedgerTransaction.objects.count())

    def boom(**kwargs):  # the positions closed, the posting booked, then the lines fail
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(delivery, "_incomes_insert", boom)
    delivery_advance(now=DT)
    quarterly.refresh_from_db()
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert quarterly.status == S.SETTLING and run.status == DeliveryStatus.FAILED and "disk on fire" in run.error
    if delivery_path == "chunks":  # the plan stays (orders expired, its posting), no chunk is booked
        assert run.chunks == 2 and not run.chunk_set.filter(booked_at__isnull=False).exists()
        assert held_of(alice) == 0 and LedgerTransaction.objects.count() == before[3] + 1
        assert run_all_invariants() == []  # DELIVERY_CLEARING holds the chunks' isolated covers (none)
    else:
        assert (wallet_of(alice), wallet_of(bob), held_of(alice), LedgerTransaction.objects.count()) == before
        assert Order.objects.filter(user=alice, status=OrderStatus.NEW).count() == 1
    assert open_interest(quarterly) == (1, 1)
    assert Alert.objects.filter(key=f"job_failure:delivery:{quarterly.symbol}").exists()

    monkeypatch.undo()
    delivery_advance(now=DT + timedelta(minutes=1))
    run.refresh_from_db()
    assert run.status == DeliveryStatus.DONE and run.attempts == 2 and held_of(alice) == 0
    assert open_interest(quarterly) == (0, 0)
    assert run_all_invariants() == []


def test_the_contract_lock_blocks_status_reads_not_rows_that_reference_the_contract(quarterly, funded,
                                                                                  transactional_db, monkeypatch):
    """Settlement holds the contract FOR NO KEY UPDATE: order entry's and the matcher's status reads
    (FOR SHARE) wait, but the key-share lock a new order or journal row takes on the contract it
    references does not. A liquidation inserting its order while holding balances the settlement
    waits for would otherwise deadlock with it."""
    alice, bob = trading_pair(quarterly, funded)
    flat_hour(quarterly)
    seen = {}
    settle = delivery._settle

    def probe(**kwargs):  # runs under the settlement's contract lock
        params = connection.get_connection_params()
        with psycopg.connect(**{k: v for k, v in params.items() if k != "cursor_factory"}, autocommit=True) as other:
            other.execute("SET lock_timeout = '300ms'")
            for name, lock in (("key share", "FOR KEY SHARE"), ("share", "FOR SHARE")):
                try:
                    other.execute(f"SELECT 1 FROM contracts_contract WHERE id = %s {lock}", [quarterly.pk])
                    seen[name] = "granted"
                except psycopg.errors.LockNotAvailable:
                    seen[name] = "waits"
        return settle(**kwargs)

    monkeypatch.setattr(delivery, "_settle", probe)
    delivery_advance(now=DT)
    assert seen == {"key share": "granted", "share": "waits"}
    assert DeliverySettlement.objects.get(contract=quarterly).status == DeliveryStatus.DONE


def test_pending_commands_at_settlement_are_closed_and_their_holds_returned(quarterly, funded):
    alice, bob = funded("alice"), funded("bob")
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    engine = SymbolEngine(quarterly)
    resting = order_place(user=alice, contract=quarterly, side="BUY", quantity=D("1"), price=D("49000"))
    batch_process(engine)
    order_amend(user=alice, contract=quarterly, order_id=resting.pk, quantity=D("3"), price=D("49000"))
    pending = order_place(user=bob, contract=quarterly, side="SELL", quantity=D("1"), price=D("60000"))
    flat_hour(quarterly)
    delivery_advance(now=DT)  # the matcher never ran the amend and the new order
    assert not OrderCommand.objects.filter(contract=quarterly, status=CommandStatus.PENDING).exists()
    pending.refresh_from_db()
    assert pending.status == OrderStatus.EXPIRED and held_of(alice) == 0 and held_of(bob) == 0
    assert wallet_of(alice) == wallet_of(bob) == D("100000")
    assert run_all_invariants() == []
    # The matcher's stale book never matches again: the batch refuses what is not a cancel.
    assert batch_process(engine) is None


def test_an_isolated_loss_beyond_its_margin_never_touches_the_wallet(quarterly, funded):
    alice, bob = funded("alice"), funded("bob")
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    margin_type_change(user=bob, contract=quarterly, margin_type="ISOLATED")
    leverage_change(user=bob, contract=quarterly, leverage=25)
    trade(quarterly, alice, bob, "1", "50000")  # bob isolated short 1 with 2,000 margin
    fund_before = system(AccountKind.INSURANCE_FUND)
    bob_wallet = wallet_of(bob)
    flat_hour(quarterly, "53000")  # bob loses 3,000 + fee 10.6 with 2,000 margin
    delivery_advance(now=DT)
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert wallet_of(bob) == bob_wallet
    shortfall = D("3000") + D("10.6") - D("2000")
    assert run.covered + run.bad_debt == shortfall
    assert system(AccountKind.INSURANCE_FUND) == fund_before - run.covered
    assert run_all_invariants() == []


def test_a_cross_loss_beyond_the_wallet_is_covered_by_the_fund_then_bad_debt(quarterly, funded):
    alice, bob = funded("alice", "3000"), funded("bob")
    fund = system_account(AccountKind.INSURANCE_FUND)
    ledger_post(kind=TransactionKind.INSURANCE, legs=[Leg(system_account(AccountKind.EXTERNAL), "USDT", D("-500")),
                                                      Leg(fund, "USDT", D("500"))])
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    trade(quarterly, alice, bob, "1", "50000")  # alice (cross) long 1 with about 3,000 in her wallet
    alice_wallet = wallet_of(alice)
    flat_hour(quarterly, "45000")  # alice loses 5,000 + fee 9
    delivery_advance(now=DT)
    run = DeliverySettlement.objects.get(contract=quarterly)
    shortfall = D("5000") + D("9") - alice_wallet
    assert wallet_of(alice) == 0
    assert (run.covered, run.bad_debt) == (D("500"), shortfall - D("500"))
    assert system(AccountKind.INSURANCE_FUND) == 0 and system(AccountKind.BAD_DEBT) == -(shortfall - D("500"))
    incomes = Income.objects.filter(user=alice, symbol=quarterly.symbol, trade_id__isnull=True)  # not the trade's
    assert sorted(incomes.values_list("income_type", "amount")) == [
        (IncomeType.COMMISSION, D("-9")), (IncomeType.DELIVERED_SETTELMENT, D("-5000"))]
    assert open_interest(quarterly) == (0, 0)
    assert run_all_invariants() == []


def test_roll_lists_the_current_and_next_quarter_across_the_year_boundary(quarterly, settings,
                                                                          django_assert_num_queries):
    settings.DELIVERY_ROLL_ENABLED = True
    listed = delivery_roll(now=datetime(2026, 12, 20, tzinfo=timezone.utc))
    assert [c.symbol for c in listed] == ["BTCUSDT_270326"]
    assert listed[0].delivery_time == datetime(2027, 3, 26, 8, tzinfo=timezone.utc) == last_friday(2027, 3)
    assert listed[0].status == S.PENDING and listed[0].max_leverage == 25
    assert listed[0].margin_tiers.count() == quarterly.margin_tiers.count()
    assert sorted(IndexConstituent.objects.filter(contract=listed[0]).values_list("venue", "weight")) == \
        sorted(WEIGHTS.items())
    # After December's delivery time: March and June 2027.
    assert [c.symbol for c in delivery_roll(now=DT + timedelta(seconds=1))] == ["BTCUSDT_270625"]
    with django_assert_num_queries(1):  # nothing to list: one read of the symbols, each minute
        assert delivery_roll(now=DT + timedelta(seconds=2)) == []  # idempotent
    delivery_advance(now=DT + timedelta(minutes=1))
    assert Contract.objects.get(symbol="BTCUSDT_270326").status == S.TRADING


def test_listing_refuses_bad_input(quarterly):
    with pytest.raises(delivery.DeliveryError, match="already listed"):
        delivery_list(base_symbol="BTCUSDT", delivery_time=DT, now=ONBOARD)
    with pytest.raises(delivery.DeliveryError, match="too close or past"):
        delivery_list(base_symbol="BTCUSDT", delivery_time=DT, now=DT - timedelta(minutes=10))
    with pytest.raises(delivery.DeliveryError, match="No contract of ETHUSDT"):
        delivery_list(base_symbol="ETHUSDT", delivery_time=DT, now=ONBOARD)
    with pytest.raises(delivery.DeliveryError, match="expected YYYY-MM-DD"):
        parse_delivery_date("25/12/2026")
    assert parse_delivery_date("2027-03-26") == datetime(2027, 3, 26, 8, tzinfo=timezone.utc)


def test_settle_refuses_a_contract_not_due(quarterly):
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    with pytest.raises(delivery.DeliveryError, match="not SETTLING"):
        delivery_settle(contract=quarterly, now=ONBOARD)
    assert not DeliverySettlement.objects.exists()


def test_notices_reach_the_user_stream_and_email(quarterly, funded, settings, django_capture_on_commit_callbacks):
    import json

    from django.core import mail

    from apps.accounts.user_stream import user_group
    from apps.marketdata.fanout import channel_of
    from exchange.redis import get_redis

    settings.DELIVERY_NOTICE_EMAIL = True
    alice, bob = funded("alice"), funded("bob")
    alice.email = "alice@example.com"
    alice.save()
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    trade(quarterly, alice, bob, "1", "50000")
    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel_of(user_group(alice.pk)))
    try:
        with django_capture_on_commit_callbacks(execute=True):
            delivery_advance(now=DT - timedelta(hours=24))
        message = None
        for _ in range(20):
            message = message or pubsub.get_message(timeout=0.5)
    finally:
        pubsub.close()
    body = json.loads(message["data"])
    assert body["user_id"] == alice.pk
    assert body["data"] == [{"e": "DELIVERY_NOTICE", "E": int((DT - timedelta(hours=24)).timestamp() * 1000),
                             "s": "BTCUSDT_261225", "dt": int(DT.timestamp() * 1000), "pa": "1"}]
    assert [m.to for m in mail.outbox] == [["alice@example.com"]]  # bob has no address
    assert "BTCUSDT_261225" in mail.outbox[0].subject
    assert DeliveryNotice.objects.get(user=alice).emailed_at is not None


def test_command_lists_and_advances_and_refuses_bad_input(quarterly):
    from io import StringIO

    from django.core.management import CommandError, call_command

    out = StringIO()
    call_command("delivery", "list", "btcusdt", "2027-09-24", stdout=out)
    assert "listed BTCUSDT_270924" in out.getvalue()
    with pytest.raises(CommandError, match="expected YYYY-MM-DD"):
        call_command("delivery", "list", "BTCUSDT", "24.09.2027")
    with pytest.raises(CommandError, match="already listed"):
        call_command("delivery", "list", "BTCUSDT", "2027-09-24")
    with pytest.raises(CommandError, match="Unknown delivery contract"):
        call_command("delivery", "advance", "--symbol", "NOPE_270924")
    out = StringIO()
    call_command("delivery", "advance", "--symbol", "BTCUSDT_261225", stdout=out)
    assert "BTCUSDT_261225: TRADING" in out.getvalue()


def test_admin_calendar_history_samples_and_actions(quarterly, funded, admin_client):
    from django.urls import reverse

    from apps.settlement.models import DeliveryContract

    alice, bob = trading_pair(quarterly, funded)
    calendar = reverse("admin:settlement_deliverycontract_changelist")
    page = admin_client.get(calendar)
    assert page.status_code == 200 and b"BTCUSDT_261225" in page.content
    admin_client.post(calendar, {"action": "halt", "_selected_action": [quarterly.pk]})
    assert Contract.objects.get(pk=quarterly.pk).status == S.HALTED
    admin_client.post(calendar, {"action": "resume", "_selected_action": [quarterly.pk]})
    assert Contract.objects.get(pk=quarterly.pk).status == S.TRADING
    # "Settle now" before the delivery time changes nothing and says so.
    page = admin_client.post(calendar, {"action": "settle_now", "_selected_action": [quarterly.pk]}, follow=True)
    assert b"nothing is due" in page.content and Contract.objects.get(pk=quarterly.pk).status == S.TRADING
    detail = admin_client.get(reverse("admin:settlement_deliverycontract_change", args=[quarterly.pk]))
    assert detail.status_code == 200 and b"halted by ops" in detail.content

    flat_hour(quarterly, "51000")
    delivery_advance(now=DT)
    run = DeliverySettlement.objects.get(contract=quarterly)
    page = admin_client.get(reverse("admin:settlement_deliverysettlement_change", args=[run.pk]))
    assert page.status_code == 200 and b"binance 51000" in page.content
    if run.chunks:  # the chunks inline: each one's posting
        assert b"Delivery chunks" in page.content
        assert all(f"#{k.ledger_transaction_id}".encode() in page.content for k in run.chunk_set.all())
    assert admin_client.get(reverse("admin:settlement_deliverysettlement_changelist")).status_code == 200
    assert DeliveryContract.objects.filter(pk=quarterly.pk).exists()


def test_admin_actions_report_refusals_and_log_unexpected_failures(quarterly, admin_client, monkeypatch, caplog):
    from django.urls import reverse

    from apps.settlement import admin as settlement_admin

    calendar = reverse("admin:settlement_deliverycontract_changelist")
    # A domain refusal: a message, nothing logged.
    page = admin_client.post(calendar, {"action": "resume", "_selected_action": [quarterly.pk]}, follow=True)
    assert page.status_code == 200 and b"is not halted" in page.content
    assert not [r for r in caplog.records if r.name == "apps.contracts.admin"]

    def broken(**kwargs):
        raise RuntimeError("database on fire")

    # Anything else: the same message to the operator (never a 500), and its traceback in the log.
    monkeypatch.setattr(settlement_admin, "delivery_advance_one", broken)
    page = admin_client.post(calendar, {"action": "settle_now", "_selected_action": [quarterly.pk]}, follow=True)
    assert page.status_code == 200 and b"database on fire" in page.content
    (record,) = [r for r in caplog.records if r.name == "apps.contracts.admin"]
    assert record.exc_info and "BTCUSDT_261225" in record.getMessage()
    assert Contract.objects.get(pk=quarterly.pk).status == S.PENDING
