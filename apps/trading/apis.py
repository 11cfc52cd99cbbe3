"""Signed order endpoints (Binance USDⓈ-M paths, parameters and response fields).

Views parse parameters, call one service or selector and shape the output; every
refusal is an `ExchangeError` rendered as `{code, msg}` by the exception handler.
"""
import json
import logging
from decimal import Decimal

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from apps.accounts.api import PERMISSION_READ, PERMISSION_TRADE, SignedApi, request_params
from exchange import params as p
from exchange.errors import ErrorCode, ExchangeError

from .models import Order, OrderStatus, OrderType, Side, StpMode, TimeInForce, WorkingType
from .selectors import order_wait_result, orders_all, orders_open, trades_of_user
from .errors import NoSuchOrder
from . import handover
from .group_commit import ORDER_ENTRY
from .services import (CLIENT_ORDER_ID, OrderRequest, order_amend, order_cancel, order_get, orders_cancel_all,
                       orders_place_many)

MAX_BATCH_ORDERS = 5
RESP_TYPES = ("ACK", "RESULT")
logger = logging.getLogger(__name__)


def _ms(value) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0


def _s(value: Decimal | None) -> str:
    return format(value.normalize(), "f") if value is not None else "0"


def order_payload(order: Order) -> dict:
    """An order as Binance reports it (strings for decimals, int ms for times)."""
    status = OrderStatus.NEW if order.status == OrderStatus.PENDING_NEW else order.status
    executed = order.executed_qty
    avg = order.cum_quote / (executed * order.contract.contract_size) if executed else None
    return {
        "orderId": order.pk,
        "symbol": order.contract.symbol,
        "status": str(status),
        "clientOrderId": order.client_order_id,
        "price": _s(order.price),
        "avgPrice": _s(avg),
        "origQty": _s(order.quantity),
        "executedQty": _s(executed),
        "cumQty": _s(executed),
        "cumQuote": _s(order.cum_quote),
        "timeInForce": order.time_in_force,
        "type": order.order_type,
        "origType": order.order_type,
        "reduceOnly": order.reduce_only or order.close_position,
        "closePosition": order.close_position,
        "side": order.side,
        "positionSide": "BOTH",
        "stopPrice": _s(order.stop_price),
        "workingType": order.working_type,
        "priceProtect": order.price_protect,
        "activatePrice": _s(order.activation_price) if order.activation_price is not None else None,
        "priceRate": _s(order.callback_rate) if order.callback_rate is not None else None,
        "priceMatch": "NONE",
        "selfTradePreventionMode": order.stp_mode,
        "goodTillDate": 0,
        "time": _ms(order.created_at),
        "updateTime": _ms(order.updated_at),
    }


def _order_params(params: dict) -> dict:
    """Binance new-order parameters → `order_place` keyword arguments."""
    position_side = p.optional(params, "positionSide")
    if position_side not in (None, "BOTH"):
        raise ExchangeError("Order's position side does not match user's setting (one-way mode).",
                            code=ErrorCode.INVALID_PARAMETER)
    return dict(
        side=p.required(params, "side"),
        order_type=p.required(params, "type"),
        quantity=p.optional(params, "quantity"),
        price=p.optional(params, "price"),
        stop_price=p.optional(params, "stopPrice"),
        time_in_force=p.optional(params, "timeInForce"),
        reduce_only=p.boolean(params, "reduceOnly"),
        close_position=p.boolean(params, "closePosition"),
        client_order_id=p.optional(params, "newClientOrderId"),
        stp_mode=p.optional(params, "selfTradePreventionMode") or StpMode.EXPIRE_TAKER,
        working_type=p.optional(params, "workingType") or WorkingType.CONTRACT_PRICE,
        activation_price=p.optional(params, "activationPrice"),
        callback_rate=p.optional(params, "callbackRate"),
        price_protect=p.boolean(params, "priceProtect"),
    )


def _place(user, params: dict) -> dict:
    request, resp_type = _request(user, params)
    # By the contract's matcher when one takes its orders, else through this process's group
    # commit (concurrent requests share a transaction and a commit).
    handed = handover.submit(request)
    if handed is None:
        return _answer(ORDER_ENTRY.place(request), resp_type)
    ORDER_ENTRY.leave()  # no writer of this process waits for it
    return _answer(handed.result(), resp_type)


def _request(user, params: dict) -> tuple[OrderRequest, str]:
    """A new-order request's parameters → (the order to place, its newOrderRespType)."""
    contract = p.contract(params)
    resp_type = p.choice(params, "newOrderRespType", RESP_TYPES, default="ACK")
    return OrderRequest(user=user, contract=contract, params=_order_params(params)), resp_type


def _answer(order, resp_type: str) -> dict:
    if resp_type == "RESULT":
        order = order_wait_result(order=order, timeout=settings.ORDER_RESULT_WAIT_SECONDS)
    return order_payload(order)


def _client_order_id(value: str) -> str:
    """An origClientOrderId to look up: one order entry would never have accepted (the
    newClientOrderId pattern) names no order, -2013 without a query (PostgreSQL refuses
    text with NUL bytes)."""
    if not CLIENT_ORDER_ID.fullmatch(value):
        raise NoSuchOrder("Order does not exist.")
    return value


def _lookup(params: dict) -> dict:
    order_id = p.integer(params, "orderId")
    client_order_id = p.optional(params, "origClientOrderId")
    if order_id is None and client_order_id is not None:  # orderId, when sent, is the one looked up
        client_order_id = _client_order_id(client_order_id)
    return dict(order_id=order_id, client_order_id=client_order_id)


class OrderOut(serializers.Serializer):
    """An order as Binance USDⓈ-M reports it (documentation of `order_payload`)."""

    orderId = serializers.IntegerField()
    symbol = serializers.CharField()
    status = serializers.CharField()
    clientOrderId = serializers.CharField()
    price = serializers.CharField()
    avgPrice = serializers.CharField()
    origQty = serializers.CharField()
    executedQty = serializers.CharField()
    cumQty = serializers.CharField()
    cumQuote = serializers.CharField()
    timeInForce = serializers.CharField()
    type = serializers.CharField()
    origType = serializers.CharField()
    reduceOnly = serializers.BooleanField()
    closePosition = serializers.BooleanField()
    side = serializers.CharField()
    positionSide = serializers.CharField()
    stopPrice = serializers.CharField()
    workingType = serializers.CharField()
    priceProtect = serializers.BooleanField()
    activatePrice = serializers.CharField(allow_null=True)
    priceRate = serializers.CharField(allow_null=True)
    priceMatch = serializers.CharField()
    selfTradePreventionMode = serializers.CharField()
    goodTillDate = serializers.IntegerField()
    time = serializers.IntegerField()
    updateTime = serializers.IntegerField()


ORDER = OrderOut
ORDERS = OrderOut(many=True)


class OrderOrErrorOut(serializers.Serializer):
    """One item of a batch answer: the order, or the `{code, msg}` of its refusal."""

    code = serializers.IntegerField(required=False)
    msg = serializers.CharField(required=False)
    orderId = serializers.IntegerField(required=False)
    symbol = serializers.CharField(required=False)
    status = serializers.CharField(required=False)
    clientOrderId = serializers.CharField(required=False)
    price = serializers.CharField(required=False)
    origQty = serializers.CharField(required=False)
    executedQty = serializers.CharField(required=False)
    type = serializers.CharField(required=False)
    side = serializers.CharField(required=False)


ORDERS_OR_ERRORS = OrderOrErrorOut(many=True)
SYMBOL = OpenApiParameter("symbol", str, required=True)
SIGNED = [OpenApiParameter("X-MBX-APIKEY", str, location=OpenApiParameter.HEADER, required=True),
          OpenApiParameter("timestamp", int, required=True), OpenApiParameter("signature", str, required=True),
          OpenApiParameter("recvWindow", int, required=False)]
NEW_ORDER_PARAMS = [
    SYMBOL,
    OpenApiParameter("side", str, enum=Side.values, required=True),
    OpenApiParameter("type", str, enum=[t for t in OrderType.values if t != OrderType.LIQUIDATION], required=True),
    OpenApiParameter("quantity", str), OpenApiParameter("price", str), OpenApiParameter("stopPrice", str),
    OpenApiParameter("timeInForce", str, enum=TimeInForce.values), OpenApiParameter("reduceOnly", str),
    OpenApiParameter("closePosition", str), OpenApiParameter("newClientOrderId", str),
    OpenApiParameter("workingType", str, enum=WorkingType.values), OpenApiParameter("activationPrice", str),
    OpenApiParameter("callbackRate", str), OpenApiParameter("priceProtect", str),
    OpenApiParameter("selfTradePreventionMode", str, enum=StpMode.values),
    OpenApiParameter("newOrderRespType", str, enum=list(RESP_TYPES)), OpenApiParameter("positionSide", str),
]
LOOKUP_PARAMS = [SYMBOL, OpenApiParameter("orderId", int), OpenApiParameter("origClientOrderId", str)]


class OrderApi(SignedApi):
    """/fapi/v1/order: POST new order, PUT modify, DELETE cancel (TRADE); GET query (USER_DATA, a read)."""

    @property
    def permission(self) -> str:
        return PERMISSION_READ if self.request.method == "GET" else PERMISSION_TRADE

    @property
    def counts_as_order(self) -> bool:
        return self.request.method == "POST"

    def dispatch(self, request, *args, **kwargs):
        if request.method != "POST":
            return super().dispatch(request, *args, **kwargs)
        with ORDER_ENTRY.arriving():  # the group being formed may wait for it
            return super().dispatch(request, *args, **kwargs)

    @extend_schema(parameters=SIGNED + NEW_ORDER_PARAMS, request=None, responses=ORDER)
    def post(self, request):
        return Response(_place(request.user, request_params(request)))

    @extend_schema(parameters=SIGNED + LOOKUP_PARAMS + [OpenApiParameter("side", str), OpenApiParameter(
        "quantity", str, required=True), OpenApiParameter("price", str, required=True)],
        request=None, responses=ORDER)
    def put(self, request):
        params = request_params(request)
        order = order_amend(user=request.user, contract=p.contract(params), **_lookup(params),
                            side=p.optional(params, "side"), quantity=p.required(params, "quantity"),
                            price=p.required(params, "price"))
        return Response(order_payload(order))

    @extend_schema(parameters=SIGNED + LOOKUP_PARAMS, responses=ORDER)
    def get(self, request):
        params = request_params(request)
        return Response(order_payload(order_get(user=request.user, contract=p.contract(params), **_lookup(params))))

    @extend_schema(parameters=SIGNED + LOOKUP_PARAMS, request=None, responses=ORDER)
    def delete(self, request):
        params = request_params(request)
        order = order_cancel(user=request.user, contract=p.contract(params), **_lookup(params))
        return Response(order_payload(order))


def _batch(raw: str | None, name: str) -> list:
    if not raw:
        raise p.missing(name)
    try:
        items = json.loads(raw)
    except ValueError as exc:
        raise p.missing(name) from exc
    if not isinstance(items, list) or not items:
        raise p.missing(name)
    if len(items) > MAX_BATCH_ORDERS:
        raise ExchangeError(f"{name} may hold at most {MAX_BATCH_ORDERS} items.", code=ErrorCode.INVALID_PARAMETER)
    return items


def _item_params(item: dict) -> dict:
    """One batch item's JSON values as the strings a query string would carry: null is absent,
    booleans are "true"/"false", numbers their JSON text; an object or array is refused (-1130)."""
    params = {}
    for name, value in item.items():
        if value is None:
            continue
        if isinstance(value, bool):
            params[name] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            params[name] = str(value)
        else:
            raise p.invalid(name, value)
    return params


def _item_error(exc: Exception) -> dict:
    """A batch item's error answer: its code, or -1000 for an unexpected error."""
    if isinstance(exc, ExchangeError):
        return exc.as_body()
    return {"code": int(ErrorCode.UNKNOWN),
            "msg": "An unknown error occurred while processing this order; query its status before retrying."}


class BatchOrdersApi(SignedApi):
    """POST /fapi/v1/batchOrders (up to 5 orders, each accepted or refused on its own), DELETE (cancel a list)."""

    permission = PERMISSION_TRADE
    counts_as_order = True
    weight = 5

    @extend_schema(parameters=SIGNED + [OpenApiParameter("batchOrders", str, required=True)], request=None,
                   responses=ORDERS_OR_ERRORS)
    def post(self, request):
        # Each item is parsed, then placed or refused on its own; the items that parse are
        # placed together (`orders_place_many`: one transaction per symbol), as Binance answers
        # item by item.
        results: list = []
        requests: list[tuple[int, OrderRequest, str]] = []
        for item in _batch(request_params(request).get("batchOrders"), "batchOrders"):
            try:
                if not isinstance(item, dict):
                    raise p.missing("batchOrders")
                order_request, resp_type = _request(request.user, _item_params(item))
            except Exception as exc:  # noqa: BLE001 - one item's failure is that item's answer, never a 500
                if not isinstance(exc, ExchangeError):
                    logger.exception("batchOrders: unexpected error reading an item")
                results.append(_item_error(exc))
                continue
            requests.append((len(results), order_request, resp_type))
            results.append(None)
        placed = orders_place_many([r for _, r, _ in requests])
        for (index, _, resp_type), outcome in zip(requests, placed):
            # An unexpected error was logged by order entry.
            results[index] = _item_error(outcome) if isinstance(outcome, Exception) else _answer(outcome, resp_type)
        return Response(results)

    @extend_schema(parameters=SIGNED + [SYMBOL, OpenApiParameter("orderIdList", str),
                                        OpenApiParameter("origClientOrderIdList", str)],
                   request=None, responses=ORDERS_OR_ERRORS)
    def delete(self, request):
        params = request_params(request)
        contract = p.contract(params)
        ids = params.get("orderIdList")
        lookups = ([{"order_id": i} for i in _batch(ids, "orderIdList")] if ids else
                   [{"client_order_id": c} for c in _batch(params.get("origClientOrderIdList"),
                                                           "origClientOrderIdList")])
        results = []
        for lookup in lookups:
            try:
                if "order_id" in lookup and not isinstance(lookup["order_id"], int):
                    raise p.invalid("orderIdList", lookup["order_id"])
                if isinstance(lookup.get("client_order_id"), str) and lookup["client_order_id"]:
                    _client_order_id(lookup["client_order_id"])
                results.append(order_payload(order_cancel(user=request.user, contract=contract, **lookup)))
            except ExchangeError as exc:
                results.append(exc.as_body())
        return Response(results)


class AllOpenOrdersApi(SignedApi):
    """DELETE /fapi/v1/allOpenOrders."""

    permission = PERMISSION_TRADE

    @extend_schema(parameters=SIGNED + [SYMBOL], request=None,
                   responses=inline_serializer("CancelAll", {"code": serializers.IntegerField(),
                                                             "msg": serializers.CharField()}))
    def delete(self, request):
        orders_cancel_all(user=request.user, contract=p.contract(request_params(request)))
        return Response({"code": 200, "msg": "The operation of cancel all open order is done."})


class OpenOrdersApi(SignedApi):
    """GET /fapi/v1/openOrders (weight 1 with a symbol, 40 without)."""

    def get_weight(self, request):
        return 1 if request_params(request).get("symbol") else 40

    @extend_schema(parameters=SIGNED + [OpenApiParameter("symbol", str)], responses=ORDERS)
    def get(self, request):
        contract = p.contract(request_params(request), required_=False)
        return Response([order_payload(o) for o in orders_open(user=request.user, contract=contract)])


class OpenOrderApi(SignedApi):
    """GET /fapi/v1/openOrder: one open order; -2013 when it is not open."""

    @extend_schema(parameters=SIGNED + LOOKUP_PARAMS, responses=ORDER)
    def get(self, request):
        params = request_params(request)
        order = order_get(user=request.user, contract=p.contract(params), **_lookup(params))
        if order.status not in (OrderStatus.PENDING_NEW, OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED):
            raise ExchangeError("Order does not exist.", code=ErrorCode.NO_SUCH_ORDER)
        return Response(order_payload(order))


class AllOrdersApi(SignedApi):
    """GET /fapi/v1/allOrders."""

    weight = 5

    @extend_schema(parameters=SIGNED + [SYMBOL, OpenApiParameter("orderId", int), OpenApiParameter("startTime", int),
                                        OpenApiParameter("endTime", int), OpenApiParameter("limit", int)],
                   responses=ORDERS)
    def get(self, request):
        params = request_params(request)
        start, end = p.time_range(params)
        rows = orders_all(user=request.user, contract=p.contract(params), order_id=p.integer(params, "orderId"),
                          start_ms=start, end_ms=end, limit=p.integer(params, "limit", default=500, low=1, high=1000))
        return Response([order_payload(o) for o in rows])


class UserTradeOut(serializers.Serializer):
    id = serializers.IntegerField()
    symbol = serializers.CharField()
    orderId = serializers.IntegerField()
    side = serializers.CharField()
    price = serializers.CharField()
    qty = serializers.CharField()
    quoteQty = serializers.CharField()
    realizedPnl = serializers.CharField()
    commission = serializers.CharField()
    commissionAsset = serializers.CharField()
    buyer = serializers.BooleanField()
    maker = serializers.BooleanField()
    positionSide = serializers.CharField()
    time = serializers.IntegerField()


USER_TRADES = UserTradeOut(many=True)


class UserTradesApi(SignedApi):
    """GET /fapi/v1/userTrades."""

    weight = 5

    @extend_schema(parameters=SIGNED + [SYMBOL, OpenApiParameter("fromId", int), OpenApiParameter("startTime", int),
                                        OpenApiParameter("endTime", int), OpenApiParameter("limit", int)],
                   responses=USER_TRADES)
    def get(self, request):
        params = request_params(request)
        contract = p.contract(params)
        start, end = p.time_range(params)
        rows = trades_of_user(user=request.user, contract=contract, from_id=p.integer(params, "fromId"),
                              start_ms=start, end_ms=end,
                              limit=p.integer(params, "limit", default=500, low=1, high=1000))
        out = []
        for trade, taker in rows:
            order = trade.taker_order if taker else trade.maker_order
            out.append({
                "id": trade.pk, "symbol": contract.symbol, "orderId": order.pk, "side": order.side,
                "price": _s(trade.price), "qty": _s(trade.quantity),
                "quoteQty": _s(trade.price * trade.quantity * contract.contract_size),
                "realizedPnl": _s(trade.taker_realized_pnl if taker else trade.maker_realized_pnl),
                "commission": _s(trade.taker_fee if taker else trade.maker_fee),
                "commissionAsset": contract.settle_asset.code, "buyer": order.side == Side.BUY,
                "maker": not taker, "positionSide": "BOTH", "time": _ms(trade.created_at),
            })
        return Response(out)
