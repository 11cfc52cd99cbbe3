"""Refusals: Binance codes with a {code, msg} body and a 4xx status, never a 500."""
import pytest

pytestmark = pytest.mark.django_db

CASES = [
    # missing mandatory parameter
    ("/fapi/v1/depth", {}, -1102),
    ("/fapi/v1/trades", {}, -1102),
    ("/fapi/v1/historicalTrades", {"symbol": ""}, -1102),
    ("/fapi/v1/aggTrades", {}, -1102),
    ("/fapi/v1/klines", {"interval": "1m"}, -1102),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT"}, -1102),
    ("/fapi/v1/openInterest", {}, -1102),
    # unknown symbol
    ("/fapi/v1/depth", {"symbol": "NOPEUSDT"}, -1121),
    ("/fapi/v1/depth", {"symbol": "btcusdt"}, -1121),
    ("/fapi/v1/trades", {"symbol": "NOPEUSDT"}, -1121),
    ("/fapi/v1/historicalTrades", {"symbol": "NOPEUSDT"}, -1121),
    ("/fapi/v1/aggTrades", {"symbol": "NOPEUSDT"}, -1121),
    ("/fapi/v1/klines", {"symbol": "NOPEUSDT", "interval": "1m"}, -1121),
    ("/fapi/v1/ticker/24hr", {"symbol": "NOPEUSDT"}, -1121),
    ("/fapi/v1/ticker/price", {"symbol": "NOPEUSDT"}, -1121),
    ("/fapi/v2/ticker/price", {"symbol": "NOPEUSDT"}, -1121),
    ("/fapi/v1/ticker/bookTicker", {"symbol": "NOPEUSDT"}, -1121),
    ("/fapi/v1/openInterest", {"symbol": "NOPEUSDT"}, -1121),
    # bad limit: not an allowed value, out of range, or not a number
    ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 7}, -1130),
    ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 0}, -1130),
    ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": "abc"}, -1100),
    ("/fapi/v1/trades", {"symbol": "BTCUSDT", "limit": 1001}, -1130),
    ("/fapi/v1/trades", {"symbol": "BTCUSDT", "limit": 0}, -1130),
    ("/fapi/v1/historicalTrades", {"symbol": "BTCUSDT", "limit": 1001}, -1130),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "limit": 1001}, -1130),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": 1501}, -1130),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": "-5"}, -1100),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": "9" * 30}, -1100),
    # bad interval
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "2m"}, -1120),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1H"}, -1120),
    # malformed numbers and combinations
    ("/fapi/v1/historicalTrades", {"symbol": "BTCUSDT", "fromId": "-1"}, -1100),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "fromId": "1.5"}, -1100),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": "yesterday"}, -1100),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": 2000, "endTime": 1000}, -1128),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "fromId": 2**63}, -1130),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": 253402300800000}, -1130),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "startTime": 2000, "endTime": 1000}, -1128),
]


@pytest.mark.parametrize("path, params, code", CASES)
def test_refusal(client, btcusdt, path, params, code):
    response = client.get(path, params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == code and isinstance(body["msg"], str) and body["msg"]


def test_refused_requests_still_count_their_weight(client, btcusdt):
    response = client.get("/fapi/v1/depth", {"symbol": "NOPEUSDT", "limit": 1000})
    assert response.status_code == 400 and response["X-MBX-USED-WEIGHT-1M"] == "20"
    response = client.get("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 3})  # bad limit: the default weight
    assert response.status_code == 400 and response["X-MBX-USED-WEIGHT-1M"] == "21"


def test_huge_ids_and_times_are_answered_not_crashed(client, btcusdt):
    big = str(10**18)
    for path, params in [
        ("/fapi/v1/historicalTrades", {"symbol": "BTCUSDT", "fromId": big}),
        ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "fromId": big}),
        ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": big}),
        ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "startTime": 0, "endTime": 253402300799000}),
        ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1M", "startTime": 253402300799999}),
        ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1M", "endTime": 253402300799999}),
        ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "endTime": 253402300799999}),
        ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "fromId": 2**63 - 1}),
    ]:
        response = client.get(path, params)
        assert response.status_code in (200, 400), (path, response.content)
        if response.status_code == 200:
            assert response.json() == []
