"""Margin status, levels, deposits, liquidation and bankruptcy prices against hand-computed numbers."""
from decimal import Decimal


from apps.liquidation.models import MarginCall, MarginLevel, Scope
from apps.liquidation.selectors import adl_quantiles, margin_status, margin_statuses
from apps.liquidation.services import margin_calls_evaluate
from apps.liquidation.status import bankruptcy_price, deposit_to_clear, level_of

D = Decimal


def test_level_boundaries_are_inclusive():
    assert level_of(None) == MarginLevel.NORMAL
    assert level_of(D("1.5000001")) == MarginLevel.NORMAL
    assert level_of(D("1.5")) == MarginLevel.WARNING
    assert level_of(D("1.2")) == MarginLevel.DANGER
    assert level_of(D("1.0")) == MarginLevel.LIQUIDATION
    assert level_of(D("-3")) == MarginLevel.LIQUIDATION
    # deposit d with (190 + d) / 188.8 > 1.5: 1.5 × 188.8 − 190 = 93.2, plus one unit
    assert deposit_to_clear(equity=D("190"), maintenance=D("188.8"), threshold=D("1.5"), precision=8) == \
        D("93.20000001")
    assert deposit_to_clear(equity=D("300"), maintenance=D("188.8"), threshold=D("1.5"), precision=8) == 0


def test_cross_long_status_levels_and_prices(funded, trade, mark, btcusdt):
    alice, bob = funded("alice", "3000"), funded("bob")
    mark("50000")
    trade(alice, bob, "BUY", "1", "50000")  # alice the maker: fee 50,000 × 0.02% = 10
    mark("48000")
    status = margin_status(user=alice)
    # cross wallet 2,990; uPnL (48,000 − 50,000) × 1 = −2,000; MM 48,000 × 0.4% = 192
    assert (status.scope, status.backing, status.unrealized, status.maintenance) == \
        (Scope.CROSS, D("2990"), D("-2000"), D("192"))
    assert status.equity == D("990") and status.level == MarginLevel.NORMAL

    mark("47200")
    status = margin_status(user=alice)
    # equity 2,990 − 2,800 = 190; MM 188.8; ratio 1.00635...: DANGER
    assert status.equity == D("190") and status.maintenance == D("188.8")
    assert status.ratio == D("190") / D("188.8") and status.level == MarginLevel.DANGER
    assert status.deposits == {MarginLevel.WARNING: D("93.20000001"), MarginLevel.DANGER: D("36.56000001"),
                               MarginLevel.LIQUIDATION: D("0")}
    view = status.positions[0]
    # LP = (2,990 − 50,000) / (0.004 − 1) = 47,198.795...; bankruptcy = 50,000 − 2,990 / 1 = 47,010
    assert view.liquidation_price == (D("2990") - D("50000")) / (D("0.004") - 1)
    assert bankruptcy_price(view, status) == D("47010")
    bob_status = margin_status(user=bob)
    # bob: short 1 @ 50,000, taker fee 20: wallet 99,980, uPnL +2,800
    assert bob_status.equity == D("99980") + D("2800")

    mark("47100")
    status = margin_status(user=alice)
    assert status.equity == D("90") and status.level == MarginLevel.LIQUIDATION  # 90 / 188.4
    assert status.deposits[MarginLevel.LIQUIDATION] == D("98.40000001")


def test_isolated_short_status_and_prices(funded, trade, mark, btcusdt):
    carol = funded("carol", "10000", leverage=10, isolated=True)
    dave = funded("dave")
    mark("50000")
    trade(dave, carol, "BUY", "1", "50000")  # carol the taker: fee 20; isolated margin 50,000 / 10 = 5,000
    mark("54000")
    [status] = [s for s in margin_statuses(user=carol)]
    assert (status.scope, status.symbol, status.backing) == (Scope.ISOLATED, "BTCUSDT", D("5000"))
    # uPnL −4,000, equity 1,000; notional 54,000 is in tier 2: MM 54,000 × 0.5% − 50 = 220; ratio 4.5
    assert status.equity == D("1000") and status.maintenance == D("220") and status.level == MarginLevel.NORMAL
    view = status.positions[0]
    # LP short = (5,000 + cum 50 + 50,000) / (0.005 + 1) = 54,776.12...; bankruptcy 50,000 + 5,000 = 55,000
    assert view.liquidation_price == D("55050") / D("1.005")
    assert bankruptcy_price(view, status) == D("55000")
    mark("54700")
    status = margin_statuses(user=carol)[0]
    assert status.equity == D("300") and status.maintenance == D("223.5")
    assert status.level == MarginLevel.WARNING  # 1.342


def test_margin_call_recorded_with_binance_shape_and_not_repeated(funded, trade, mark, btcusdt):
    alice, bob = funded("alice", "3000"), funded("bob")
    mark("50000")
    trade(alice, bob, "BUY", "1", "50000")
    mark("47200")
    [call] = margin_calls_evaluate(user=alice)
    assert call.level == MarginLevel.DANGER and call.deposit_required == D("93.20000001")
    payload = call.payload
    assert payload["e"] == "MARGIN_CALL" and payload["cw"] == "2990"
    assert payload["p"] == [{"s": "BTCUSDT", "ps": "BOTH", "pa": "1", "mt": "CROSSED", "iw": "0", "mp": "47200",
                             "up": "-2800", "mm": "188.8"}]
    assert margin_calls_evaluate(user=alice) == []  # same level inside the repeat interval
    mark("47100")
    [worse] = margin_calls_evaluate(user=alice)
    assert worse.level == MarginLevel.LIQUIDATION and MarginCall.objects.count() == 2
    assert margin_calls_evaluate(user=bob) == []


def test_adl_quantiles_rank_profit_and_leverage(funded, trade, mark, btcusdt):
    shorts = [funded(f"s{i}", amount) for i, amount in enumerate(["100000", "20000", "5000"])]
    longs = [funded(f"l{i}") for i in range(3)]
    mark("50000")
    for short, long in zip(shorts, longs):
        trade(long, short, "BUY", "0.5", "50000")
    mark("45000")  # the shorts profit; the less wallet behind the profit, the higher the score
    lights = [adl_quantiles(user=s)["BTCUSDT"] for s in shorts]
    assert lights == [2, 3, 4]
    assert all(adl_quantiles(user=long)["BTCUSDT"] == 0 for long in longs)  # no profit
