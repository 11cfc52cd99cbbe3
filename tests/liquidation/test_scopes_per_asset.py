"""A user's cross account is one margin scope per settle asset: a margin call or an active
liquidation of the USDT-settled cross account holds up nothing on the BTC-settled one.

alice has the same cross long on each book, the BTC-settled one scaled by its contract size
(0.00001): long 1 @ 50,000 as the maker (fee 0.02%) against bob, at the default 20×.
  USDT: deposit 3,000, fee 10          -> cross wallet 2,990
  BTC:  deposit 0.03, fee 0.5 × 0.02%  -> cross wallet 0.0299 (notional 1 × 50,000 × 0.00001 = 0.5)
At a mark of 47,200 (tier 1, MMR 0.4%):
  USDT: equity 2,990 − 2,800 = 190,        MM 188.8:    ratio 1.006, DANGER
  BTC:  equity 0.0299 − 0.028 = 0.0019,    MM 0.001888: ratio 1.006, DANGER
At 47,100: USDT equity 90 over MM 188.4, BTC 0.0009 over 0.001884: ratio 0.478, LIQUIDATION.
Either scope's bankruptcy price: 50,000 − 2,990 / 1 = 50,000 − 0.0299 / (1 × 0.00001) = 47,010.
"""
from decimal import Decimal

import pytest

from apps.contracts.models import ContractStatus, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ledger.models import AccountKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create, wallet_deposit
from apps.liquidation.models import Liquidation, LiquidationStatus, MarginCall, MarginLevel, RecordKind, Scope
from apps.liquidation.selectors import margin_status
from apps.liquidation.services import liquidation_sweep, margin_calls_evaluate
from apps.marketdata.services import price_cache_clear
from apps.ops.demo import BTC_BRACKETS
from apps.ops.invariants import run_all_invariants
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.services import order_place

from .helpers import records, wallet_of

D = Decimal


@pytest.fixture
def btcusdb(usdt, btc):
    """A BTC-settled perpetual: margin, PnL and fees in BTC."""
    price_cache_clear(symbols=["BTCUSDB"])
    return contract_create(
        tiers=tiers_from_brackets(BTC_BRACKETS), symbol="BTCUSDB", contract_type=ContractType.PERPETUAL,
        status=ContractStatus.TRADING, base_asset=btc, quote_asset=usdt, settle_asset=btc,
        contract_size=D("0.00001"), min_notional=D("0"),
    )


def btc_wallet_of(user) -> Decimal:
    return balance_amount(account=account_get_or_create(kind=AccountKind.WALLET, user=user), asset_code="BTC")


@pytest.fixture
def long_on_each(funded, trade, mark, btc, btcusdt, btcusdb):
    """alice long 1 @ 50,000 cross on BTCUSDT (USDT) and on BTCUSDB (BTC), bob short on both."""

    def make(*, usdt_long: bool = True):
        alice, bob = funded("alice", "3000"), funded("bob")
        wallet_deposit(user=alice, asset=btc, amount=D("0.03"))
        wallet_deposit(user=bob, asset=btc, amount=D("10"))
        mark("50000")
        mark("50000", btcusdb)
        if usdt_long:
            trade(alice, bob, "BUY", "1", "50000")
            assert wallet_of(alice) == D("2990")
        order_place(user=alice, contract=btcusdb, side="BUY", quantity=D("1"), price=D("50000"))  # the maker
        order_place(user=bob, contract=btcusdb, side="SELL", quantity=D("1"), price=D("50000"))
        batch_process(SymbolEngine(btcusdb))
        assert btc_wallet_of(alice) == D("0.0299")  # 0.03 − 0.5 × 0.02%
        return alice, bob

    return make


def _cross(user, asset_code):
    return margin_status(user=user, asset_code=asset_code)


def test_a_margin_call_on_the_usdt_cross_account_does_not_suppress_one_on_the_btc_cross_account(
        long_on_each, mark, usdt, btc, btcusdb):
    alice, _ = long_on_each()
    mark("47200")  # USDT cross DANGER; BTC cross still at 50,000: NORMAL
    [usdt_call] = margin_calls_evaluate(user=alice)
    assert (usdt_call.scope, usdt_call.asset, usdt_call.contract, usdt_call.level) == \
        (Scope.CROSS, usdt, None, MarginLevel.DANGER)
    assert usdt_call.deposit_required == D("93.20000001")  # 1.5 × 188.8 − 190, plus one unit

    mark("47200", btcusdb)  # now the BTC cross account is DANGER too, within the repeat interval
    status = _cross(alice, "BTC")
    assert (status.equity, status.maintenance, status.level) == (D("0.0019"), D("0.001888"), MarginLevel.DANGER)
    [btc_call] = margin_calls_evaluate(user=alice)  # the USDT account's call is not repeated
    assert (btc_call.scope, btc_call.asset, btc_call.contract, btc_call.level) == \
        (Scope.CROSS, btc, None, MarginLevel.DANGER)
    # 1.5 × 0.001888 − 0.0019 = 0.000932, plus one unit of BTC's precision (8)
    assert btc_call.deposit_required == D("0.00093201")
    assert btc_call.payload["cw"] == "0.0299"
    assert btc_call.payload["p"] == [{"s": "BTCUSDB", "ps": "BOTH", "pa": "1", "mt": "CROSSED", "iw": "0",
                                      "mp": "47200", "up": "-0.028", "mm": "0.001888"}]

    # Each scope still repeats only after the interval, or at a worse level.
    assert margin_calls_evaluate(user=alice) == []
    mark("47100", btcusdb)
    [worse] = margin_calls_evaluate(user=alice)
    assert (worse.asset, worse.level) == (btc, MarginLevel.LIQUIDATION)
    assert sorted(MarginCall.objects.filter(user=alice).values_list("asset__code", "level")) == [
        ("BTC", MarginLevel.DANGER), ("BTC", MarginLevel.LIQUIDATION), ("USDT", MarginLevel.DANGER)]
    assert run_all_invariants() == []


def _assert_started(liquidation, symbol):
    """Started at ratio 0.478 with the whole long (tier 1 has no lower tier) offered at the bankruptcy price."""
    assert (liquidation.status, liquidation.scope, liquidation.contract) == \
        (LiquidationStatus.ACTIVE, Scope.CROSS, None)
    [order] = [r.order for r in records(liquidation, RecordKind.ORDER)]
    assert (order.contract.symbol, order.side, order.quantity, order.price) == (symbol, "SELL", D("1"), D("47010"))


def test_an_active_usdt_cross_liquidation_does_not_stop_the_btc_cross_liquidation(long_on_each, mark, usdt, btc,
                                                                                   btcusdb):
    alice, _ = long_on_each()
    mark("47100")  # USDT cross: 90 / 188.4
    assert _cross(alice, "USDT").equity == D("90") and _cross(alice, "BTC").level == MarginLevel.NORMAL
    assert liquidation_sweep()["started"] == 1
    usdt_liquidation = Liquidation.objects.get(user=alice)
    assert usdt_liquidation.asset == usdt
    _assert_started(usdt_liquidation, "BTCUSDT")  # no matcher runs: it stays ACTIVE, waiting for the book

    mark("47100", btcusdb)  # BTC cross: 0.0009 / 0.001884
    status = _cross(alice, "BTC")
    assert (status.equity, status.maintenance, status.level) == (D("0.0009"), D("0.001884"), MarginLevel.LIQUIDATION)
    assert liquidation_sweep()["started"] == 1
    btc_liquidation = Liquidation.objects.get(user=alice, asset=btc)
    _assert_started(btc_liquidation, "BTCUSDB")
    usdt_liquidation.refresh_from_db()
    assert usdt_liquidation.status == LiquidationStatus.ACTIVE

    # One active liquidation per scope still: nothing is started twice.
    assert liquidation_sweep()["started"] == 0
    assert sorted(Liquidation.objects.filter(user=alice, status=LiquidationStatus.ACTIVE)
                  .values_list("asset__code", flat=True)) == ["BTC", "USDT"]
    assert run_all_invariants() == []


def test_both_cross_accounts_at_or_below_100_percent_start_in_one_sweep(long_on_each, mark, btcusdb):
    alice, _ = long_on_each()
    mark("47100")
    mark("47100", btcusdb)
    assert liquidation_sweep()["started"] == 2
    liquidations = {x.asset.code: x for x in Liquidation.objects.filter(user=alice)}
    _assert_started(liquidations["USDT"], "BTCUSDT")
    _assert_started(liquidations["BTC"], "BTCUSDB")
    assert liquidation_sweep()["started"] == 0
    assert run_all_invariants() == []


def test_control_the_btc_cross_liquidation_alone_starts(long_on_each, mark, btc, btcusdb):
    alice, _ = long_on_each(usdt_long=False)  # USDT deposited, no USDT position
    mark("47100", btcusdb)
    assert liquidation_sweep()["started"] == 1
    liquidation = Liquidation.objects.get(user=alice)
    assert liquidation.asset == btc and liquidation.ratio == (D("0.0009") / D("0.001884")).quantize(D("1e-18"))
    _assert_started(liquidation, "BTCUSDB")
    assert run_all_invariants() == []
