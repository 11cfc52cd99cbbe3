"""Auto-deleveraging: an empty insurance fund closes a gapped position against the most
profitable, most leveraged opposite positions at its bankruptcy price (hand-computed
numbers); cross and isolated; the user streams are told; a crash mid-step books it once."""
import json
import time
from decimal import Decimal

import pytest
from django.urls import reverse

from apps.accounts.user_stream import order_trade_update
from apps.ledger.models import Income, IncomeType, LedgerTransaction, TransactionKind
from apps.liquidation import adl as adl_module
from apps.liquidation.models import Liquidation, LiquidationStatus, RecordKind
from apps.liquidation.selectors import adl_quantiles
from apps.liquidation.services import liquidation_advance, liquidation_sweep
from apps.ops.invariants import run_all_invariants
from apps.ops.metrics import ADL_EVENTS
from apps.trading.matching import EVENTS_CHANNEL, batch_process
from apps.trading.models import CommandStatus, OrderCommand, OrderStatus, OrderType, Trade
from apps.trading.services import order_place
from exchange.redis import get_redis

from .helpers import bad_debt, fund, isolated_of, records, size_of, wallet_of

D = Decimal


def published(pubsub, match) -> dict:
    """The first message on `pubsub` that `match`es, within 10 s (pub/sub channels are server-wide:
    other test runs may publish on the same one); closes `pubsub`."""
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            body = json.loads(message["data"]) if message else {}
            if match(body):
                return body
        raise AssertionError("no such message published")
    finally:
        pubsub.close()


def test_empty_fund_deleverages_the_most_profitable_most_leveraged_shorts(
        gapped_long, btcusdt, engine, django_capture_on_commit_callbacks):
    alice, sam, tom, uma, bob = gapped_long
    # The ranking users see: score = PnL% × MM / (wallet + uPnL) at 44,000 —
    # sam 3,000/1,295 × 88/4,295 = 0.0475; tom 3,000/5,995 × 88/8,995 = 0.0049;
    # uma 12,000/99,980 × 390/111,980 = 0.0004 (tier 2: 0.5% × 88,000 − 50).
    assert [adl_quantiles(user=u)["BTCUSDT"] for u in (sam, tom, uma)] == [4, 3, 2]
    assert fund() == 0
    # uma's take-profit covers her whole short; after ADL only half of it may stay.
    take_profit = order_place(user=uma, contract=btcusdt, side="BUY", quantity=D("2"), price=D("30000"),
                              reduce_only=True)
    assert liquidation_sweep()["started"] == 1
    liquidation = Liquidation.objects.get(user=alice)
    [order] = [r.order for r in records(liquidation, RecordKind.ORDER)]
    assert (order.side, order.quantity, order.price) == ("SELL", D("2"), D("45000"))
    batch_process(engine)  # no bid at all: nothing fills
    counted = ADL_EVENTS.labels(symbol="BTCUSDT")._value.get()

    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(EVENTS_CHANNEL.format(symbol="BTCUSDT"))
    with django_capture_on_commit_callbacks(execute=True):
        # The fund cannot pay for one tick beyond 45,000: no market order, ADL at 45,000.
        assert liquidation_advance(liquidation=liquidation) == "deleveraged"
    # Ours is the one with the CALCULATED report for alice's order.
    reports = published(pubsub, lambda body: any(r.get("exec_type") == "CALCULATED" and r.get("user_id") == alice.pk
                                                 for r in body.get("orders", ())))["orders"]

    # sam 0.5 and tom 0.5 whole, uma 1 of her 2; at 45,000, no fees.
    [step] = records(liquidation, RecordKind.DELEVERAGE)
    assert (step.quantity, step.price, step.pnl, step.fund_cover, step.bad_debt) == \
        (D("2"), D("45000"), D("-10000"), 0, 0)
    adl = records(liquidation, RecordKind.ADL)
    assert [(r.counterparty, r.quantity, r.price, r.pnl) for r in adl] == [
        (sam, D("0.5"), D("45000"), D("2500")), (tom, D("0.5"), D("45000"), D("2500")),
        (uma, D("1"), D("45000"), D("5000"))]
    assert {r.step for r in adl} == {step.step}
    assert [size_of(u) for u in (alice, sam, tom, uma, bob)] == [0, 0, 0, D("-1"), D("1")]
    # alice: −10,000 realized = her isolated margin; the wallet untouched.
    assert (wallet_of(alice), isolated_of(alice, btcusdt)) == (D("9960"), 0)
    assert (wallet_of(sam), wallet_of(tom), wallet_of(uma)) == (D("3795"), D("8495"), D("104980"))
    assert fund() == 0 and bad_debt() == 0
    [txn] = LedgerTransaction.objects.filter(kind=TransactionKind.ADL)
    assert txn.idempotency_key == f"liquidation:{liquidation.pk}:adl:{step.step}"
    assert sum(e.amount for e in txn.entries.all()) == 0
    assert sorted(Income.objects.filter(transaction=txn).values_list("user__username", "income_type", "amount")) \
        == [("alice", IncomeType.REALIZED_PNL, D("-10000")), ("sam", IncomeType.REALIZED_PNL, D("2500")),
            ("tom", IncomeType.REALIZED_PNL, D("2500")), ("uma", IncomeType.REALIZED_PNL, D("5000"))]
    assert (step.order.order_type, step.order.status, step.order.executed_qty) == \
        (OrderType.LIQUIDATION, OrderStatus.FILLED, D("2"))
    assert ADL_EVENTS.labels(symbol="BTCUSDT")._value.get() == counted + 3
    # Expired in the step: 2 to reduce a short of 1 could open a long.
    take_profit.refresh_from_db()
    assert (take_profit.status, take_profit.margin_held) == (OrderStatus.EXPIRED, 0)

    # Each user's stream gets an ORDER_TRADE_UPDATE like the reference exchange's ADL, and uma
    # the expiry of her take-profit.
    assert [r["user_id"] for r in reports] == [alice.pk, sam.pk, tom.pk, uma.pk, uma.pk]
    expiry = order_trade_update(symbol="BTCUSDT", report=reports.pop(), event_ms=1, transaction_ms=1)["o"]
    assert (expiry["i"], expiry["x"], expiry["X"], expiry["R"], expiry["q"], expiry["p"]) == \
        (take_profit.pk, "EXPIRED", "EXPIRED", True, "2", "30000")
    updates = [order_trade_update(symbol="BTCUSDT", report=r, event_ms=1, transaction_ms=1)["o"] for r in reports]
    assert [(u["x"], u["X"], u["o"], u["c"], u["S"], u["z"], u["ap"], u["rp"]) for u in updates[1:]] == [
        ("CALCULATED", "FILLED", "MARKET", "adl_autoclose", "BUY", "0.5", "45000", "2500"),
        ("CALCULATED", "FILLED", "MARKET", "adl_autoclose", "BUY", "0.5", "45000", "2500"),
        ("CALCULATED", "FILLED", "MARKET", "adl_autoclose", "BUY", "1", "45000", "5000")]
    assert (updates[0]["x"], updates[0]["o"], updates[0]["i"], updates[0]["rp"]) == \
        ("CALCULATED", "LIQUIDATION", step.order.pk, "-10000")

    assert liquidation_advance(liquidation=liquidation) == "finished"
    liquidation.refresh_from_db()
    assert liquidation.status == LiquidationStatus.DONE
    finished = records(liquidation, RecordKind.FINISHED)[0]
    assert (D(finished.details["adl_quantity"]), D(finished.details["adl_pnl"])) == (D("2"), D("10000"))
    assert liquidation_sweep()["started"] == 0
    assert run_all_invariants() == []


def test_cross_long_is_deleveraged_to_a_zero_wallet(funded, trade, mark, btcusdt, engine, admin_client):
    alice = funded("alice", "3000")
    bob = funded("bob")
    mark("50000")
    trade(bob, alice, "SELL", "1", "50000")  # alice the taker: fee 20, cross wallet 2,980
    mark("46000")  # bankrupt at 50,000 − 2,980 = 47,020; no bid
    assert liquidation_sweep()["started"] == 1
    liquidation = Liquidation.objects.get(user=alice)
    batch_process(engine)
    assert liquidation_advance(liquidation=liquidation) == "deleveraged"
    [record] = records(liquidation, RecordKind.ADL)
    assert (record.counterparty, record.quantity, record.price, record.pnl) == (bob, D("1"), D("47020"), D("2980"))
    assert wallet_of(alice) == 0 and wallet_of(bob) == D("100000") - D("10") + D("2980")
    assert size_of(alice) == size_of(bob) == 0
    assert fund() == 0 and bad_debt() == 0
    assert liquidation_advance(liquidation=liquidation) == "finished"
    # Ops see the ADL executions in the admin, by kind.
    page = admin_client.get(reverse("admin:liquidation_liquidationrecord_changelist"), {"kind__exact": "ADL"})
    assert page.status_code == 200 and "bob" in page.content.decode() and "47020" in page.content.decode()
    assert run_all_invariants() == []


def test_after_an_adl_step_the_matcher_book_follows_the_positions(funded, trade, mark, btcusdt, engine):
    """The C book keeps each owner's position (it cuts reduce-only orders at it). An ADL step moves
    positions outside the matcher, even when it expires no order: the contract's book version goes
    up, and the next batch rebuilds the book, positions included, to what a restart would load."""
    from apps.trading.engine import SymbolEngine

    alice, bob = funded("alice", "3000"), funded("bob")
    mark("50000")
    trade(bob, alice, "SELL", "1", "50000")
    mark("46000")
    liquidation_sweep()
    liquidation = Liquidation.objects.get(user=alice)
    batch_process(engine)
    version = engine.book_version
    assert liquidation_advance(liquidation=liquidation) == "deleveraged"
    # Neither side had a reduce-only order to expire: only the positions moved.
    btcusdt.refresh_from_db()
    assert btcusdt.book_version == version + 1
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("40000"))
    batch_process(engine)  # sees the new version: rebuilds first
    assert engine.book_version == btcusdt.book_version
    restarted = SymbolEngine(btcusdt)
    restarted.rebuild()
    assert engine.book.state_hash() == restarted.book.state_hash()
    assert run_all_invariants() == []


def test_a_crash_inside_the_adl_step_books_it_once(gapped_long, btcusdt, engine, monkeypatch):
    alice, sam, tom, uma, bob = gapped_long
    liquidation_sweep()
    liquidation = Liquidation.objects.get(user=alice)
    batch_process(engine)

    def crash(*args, **kwargs):
        raise RuntimeError("worker killed after the booking")

    monkeypatch.setattr(adl_module, "_incomes", crash)  # after adl_book, before the step commits
    with pytest.raises(RuntimeError):
        liquidation_advance(liquidation=liquidation)
    assert size_of(alice) == 2 and not LedgerTransaction.objects.filter(kind=TransactionKind.ADL).exists()
    assert records(liquidation, RecordKind.DELEVERAGE) == []
    monkeypatch.undo()

    assert liquidation_advance(liquidation=liquidation) == "deleveraged"  # the restarted worker
    assert liquidation_advance(liquidation=liquidation) == "finished"
    assert liquidation_advance(liquidation=liquidation) == "busy"  # nothing active any more
    assert liquidation_sweep()["started"] == 0
    assert LedgerTransaction.objects.filter(kind=TransactionKind.ADL).count() == 1
    assert len(records(liquidation, RecordKind.ADL)) == 3
    assert [size_of(u) for u in (alice, sam, tom, uma, bob)] == [0, 0, 0, D("-1"), D("1")]
    assert (wallet_of(sam), wallet_of(tom), wallet_of(uma)) == (D("3795"), D("8495"), D("104980"))
    assert run_all_invariants() == []


def test_a_halted_contract_is_not_deleveraged_until_it_resumes(gapped_long, btcusdt, engine):
    """The liquidation order is journalled, then ops halt the contract: the batch refuses the order
    and the position waits for the resume, as the book does; no ADL on a halted contract."""
    from apps.contracts.lifecycle import contract_halt, contract_resume

    alice, sam, tom, uma, bob = gapped_long
    liquidation_sweep()
    liquidation = Liquidation.objects.get(user=alice)
    contract_halt(contract=btcusdt, actor=None)
    batch_process(engine)  # the halted book refuses the liquidation order
    assert liquidation_advance(liquidation=liquidation) == "waiting"
    assert records(liquidation, RecordKind.DELEVERAGE) == [] and size_of(alice) == 2
    contract_resume(contract=btcusdt, actor=None)
    assert liquidation_advance(liquidation=liquidation) == "deleveraged"  # the fund is still empty
    assert [size_of(u) for u in (alice, sam, tom, uma, bob)] == [0, 0, 0, D("-1"), D("1")]
    assert run_all_invariants() == []


def test_orders_accepted_before_the_adl_step_cannot_fill_the_reduce_only_orders_it_expired(
        gapped_long, funded, btcusdt, engine, django_capture_on_commit_callbacks):
    """uma's reduce-only bid covers her whole short; vic's sell that would fill it is accepted
    before the ADL step halves her short, and only matched after it. Through the journal, the
    step's cancel of the bid would come after vic's order, which would fill all 2 and turn uma
    long 1. The step expires the bid itself; the matcher rebuilds its book before matching vic."""
    alice, sam, tom, uma, bob = gapped_long
    take_profit = order_place(user=uma, contract=btcusdt, side="BUY", quantity=D("2"), price=D("43000"),
                              reduce_only=True)
    assert liquidation_sweep()["started"] == 1
    batch_process(engine)  # alice's order at 45,000 finds no bid; uma's bid rests
    sell = order_place(user=funded("vic"), contract=btcusdt, side="SELL", quantity=D("2"), price=D("43000"))
    assert liquidation_advance(liquidation=Liquidation.objects.get(user=alice)) == "deleveraged"
    assert size_of(uma) == D("-1")
    take_profit.refresh_from_db()
    assert take_profit.status == OrderStatus.EXPIRED
    btcusdt.refresh_from_db()
    assert btcusdt.book_version == engine.book_version + 1

    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(EVENTS_CHANNEL.format(symbol="BTCUSDT"))
    with django_capture_on_commit_callbacks(execute=True):
        result = batch_process(engine)
    assert (result.commands, result.trades) == (1, [])
    sell.refresh_from_db()
    assert (sell.status, sell.executed_qty) == (OrderStatus.NEW, 0)  # it rests: no bid left
    assert size_of(uma) == D("-1") and Trade.objects.filter(taker_order=sell).count() == 0
    assert engine.book_version == btcusdt.book_version
    assert engine.book.depth(5) == ([], [(430000, 2000, 1)])  # ticks of 0.1, lots of 0.001
    # The depth stream is told that the bid left and the ask came.
    body = published(pubsub, lambda body: body.get("depth", {}).get("asks"))
    assert body["depth"] == {"bids": [["43000", "0"]], "asks": [["43000", "2"]]}
    assert run_all_invariants() == []


def test_a_pending_reduce_only_order_the_adl_step_expired_never_reaches_the_book(gapped_long, btcusdt, engine):
    """A reduce-only order still in the journal (PENDING_NEW) when the step expires it: its NEW
    command is marked done, and it neither rests nor fills."""
    alice, sam, tom, uma, bob = gapped_long
    assert liquidation_sweep()["started"] == 1
    batch_process(engine)
    take_profit = order_place(user=uma, contract=btcusdt, side="BUY", quantity=D("2"), price=D("43000"),
                              reduce_only=True)
    assert liquidation_advance(liquidation=Liquidation.objects.get(user=alice)) == "deleveraged"
    take_profit.refresh_from_db()
    assert take_profit.status == OrderStatus.EXPIRED
    assert batch_process(engine).commands == 1
    take_profit.refresh_from_db()
    assert (take_profit.status, take_profit.priority) == (OrderStatus.EXPIRED, None)
    assert not OrderCommand.objects.filter(order=take_profit, status=CommandStatus.PENDING).exists()
    assert engine.book.depth(5) == ([], [])
    assert run_all_invariants() == []
