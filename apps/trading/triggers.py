"""Conditional orders: fire the waiting ones whose trigger price was crossed.

Runs inside the matcher's batch transaction, before the batch reads its commands, so a
fired order is journalled (a NEW command with the next sequence number) atomically
with everything else the batch books: a crash fires it again or not at all, never
twice. A waiting order is locked (SKIP LOCKED: one being cancelled right now is left
for the next round, and the cancel wins). STOP and TAKE_PROFIT watch the mark price
(`workingType=MARK_PRICE`) or the last trade price (CONTRACT_PRICE); a trailing stop
tracks its extreme price in `trail_extreme`.

When an order fires: market types get their protection price from the mark at that
moment; reduce-only and close-position orders are cut to the position they may reduce
and expire (margin released) if there is none left to reduce.
"""
import logging
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from apps.positions.models import Position

from .models import CONDITIONAL_TYPES, MARKET_TYPES, CommandKind, Order, OrderCommand, OrderStatus, OrderType, \
    Side, WorkingType
from .prices import last_price, mark_price
from .rules import is_triggered, protection_price, trailing_step

logger = logging.getLogger(__name__)
ZERO = Decimal(0)


def _waiting(contract):
    return (
        Order.objects.filter(contract=contract, status=OrderStatus.NEW, triggered_at__isnull=True,
                             order_type__in=CONDITIONAL_TYPES)
        .order_by("pk")
        .select_for_update(skip_locked=True)
    )


def triggers_fire(*, contract) -> tuple[list[Order], dict[int, Decimal]]:
    """Fire what is due; returns the fired orders and the margin to release per user (expired ones)."""
    waiting = list(_waiting(contract))
    if not waiting:
        return [], {}
    mark = mark_price(contract)
    last = last_price(contract) if any(o.working_type == WorkingType.CONTRACT_PRICE for o in waiting) else None
    fired: list[Order] = []
    trailed: list[Order] = []
    for order in waiting:
        price = mark if order.working_type == WorkingType.MARK_PRICE else last
        if price is None:
            continue
        if order.order_type == OrderType.TRAILING_STOP_MARKET:
            extreme, due = trailing_step(side=order.side, price=price, extreme=order.trail_extreme,
                                         activation_price=order.activation_price, callback_rate=order.callback_rate)
            if extreme != order.trail_extreme:
                order.trail_extreme = extreme
                trailed.append(order)
        else:
            due = is_triggered(order_type=order.order_type, side=order.side, stop_price=order.stop_price, price=price)
        if due:
            fired.append(order)
    if trailed:
        Order.objects.bulk_update(trailed, ["trail_extreme"])
    if not fired:
        return [], {}
    return _fire(contract, fired, mark)


def _fire(contract, fired: list[Order], mark: Decimal | None) -> tuple[list[Order], dict[int, Decimal]]:
    now = timezone.now()
    sizes = dict(Position.objects.filter(contract=contract, user_id__in={o.user_id for o in fired})
                 .values_list("user_id", "size"))
    releases: dict[int, Decimal] = {}
    live: list[Order] = []
    for order in fired:
        order.triggered_at = now
        if order.reduce_only or order.close_position:
            size = sizes.get(order.user_id, ZERO)
            reducible = abs(size) if size and (size > 0) == (order.side == Side.SELL) else ZERO
            if reducible == 0:
                order.status = OrderStatus.EXPIRED
                releases[order.user_id] = releases.get(order.user_id, ZERO) + order.margin_held
                order.margin_held = ZERO
                continue
            order.quantity = min(order.quantity, reducible) if not order.close_position else reducible
        if order.order_type in MARKET_TYPES:
            reference = mark if mark is not None else order.stop_price or order.trail_extreme
            order.protection_price = protection_price(
                side=order.side, mark=reference, deviation=contract.market_max_deviation, tick=contract.tick_size,
                min_price=contract.min_price, max_price=contract.max_price)
        order.status = OrderStatus.PENDING_NEW
        live.append(order)
    Order.objects.bulk_update(fired, ["triggered_at", "status", "quantity", "protection_price", "margin_held"])
    OrderCommand.objects.bulk_create([OrderCommand(contract=contract, kind=CommandKind.NEW, order=o) for o in live])
    logger.info("%s: %d conditional order(s) fired, %d expired", contract.symbol, len(live), len(fired) - len(live))
    return live, releases
