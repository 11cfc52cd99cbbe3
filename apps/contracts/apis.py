"""GET /fapi/v1/exchangeInfo: trading rules of every contract in Binance USDⓈ-M shape.

Every number comes from the contract row (or its first margin tier) and from the
enforced access settings; nothing per-symbol is a constant here. Fields Binance sends
that have no column yet (underlyingType, underlyingSubType, settlePlan, triggerProtect,
the MAX_NUM_ALGO_ORDERS filter, assets' autoAssetExchange) are left out rather than
invented.
"""
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from apps.accounts.api import PublicApi
from apps.trading.models import OrderType, TimeInForce

from .selectors import PERPETUAL_DELIVERY_DATE_MS, SymbolInfo, exchange_info_symbols

# Order entry limit not enforced by the per-minute limiter: published as Binance does.
ORDERS_PER_10_SECONDS = 300
# Client-placeable order types (LIQUIDATION orders are the liquidation engine's own).
ORDER_TYPES = [t for t in OrderType.values if t != OrderType.LIQUIDATION]
_EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


def _ms(moment) -> int:
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 0.1000 → "0.1", 5E+1 → "50"."""
    return f"{value.normalize():f}"


def _places(value: Decimal) -> int:
    return max(0, -value.normalize().as_tuple().exponent)


def _rate_limits() -> list[dict]:
    return [
        {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
         "limit": settings.API_IP_WEIGHT_LIMIT_1M},
        {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
         "limit": settings.API_ACCOUNT_ORDER_LIMIT_1M},
        {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": ORDERS_PER_10_SECONDS},
    ]


def _percent_price(contract) -> dict:
    up, down = 1 + contract.percent_price_up, 1 - contract.percent_price_down
    places = max(4, _places(up), _places(down))  # Binance sends 4 decimals; more only if the rate needs them
    quantum = Decimal(1).scaleb(-places)
    return {"filterType": "PERCENT_PRICE", "multiplierUp": f"{up.quantize(quantum):f}",
            "multiplierDown": f"{down.quantize(quantum):f}", "multiplierDecimal": str(places)}


def _symbol(info: SymbolInfo) -> dict:
    c = info.contract
    maint = info.maintenance_rate
    return {
        "symbol": c.symbol,
        "pair": info.pair,
        "contractType": info.contract_type,
        "deliveryDate": _ms(c.delivery_time) if c.delivery_time else PERPETUAL_DELIVERY_DATE_MS,
        "onboardDate": _ms(c.onboard_time or c.created_at),
        "status": info.status,
        "maintMarginPercent": f"{(maint * 100 if maint is not None else Decimal(0)).quantize(Decimal('0.0001')):f}",
        "requiredMarginPercent": f"{(Decimal(100) / c.max_leverage).quantize(Decimal('0.0001')):f}",
        "baseAsset": c.base_asset.code,
        "quoteAsset": c.quote_asset.code,
        "marginAsset": c.settle_asset.code,
        "pricePrecision": c.price_precision,
        "quantityPrecision": c.quantity_precision,
        "baseAssetPrecision": c.base_asset.precision,
        "quotePrecision": c.quote_asset.precision,
        "liquidationFee": _plain(c.liquidation_fee_rate),
        "marketTakeBound": _plain(c.market_max_deviation),
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": _plain(c.min_price), "maxPrice": _plain(c.max_price),
             "tickSize": _plain(c.tick_size)},
            {"filterType": "LOT_SIZE", "minQty": _plain(c.min_qty), "maxQty": _plain(c.max_qty),
             "stepSize": _plain(c.lot_size)},
            {"filterType": "MARKET_LOT_SIZE", "minQty": _plain(c.min_qty), "maxQty": _plain(c.market_max_qty),
             "stepSize": _plain(c.lot_size)},
            {"filterType": "MAX_NUM_ORDERS", "limit": c.max_open_orders},
            {"filterType": "MIN_NOTIONAL", "notional": _plain(c.min_notional)},
            _percent_price(c),
        ],
        "orderTypes": ORDER_TYPES,
        "timeInForce": list(TimeInForce.values),
    }


class _FilterSerializer(serializers.Serializer):
    filterType = serializers.ChoiceField(
        ["PRICE_FILTER", "LOT_SIZE", "MARKET_LOT_SIZE", "MAX_NUM_ORDERS", "MIN_NOTIONAL", "PERCENT_PRICE"])
    minPrice = serializers.CharField(required=False)
    maxPrice = serializers.CharField(required=False)
    tickSize = serializers.CharField(required=False)
    minQty = serializers.CharField(required=False)
    maxQty = serializers.CharField(required=False)
    stepSize = serializers.CharField(required=False)
    limit = serializers.IntegerField(required=False)
    notional = serializers.CharField(required=False)
    multiplierUp = serializers.CharField(required=False)
    multiplierDown = serializers.CharField(required=False)
    multiplierDecimal = serializers.CharField(required=False)


class _SymbolSerializer(serializers.Serializer):
    symbol = serializers.CharField()
    pair = serializers.CharField()
    contractType = serializers.CharField(help_text="PERPETUAL, CURRENT_QUARTER, NEXT_QUARTER, "
                                                   "CURRENT_QUARTER DELIVERING, or empty once delivered.")
    deliveryDate = serializers.IntegerField()
    onboardDate = serializers.IntegerField()
    status = serializers.ChoiceField(["PENDING_TRADING", "TRADING", "PRE_DELIVERING", "DELIVERING", "DELIVERED",
                                      "PRE_SETTLE", "SETTLING", "CLOSE"])
    maintMarginPercent = serializers.CharField()
    requiredMarginPercent = serializers.CharField()
    baseAsset = serializers.CharField()
    quoteAsset = serializers.CharField()
    marginAsset = serializers.CharField()
    pricePrecision = serializers.IntegerField()
    quantityPrecision = serializers.IntegerField()
    baseAssetPrecision = serializers.IntegerField()
    quotePrecision = serializers.IntegerField()
    liquidationFee = serializers.CharField()
    marketTakeBound = serializers.CharField()
    filters = _FilterSerializer(many=True)
    orderTypes = serializers.ListField(child=serializers.CharField())
    timeInForce = serializers.ListField(child=serializers.CharField())


class _RateLimitSerializer(serializers.Serializer):
    rateLimitType = serializers.CharField()
    interval = serializers.CharField()
    intervalNum = serializers.IntegerField()
    limit = serializers.IntegerField()


class _AssetSerializer(serializers.Serializer):
    asset = serializers.CharField()
    marginAvailable = serializers.BooleanField()


class ExchangeInfoSerializer(serializers.Serializer):
    timezone = serializers.CharField()
    serverTime = serializers.IntegerField()
    futuresType = serializers.CharField()
    rateLimits = _RateLimitSerializer(many=True)
    exchangeFilters = serializers.ListField(child=serializers.DictField())
    assets = _AssetSerializer(many=True)
    symbols = _SymbolSerializer(many=True)


class ExchangeInfoApi(PublicApi):
    """GET /fapi/v1/exchangeInfo."""

    weight = 1

    @extend_schema(tags=["Market data"], responses=ExchangeInfoSerializer)
    def get(self, request):
        symbols = exchange_info_symbols()
        margin_assets = sorted({info.contract.settle_asset.code for info in symbols})
        return Response({
            "timezone": "UTC",
            "serverTime": _ms(timezone.now()),
            "futuresType": "U_MARGINED",
            "rateLimits": _rate_limits(),
            "exchangeFilters": [],
            "assets": [{"asset": code, "marginAvailable": True} for code in margin_assets],
            "symbols": [_symbol(info) for info in symbols],
        })
