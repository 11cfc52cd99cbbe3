"""Every response parses with the field types Binance client libraries expect,
the OpenAPI schema documents every endpoint, and each answer costs a few SQL queries."""
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db

DEC, INT, BOOL, STR = "decimal-string", int, bool, str


def check(value, kind, where):
    if kind == DEC:
        assert isinstance(value, str) and "e" not in value.lower(), where
        Decimal(value)  # parses
        float(value)  # and so does what python-binance does with it
    elif kind is INT:
        assert isinstance(value, int) and not isinstance(value, bool), where
    else:
        assert isinstance(value, kind), where


def check_object(obj, spec, where):
    assert set(obj) == set(spec), (where, set(obj) ^ set(spec))
    for key, kind in spec.items():
        check(obj[key], kind, f"{where}.{key}")


TRADE = {"id": INT, "price": DEC, "qty": DEC, "quoteQty": DEC, "time": INT, "isBuyerMaker": BOOL}
AGG = {"a": INT, "p": DEC, "q": DEC, "f": INT, "l": INT, "T": INT, "m": BOOL}
TICKER = {"symbol": STR, "priceChange": DEC, "priceChangePercent": DEC, "weightedAvgPrice": DEC, "lastPrice": DEC,
          "lastQty": DEC, "openPrice": DEC, "highPrice": DEC, "lowPrice": DEC, "volume": DEC, "quoteVolume": DEC,
          "openTime": INT, "closeTime": INT, "firstId": INT, "lastId": INT, "count": INT}
PRICE = {"symbol": STR, "price": DEC, "time": INT}
BOOK = {"symbol": STR, "bidPrice": DEC, "bidQty": DEC, "askPrice": DEC, "askQty": DEC, "time": INT,
        "lastUpdateId": INT}
KLINE = [INT, DEC, DEC, DEC, DEC, DEC, INT, DEC, INT, DEC, DEC, DEC]
SYMBOL = {"symbol": STR, "pair": STR, "contractType": STR, "deliveryDate": INT, "onboardDate": INT, "status": STR,
          "maintMarginPercent": DEC, "requiredMarginPercent": DEC, "baseAsset": STR, "quoteAsset": STR,
          "marginAsset": STR, "pricePrecision": INT, "quantityPrecision": INT, "baseAssetPrecision": INT,
          "quotePrecision": INT, "liquidationFee": DEC, "marketTakeBound": DEC, "filters": list, "orderTypes": list,
          "timeInForce": list}
FILTERS = {
    "PRICE_FILTER": {"filterType": STR, "minPrice": DEC, "maxPrice": DEC, "tickSize": DEC},
    "LOT_SIZE": {"filterType": STR, "minQty": DEC, "maxQty": DEC, "stepSize": DEC},
    "MARKET_LOT_SIZE": {"filterType": STR, "minQty": DEC, "maxQty": DEC, "stepSize": DEC},
    "MAX_NUM_ORDERS": {"filterType": STR, "limit": INT},
    "MIN_NOTIONAL": {"filterType": STR, "notional": DEC},
    "PERCENT_PRICE": {"filterType": STR, "multiplierUp": DEC, "multiplierDown": DEC, "multiplierDecimal": DEC},
}


def test_every_response_has_binance_field_types(client, market):
    def get(path, **params):
        response = client.get(path, params)
        assert response.status_code == 200 and response["Content-Type"] == "application/json"
        return response.json()

    info = get("/fapi/v1/exchangeInfo")
    check(info["serverTime"], INT, "serverTime")
    for symbol in info["symbols"]:
        check_object(symbol, SYMBOL, symbol["symbol"])
        for f in symbol["filters"]:
            check_object(f, FILTERS[f["filterType"]], f["filterType"])

    depth = get("/fapi/v1/depth", symbol="BTCUSDT")
    check_object(depth, {"lastUpdateId": INT, "E": INT, "T": INT, "bids": list, "asks": list}, "depth")
    for level in depth["bids"] + depth["asks"]:
        assert len(level) == 2 and all(check(x, DEC, "level") is None for x in level)

    for path in ("/fapi/v1/trades", "/fapi/v1/historicalTrades"):
        rows = get(path, symbol="BTCUSDT")
        assert rows and all(check_object(r, TRADE, path) is None for r in rows)
    rows = get("/fapi/v1/aggTrades", symbol="BTCUSDT")
    assert rows and all(check_object(r, AGG, "aggTrades") is None for r in rows)
    for interval in ("1m", "1h", "1M"):
        for kline in get("/fapi/v1/klines", symbol="BTCUSDT", interval=interval):
            assert len(kline) == 12
            for i, (value, kind) in enumerate(zip(kline, KLINE)):
                check(value, kind, f"kline[{i}]")
    check_object(get("/fapi/v1/ticker/24hr", symbol="BTCUSDT"), TICKER, "24hr")
    for path in ("/fapi/v1/ticker/price", "/fapi/v2/ticker/price"):
        check_object(get(path, symbol="BTCUSDT"), PRICE, path)
        assert all(check_object(p, PRICE, path) is None for p in get(path))
    check_object(get("/fapi/v1/ticker/bookTicker", symbol="BTCUSDT"), BOOK, "bookTicker")
    check_object(get("/fapi/v1/openInterest", symbol="BTCUSDT"), {"symbol": STR, "openInterest": DEC, "time": INT},
                 "openInterest")


@pytest.mark.parametrize("path, params, at_most", [
    ("/fapi/v1/exchangeInfo", {}, 1),
    ("/fapi/v1/depth", {"symbol": "BTCUSDT"}, 2),
    ("/fapi/v1/trades", {"symbol": "BTCUSDT"}, 2),
    ("/fapi/v1/historicalTrades", {"symbol": "BTCUSDT", "fromId": 1}, 2),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT"}, 2),
    ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": 0, "endTime": 2**40}, 2),
    ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m"}, 2),
    ("/fapi/v1/ticker/24hr", {}, 2),
    ("/fapi/v1/ticker/24hr", {"symbol": "BTCUSDT"}, 2),
    ("/fapi/v1/ticker/price", {}, 2),
    ("/fapi/v1/ticker/bookTicker", {}, 2),
    ("/fapi/v1/openInterest", {"symbol": "BTCUSDT"}, 2),
])
def test_constant_number_of_queries(client, market, path, params, at_most):
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path, params).status_code == 200
    assert len(queries) <= at_most, [q["sql"][:120] for q in queries]


def test_openapi_schema_documents_the_endpoints(client):
    response = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    import json

    import yaml

    schema = json.loads(response.content) if response.content.lstrip().startswith(b"{") else yaml.safe_load(
        response.content)
    paths = schema["paths"]
    for path in ("/fapi/v1/exchangeInfo", "/fapi/v1/depth", "/fapi/v1/trades", "/fapi/v1/historicalTrades",
                 "/fapi/v1/aggTrades", "/fapi/v1/klines", "/fapi/v1/ticker/24hr", "/fapi/v1/ticker/price",
                 "/fapi/v2/ticker/price", "/fapi/v1/ticker/bookTicker", "/fapi/v1/openInterest"):
        operation = paths[path]["get"]
        assert "200" in operation["responses"], path
    components = schema["components"]["schemas"]
    assert {"Depth", "Trade", "AggTrade", "Ticker24hr", "BookTicker", "ExchangeInfo"} <= set(components)
    assert set(components["Depth"]["properties"]) == {"lastUpdateId", "E", "T", "bids", "asks"}
