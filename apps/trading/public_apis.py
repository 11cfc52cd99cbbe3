"""Public market-data endpoints (no API key), Binance USDⓈ-M paths, parameters and shapes.

Views parse parameters, call one selector of `public_selectors` and shape the answer the
way Binance clients parse it: prices and quantities as strings with the contract's
precision, times as integer milliseconds, ids as integers. Request weights follow
Binance (`get_weight` reads the same `limit`/`symbol` the view uses; a bad value there
is reported after the rate limiter has counted the request).
"""
import re
from decimal import ROUND_HALF_EVEN, Decimal

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from apps.accounts.api import PublicApi, request_params
from apps.contracts.models import Contract
from exchange.errors import ErrorCode, ExchangeError

from . import public_selectors as selectors
from .public_selectors import ms

DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
_INTEGER = re.compile(r"[0-9]{1,19}")
_TAG = "Market data"


# --- parameters ----------------------------------------------------------------------------

def _mandatory(name: str) -> ExchangeError:
    return ExchangeError(f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
                         code=ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED)


def _invalid(name: str) -> ExchangeError:
    return ExchangeError(f"Data sent for parameter '{name}' is not valid.", code=ErrorCode.INVALID_PARAMETER)


def _symbol(params: dict, *, required: bool = True) -> str | None:
    value = params.get("symbol") or None
    if value is None and required:
        raise _mandatory("symbol")
    return value


def _integer(params: dict, name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not _INTEGER.fullmatch(raw):
        raise ExchangeError(f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,19}}$'.",
                            code=ErrorCode.ILLEGAL_CHARS)
    value = int(raw)
    if value > selectors.MAX_ID:
        raise _invalid(name)
    return value


def _time(params: dict, name: str) -> int | None:
    """Epoch milliseconds, up to the last millisecond of year 9999."""
    value = _integer(params, name)
    if value is not None and value > selectors.MAX_TIME_MS:
        raise _invalid(name)
    return value


def _limit(params: dict, *, default: int, maximum: int) -> int:
    limit = _integer(params, "limit")
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise _invalid("limit")
    return limit


def _time_range(params: dict) -> tuple[int | None, int | None]:
    start, end = _time(params, "startTime"), _time(params, "endTime")
    if start is not None and end is not None and start > end:
        raise ExchangeError("startTime must not be after endTime.", code=ErrorCode.OPTIONAL_PARAMS_BAD_COMBO)
    return start, end


# --- formatting ----------------------------------------------------------------------------

def _fixed(value: Decimal | None, places: int) -> str:
    """A decimal as Binance sends it: a string with exactly `places` decimals."""
    value = Decimal(0) if value is None else value
    return f"{value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN):f}"


def _price(contract: Contract, value: Decimal | None) -> str:
    return _fixed(value, contract.price_precision)


def _qty(contract: Contract, value: Decimal | None) -> str:
    return _fixed(value, contract.quantity_precision)


def _quote(contract: Contract, value: Decimal | None) -> str:
    return _fixed(value, contract.quote_asset.precision)


def _ms_or_zero(moment) -> int:
    return ms(moment) if moment is not None else 0


# --- schema (documentation of the response shapes) -----------------------------------------

_SYMBOL = OpenApiParameter("symbol", str, required=True)
_SYMBOL_OPTIONAL = OpenApiParameter("symbol", str, required=False, description="Omit for every symbol (a list).")
_LIMIT = OpenApiParameter("limit", int, required=False)
_FROM_ID = OpenApiParameter("fromId", int, required=False)
_START = OpenApiParameter("startTime", int, required=False, description="Epoch milliseconds.")
_END = OpenApiParameter("endTime", int, required=False, description="Epoch milliseconds.")

def _level() -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(), min_length=2, max_length=2,
                                 help_text="[price, quantity]")


class DepthSerializer(serializers.Serializer):
    lastUpdateId = serializers.IntegerField(help_text="Highest processed journal seq of the symbol.")
    E = serializers.IntegerField(help_text="Message output time (ms).")
    T = serializers.IntegerField(help_text="Transaction time (ms) of that journal command.")
    bids = serializers.ListField(child=_level())
    asks = serializers.ListField(child=_level())


class TradeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    price = serializers.CharField()
    qty = serializers.CharField()
    quoteQty = serializers.CharField()
    time = serializers.IntegerField()
    isBuyerMaker = serializers.BooleanField()


class AggTradeSerializer(serializers.Serializer):
    a = serializers.IntegerField(help_text="Aggregate trade id (= its first trade id).")
    p = serializers.CharField()
    q = serializers.CharField()
    f = serializers.IntegerField()
    l = serializers.IntegerField()  # noqa: E741 (Binance's field name)
    T = serializers.IntegerField()
    m = serializers.BooleanField(help_text="Was the buyer the maker?")


_KLINES_SCHEMA = {
    "type": "array",
    "items": {
        "type": "array",
        "minItems": 12,
        "maxItems": 12,
        "description": "[open time, open, high, low, close, volume, close time, quote volume, trades, "
                       "taker buy volume, taker buy quote volume, \"0\"]",
        "items": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
    },
}


class Ticker24hrSerializer(serializers.Serializer):
    symbol = serializers.CharField()
    priceChange = serializers.CharField()
    priceChangePercent = serializers.CharField()
    weightedAvgPrice = serializers.CharField()
    lastPrice = serializers.CharField()
    lastQty = serializers.CharField()
    openPrice = serializers.CharField()
    highPrice = serializers.CharField()
    lowPrice = serializers.CharField()
    volume = serializers.CharField()
    quoteVolume = serializers.CharField()
    openTime = serializers.IntegerField()
    closeTime = serializers.IntegerField()
    firstId = serializers.IntegerField(help_text="-1 when no trade in the window.")
    lastId = serializers.IntegerField(help_text="-1 when no trade in the window.")
    count = serializers.IntegerField()


class TickerPriceSerializer(serializers.Serializer):
    symbol = serializers.CharField()
    price = serializers.CharField()
    time = serializers.IntegerField()


class BookTickerSerializer(serializers.Serializer):
    symbol = serializers.CharField()
    bidPrice = serializers.CharField()
    bidQty = serializers.CharField()
    askPrice = serializers.CharField()
    askQty = serializers.CharField()
    time = serializers.IntegerField()
    lastUpdateId = serializers.IntegerField()


class OpenInterestSerializer(serializers.Serializer):
    symbol = serializers.CharField()
    openInterest = serializers.CharField()
    time = serializers.IntegerField()


def _one_or_list(name: str, serializer) -> PolymorphicProxySerializer:
    return PolymorphicProxySerializer(component_name=name, serializers=[serializer, serializer(many=True)],
                                      resource_type_field_name=None, many=False)


# --- views -----------------------------------------------------------------------------------

class DepthApi(PublicApi):
    """GET /fapi/v1/depth: the order book aggregated by price."""

    def get_weight(self, request) -> int:
        limit = self._limit(request_params(request))
        return 2 if limit <= 50 else 5 if limit == 100 else 10 if limit == 500 else 20

    @staticmethod
    def _limit(params: dict) -> int:
        limit = _integer(params, "limit")
        if limit is None:
            return 500
        if limit not in DEPTH_LIMITS:
            raise _invalid("limit")
        return limit

    @extend_schema(tags=[_TAG], parameters=[_SYMBOL, _LIMIT], responses=DepthSerializer,
                   description="Limit 5, 10, 20, 50, 100, 500 (default) or 1000; weight 2/5/10/20.")
    def get(self, request):
        params = request_params(request)
        depth = selectors.book_depth(symbol=_symbol(params), limit=self._limit(params))
        c, now = depth.contract, ms(timezone.now())
        return Response({
            "lastUpdateId": depth.last_update_id,
            "E": now,
            "T": ms(depth.transaction_time) if depth.transaction_time else now,
            "bids": [[_price(c, p), _qty(c, q)] for p, q in depth.bids],
            "asks": [[_price(c, p), _qty(c, q)] for p, q in depth.asks],
        })


def _trades_out(result: selectors.TradeList) -> list[dict]:
    c = result.contract
    return [
        {"id": t.id, "price": _price(c, t.price), "qty": _qty(c, t.quantity),
         "quoteQty": _quote(c, t.price * t.quantity * c.contract_size), "time": ms(t.time),
         "isBuyerMaker": t.is_buyer_maker}
        for t in result.trades
    ]


class TradesApi(PublicApi):
    """GET /fapi/v1/trades: recent trades, oldest first."""

    weight = 5

    @extend_schema(tags=[_TAG], parameters=[_SYMBOL, _LIMIT], responses=TradeSerializer(many=True),
                   description="Limit default 500, max 1000.")
    def get(self, request):
        params = request_params(request)
        result = selectors.trades_list(symbol=_symbol(params), limit=_limit(params, default=500, maximum=1000))
        return Response(_trades_out(result))


class HistoricalTradesApi(PublicApi):
    """GET /fapi/v1/historicalTrades: trades from `fromId` (default: the most recent)."""

    weight = 20

    @extend_schema(tags=[_TAG], parameters=[_SYMBOL, _LIMIT, _FROM_ID], responses=TradeSerializer(many=True),
                   description="Limit default 500, max 1000. No API key needed here.")
    def get(self, request):
        params = request_params(request)
        result = selectors.trades_list(symbol=_symbol(params), limit=_limit(params, default=500, maximum=1000),
                                       from_id=_integer(params, "fromId"))
        return Response(_trades_out(result))


class AggTradesApi(PublicApi):
    """GET /fapi/v1/aggTrades: fills of one taker order at one price, aggregated."""

    weight = 20

    @extend_schema(tags=[_TAG], parameters=[_SYMBOL, _FROM_ID, _START, _END, _LIMIT],
                   responses=AggTradeSerializer(many=True),
                   description="Limit default 500, max 1000. Without fromId and startTime: the most recent "
                               "aggregates (up to endTime when given).")
    def get(self, request):
        params = request_params(request)
        symbol, limit = _symbol(params), _limit(params, default=500, maximum=1000)
        start, end = _time_range(params)
        result = selectors.agg_trades_list(
            symbol=symbol, limit=limit, from_id=_integer(params, "fromId"),
            start=selectors.from_ms(start) if start is not None else None,
            end=selectors.from_ms(end) if end is not None else None,
        )
        c = result.contract
        return Response([
            {"a": t.id, "p": _price(c, t.price), "q": _qty(c, t.quantity), "f": t.first_id, "l": t.last_id,
             "T": ms(t.time), "m": t.is_buyer_maker}
            for t in result.trades
        ])


class KlinesApi(PublicApi):
    """GET /fapi/v1/klines: candlesticks from trades; intervals without trades are omitted."""

    def get_weight(self, request) -> int:
        limit = _limit(request_params(request), default=500, maximum=1500)
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10

    @extend_schema(
        tags=[_TAG],
        parameters=[_SYMBOL, OpenApiParameter("interval", str, required=True,
                                              enum=list(selectors.KLINE_INTERVALS_MS)), _START, _END, _LIMIT],
        responses={200: _KLINES_SCHEMA},
        description="Limit default 500, max 1500. Klines are selected by open time in [startTime, endTime].",
    )
    def get(self, request):
        params = request_params(request)
        symbol = _symbol(params)
        interval = params.get("interval") or None
        if interval is None:
            raise _mandatory("interval")
        if interval not in selectors.KLINE_INTERVALS_MS:
            raise ExchangeError("Invalid interval.", code=ErrorCode.BAD_INTERVAL)
        limit = _limit(params, default=500, maximum=1500)
        start, end = _time_range(params)
        result = selectors.klines_list(symbol=symbol, interval=interval, limit=limit, start_ms=start, end_ms=end)
        c = result.contract
        return Response([
            [k.open_time, _price(c, k.open), _price(c, k.high), _price(c, k.low), _price(c, k.close),
             _qty(c, k.volume), k.close_time, _quote(c, k.quote_volume), k.count, _qty(c, k.taker_buy_volume),
             _quote(c, k.taker_buy_quote_volume), "0"]
            for k in result.klines
        ])


class _OneOrAllApi(PublicApi):
    """A ticker: one object for `symbol`, a list of every symbol without it."""

    weight_one = 1
    weight_all = 1

    def get_weight(self, request) -> int:
        return self.weight_one if _symbol(request_params(request), required=False) else self.weight_all

    def answer(self, request, rows: list, shape):
        items = [shape(row) for row in rows]
        return Response(items[0] if _symbol(request_params(request), required=False) else items)


class Ticker24hrApi(_OneOrAllApi):
    """GET /fapi/v1/ticker/24hr: rolling 24 h statistics from trades."""

    weight_one, weight_all = 1, 40

    @extend_schema(tags=[_TAG], parameters=[_SYMBOL_OPTIONAL], responses=_one_or_list("Ticker24hrOrList",
                                                                                      Ticker24hrSerializer),
                   description="Weight 1 for one symbol, 40 for all.")
    def get(self, request):
        symbol = _symbol(request_params(request), required=False)
        return self.answer(request, selectors.tickers_24h(symbol=symbol, now=timezone.now()), _ticker_24h)


def _ticker_24h(t: selectors.Ticker24h) -> dict:
    c = t.contract
    if t.count:
        change = t.last_price - t.open
        percent = change / t.open * 100
        average = t.quote_volume / (t.volume * c.contract_size)
        open_, high, low = t.open, t.high, t.low
    else:  # nothing traded in the window: the last price stands still
        change = percent = average = Decimal(0)
        open_ = high = low = t.last_price
    return {
        "symbol": c.symbol,
        "priceChange": _price(c, change),
        "priceChangePercent": _fixed(percent, 3),
        "weightedAvgPrice": _price(c, average),
        "lastPrice": _price(c, t.last_price),
        "lastQty": _qty(c, t.last_qty),
        "openPrice": _price(c, open_),
        "highPrice": _price(c, high),
        "lowPrice": _price(c, low),
        "volume": _qty(c, t.volume),
        "quoteVolume": _quote(c, t.quote_volume),
        "openTime": ms(t.open_time),
        "closeTime": ms(t.close_time),
        "firstId": t.first_id if t.count else -1,
        "lastId": t.last_id if t.count else -1,
        "count": t.count,
    }


class TickerPriceApi(_OneOrAllApi):
    """GET /fapi/v1/ticker/price and /fapi/v2/ticker/price: the last trade price."""

    weight_one, weight_all = 1, 2

    @extend_schema(tags=[_TAG], parameters=[_SYMBOL_OPTIONAL],
                   responses=_one_or_list("TickerPriceOrList", TickerPriceSerializer),
                   description="Weight 1 for one symbol, 2 for all. A symbol never traded has price 0 and time 0.")
    def get(self, request):
        symbol = _symbol(request_params(request), required=False)
        return self.answer(request, selectors.last_prices(symbol=symbol), lambda p: {
            "symbol": p.contract.symbol, "price": _price(p.contract, p.price), "time": _ms_or_zero(p.time)})


class BookTickerApi(_OneOrAllApi):
    """GET /fapi/v1/ticker/bookTicker: best bid and ask of the resting book."""

    weight_one, weight_all = 2, 5

    @extend_schema(tags=[_TAG], parameters=[_SYMBOL_OPTIONAL],
                   responses=_one_or_list("BookTickerOrList", BookTickerSerializer),
                   description="Weight 2 for one symbol, 5 for all. An empty side is price 0, quantity 0.")
    def get(self, request):
        symbol = _symbol(request_params(request), required=False)
        now = ms(timezone.now())

        def shape(b: selectors.BookTicker) -> dict:
            c = b.contract
            bid, ask = b.bid or (None, None), b.ask or (None, None)
            return {"symbol": c.symbol, "bidPrice": _price(c, bid[0]), "bidQty": _qty(c, bid[1]),
                    "askPrice": _price(c, ask[0]), "askQty": _qty(c, ask[1]),
                    "time": ms(b.transaction_time) if b.transaction_time else now,
                    "lastUpdateId": b.last_update_id}

        return self.answer(request, selectors.book_tickers(symbol=symbol), shape)


class OpenInterestApi(PublicApi):
    """GET /fapi/v1/openInterest: the summed size of the long positions."""

    weight = 1

    @extend_schema(tags=[_TAG], parameters=[_SYMBOL], responses=OpenInterestSerializer)
    def get(self, request):
        result = selectors.open_interest_get(symbol=_symbol(request_params(request)))
        c = result.contract
        return Response({"symbol": c.symbol, "openInterest": _qty(c, result.open_interest),
                         "time": ms(timezone.now())})
