"""Liquidations through the real matcher batch: cross partial, isolated full, gaps into the
insurance fund and beyond it into bad debt; invariants after every scenario."""
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from apps.ledger.models import AccountKind, Income, IncomeType
from apps.ledger.services import account_get_or_create
from apps.liquidation.models import Liquidation, LiquidationStatus, MarginCall, MarginLevel, RecordKind
from apps.liquidation.selectors import account_frozen, margin_status
from apps.liquidation.services import liquidation_advance, liquidation_sweep
from apps.ops.invariants import run_all_invariants
from apps.trading.errors import OrderRejected
from apps.trading.matching import batch_process
from apps.trading.models import Order, OrderStatus, OrderType
from apps.trading.services import order_place
from exchange.errors import ErrorCode

from .helpers import bad_debt, fund, records, size_of, usdt_of, wallet_of

D = Decimal


def test_cross_account_is_liquidated_partially_into_a_lower_tier(funded, trade, mark, btcusdt, engine):
    alice = funded("alice", "4420", leverage=25)
    bob = funded("bob")
    mark("50000")
    trade(alice, bob, "BUY", "2", "50000")  # alice the maker: fee 20; cross wallet 4,400
    assert wallet_of(alice) == D("4400")
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("48000"))  # the bid
    batch_process(engine)
    mark("48000")
    # equity 4,400 − 4,000 = 400; notional 96,000 in tier 2: MM 480 − 50 = 430; ratio 0.93
    status = margin_status(user=alice)
    assert (status.equity, status.maintenance) == (D("400"), D("430"))

    result = liquidation_sweep()
    assert result["started"] == 1
    liquidation = Liquidation.objects.get(user=alice)
    assert liquidation.status == LiquidationStatus.ACTIVE and account_frozen(user_id=alice.pk)
    with pytest.raises(OrderRejected) as refused:
        order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("49000"))
    assert refused.value.code == ErrorCode.USER_IN_LIQUIDATION
    [order_record] = records(liquidation, RecordKind.ORDER)
    order = order_record.order
    # Down into tier 1: keep floor(50,000 / 48,000) = 1.041 BTC, sell 0.959 no worse than the
    # bankruptcy price 50,000 − 4,400 / 2 = 47,800.
    assert (order.order_type, order.side, order.time_in_force) == (OrderType.LIQUIDATION, "SELL", "IOC")
    assert (order.quantity, order.price, order.protection_price) == (D("0.959"), D("47800"), D("47800"))
    assert liquidation_advance(liquidation=liquidation) == "waiting"

    batch_process(engine)
    order.refresh_from_db()
    assert order.status == OrderStatus.FILLED
    # Filled at bob's 48,000: realized −2,000 × 0.959 = −1,918; surplus over bankruptcy
    # 200 × 0.959 = 191.8 caps the clearance fee (0.959 × 48,000 × 1.25% = 575.4): 191.8 to the fund.
    [execution] = records(liquidation, RecordKind.EXECUTION)
    assert (execution.quantity, execution.price, execution.clearance_fee) == (D("0.959"), D("48000"), D("191.8"))
    assert (execution.fund_cover, execution.bad_debt) == (0, 0)
    assert fund() == D("191.8")
    assert wallet_of(alice) == D("4400") - D("1918") - D("191.8")
    # The clearance fee is the client's INSURANCE_CLEAR income line, not a commission.
    lines = sorted(Income.objects.filter(user=alice, trade_id__isnull=False).values_list("income_type", "amount"))
    assert lines == [(IncomeType.COMMISSION, D("-20")), (IncomeType.INSURANCE_CLEAR, D("-191.8")),
                     (IncomeType.REALIZED_PNL, D("-1918"))]
    assert size_of(alice) == D("1.041")

    assert liquidation_advance(liquidation=liquidation) == "finished"
    liquidation.refresh_from_db()
    assert liquidation.status == LiquidationStatus.DONE and not account_frozen(user_id=alice.pk)
    # equity 2,290.2 − 2,082 = 208.2 over MM 1.041 × 48,000 × 0.4% = 199.872: above 100%
    status = margin_status(user=alice)
    assert (status.equity, status.maintenance) == (D("208.2"), D("199.872")) and status.ratio > 1
    kinds = [r.kind for r in liquidation.records.order_by("id")]
    assert kinds == [RecordKind.CONDITIONS, RecordKind.FREEZE, RecordKind.PLAN, RecordKind.ORDER,
                     RecordKind.EXECUTION, RecordKind.FINISHED]
    order_place(user=alice, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("49000"))  # unfrozen
    assert liquidation_sweep()["started"] == 0  # nothing liquidated twice
    assert run_all_invariants() == []


def test_a_sweep_that_finds_only_a_margin_call_reads_the_account_once_and_locks_nothing(funded, trade, mark):
    alice = funded("alice", "3000")  # cross long 1 @ 50,000, wallet 2,990
    bob = funded("bob")
    mark("50000")
    trade(alice, bob, "BUY", "1", "50000")
    mark("47200")  # alice DANGER (ratio 1.006): a margin call, no liquidation
    with CaptureQueriesContext(connection) as queries:
        result = liquidation_sweep()
    assert (result["nominees"], result["started"]) == (1, 0)
    assert list(MarginCall.objects.filter(user=alice).values_list("level", flat=True)) == [MarginLevel.DANGER]
    sql = [q["sql"] for q in queries.captured_queries]
    assert not [s for s in sql if "FOR UPDATE" in s or "liquidation_liquidation" in s and "INSERT" in s]
    assert sum(s.startswith('SELECT "ledger_account"."id" AS "id" FROM "ledger_account"') for s in sql) == 1
    assert not Liquidation.objects.exists()


def _isolated_short(funded, trade, mark):
    carol = funded("carol", "10000", leverage=10, isolated=True)
    dave = funded("dave")
    mark("50000")
    trade(dave, carol, "BUY", "1", "50000")  # carol: taker fee 20, isolated margin 5,000
    assert wallet_of(carol) == D("4980")
    return carol, dave


def test_isolated_position_is_liquidated_fully_and_the_wallet_is_untouched(funded, trade, mark, btcusdt, engine):
    carol, dave = _isolated_short(funded, trade, mark)
    eve = funded("eve")
    order_place(user=eve, contract=btcusdt, side="SELL", quantity=D("1"), price=D("54950"))
    order_place(user=carol, contract=btcusdt, side="BUY", quantity=D("0.5"), price=D("40000"))  # cancelled
    batch_process(engine)
    mark("54900")  # equity 5,000 − 4,900 = 100 vs MM 54,900 × 0.5% − 50 = 224.5
    assert liquidation_sweep()["started"] == 1
    liquidation = Liquidation.objects.get(user=carol)
    assert liquidation.contract == btcusdt
    [order] = [r.order for r in records(liquidation, RecordKind.ORDER)]
    assert (order.side, order.quantity, order.price) == ("BUY", D("1"), D("55000"))  # whole, worst 55,000
    batch_process(engine)  # the cancel, then the liquidation order fills at eve's 54,950
    assert Order.objects.get(user=carol, price=D("40000")).status == OrderStatus.CANCELED
    [execution] = records(liquidation, RecordKind.EXECUTION)
    # surplus (55,000 − 54,950) × 1 = 50 = clearance fee; the isolated margin is consumed entirely
    assert (execution.price, execution.clearance_fee, execution.surplus_to_fund) == (D("54950"), D("50"), D("0"))
    assert fund() == D("50") and size_of(carol) == 0
    assert wallet_of(carol) == D("4980")  # an isolated loss never touches the wallet
    assert usdt_of(account_get_or_create(kind=AccountKind.ISOLATED_MARGIN, user=carol, contract=btcusdt)) == 0
    assert liquidation_advance(liquidation=liquidation) == "finished"
    assert not account_frozen(user_id=carol.pk)
    assert run_all_invariants() == []


def test_gap_through_bankruptcy_is_covered_by_the_insurance_fund(funded, trade, mark, btcusdt, engine, fund_seed):
    fund_seed("10000")
    carol, dave = _isolated_short(funded, trade, mark)
    eve = funded("eve")
    order_place(user=eve, contract=btcusdt, side="SELL", quantity=D("1"), price=D("56000"))
    batch_process(engine)
    mark("56000")  # beyond the bankruptcy price 55,000
    assert liquidation_sweep()["started"] == 1
    liquidation = Liquidation.objects.get(user=carol)
    batch_process(engine)  # no ask at or under 55,000: nothing fills
    assert liquidation_advance(liquidation=liquidation) == "ordered"
    no_fill = records(liquidation, RecordKind.NO_FILL)
    assert len(no_fill) == 1 and no_fill[0].quantity == D("1")
    market = records(liquidation, RecordKind.ORDER)[-1]
    # At the market (mark + 30% = 72,800), but no further beyond the bankruptcy price 55,000 than the
    # fund's 10,000 pays for on 1 BTC: 65,000.
    assert market.details["stage"] == "market" and market.order.protection_price == D("65000")
    batch_process(engine)
    [execution] = records(liquidation, RecordKind.EXECUTION)
    # realized (50,000 − 56,000) = −6,000 against the 5,000 margin: 1,000 from the fund
    assert (execution.price, execution.clearance_fee, execution.fund_cover, execution.bad_debt) == \
        (D("56000"), 0, D("1000"), 0)
    assert fund() == D("9000") and bad_debt() == 0 and wallet_of(carol) == D("4980")
    assert liquidation_advance(liquidation=liquidation) == "finished"
    assert run_all_invariants() == []


def test_deficit_beyond_the_fund_is_recorded_bad_debt(funded, mark, btcusdt, engine, fund_seed):
    """Two liquidations count on the same fund at once: what it cannot pay the second is bad debt."""
    fund_seed("1500")
    carol = funded("carol", "10000", leverage=10, isolated=True)
    frank = funded("frank", "10000", leverage=10, isolated=True)
    dave, eve = funded("dave"), funded("eve")
    mark("50000")
    order_place(user=dave, contract=btcusdt, side="BUY", quantity=D("2"), price=D("50000"))
    order_place(user=carol, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    order_place(user=frank, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    order_place(user=eve, contract=btcusdt, side="SELL", quantity=D("2"), price=D("56000"))
    batch_process(engine)  # carol and frank short 1 each, isolated margin 5,000: bankrupt at 55,000
    mark("56000")
    assert liquidation_sweep()["started"] == 2
    batch_process(engine)  # no ask at or under 55,000
    assert liquidation_sweep()["advanced"] == {"ordered": 2}
    for user in (carol, frank):  # each may go 1,500 beyond bankruptcy: the fund as it is now
        market = records(Liquidation.objects.get(user=user), RecordKind.ORDER)[-1]
        assert market.details["stage"] == "market" and market.order.protection_price == D("56500")
    batch_process(engine)  # both fill at eve's 56,000: a 1,000 loss beyond the margin each
    # Which of the two fills first follows the screen's row order (not specified): that one has
    # 1,000 from the fund, the second the last 500 and 500 of bad debt.
    liquidations = [Liquidation.objects.get(user=user) for user in (carol, frank)]
    first, second = sorted((records(liq, RecordKind.EXECUTION)[0] for liq in liquidations),
                           key=lambda record: record.bad_debt)
    assert (first.fund_cover, first.bad_debt) == (D("1000"), 0)
    assert (second.fund_cover, second.bad_debt) == (D("500"), D("500"))
    assert fund() == 0 and bad_debt() == D("-500")
    assert wallet_of(carol) == wallet_of(frank) == D("4980")  # 10,000 − 5,000 margin − 20 taker fee
    assert liquidation_sweep()["advanced"] == {"finished": 2}
    finished = records(second.liquidation, RecordKind.FINISHED)[0]
    assert D(finished.details["bad"]) == D("500") and D(finished.details["cover"]) == D("500")
    assert run_all_invariants() == []


def test_cross_gap_deficit_is_covered_by_the_fund(funded, trade, mark, btcusdt, engine, fund_seed):
    fund_seed("5000")
    alice = funded("alice", "3000")
    bob = funded("bob")
    mark("50000")
    trade(alice, bob, "BUY", "1", "50000")  # cross wallet 2,990; bankruptcy 47,010
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("46000"))
    batch_process(engine)
    mark("46000")
    liquidation_sweep()
    liquidation = Liquidation.objects.get(user=alice)
    batch_process(engine)  # nothing at or above 47,010
    assert liquidation_advance(liquidation=liquidation) == "ordered"
    batch_process(engine)  # at the market: 46,000
    [execution] = records(liquidation, RecordKind.EXECUTION)
    # realized −4,000 against a 2,990 wallet: 1,010 from the fund, the wallet ends at zero
    assert (execution.fund_cover, execution.bad_debt) == (D("1010"), 0)
    assert wallet_of(alice) == 0 and fund() == D("3990")
    assert liquidation_advance(liquidation=liquidation) == "finished"
    assert run_all_invariants() == []


def test_a_halted_contract_is_not_liquidated_through_its_book_until_it_resumes(funded, trade, mark, btcusdt,
                                                                                 engine):
    from apps.contracts.lifecycle import contract_halt, contract_resume

    alice = funded("alice", "4420", leverage=25)
    bob = funded("bob")
    mark("50000")
    trade(alice, bob, "BUY", "2", "50000")
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("48000"))
    batch_process(engine)
    contract_halt(contract=btcusdt, actor=None)
    mark("48000")
    assert liquidation_sweep()["started"] == 1
    liquidation = Liquidation.objects.get(user=alice)
    assert not records(liquidation, RecordKind.ORDER)  # the halted book would refuse the order
    assert liquidation_advance(liquidation=liquidation) == "waiting"
    assert not Order.objects.filter(user=alice, order_type=OrderType.LIQUIDATION).exists()
    contract_resume(contract=btcusdt, actor=None)
    assert liquidation_advance(liquidation=liquidation) == "ordered"
    batch_process(engine)
    assert Order.objects.get(user=alice, order_type=OrderType.LIQUIDATION).status == OrderStatus.FILLED
    assert run_all_invariants() == []


def test_one_failing_liquidation_does_not_hold_up_the_others(funded, mark, btcusdt, engine, fund_seed, monkeypatch,
                                                             caplog):
    """Active liquidations are advanced in id order on every sweep: one that keeps failing (say its
    ADL step cannot be booked) is logged and retried, and the others still move."""
    from apps.liquidation import services

    fund_seed("5000")  # the next step is a market order for each
    carol = funded("carol", "10000", leverage=10, isolated=True)
    frank = funded("frank", "10000", leverage=10, isolated=True)
    dave = funded("dave")
    mark("50000")
    order_place(user=dave, contract=btcusdt, side="BUY", quantity=D("2"), price=D("50000"))
    order_place(user=carol, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    order_place(user=frank, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    batch_process(engine)
    mark("56000")
    assert liquidation_sweep()["started"] == 2
    batch_process(engine)  # no ask: both bankruptcy-price orders expire
    first = Liquidation.objects.filter(user__in=(carol, frank)).order_by("pk").first()
    journal = services._journal_order

    def broken(liquidation, *args, **kwargs):
        if liquidation.pk == first.pk:
            raise RuntimeError("cannot be booked")
        return journal(liquidation, *args, **kwargs)

    monkeypatch.setattr(services, "_journal_order", broken)
    assert services.liquidations_advance() == {"failed": 1, "ordered": 1}
    assert "cannot be booked" in caplog.text
    other = Liquidation.objects.exclude(pk=first.pk).get(user__in=(carol, frank))
    assert len(records(other, RecordKind.ORDER)) == 2 and len(records(first, RecordKind.ORDER)) == 1


def test_a_cross_liquidation_waits_for_the_cancels_on_other_symbols(funded, trade, mark, btcusdt, engine, fund_seed,
                                                                     usdt, btc):
    """alice's bid on ETHUSDT holds 95.76 that her cross backing counts (bankruptcy 46,010). Its
    cancel goes to the ETH matcher; a BTC liquidation order filled before it is processed would
    leave her wallet 95.76 short, paid by the fund, and the returning hold would then be hers.
    So the liquidation orders nothing until the other symbols' cancels are done."""
    from apps.contracts.models import ContractStatus, ContractType
    from apps.contracts.services import contract_create, tiers_from_brackets
    from apps.ops.demo import ETH_BRACKETS
    from apps.trading.engine import SymbolEngine

    ethusdt = contract_create(tiers=tiers_from_brackets(ETH_BRACKETS), symbol="ETHUSDT",
                              contract_type=ContractType.PERPETUAL, status=ContractStatus.TRADING, base_asset=btc,
                              quote_asset=usdt, settle_asset=usdt)
    fund_seed("1000")
    alice, bob = funded("alice", "4000"), funded("bob")
    mark("50000")
    mark("2000", ethusdt)
    trade(alice, bob, "BUY", "1", "50000")  # alice the maker: fee 10, wallet 3,990
    eth = SymbolEngine(ethusdt)
    bid = order_place(user=alice, contract=ethusdt, side="BUY", quantity=D("1"), price=D("1900"))
    batch_process(eth)
    assert bid.margin_held == D("95.76")
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=D("1"), price=D("46010"))
    batch_process(engine)
    mark("46100")  # equity 3,990 − 3,900 = 90 < maintenance 184.4
    assert liquidation_sweep()["started"] == 1
    liquidation = Liquidation.objects.get(user=alice)
    assert records(liquidation, RecordKind.ORDER) == []  # the ETH cancel is pending: nothing ordered
    assert liquidation_advance(liquidation=liquidation) == "waiting"
    batch_process(eth)  # the cancel: the hold is back in the wallet
    assert Order.objects.get(pk=bid.pk).status == OrderStatus.CANCELED and wallet_of(alice) == D("3990")
    assert liquidation_advance(liquidation=liquidation) == "ordered"
    assert records(liquidation, RecordKind.ORDER)[0].order.price == D("46010")
    batch_process(engine)  # fills at the bankruptcy price: nothing left, nothing to cover
    [execution] = records(liquidation, RecordKind.EXECUTION)
    assert (execution.fund_cover, execution.bad_debt) == (0, 0)
    assert fund() == D("1000") and wallet_of(alice) == 0
    assert run_all_invariants() == []


def test_a_liquidation_waits_for_other_symbols_cancels_only_so_long(funded, trade, mark, btcusdt, engine, usdt, btc,
                                                                    settings):
    """A matcher that is down must not hold the liquidation up: after
    LIQUIDATION_CANCEL_WAIT_SECONDS it orders although the other symbol's cancel is pending."""
    from datetime import timedelta

    from apps.contracts.models import ContractStatus, ContractType
    from apps.contracts.services import contract_create, tiers_from_brackets
    from apps.ops.demo import ETH_BRACKETS
    from apps.trading.engine import SymbolEngine

    settings.LIQUIDATION_CANCEL_WAIT_SECONDS = 10
    ethusdt = contract_create(tiers=tiers_from_brackets(ETH_BRACKETS), symbol="ETHUSDT",
                              contract_type=ContractType.PERPETUAL, status=ContractStatus.TRADING, base_asset=btc,
                              quote_asset=usdt, settle_asset=usdt)
    alice, bob = funded("alice", "4000"), funded("bob")
    mark("50000")
    mark("2000", ethusdt)
    trade(alice, bob, "BUY", "1", "50000")
    order_place(user=alice, contract=ethusdt, side="BUY", quantity=D("1"), price=D("1900"))
    batch_process(SymbolEngine(ethusdt))
    mark("46100")
    assert liquidation_sweep()["started"] == 1
    liquidation = Liquidation.objects.get(user=alice)
    assert liquidation_advance(liquidation=liquidation) == "waiting"  # the ETH matcher never runs
    Liquidation.objects.filter(pk=liquidation.pk).update(started_at=F("started_at") - timedelta(seconds=11))
    assert liquidation_advance(liquidation=liquidation) == "ordered"
