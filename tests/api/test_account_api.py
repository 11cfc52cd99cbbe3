"""Account, balance, position risk, leverage, margin type, position margin and income over HTTP.

Numbers are worked by hand in the comments.
"""
from decimal import Decimal

from django.utils import timezone

from apps.marketdata.services import price_publish
from apps.ops.invariants import run_all_invariants
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process

from .test_orders_api import ORDER, error

D = Decimal


def set_mark(contract, price):
    price_publish(contract=contract, index_price=D(price), mark_price=D(price), at=timezone.now())


def trade(contract, buyer, seller, qty="0.1", price="50000"):
    seller.call("POST", ORDER, symbol=contract.symbol, side="SELL", type="LIMIT", quantity=qty, price=price)
    buyer.call("POST", ORDER, symbol=contract.symbol, side="BUY", type="LIMIT", quantity=qty, price=price)
    batch_process(SymbolEngine(contract))


def test_cross_account_numbers(api_user, btcusdt):
    _, alice = api_user("alice")
    _, bob = api_user("bob")
    set_mark(btcusdt, "50000")
    trade(btcusdt, alice, bob)  # alice long 0.1 @ 50,000, taker fee 2
    set_mark(btcusdt, "51000")
    account = alice.call("GET", "/fapi/v2/account").json()
    # wallet 99,998; uPnL 0.1 × 1,000 = 100; IM 5,100 / 20 = 255; MM 5,100 × 0.4% = 20.4
    assert account["totalWalletBalance"] == "99998"
    assert account["totalUnrealizedProfit"] == "100"
    assert account["totalMarginBalance"] == "100098"
    assert account["totalPositionInitialMargin"] == "255"
    assert account["totalMaintMargin"] == "20.4"
    assert account["availableBalance"] == "99843"
    assert account["maxWithdrawAmount"] == "99843"
    assert account["assets"][0]["asset"] == "USDT" and account["assets"][0]["updateTime"] > 0
    position = next(p for p in account["positions"] if p["symbol"] == "BTCUSDT")
    assert (position["positionAmt"], position["entryPrice"], position["notional"], position["leverage"]) == (
        "0.1", "50000", "5100", "20")
    assert alice.call("GET", "/fapi/v3/account").json()["totalWalletBalance"] == "99998"

    balance = alice.call("GET", "/fapi/v2/balance").json()
    assert balance[0]["balance"] == "99998" and balance[0]["availableBalance"] == "99843"
    assert balance[0]["crossUnPnl"] == "100"

    risk = alice.call("GET", "/fapi/v2/positionRisk", symbol="BTCUSDT").json()[0]
    assert (risk["markPrice"], risk["unRealizedProfit"], risk["marginType"]) == ("51000", "100", "cross")
    assert risk["liquidationPrice"] == "0"  # a 99,998 wallet behind a 5,100 position cannot be liquidated
    short = bob.call("GET", "/fapi/v3/positionRisk").json()
    assert short[0]["positionAmt"] == "-0.1" and short[0]["notional"] == "-5100"
    assert short[0]["unRealizedProfit"] == "-100"
    assert run_all_invariants() == []


def test_isolated_position_margin_and_liquidation_price(api_user, btcusdt):
    _, carol = api_user("carol")
    _, dave = api_user("dave")
    set_mark(btcusdt, "50000")
    assert carol.call("POST", "/fapi/v1/marginType", symbol="BTCUSDT", marginType="ISOLATED").json()["code"] == 200
    error(carol.call("POST", "/fapi/v1/marginType", symbol="BTCUSDT", marginType="ISOLATED"), 400, -4046)
    error(carol.call("POST", "/fapi/v1/marginType", symbol="BTCUSDT", marginType="SIDEWAYS"), 400, -1130)
    lev = carol.call("POST", "/fapi/v1/leverage", symbol="BTCUSDT", leverage=10).json()
    assert lev == {"leverage": 10, "symbol": "BTCUSDT", "maxNotionalValue": "40000000"}
    error(carol.call("POST", "/fapi/v1/leverage", symbol="BTCUSDT", leverage=126), 400, -4028)
    error(carol.call("POST", "/fapi/v1/leverage", symbol="BTCUSDT", leverage=0), 400, -4028)
    error(carol.call("POST", "/fapi/v1/leverage", symbol="BTCUSDT"), 400, -1102)

    carol.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.1", price="40000")
    error(carol.call("POST", "/fapi/v1/marginType", symbol="BTCUSDT", marginType="CROSSED"), 400, -4047)
    carol.call("DELETE", "/fapi/v1/allOpenOrders", symbol="BTCUSDT")
    batch_process(SymbolEngine(btcusdt))

    trade(btcusdt, carol, dave)  # carol long 0.1 @ 50,000 isolated 10x: 500 moves to isolated margin
    error(carol.call("POST", "/fapi/v1/marginType", symbol="BTCUSDT", marginType="CROSSED"), 400, -4048)
    risk = carol.call("GET", "/fapi/v2/positionRisk", symbol="BTCUSDT").json()[0]
    assert (risk["marginType"], risk["isolatedWallet"], risk["isolatedMargin"]) == ("isolated", "500", "500")
    # LP = (0.1 × 50,000 − 500 − 0) / (0.1 × (1 − 0.004)) = 4,500 / 0.0996
    assert D(risk["liquidationPrice"]).quantize(D("0.0001")) == D("45180.7229")

    added = carol.call("POST", "/fapi/v1/positionMargin", symbol="BTCUSDT", amount="100", type=1).json()
    assert added["code"] == 200 and added["amount"] == 100.0 and added["type"] == 1
    set_mark(btcusdt, "51000")
    # removable = isolated 600 + uPnL 100 − IM 5,100 / 10 = 190
    error(carol.call("POST", "/fapi/v1/positionMargin", symbol="BTCUSDT", amount="190.01", type=2), 400, -4051)
    assert carol.call("POST", "/fapi/v1/positionMargin", symbol="BTCUSDT", amount="190", type=2).json()["code"] == 200
    error(carol.call("POST", "/fapi/v1/positionMargin", symbol="BTCUSDT", amount="1", type=3), 400, -1130)
    error(carol.call("POST", "/fapi/v1/positionMargin", symbol="BTCUSDT", amount="-1", type=1), 400, -4004)
    error(dave.call("POST", "/fapi/v1/positionMargin", symbol="BTCUSDT", amount="1", type=1), 400, -1130)  # cross
    # 5x would need 5,100 / 5 = 1,020 of isolated margin; it holds 410 + 100 uPnL
    error(carol.call("POST", "/fapi/v1/leverage", symbol="BTCUSDT", leverage=5), 400, -2028)
    assert carol.call("POST", "/fapi/v1/leverage", symbol="BTCUSDT", leverage=20).json()["leverage"] == 20
    assert run_all_invariants() == []


def test_leverage_brackets(api_user, btcusdt):
    _, alice = api_user("alice")
    one = alice.call("GET", "/fapi/v1/leverageBracket", symbol="BTCUSDT").json()
    assert one["symbol"] == "BTCUSDT"
    first, second = one["brackets"][:2]
    assert first == {"bracket": 1, "initialLeverage": 125, "notionalCap": 50000.0, "notionalFloor": 0.0,
                     "maintMarginRatio": 0.004, "cum": 0.0}
    assert second["cum"] == 50.0 and second["initialLeverage"] == 100
    every = alice.call("GET", "/fapi/v1/leverageBracket").json()
    assert [b["symbol"] for b in every] == ["BTCUSDT"]


def test_income_history(api_user, btcusdt):
    _, alice = api_user("alice")
    _, bob = api_user("bob")
    trade(btcusdt, alice, bob)
    trade(btcusdt, bob, alice, price="51000")  # alice closes: +100 realized, maker fee 1.02
    lines = alice.call("GET", "/fapi/v1/income").json()
    assert [(x["incomeType"], x["income"]) for x in lines] == [
        ("TRANSFER", "100000"), ("COMMISSION", "-2"), ("COMMISSION", "-1.02"), ("REALIZED_PNL", "100")]
    assert all(isinstance(x["time"], int) and isinstance(x["tranId"], int) for x in lines)
    only_pnl = alice.call("GET", "/fapi/v1/income", incomeType="REALIZED_PNL", symbol="BTCUSDT").json()
    assert len(only_pnl) == 1 and only_pnl[0]["tradeId"] != ""
    assert len(alice.call("GET", "/fapi/v1/income", limit=2).json()) == 2
    error(alice.call("GET", "/fapi/v1/income", incomeType="BONUS"), 400, -1130)
    error(alice.call("GET", "/fapi/v1/income", startTime=2, endTime=1), 400, -1130)
    assert bob.call("GET", "/fapi/v1/income", incomeType="TRANSFER").json()[0]["income"] == "100000"
