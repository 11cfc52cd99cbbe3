"""exchangeInfo: every number from the contract row; Binance statuses and quarter names."""
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from apps.contracts.models import Contract, ContractStatus, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ops.demo import BTC_BRACKETS

pytestmark = pytest.mark.django_db
D = Decimal


def ms(moment):
    return int(moment.timestamp()) * 1000


def _quarterly(symbol, when, status, btc, usdt):
    return contract_create(tiers=tiers_from_brackets(BTC_BRACKETS), symbol=symbol,
                           contract_type=ContractType.DELIVERY, status=status, base_asset=btc, quote_asset=usdt,
                           settle_asset=usdt, delivery_time=when)


def test_symbol_fields_come_from_the_contract(client, btcusdt):
    Contract.objects.filter(pk=btcusdt.pk).update(
        tick_size=D("0.5"), min_price=D("1"), max_price=D("2000000"), lot_size=D("0.002"), min_qty=D("0.004"),
        max_qty=D("500"), market_max_qty=D("60"), min_notional=D("10"), max_open_orders=150,
        percent_price_up=D("0.05"), percent_price_down=D("0.125"), market_max_deviation=D("0.25"),
        liquidation_fee_rate=D("0.015"), max_leverage=100,
        onboard_time=datetime(2025, 3, 1, 8, tzinfo=timezone.utc),
    )
    body = client.get("/fapi/v1/exchangeInfo").json()
    assert body["timezone"] == "UTC" and isinstance(body["serverTime"], int)
    assert body["rateLimits"] == [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
    ]
    assert body["exchangeFilters"] == []
    assert body["assets"] == [{"asset": "USDT", "marginAvailable": True}]
    [symbol] = body["symbols"]
    assert symbol == {
        "symbol": "BTCUSDT",
        "pair": "BTCUSDT",
        "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000,
        "onboardDate": ms(datetime(2025, 3, 1, 8, tzinfo=timezone.utc)),
        "status": "TRADING",
        "maintMarginPercent": "0.4000",  # first bracket: 0.40 %
        "requiredMarginPercent": "1.0000",  # 100 / 100x
        "baseAsset": "BTC",
        "quoteAsset": "USDT",
        "marginAsset": "USDT",
        "pricePrecision": 1,
        "quantityPrecision": 3,
        "baseAssetPrecision": 8,
        "quotePrecision": 8,
        "liquidationFee": "0.015",
        "marketTakeBound": "0.25",
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "1", "maxPrice": "2000000", "tickSize": "0.5"},
            {"filterType": "LOT_SIZE", "minQty": "0.004", "maxQty": "500", "stepSize": "0.002"},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.004", "maxQty": "60", "stepSize": "0.002"},
            {"filterType": "MAX_NUM_ORDERS", "limit": 150},
            {"filterType": "MIN_NOTIONAL", "notional": "10"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.8750",
             "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                       "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
    }


def test_default_percent_price_is_binance_1_15_and_0_85(client, btcusdt):
    [symbol] = client.get("/fapi/v1/exchangeInfo").json()["symbols"]
    percent = symbol["filters"][-1]
    assert (percent["multiplierUp"], percent["multiplierDown"], percent["multiplierDecimal"]) == ("1.1500",
                                                                                                  "0.8500", "4")
    assert symbol["liquidationFee"] == "0.0125" and symbol["marketTakeBound"] == "0.3"


def test_quarterlies_are_ranked_by_delivery_within_their_pair(client, btcusdt, btc, usdt):
    _quarterly("BTCUSDT_260626", datetime(2026, 6, 26, 8, tzinfo=timezone.utc), ContractStatus.PENDING, btc, usdt)
    _quarterly("BTCUSDT_260327", datetime(2026, 3, 27, 8, tzinfo=timezone.utc), ContractStatus.TRADING, btc, usdt)
    _quarterly("BTCUSDT_251226", datetime(2025, 12, 26, 8, tzinfo=timezone.utc), ContractStatus.SETTLED, btc, usdt)
    _quarterly("BTCUSDT_260925", datetime(2026, 9, 25, 8, tzinfo=timezone.utc), ContractStatus.PENDING, btc, usdt)
    symbols = {s["symbol"]: s for s in client.get("/fapi/v1/exchangeInfo").json()["symbols"]}
    assert {k: (s["contractType"], s["status"], s["pair"]) for k, s in symbols.items()} == {
        "BTCUSDT": ("PERPETUAL", "TRADING", "BTCUSDT"),
        "BTCUSDT_251226": ("", "DELIVERED", "BTCUSDT"),
        "BTCUSDT_260327": ("CURRENT_QUARTER", "TRADING", "BTCUSDT"),
        "BTCUSDT_260626": ("NEXT_QUARTER", "PENDING_TRADING", "BTCUSDT"),
        "BTCUSDT_260925": ("", "PENDING_TRADING", "BTCUSDT"),  # a third listed quarterly has no Binance name
    }
    assert symbols["BTCUSDT_260327"]["deliveryDate"] == ms(datetime(2026, 3, 27, 8, tzinfo=timezone.utc))

    # The current quarter being delivered: Binance's "CURRENT_QUARTER DELIVERING", the next one moves up.
    Contract.objects.filter(symbol="BTCUSDT_260327").update(status=ContractStatus.SETTLING)
    symbols = {s["symbol"]: s for s in client.get("/fapi/v1/exchangeInfo").json()["symbols"]}
    assert (symbols["BTCUSDT_260327"]["contractType"], symbols["BTCUSDT_260327"]["status"]) == (
        "CURRENT_QUARTER DELIVERING", "DELIVERING")
    assert symbols["BTCUSDT_260626"]["contractType"] == "CURRENT_QUARTER"
    assert symbols["BTCUSDT_260925"]["contractType"] == "NEXT_QUARTER"


@pytest.mark.parametrize("contract_type, status, binance", [
    (ContractType.PERPETUAL, ContractStatus.PENDING, "PENDING_TRADING"),
    (ContractType.PERPETUAL, ContractStatus.CLOSE_ONLY, "PRE_SETTLE"),
    (ContractType.PERPETUAL, ContractStatus.HALTED, "SETTLING"),
    (ContractType.PERPETUAL, ContractStatus.SETTLING, "SETTLING"),
    (ContractType.PERPETUAL, ContractStatus.SETTLED, "CLOSE"),
    (ContractType.DELIVERY, ContractStatus.CLOSE_ONLY, "PRE_DELIVERING"),
    (ContractType.DELIVERY, ContractStatus.HALTED, "SETTLING"),
    (ContractType.DELIVERY, ContractStatus.SETTLED, "DELIVERED"),
])
def test_status_mapping(client, btc, usdt, contract_type, status, binance):
    extra = {"delivery_time": datetime(2026, 3, 27, 8, tzinfo=timezone.utc)} if contract_type == "DELIVERY" else {}
    symbol = "BTCUSDT_260327" if extra else "BTCUSDT"
    contract_create(tiers=tiers_from_brackets(BTC_BRACKETS), symbol=symbol, contract_type=contract_type,
                    status=status, base_asset=btc, quote_asset=usdt, settle_asset=usdt, **extra)
    [info] = client.get("/fapi/v1/exchangeInfo").json()["symbols"]
    assert info["status"] == binance
