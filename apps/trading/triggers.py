"""Conditional orders: fire the waiting ones whose trigger price was crossed.

Runs inside the matcher's batch transaction, before the batch reads its commands, so a
fired order is journalled (a NEW command with the next sequence number) atomically
with everything else the batch books: a crash fires it again or not at all, never
twice. A waiting order that is due (or moves its trailing extreme) is locked (SKIP
LOCKED: one being cancelled right now is left for the next round, and the cancel wins).
STOP and TAKE_PROFIT watch the mark price (`workingType=MARK_PRICE`) or the last trade
price (CONTRACT_PRICE); a trailing stop tracks its extreme price in `trail_extreme`.

When an order fires: market types get their protection price from the mark at that
moment; reduce-only and close-position orders are cut to the position they may reduce
and expire (margin released) if there is none left to reduce.
"""
import logging
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from apps.positions.models import Position
from exchange.pgbulk import text_literals

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


# The waiting orders as plain rows, unlocked: most batches find none due, and then neither a
# model per order nor a row lock per order (a tuple write each) is worth paying for. The
# constants are inlined so the planner matches the partial index order_conditional_waiting.
# `WAITING_COLUMNS` and `waiting_predicate` let the matcher read them with the contract's status.
WAITING_COLUMNS = ("id", "order_type", "side", "working_type", "stop_price", "trail_extreme", "activation_price",
                   "callback_rate")


def waiting_predicate(alias: str) -> str:
    return (f"{alias}.status = '{OrderStatus.NEW}' AND {alias}.triggered_at IS NULL"
            f" AND {alias}.order_type IN ({text_literals(CONDITIONAL_TYPES)})")


WAITING_SQL = (f"SELECT {', '.join('o.' + c for c in WAITING_COLUMNS)} FROM trading_order o"
               f" WHERE o.contract_id = %s AND {waiting_predicate('o')} ORDER BY o.id")


def _step(order, price: Decimal) -> tuple[Decimal | None, bool]:
    """(trail extreme after this price, due?) of a waiting order (a model or a `WAITING_SQL` row's namespace)."""
    if order.order_type == OrderType.TRAILING_STOP_MARKET:
        return trailing_step(side=order.side, price=price, extreme=order.trail_extreme,
                             activation_price=order.activation_price, callback_rate=order.callback_rate)
    return order.trail_extreme, is_triggered(order_type=order.order_type, side=order.side,
                                             stop_price=order.stop_price, price=price)


class _Row:
    __slots__ = ("pk", "order_type", "side", "working_type", "stop_price", "trail_extreme", "activation_price",
                 "callback_rate")

    def __init__(self, row):
        (self.pk, self.order_type, self.side, self.working_type, self.stop_price, self.trail_extreme,
         self.activation_price, self.callback_rate) = row


def triggers_fire(*, contract, waiting: list[tuple] | None = None) -> tuple[list[Order], dict[int, Decimal]]:
    """Fire what is due; returns the fired orders and the margin to release per user (expired ones).

    The waiting orders (`waiting`: their `WAITING_COLUMNS` rows, if the caller read them) are
    judged first on an unlocked read; only those that fire or move their trailing extreme are
    then locked (SKIP LOCKED), read again and judged again on the locked rows, which decides.
    A cancel that committed in between is seen there."""
    if waiting is None:
        with connection.cursor() as cursor:
            cursor.execute(WAITING_SQL, [contract.pk])
            waiting = cursor.fetchall()
    rows = [_Row(r) for r in waiting]
    if not rows:
        return [], {}
    mark = mark_price(contract)
    last = last_price(contract) if any(r.working_type == WorkingType.CONTRACT_PRICE for r in rows) else None
    candidates = []
    for row in rows:
        price = mark if row.working_type == WorkingType.MARK_PRICE else last
        if price is None:
            continue
        extreme, due = _step(row, price)
        if due or extreme != row.trail_extreme:
            candidates.append(row.pk)
    if not candidates:
        return [], {}
    fired: list[Order] = []
    trailed: list[Order] = []
    for order in _waiting(contract).filter(pk__in=candidates):
        price = mark if order.working_type == WorkingType.MARK_PRICE else last
        if price is None:
            continue
        extreme, due = _step(order, price)
        if extreme != order.trail_extreme:
            order.trail_extreme = extreme
            trailed.append(order)
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
