"""Every public market-data endpoint through the HTTP stack, against hand-computed values."""
from datetime import timedelta

import pytest

from .conftest import T0, ms

pytestmark = pytest.mark.django_db


def get(client, path, **params):
    response = client.get(path, params)
    assert response.status_code == 200, response.content
    return response.json()


# --- depth and book ticker --------------------------------------------------------------

def test_depth_aggregates_resting_orders_by_price(client, market):
    body = get(client, "/fapi/v1/depth", symbol="BTCUSDT")
    # 49900: bob's 0.4 filled, his 0.2 filled 0.1 -> 0.1 left; 49800: 0.6 untouched.
    assert body["bids"] == [["49900.0", "0.100"], ["49800.0", "0.600"]]
    # 50100 fully taken; 50200: 1.0 - 0.2 (carol) - 0.1 (dave). erin's 50300 is not matched yet,
    # bob's cancelled 49700 never rested.
    assert body["asks"] == [["50200.0", "0.700"]]
    assert body["lastUpdateId"] == market.last_done_seq
    assert isinstance(body["E"], int) and isinstance(body["T"], int)


def test_depth_limit_five_of_many_levels(client, funded, btcusdt):
    from apps.trading.engine import SymbolEngine
    from apps.trading.matching import batch_process
    from apps.trading.services import order_place

    maker = funded("maker")
    for i in range(8):
        order_place(user=maker, contract=btcusdt, side="BUY", quantity="0.01", price=str(40000 + i * 10))
        order_place(user=maker, contract=btcusdt, side="BUY", quantity="0.02", price=str(40000 + i * 10))
    batch_process(SymbolEngine(btcusdt))
    body = get(client, "/fapi/v1/depth", symbol="BTCUSDT", limit=5)
    assert body["bids"] == [[f"{40070 - i * 10}.0", "0.030"] for i in range(5)]
    assert body["asks"] == []


def test_book_ticker_is_the_best_level(client, market):
    body = get(client, "/fapi/v1/ticker/bookTicker", symbol="BTCUSDT")
    assert body == {"symbol": "BTCUSDT", "bidPrice": "49900.0", "bidQty": "0.100", "askPrice": "50200.0",
                    "askQty": "0.700", "time": body["time"], "lastUpdateId": market.last_done_seq}
    listed = get(client, "/fapi/v1/ticker/bookTicker")
    assert listed == [body]


# --- trades ------------------------------------------------------------------------------

def test_recent_trades_oldest_first(client, market):
    t = market.trade_ids
    body = get(client, "/fapi/v1/trades", symbol="BTCUSDT", limit=2)
    assert body == [
        {"id": t[4], "price": "49900.0", "qty": "0.100", "quoteQty": "4990.00000000",
         "time": ms(T0 + timedelta(seconds=90)), "isBuyerMaker": True},
        {"id": t[5], "price": "50200.0", "qty": "0.100", "quoteQty": "5020.00000000",
         "time": ms(T0 + timedelta(minutes=65)), "isBuyerMaker": False},
    ]
    assert [row["id"] for row in get(client, "/fapi/v1/trades", symbol="BTCUSDT")] == t


def test_historical_trades_from_id(client, market):
    t = market.trade_ids
    body = get(client, "/fapi/v1/historicalTrades", symbol="BTCUSDT", fromId=t[1], limit=2)
    assert body == [
        {"id": t[1], "price": "50100.0", "qty": "0.300", "quoteQty": "15030.00000000",
         "time": ms(T0 + timedelta(seconds=30)), "isBuyerMaker": False},
        {"id": t[2], "price": "50200.0", "qty": "0.200", "quoteQty": "10040.00000000",
         "time": ms(T0 + timedelta(seconds=30)), "isBuyerMaker": False},
    ]
    assert [row["id"] for row in get(client, "/fapi/v1/historicalTrades", symbol="BTCUSDT")] == t
    assert get(client, "/fapi/v1/historicalTrades", symbol="BTCUSDT", fromId=t[5] + 1) == []


# --- aggregate trades ----------------------------------------------------------------------

def _aggs(market):
    t = market.trade_ids
    a1 = {"a": t[0], "p": "50100.0", "q": "0.800", "f": t[0], "l": t[1], "T": ms(T0 + timedelta(seconds=30)),
          "m": False}
    a2 = {"a": t[2], "p": "50200.0", "q": "0.200", "f": t[2], "l": t[2], "T": ms(T0 + timedelta(seconds=30)),
          "m": False}
    a3 = {"a": t[3], "p": "49900.0", "q": "0.500", "f": t[3], "l": t[4], "T": ms(T0 + timedelta(seconds=90)),
          "m": True}
    a4 = {"a": t[5], "p": "50200.0", "q": "0.100", "f": t[5], "l": t[5], "T": ms(T0 + timedelta(minutes=65)),
          "m": False}
    return a1, a2, a3, a4


def test_agg_trades_merge_one_takers_fills_at_one_price(client, market):
    a1, a2, a3, a4 = _aggs(market)
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT") == [a1, a2, a3, a4]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=2) == [a3, a4]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1) == [a4]


def test_agg_trades_from_id(client, market):
    a1, a2, a3, a4 = _aggs(market)
    t = market.trade_ids
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=t[0], limit=1) == [a1]
    # t2 is inside a1 (which starts at t1): aggregates from id t2 on begin with a2.
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=t[1]) == [a2, a3, a4]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=t[2], limit=2) == [a2, a3]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=t[5] + 1) == []


def test_agg_trades_time_window(client, market):
    a1, a2, a3, a4 = _aggs(market)
    start, hour = ms(T0 + timedelta(seconds=60)), ms(T0 + timedelta(hours=1))
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=start) == [a3, a4]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=start, endTime=hour) == [a3]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", endTime=start) == [a1, a2]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", endTime=start, limit=1) == [a2]
    # endTime is inclusive, to the millisecond
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", endTime=a3["T"]) == [a1, a2, a3]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", endTime=a3["T"] - 1) == [a1, a2]
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=a4["T"] + 1) == []
    assert get(client, "/fapi/v1/aggTrades", symbol="BTCUSDT", endTime=ms(T0)) == []


# --- klines --------------------------------------------------------------------------------

M = 60_000
K_1000 = [ms(T0), "50100.0", "50200.0", "50100.0", "50200.0", "1.000", ms(T0) + M - 1,
          # 0.8 x 50100 + 0.2 x 50200
          "50120.00000000", 3, "1.000", "50120.00000000", "0"]
K_1001 = [ms(T0) + M, "49900.0", "49900.0", "49900.0", "49900.0", "0.500", ms(T0) + 2 * M - 1,
          "24950.00000000", 2, "0.000", "0.00000000", "0"]
K_1105 = [ms(T0) + 65 * M, "50200.0", "50200.0", "50200.0", "50200.0", "0.100", ms(T0) + 66 * M - 1,
          "5020.00000000", 1, "0.100", "5020.00000000", "0"]


def test_one_minute_klines_omit_empty_minutes(client, market):
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m") == [K_1000, K_1001, K_1105]
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit=2) == [K_1001, K_1105]


def test_klines_are_selected_by_open_time(client, market):
    # startTime inside the 10:00 minute: the first kline opens at 10:01 (as Binance)
    mid = ms(T0 + timedelta(seconds=30))
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=mid) == [K_1001, K_1105]
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=ms(T0), limit=1) == [K_1000]
    # endTime inside 10:01: that kline opened before it, so it is included (whole)
    end = ms(T0 + timedelta(seconds=61))
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", endTime=end) == [K_1000, K_1001]
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=mid, endTime=end) == [K_1001]
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", endTime=ms(T0) - 1) == []


def test_hourly_daily_weekly_monthly_klines(client, market):
    hour = [ms(T0), "50100.0", "50200.0", "49900.0", "49900.0", "1.500", ms(T0) + 60 * M - 1,
            "75070.00000000", 5, "1.000", "50120.00000000", "0"]
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1h") == [
        hour, [ms(T0) + 60 * M] + K_1105[1:6] + [ms(T0) + 120 * M - 1] + K_1105[7:]]
    whole = ["50100.0", "50200.0", "49900.0", "50200.0", "1.600", "80090.00000000", 6, "1.100",
             "55140.00000000", "0"]
    day = ms(T0.replace(hour=0))  # Monday 2026-01-05 00:00
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1d") == [
        [day] + whole[:5] + [day + 24 * 60 * M - 1] + whole[5:]]
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1w") == [
        [day] + whole[:5] + [day + 7 * 24 * 60 * M - 1] + whole[5:]]
    month, next_month = ms(T0.replace(day=1, hour=0)), ms(T0.replace(month=2, day=1, hour=0))
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="1M") == [
        [month] + whole[:5] + [next_month - 1] + whole[5:]]
    # 3d buckets count from the epoch: 2026-01-05 is day 20458 = 3 x 6819 + 1, so the bucket opens on the 4th
    three = ms(T0.replace(day=4, hour=0))
    assert get(client, "/fapi/v1/klines", symbol="BTCUSDT", interval="3d") == [
        [three] + whole[:5] + [three + 3 * 24 * 60 * M - 1] + whole[5:]]


# --- tickers -------------------------------------------------------------------------------

def test_24hr_ticker(client, market, at):
    t = market.trade_ids
    now = T0 + timedelta(hours=2)
    with at(now):
        body = get(client, "/fapi/v1/ticker/24hr", symbol="BTCUSDT")
    assert body == {
        "symbol": "BTCUSDT",
        "priceChange": "100.0",  # 50200 - 50100
        "priceChangePercent": "0.200",  # 100 / 50100 = 0.1996 %
        "weightedAvgPrice": "50056.2",  # 80090 / 1.6 = 50056.25, half to even
        "lastPrice": "50200.0",
        "lastQty": "0.100",
        "openPrice": "50100.0",
        "highPrice": "50200.0",
        "lowPrice": "49900.0",
        "volume": "1.600",
        "quoteVolume": "80090.00000000",
        "openTime": ms(now - timedelta(hours=24)),
        "closeTime": ms(now),
        "firstId": t[0],
        "lastId": t[5],
        "count": 6,
    }
    with at(now):
        assert get(client, "/fapi/v1/ticker/24hr") == [body]


def test_24hr_ticker_rolls_the_window(client, market, at):
    t = market.trade_ids
    with at(T0 + timedelta(hours=25)):  # only dave's 11:05 trade is inside
        body = get(client, "/fapi/v1/ticker/24hr", symbol="BTCUSDT")
    assert (body["openPrice"], body["highPrice"], body["lowPrice"], body["lastPrice"]) == ("50200.0",) * 4
    assert (body["priceChange"], body["priceChangePercent"], body["volume"], body["count"]) == ("0.0", "0.000",
                                                                                                 "0.100", 1)
    assert (body["firstId"], body["lastId"], body["weightedAvgPrice"]) == (t[5], t[5], "50200.0")
    with at(T0 + timedelta(days=3)):  # nothing traded in the window: the last price stands
        body = get(client, "/fapi/v1/ticker/24hr", symbol="BTCUSDT")
    assert (body["lastPrice"], body["openPrice"], body["volume"], body["count"]) == ("50200.0", "50200.0",
                                                                                     "0.000", 0)
    assert (body["firstId"], body["lastId"], body["weightedAvgPrice"]) == (-1, -1, "0.0")


def test_ticker_price_v1_and_v2(client, market):
    expected = {"symbol": "BTCUSDT", "price": "50200.0", "time": ms(T0 + timedelta(minutes=65))}
    assert get(client, "/fapi/v1/ticker/price", symbol="BTCUSDT") == expected
    assert get(client, "/fapi/v2/ticker/price", symbol="BTCUSDT") == expected
    assert get(client, "/fapi/v2/ticker/price") == [expected]


def test_open_interest_is_the_long_side(client, market):
    # longs: carol 1.0 - 0.5, bob 0.4 + 0.1, dave 0.1; alice is short 1.1
    body = get(client, "/fapi/v1/openInterest", symbol="BTCUSDT")
    assert (body["symbol"], body["openInterest"]) == ("BTCUSDT", "1.100")
    assert isinstance(body["time"], int)


def test_lists_cover_every_contract(client, market, usdt, btc):
    from apps.contracts.models import ContractStatus, ContractType
    from apps.contracts.services import contract_create, tiers_from_brackets
    from apps.ops.demo import BTC_BRACKETS

    contract_create(tiers=tiers_from_brackets(BTC_BRACKETS), symbol="BTCUSDC", contract_type=ContractType.PERPETUAL,
                    status=ContractStatus.PENDING, base_asset=btc, quote_asset=usdt, settle_asset=usdt)
    prices = get(client, "/fapi/v1/ticker/price")
    assert [p["symbol"] for p in prices] == ["BTCUSDC", "BTCUSDT"]
    assert prices[0] == {"symbol": "BTCUSDC", "price": "0.0", "time": 0}  # never traded
    books = get(client, "/fapi/v1/ticker/bookTicker")
    assert books[0]["bidPrice"] == "0.0" and books[0]["askQty"] == "0.000" and books[0]["lastUpdateId"] == 0
    tickers = get(client, "/fapi/v1/ticker/24hr")
    assert [t["symbol"] for t in tickers] == ["BTCUSDC", "BTCUSDT"] and tickers[0]["count"] == 0


# --- weights -------------------------------------------------------------------------------

@pytest.mark.parametrize("path, params, weight", [
    ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 5}, 2),
    ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 50}, 2),
    ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 100}, 5),
    ("/fapi/v1/depth", {"symbol": "BTCUSDT"}, 10),
    ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 1000}, 20),
    ("/fapi/v1/trades", {"symbol": "BTCUSDT"}, 5),
    ("/fapi/v1/historicalTrades", {"symbol": "BTCUSDT"}, 20),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT"}, 20),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 99}, 1),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 100}, 2),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m"}, 5),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 1000}, 5),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 1500}, 10),
    ("/fapi/v1/ticker/24hr", {"symbol": "BTCUSDT"}, 1),
    ("/fapi/v1/ticker/24hr", {}, 40),
    ("/fapi/v1/ticker/price", {"symbol": "BTCUSDT"}, 1),
    ("/fapi/v1/ticker/price", {}, 2),
    ("/fapi/v2/ticker/price", {}, 2),
    ("/fapi/v1/ticker/bookTicker", {"symbol": "BTCUSDT"}, 2),
    ("/fapi/v1/ticker/bookTicker", {}, 5),
    ("/fapi/v1/openInterest", {"symbol": "BTCUSDT"}, 1),
    ("/fapi/v1/exchangeInfo", {}, 1),
])
def test_request_weight_as_binance(client, btcusdt, path, params, weight):
    response = client.get(path, params)
    assert response.status_code == 200
    assert response["X-MBX-USED-WEIGHT-1M"] == str(weight)
