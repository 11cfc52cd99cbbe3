"""Reads of a user's orders and trades for the client API (always filtered by user)."""
import time
from datetime import datetime, timezone as dt_timezone

from django.db.models import QuerySet

from .models import OPEN_STATUSES, Order, OrderStatus, Trade

RESULT_POLL_FIRST = 0.001
RESULT_POLL_MAX = 0.02


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=dt_timezone.utc)


def order_wait_result(*, order: Order, timeout: float) -> Order:
    """Wait (bounded) until the matcher has processed a new order; the order as it then is.

    `newOrderRespType=RESULT`: the journal row is committed, so the matcher will process
    it; if it has not within `timeout`, the caller answers with the accepted state.
    """
    deadline = time.monotonic() + timeout
    pause = RESULT_POLL_FIRST
    current = order
    while current.status == OrderStatus.PENDING_NEW and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, RESULT_POLL_MAX)
        current = Order.objects.select_related("contract").get(pk=order.pk)
    return current


def orders_open(*, user, contract=None) -> QuerySet[Order]:
    rows = Order.objects.select_related("contract").filter(user=user, status__in=OPEN_STATUSES)
    if contract is not None:
        rows = rows.filter(contract=contract)
    return rows.order_by("pk")


def orders_all(*, user, contract, order_id: int | None = None, start_ms: int | None = None,
               end_ms: int | None = None, limit: int = 500) -> list[Order]:
    """Binance `allOrders`: from `orderId` upwards, else the newest `limit` in the time range, oldest first."""
    rows = Order.objects.select_related("contract").filter(user=user, contract=contract)
    if order_id is not None:
        return list(rows.filter(pk__gte=order_id).order_by("pk")[:limit])
    if start_ms is not None:
        rows = rows.filter(created_at__gte=ms_to_datetime(start_ms))
    if end_ms is not None:
        rows = rows.filter(created_at__lte=ms_to_datetime(end_ms))
    if start_ms is not None:
        return list(rows.order_by("pk")[:limit])
    return list(reversed(rows.order_by("-pk")[:limit]))


def trades_of_user(*, user, contract, from_id: int | None = None, start_ms: int | None = None,
                   end_ms: int | None = None, limit: int = 500) -> list[tuple[Trade, bool]]:
    """Binance `userTrades`: the user's fills as (trade, user was the buyer side's taker/maker), oldest first."""
    mine = Order.objects.filter(user=user, contract=contract).values("pk")
    rows = Trade.objects.select_related("taker_order", "maker_order").filter(contract=contract)
    taker_rows = rows.filter(taker_order__in=mine)
    maker_rows = rows.filter(maker_order__in=mine)
    rows = (taker_rows | maker_rows)
    if from_id is not None:
        rows = rows.filter(pk__gte=from_id)
    if start_ms is not None:
        rows = rows.filter(created_at__gte=ms_to_datetime(start_ms))
    if end_ms is not None:
        rows = rows.filter(created_at__lte=ms_to_datetime(end_ms))
    if from_id is not None or start_ms is not None:
        picked = list(rows.order_by("pk")[:limit])
    else:
        picked = list(reversed(rows.order_by("-pk")[:limit]))
    return [(trade, trade.taker_order.user_id == user.pk) for trade in picked]
