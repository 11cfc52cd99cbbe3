"""One matcher batch: pending journal commands → C book → one booked transaction.

`batch_process` first fires the contract's due conditional orders (`triggers.py`,
journalling them), then reads the contract's PENDING commands in `seq` order, matches them in
the C book, and in ONE database transaction inserts the trades, updates the orders,
books fills and released margin through `apps.positions.booking.fills_book`, and marks
the commands DONE. If anything fails the transaction rolls back and the caller
rebuilds the book from the database, so the batch replays with the same result.
Events go out to Redis only after commit.
"""
import json
import logging
import time
from collections import defaultdict, namedtuple
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
from django.db import connection, models, transaction
from django.utils import timezone

from apps.contracts.lifecycle import ACCEPTING_STATUSES
from apps.contracts.models import ContractStatus
from apps.ops.metrics import POSITION_UPDATE, measure_latency
from apps.positions.booking import Fill, fills_book, incomes_record
from matching_native import COMMAND_DTYPE, EVENT_DTYPE, EventKind, Flag, Op, Reason
from matching_native import Side as BookSide

from exchange.pgbulk import array_literal, ids_reserve, rows_copy, text_literals
from exchange.redis import channel, get_redis

from .engine import SymbolEngine
from .margin import hold_release, order_hold
from .models import (OPEN_STATUSES, RESTING_STATUSES, CommandKind, CommandStatus, Order, OrderStatus, OrderType, Side,
                     Trade)
from .rules import reduce_only_excess
from .triggers import WAITING_COLUMNS, triggers_fire, waiting_predicate

logger = logging.getLogger(__name__)
EVENTS_CHANNEL = channel("events:{symbol}")
# Cancellations of resting orders (the others are remainders of takers that never rested).
LEFT_THE_BOOK = (Reason.USER_CANCEL, Reason.STP_MAKER, Reason.REDUCE_ONLY)
# Resting makers expired while another order's command matches: by self-trade prevention, and
# reduce-only ones with nothing left to reduce (the book follows the positions).
MAKER_EXPIRIES = (Reason.STP_MAKER, Reason.REDUCE_ONLY)
DEPTH_LEVELS = 1000  # depth changes are reported for the top this many levels per side
# A batch's events as Python tuples of ints, compared with the codes as ints: a field of a NumPy
# record, or a member looked up on an IntEnum class, costs several times the comparison itself
# (and NumPy probes an IntEnum for the array protocol on every comparison with a record field).
_Event = namedtuple("_Event", EVENT_DTYPE.names)
_FILL, _RESTED, _CANCELLED, _AMENDED, _REJECTED = (int(k) for k in (
    EventKind.FILL, EventKind.RESTED, EventKind.CANCELLED, EventKind.AMENDED, EventKind.REJECTED))
_REDUCE_ONLY, _USER_CANCEL = int(Reason.REDUCE_ONLY), int(Reason.USER_CANCEL)
_BUY, _SELL = int(BookSide.BUY), int(BookSide.SELL)

# The batch's reads are plain SQL into tuples: compiling the ORM's queries cost more CPU than
# running them. An order is a plain row of what the batch reads of it: building a model per
# order (its __init__, its foreign-key descriptors, the timestamps it never reads) cost more
# CPU than booking it.
_ORDER_FIELDS = ("id", "user_id", "client_order_id", "side", "order_type", "time_in_force", "price",
                 "protection_price", "stop_price", "working_type", "close_position", "price_protect", "quantity",
                 "executed_qty", "cum_quote", "reduce_only", "status", "margin_held", "leverage", "stp_mode", "priority")
_ORDER_COLUMNS = ", ".join(f'o."{Order._meta.get_field(name).column}"' for name in _ORDER_FIELDS)


class _OrderRow(namedtuple("_OrderRow", _ORDER_FIELDS)):
    """An order as the batch reads it (the attribute names of `Order`, which stands in for it where
    a batch gets models: fired conditional orders, the ORM's reads)."""

    __slots__ = ()

    @property
    def pk(self) -> int:
        return self.id


# An order the book holds (resting, with a time priority): one predicate for every read of them.
_IN_BOOK = f"o.status IN ({text_literals(RESTING_STATUSES)}) AND o.priority IS NOT NULL"
# The contract's status FOR SHARE (`status_share_lock`: a lifecycle change waits for this batch)
# with whether any command is pending and its waiting conditional orders (`triggers_fire`), in one
# round trip: a batch with nothing to do (the idle worker's poll) ends there.
STATUS_WAITING_SQL = (
    "SELECT c.status, c.book_version, EXISTS (SELECT FROM trading_ordercommand p WHERE p.contract_id = c.id"
    f" AND p.status = '{CommandStatus.PENDING}'), {', '.join('o.' + c for c in WAITING_COLUMNS)}"
    " FROM contracts_contract c"
    f" LEFT JOIN trading_order o ON o.contract_id = c.id AND {waiting_predicate('o')}"
    " WHERE c.id = %s ORDER BY o.id FOR SHARE OF c"
)
# Pending commands in journal order with their orders (the partial index command_pending_by_contract).
COMMANDS_SQL = (
    f"SELECT c.seq, c.kind, c.price, c.quantity, c.margin_added, {_ORDER_COLUMNS}"
    " FROM trading_ordercommand c JOIN trading_order o ON o.id = c.order_id"
    f" WHERE c.contract_id = %s AND c.status = '{CommandStatus.PENDING}' ORDER BY c.seq LIMIT %s"
)
# The makers of the batch's fills, and the resting reduce-only orders of every account that
# filled (`_reduce_only_excess`), in one round trip.
FILL_ORDERS_SQL = (
    f"SELECT {_ORDER_COLUMNS} FROM trading_order o WHERE o.id = ANY(%s::bigint[])"
    f" UNION ALL SELECT {_ORDER_COLUMNS} FROM trading_order o"
    " WHERE o.contract_id = %s AND o.user_id = ANY(%s::int[])"
    f" AND {_IN_BOOK}"
    " AND (o.reduce_only OR o.close_position)"
)


_order = _OrderRow._make


class _Command:
    """A pending journal command with its order (what the batch reads of an `OrderCommand`)."""

    __slots__ = ("seq", "kind", "price", "quantity", "margin_added", "order")

    def __init__(self, row):
        self.seq, self.kind, self.price, self.quantity, self.margin_added = row[:5]
        self.order = _order(row[5:])

    @property
    def order_id(self) -> int:
        return self.order.pk


def _status_and_waiting(contract_id: int) -> tuple[str, int, bool, list[tuple]]:
    """(status, book version, any command pending?, waiting conditional orders' rows)."""
    with connection.cursor() as cursor:
        cursor.execute(STATUS_WAITING_SQL, [contract_id])
        rows = cursor.fetchall()
    return rows[0][0], rows[0][1], rows[0][2], [row[3:] for row in rows if row[3] is not None]


def _pending_commands(contract_id: int, limit: int) -> list[_Command]:
    with connection.cursor() as cursor:
        cursor.execute(COMMANDS_SQL, [contract_id, limit])
        return [_Command(row) for row in cursor.fetchall()]


@dataclass
class _OrderState:
    order: "_OrderRow | Order"
    open_qty: Decimal
    held: Decimal
    executed: Decimal
    cum_quote: Decimal
    status: str
    priority: int | None
    quantity: Decimal
    price: Decimal | None
    changed: bool = False

    @classmethod
    def of(cls, order: "_OrderRow | Order") -> "_OrderState":
        return cls(order=order, open_qty=order.quantity - order.executed_qty, held=order.margin_held,
                   executed=order.executed_qty, cum_quote=order.cum_quote, status=order.status,
                   priority=order.priority, quantity=order.quantity, price=order.price)


@dataclass(slots=True)
class TradeRow:
    """A trade of the batch: written by COPY (`_trades_write` sets `pk` and `created_at`) and published."""

    price: Decimal
    quantity: Decimal
    taker_order_id: int
    maker_order_id: int
    taker_side: str
    command_seq: int
    taker_fee: Decimal = Decimal(0)
    maker_fee: Decimal = Decimal(0)
    taker_realized_pnl: Decimal = Decimal(0)
    maker_realized_pnl: Decimal = Decimal(0)
    pk: int = 0
    created_at: object = None


BATCH_LIMIT = 2000  # commands per batch


@dataclass
class BatchResult:
    commands: int
    trades: list = field(default_factory=list)  # TradeRow, in execution order
    seconds: float = 0.0
    liquidation_kicked: bool = False  # a liquidation's next step was asked for after commit


def batch_process(engine: SymbolEngine, *, limit: int = BATCH_LIMIT) -> BatchResult | None:
    contract = engine.contract
    started = time.perf_counter()
    with transaction.atomic(durable=True):
        # FOR SHARE: a lifecycle change (halt, settling) waits for this batch, and the next
        # batch sees it. While the contract does not match, nothing fires and new orders and
        # amends are refused; cancels still leave the book.
        status, version, pending, waiting = _status_and_waiting(contract.pk)
        # Resting orders changed outside the matcher (an ADL step expired some): the book is
        # rebuilt before anything matches; the levels that changed go out with the batch.
        resynced = _book_resync(engine) if version != engine.book_version else set()
        matching = status in ACCEPTING_STATUSES
        close_only = status == ContractStatus.CLOSE_ONLY
        fired, expired = triggers_fire(contract=contract, waiting=waiting) if matching and waiting else ([], {})
        commands = _pending_commands(contract.pk, limit) if pending or fired else []
        # The commands' orders came with the commands; only resting makers are loaded, and with
        # them the resting reduce-only orders of the accounts that filled (`_reduce_only_excess`).
        orders = {c.order_id: _OrderState.of(c.order) for c in commands}
        # Close-only: no order may open a position any more. Those resting from before leave the
        # book before anything matches (once per close-only period: none can rest again while it
        # lasts), and the new ones still in the journal are refused below (`_refused`).
        opening = list(_opening_orders_cancel(engine, orders)) if close_only and not engine.opening_swept else []
        engine.opening_swept = close_only
        if not commands and not opening and not resynced:
            if expired:  # conditional orders that expired unfired: only their holds to return
                fills_book(contract=contract, fills=[], releases=expired,
                           reference={"symbol": contract.symbol, "expired_conditional": True})
            return None
        refused, live = [], []
        for command in commands:
            if command.kind == CommandKind.NEW and command.order.status not in OPEN_STATUSES:
                continue  # expired before it reached the book (`apps.liquidation.adl`): only marked DONE
            (refused if _refused(command, matching=matching, close_only=close_only) else live).append(command)
        # The book cuts reduce-only and close-position orders at the position as it matches (so no
        # fill can open or flip one, however the batch's commands and sweeps interleave).
        reducing = {c.order.user_id for c in live if c.kind == CommandKind.NEW and _reducing(c.order)}
        if reducing:
            engine.positions_sync(reducing)
        run = engine.run(live)
        events = run.events
        filled = events[events["kind"] == EventKind.FILL]
        fill_users = {int(u) for u in filled["owner"]} | {int(u) for u in filled["maker_owner"]}
        # Resting orders the batch touched without a command of their own: makers that filled,
        # and makers that self-trade prevention expired.
        swept = events["oid"][(events["kind"] == EventKind.CANCELLED) & np.isin(events["reason"], MAKER_EXPIRIES)]
        makers = ({int(x) for x in filled["maker_oid"]} | {int(x) for x in swept}) - orders.keys()
        if makers or fill_users:
            with connection.cursor() as cursor:
                cursor.execute(FILL_ORDERS_SQL, [array_literal(sorted(makers)), contract.pk,
                                                 array_literal(sorted(fill_users))])
                for row in cursor.fetchall():
                    if row[0] not in orders:
                        orders[row[0]] = _OrderState.of(_order(row))
        grid, precision, cs = engine.grid, contract.settle_asset.precision, contract.contract_size

        fills: list[Fill] = []
        trade_rows: list[TradeRow] = []
        releases: dict[int, Decimal] = defaultdict(Decimal, expired)
        # For the after-commit publish: (execution type, order state, status, executed, cum quote,
        # fill index or None, maker?) per order event, and the book levels (side, ticks) touched.
        executions: list[tuple] = []
        touched: set[tuple[int, int]] = set(resynced)

        def report(exec_type: str, state: _OrderState, fill: int | None = None, maker: bool = False) -> None:
            executions.append((exec_type, state, state.status, state.executed, state.cum_quote, fill, maker))

        def fill_side(state: _OrderState, qty: Decimal, price: Decimal) -> None:
            release = hold_release(held=state.held, open_qty=state.open_qty, filled_qty=qty, precision=precision)
            state.held -= release
            releases[state.order.user_id] += release
            state.open_qty -= qty
            state.executed += qty
            state.cum_quote += qty * price * cs
            state.status = OrderStatus.FILLED if state.open_qty == 0 else OrderStatus.PARTIALLY_FILLED
            state.changed = True

        def close(state: _OrderState, status: str) -> None:
            releases[state.order.user_id] += state.held
            state.held = Decimal(0)
            state.status = status
            state.changed = True

        for state, event in opening:
            close(state, OrderStatus.EXPIRED)
            report("EXPIRED", state)
            touched.add((int(event["side"]), int(event["price"])))
        for command in refused:
            if command.kind == CommandKind.NEW:
                close(orders[command.order_id], OrderStatus.REJECTED)
                report("REJECTED", orders[command.order_id])
            elif command.kind == CommandKind.AMEND and command.margin_added:
                releases[command.order.user_id] += command.margin_added
        for index, command in enumerate(live):
            amended = False
            for event in map(_Event._make, events[run.offsets[index]:run.offsets[index + 1]].tolist()):
                kind = event.kind
                state = orders.get(event.oid)
                if kind == _FILL:
                    maker = orders[event.maker_oid]
                    qty, price = grid.quantity(event.qty), grid.price(event.price)
                    fill_side(state, qty, price)
                    fill_side(maker, qty, price)
                    # Liquidation hook: a LIQUIDATION taker carries its bankruptcy price (the order's
                    # `price`) so booking charges the clearance fee and settles the surplus or deficit.
                    liquidating = state.order.order_type == OrderType.LIQUIDATION
                    fills.append(Fill(taker_user_id=state.order.user_id, maker_user_id=maker.order.user_id,
                                      taker_is_buyer=state.order.side == Side.BUY, price=price, quantity=qty,
                                      liquidation_order_id=state.order.pk if liquidating else None,
                                      bankruptcy_price=state.order.price if liquidating else None))
                    trade_rows.append(TradeRow(price=price, quantity=qty, taker_order_id=state.order.pk,
                                               maker_order_id=maker.order.pk, taker_side=state.order.side,
                                               command_seq=command.seq))
                    report("TRADE", state, len(fills) - 1)
                    report("TRADE", maker, len(fills) - 1, maker=True)
                    touched.add((_SELL if event.side == _BUY else _BUY, event.price))
                elif kind == _RESTED:
                    state.priority = engine.take_priority()
                    if state.status == OrderStatus.PENDING_NEW:
                        state.status = OrderStatus.NEW
                    state.changed = True
                    report("NEW", state)
                    touched.add((event.side, event.price))
                elif kind == _CANCELLED and event.reason == _REDUCE_ONLY and event.leaves:
                    # A reduce-only taker cut to what its position lets it reduce (it holds no margin).
                    state.open_qty = grid.quantity(event.leaves)
                    state.quantity = state.executed + state.open_qty
                    state.changed = True
                elif kind == _CANCELLED:
                    user_cancel = event.reason == _USER_CANCEL
                    close(state, OrderStatus.CANCELED if user_cancel else OrderStatus.EXPIRED)
                    report("CANCELED" if user_cancel else "EXPIRED", state)
                    if event.reason in LEFT_THE_BOOK:
                        touched.add((event.side, event.price))
                elif kind == _AMENDED:
                    amended = True
                    if state.price is not None:
                        touched.add((event.side, grid.ticks(state.price)))
                    touched.add((event.side, event.price))
                    state.held += command.margin_added
                    state.open_qty = grid.quantity(event.qty)
                    state.price = grid.price(event.price)
                    state.quantity = state.executed + state.open_qty
                    if not event.flags & Flag.PRIORITY_KEPT:
                        state.priority = engine.take_priority()
                    required = order_hold(quantity=state.open_qty, price=state.price, contract=contract,
                                          leverage=state.order.leverage, reduce_only=state.order.reduce_only)
                    if state.held > required:
                        releases[state.order.user_id] += state.held - required
                        state.held = required
                    state.changed = True
                    report("AMENDMENT", state)
                elif kind == _REJECTED and command.kind == CommandKind.NEW and state is not None:
                    close(state, OrderStatus.REJECTED)
                    report("REJECTED", state)
            if command.kind == CommandKind.AMEND and not amended and command.margin_added:
                releases[command.order.user_id] += command.margin_added  # refused amend: its extra hold returns

        for state, event in _reduce_only_excess(engine, fills, orders, fill_users):
            close(state, OrderStatus.EXPIRED)
            report("EXPIRED", state)
            touched.add((int(event["side"]), int(event["price"])))

        with measure_latency(POSITION_UPDATE):  # the SLA operation "position update" is the booking
            booking = fills_book(contract=contract, fills=fills, releases=dict(releases),
                                 reference={"symbol": contract.symbol, "first_seq": commands[0].seq,
                                            "last_seq": commands[-1].seq} if commands
                                 else {"symbol": contract.symbol, "close_only_expired": len(opening),
                                       "book_resynced": bool(resynced)},
                                 positions_write=False)
        for trade, booked in zip(trade_rows, booking.fills):
            trade.taker_fee, trade.maker_fee = booked.taker_fee, booked.maker_fee
            trade.taker_realized_pnl, trade.maker_realized_pnl = booked.taker_realized_pnl, booked.maker_realized_pnl
        _trades_write(contract, trade_rows)
        if trade_rows:
            incomes_record(contract=contract, fills=fills, booking=booking, trade_ids=[t.pk for t in trade_rows],
                           at=trade_rows[0].created_at)
        _write_orders([s for s in orders.values() if s.changed], [c.seq for c in commands], booking.positions_update)
        result = BatchResult(commands=len(commands), trades=trade_rows)
        levels = _levels(engine, touched)
        last_seq = commands[-1].seq if commands else None
        transaction.on_commit(lambda: _publish(contract, trade_rows, executions, levels, last_seq))
        if any(c.order.order_type == OrderType.LIQUIDATION for c in commands):
            # Liquidation hook: the liquidation's next step is decided once these fills are committed.
            transaction.on_commit(_liquidation_kick)
            result.liquidation_kicked = True
    result.seconds = time.perf_counter() - started
    return result


def _book_resync(engine: SymbolEngine) -> set[tuple[int, int]]:
    """Rebuild the book from the database; the (side, ticks) levels whose total changed."""
    before = _depth(engine)
    resting = engine.rebuild()
    after = _depth(engine)
    logger.info("%s: resting orders changed outside the matcher; book rebuilt with %d", engine.contract.symbol,
                resting)
    return {level for level in before.keys() | after.keys() if before.get(level) != after.get(level)}


def _depth(engine: SymbolEngine) -> dict[tuple[int, int], int]:
    bids, asks = engine.book.depth(DEPTH_LEVELS)
    return {**{(BookSide.BUY, price): qty for price, qty, _ in bids},
            **{(BookSide.SELL, price): qty for price, qty, _ in asks}}


def _liquidation_kick() -> None:
    """Ask a worker to advance the active liquidations now (the beat sweep does it anyway)."""
    try:
        from apps.liquidation.tasks import liquidations_advance_task

        liquidations_advance_task.delay()
    except Exception:
        logger.warning("liquidation kick failed", exc_info=True)


def _refused(command: _Command, *, matching: bool, close_only: bool) -> bool:
    """Refused without reaching the book: all but cancels while the contract does not match
    (new orders rejected, amends' extra holds returned), and a new order that may open a
    position in close-only (accepted before the contract turned close-only)."""
    if command.kind == CommandKind.CANCEL:
        return False
    if not matching:
        return True
    return close_only and command.kind == CommandKind.NEW and not _reducing(command.order)


def _reducing(order: Order) -> bool:
    return order.reduce_only or order.close_position


# The orders resting in the book that may open a position (not reduce-only, not close-position).
OPENING_RESTING_SQL = (
    f"SELECT {_ORDER_COLUMNS} FROM trading_order o WHERE o.contract_id = %s"
    f" AND {_IN_BOOK}"
    " AND NOT o.reduce_only AND NOT o.close_position ORDER BY o.priority"
)


def _opening_orders_cancel(engine: SymbolEngine, orders: dict[int, _OrderState]):
    """Take the resting orders that may open a position out of the book (the contract turned
    close-only); yields (order state, CANCELLED event). States already in `orders` (an order
    with a command in this batch) are used as they are; the others are added."""
    with connection.cursor() as cursor:
        cursor.execute(OPENING_RESTING_SQL, [engine.contract.pk])
        states = [orders.setdefault(row[0], _OrderState.of(_order(row))) for row in cursor.fetchall()]
    yield from _book_cancel(engine, states)


def _book_cancel(engine: SymbolEngine, states: list[_OrderState]):
    """Cancel these orders in the book; yields (order state, CANCELLED event) for those it held."""
    if not states:
        return
    records = np.zeros(len(states), COMMAND_DTYPE)
    for i, state in enumerate(states):
        records[i] = (Op.CANCEL, 0, 0, 0, state.order.pk, state.order.user_id, 0, 0)
    run = engine.execute(records)
    by_order = {int(e["oid"]): e for e in run.events if e["kind"] == EventKind.CANCELLED}
    for state in states:
        event = by_order.get(state.order.pk)
        if event is not None:
            yield state, event


def _reduce_only_excess(engine: SymbolEngine, fills: list[Fill], orders: dict[int, _OrderState],
                        loaded_users: set[int] = frozenset()):
    """Take out of the book the reduce-only orders that the batch's fills left with nothing to reduce.

    A reduce-only order was checked against the position when it was accepted; fills
    since may have shrunk, closed or flipped that position. Per account and side the
    oldest such orders are kept up to the size they may still reduce and the newer ones
    are cancelled here, in the same batch, so a later fill can never open or flip a
    position through them. Yields (order state, CANCELLED event). `loaded_users`: accounts
    whose resting reduce-only orders are in `orders` already.
    """
    contract = engine.contract
    delta: dict[int, Decimal] = defaultdict(Decimal)
    for f in fills:
        delta[f.taker_user_id] += f.quantity if f.taker_is_buyer else -f.quantity
        delta[f.maker_user_id] -= f.quantity if f.taker_is_buyer else -f.quantity
    if not delta:
        return
    if not delta.keys() <= loaded_users:
        for row in (Order.objects.filter(contract=contract, user_id__in=delta.keys(), status__in=RESTING_STATUSES,
                                         priority__isnull=False)
                    .filter(models.Q(reduce_only=True) | models.Q(close_position=True))):
            orders.setdefault(row.pk, _OrderState.of(row))
    resting = sorted(
        (s for s in orders.values()
         if _reducing(s.order) and s.order.user_id in delta
         and s.status in RESTING_STATUSES and s.priority is not None and s.open_qty > 0),
        key=lambda s: s.priority,
    )
    if not resting:
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT user_id, size FROM positions_position WHERE contract_id = %s"
                       " AND user_id = ANY(%s::int[])", [contract.pk, array_literal(sorted(delta))])
        sizes = dict(cursor.fetchall())
    excess = reduce_only_excess(((s.order.user_id, s.order.side, s.open_qty, s) for s in resting),
                                {u: sizes.get(u, Decimal(0)) + d for u, d in delta.items()})
    yield from _book_cancel(engine, excess)


TRADE_COLUMNS = ("id", "contract_id", "price", "quantity", "taker_order_id", "maker_order_id", "taker_side",
                 "taker_fee", "maker_fee", "taker_realized_pnl", "maker_realized_pnl", "command_seq", "created_at")


def _trades_write(contract, rows: list[TradeRow]) -> None:
    """Insert the batch's trades with ids in execution order and one timestamp (the batch's)."""
    if not rows:
        return
    now = timezone.now()
    with connection.cursor() as cursor:
        for row, pk in zip(rows, ids_reserve(cursor, Trade._meta.db_table, len(rows))):
            row.pk, row.created_at = pk, now
        rows_copy(cursor, Trade._meta.db_table, TRADE_COLUMNS, (
            (t.pk, contract.pk, t.price, t.quantity, t.taker_order_id, t.maker_order_id, t.taker_side, t.taker_fee,
             t.maker_fee, t.taker_realized_pnl, t.maker_realized_pnl, t.command_seq, now) for t in rows))


def _write_orders(states: list[_OrderState], seqs: list[int], positions: tuple[str, list] | None = None) -> None:
    """The changed orders, the batch's commands marked DONE and the booked positions (`positions`:
    the UPDATE `fills_book(positions_write=False)` left) in one statement: the other UPDATEs ride in
    a WITH, which PostgreSQL runs exactly once (arrays, not IN lists of thousands of parameters)."""
    ctes = ["done AS (UPDATE trading_ordercommand SET status = %s, processed_at = statement_timestamp()"
            " WHERE seq = ANY(%s::bigint[]))"]
    params = [CommandStatus.DONE, array_literal(seqs)]
    if positions is not None:
        ctes.append(f"moved AS ({positions[0]})")
        params += positions[1]
    head = "WITH " + ", ".join(ctes)
    with connection.cursor() as cursor:
        if not states:
            cursor.execute(head + " SELECT 1", params)
            return
        cursor.execute(
            head + """
            UPDATE trading_order AS o
            SET status = t.status, executed_qty = t.executed, cum_quote = t.cum_quote, margin_held = t.held,
                priority = t.priority, quantity = t.quantity, price = t.price, updated_at = now()
            FROM unnest(%s::bigint[], %s::text[], %s::numeric[], %s::numeric[], %s::numeric[], %s::bigint[],
                        %s::numeric[], %s::numeric[])
                 AS t(id, status, executed, cum_quote, held, priority, quantity, price)
            WHERE o.id = t.id
            """,
            [
                *params,
                array_literal([s.order.pk for s in states]),
                array_literal([s.status for s in states]),
                array_literal([s.executed for s in states]),
                array_literal([s.cum_quote for s in states]),
                array_literal([s.held for s in states]),
                array_literal([s.priority for s in states]),
                array_literal([s.quantity for s in states]),
                array_literal([s.price for s in states]),
            ],
        )


def _text(value) -> str:
    """A decimal as plain digits (no exponent), as the client API sends numbers."""
    return format(value.normalize(), "f") if isinstance(value, Decimal) else str(value)


def _levels(engine: SymbolEngine, touched: set[tuple[int, int]]) -> dict[str, list[list[str]]]:
    """New total quantity of every touched book level ("0" = gone), within the top DEPTH_LEVELS of each side."""
    if not touched:
        return {"bids": [], "asks": []}
    bids, asks = engine.book.depth(DEPTH_LEVELS)
    out = {"bids": [], "asks": []}
    for code, levels, name in ((BookSide.BUY, bids, "bids"), (BookSide.SELL, asks, "asks")):
        totals = {price: qty for price, qty, _ in levels}
        full = len(levels) < DEPTH_LEVELS  # else levels past the last one are unknown here
        worst = levels[-1][0] if levels else None
        for side, price in sorted(touched):
            if side != code:
                continue
            beyond = not full and worst is not None and (price < worst if code == BookSide.BUY else price > worst)
            if beyond:
                continue
            out[name].append([_text(engine.grid.price(price)), _text(engine.grid.quantity(totals.get(price, 0)))])
    return out


def _execution(contract, asset: str, trades: list[TradeRow], entry: tuple) -> dict:
    """An execution report for the relay, which turns those of users with a live listen key into
    ORDER_TRADE_UPDATE events (`apps.accounts.user_stream`, where decimals are normalized: here
    they go as `str()` prints them, most of them for nobody). `asset`: the contract's settle
    asset code (read once per batch: the related-object lookup costs more than the report)."""
    exec_type, state, status, executed, cum_quote, fill, maker = entry
    order = state.order
    trade = trades[fill] if fill is not None else None
    out = {
        "order_id": order.pk, "user_id": order.user_id, "client_order_id": order.client_order_id,
        "side": order.side, "type": order.order_type, "time_in_force": order.time_in_force,
        "orig_qty": str(state.quantity), "price": str(state.price or 0), "stop_price": str(order.stop_price or 0),
        "avg_price": str(cum_quote / (executed * contract.contract_size)) if executed else "0",
        "status": str(status), "exec_type": exec_type, "executed_qty": str(executed),
        "reduce_only": order.reduce_only or order.close_position, "working_type": order.working_type,
        "close_position": order.close_position, "price_protect": order.price_protect, "stp_mode": order.stp_mode,
        "last_qty": "0", "last_price": "0", "commission": "0", "realized_pnl": "0", "trade_id": 0, "is_maker": maker,
        "commission_asset": asset,
    }
    if trade is not None:
        out.update(last_qty=str(trade.quantity), last_price=str(trade.price), trade_id=trade.pk,
                   commission=str(trade.maker_fee if maker else trade.taker_fee),
                   realized_pnl=str(trade.maker_realized_pnl if maker else trade.taker_realized_pnl))
    return out


def expired_report(contract, order: Order) -> dict:
    """The EXPIRED execution report of an order expired outside a batch (an ADL step's trim)."""
    state = _OrderState.of(order)
    return _execution(contract, contract.settle_asset.code, [],
                      ("EXPIRED", state, OrderStatus.EXPIRED, state.executed, state.cum_quote, None, False))


def _publish(contract, trades: list[TradeRow], executions: list[tuple], levels: dict, last_seq: int) -> None:
    """Fan out to websocket groups and user streams; a lost publish loses no data (clients re-read over REST)."""
    try:
        now_ms = int(time.time() * 1000)
        asset = contract.settle_asset.code
        payload = {
            "symbol": contract.symbol, "time": now_ms, "last_seq": last_seq,
            "trades": [
                {"id": t.pk, "price": _text(t.price), "qty": _text(t.quantity), "taker_side": t.taker_side,
                 "taker_order_id": t.taker_order_id, "maker_order_id": t.maker_order_id,
                 "time": int(t.created_at.timestamp() * 1000)}
                for t in trades
            ],
            "orders": [_execution(contract, asset, trades, entry) for entry in executions],
            "depth": levels,
        }
        get_redis().publish(EVENTS_CHANNEL.format(symbol=contract.symbol), json.dumps(payload))
    except Exception:
        logger.warning("event publish for %s failed", contract.symbol, exc_info=True)
