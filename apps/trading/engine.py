"""A contract's book in the C matcher and the conversions at its boundary.

`SymbolEngine` owns one `matching_native.Book`: it rebuilds it from the resting
orders in priority order, turns journal commands into the C command records (integer
ticks and lots, exact), and hands back the events with, for each command, the range
of events it produced.
"""
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from apps.contracts.grid import Grid
from apps.contracts.models import Contract
from apps.positions.models import Position
from matching_native import (COMMAND_DTYPE, EVENT_DTYPE, ORDER_DTYPE, POSITION_DTYPE, Book, CommandFlag, EventKind,
                             Op, Side, Stp)

from .models import (MARKET_TYPES, RESTING_STATUSES, CommandKind, Order, Side as OrderSide, StpMode,
                     TimeInForce)

OP_FOR_TIME_IN_FORCE = {
    TimeInForce.GTC: Op.LIMIT,
    TimeInForce.IOC: Op.IOC,
    TimeInForce.FOK: Op.FOK,
    TimeInForce.GTX: Op.POST_ONLY,
}
STP_CODES = {
    StpMode.NONE: Stp.NONE,
    StpMode.EXPIRE_TAKER: Stp.EXPIRE_TAKER,
    StpMode.EXPIRE_MAKER: Stp.EXPIRE_MAKER,
    StpMode.EXPIRE_BOTH: Stp.EXPIRE_BOTH,
}
SIDE_CODES = {OrderSide.BUY: Side.BUY, OrderSide.SELL: Side.SELL}


def _flags(reducing: bool) -> int:
    return CommandFlag.REDUCE_ONLY if reducing else 0


@dataclass
class EngineRun:
    events: np.ndarray  # EVENT_DTYPE
    offsets: np.ndarray  # command i produced events[offsets[i]:offsets[i + 1]]


class SymbolEngine:
    def __init__(self, contract):
        self.contract = contract
        self.grid = Grid.of(contract)
        self.book = Book(self.grid.ticks(contract.min_price), self.grid.ticks(contract.max_price), 1 << 16)
        self.next_priority = 1
        self.book_version = 0  # the contract's `book_version` this book was built at
        # Close-only: the opening orders resting from before have been taken out of this book
        # (`apps.trading.matching`); False again after a rebuild or once the contract trades.
        self.opening_swept = False

    def rebuild(self) -> int:
        """Load the resting orders of the contract into an empty book, in priority order, and
        the positions (the book cuts reduce-only orders at them as it matches)."""
        self.opening_swept = False
        # The version before the orders: a change committed between the two reads is seen as
        # a new version by the next batch, which rebuilds again.
        self.book_version = Contract.objects.values_list("book_version", flat=True).get(pk=self.contract.pk)
        rows = list(
            Order.objects.filter(contract=self.contract, status__in=RESTING_STATUSES, priority__isnull=False)
            .order_by("priority")
            .values_list("pk", "user_id", "price", "quantity", "executed_qty", "side", "reduce_only",
                         "close_position", "priority")
        )
        snapshot = np.zeros(len(rows), ORDER_DTYPE)
        for i, (pk, user_id, price, quantity, executed, side, reduce_only, close_position, _) in enumerate(rows):
            snapshot[i] = (pk, user_id, self.grid.ticks(price), self.grid.lots(quantity - executed), SIDE_CODES[side],
                           _flags(reduce_only or close_position))
        self.book.clear()
        self.book.restore(snapshot.tobytes())
        self.book.events()
        self._positions_set(Position.objects.filter(contract=self.contract).exclude(size=0)
                            .values_list("user_id", "size"))
        self.next_priority = (rows[-1][-1] + 1) if rows else 1
        return len(rows)

    def positions_sync(self, user_ids) -> None:
        """Set these users' positions in the book from the database (absent: flat). The book follows
        every fill itself; this makes a batch's reducing orders judge the stored positions even if
        they were changed without the book (a test, an operator), at one read per such batch."""
        sizes = dict.fromkeys(user_ids, Decimal(0))
        sizes.update(Position.objects.filter(contract=self.contract, user_id__in=sizes).values_list("user_id", "size"))
        self._positions_set(sizes.items())

    def _positions_set(self, rows) -> None:
        rows = list(rows)
        positions = np.zeros(len(rows), POSITION_DTYPE)
        for i, (user_id, size) in enumerate(rows):
            positions[i] = (user_id, self.grid.lots(size))
        self.book.set_positions(positions)

    def command_records(self, commands) -> np.ndarray:
        """C command records for journal commands (each with its `order` loaded). Reduce-only and
        close-position orders carry the REDUCE_ONLY flag: the book cuts them at the position."""
        records = np.zeros(len(commands), COMMAND_DTYPE)
        grid = self.grid
        for i, command in enumerate(commands):
            order = command.order
            if command.kind == CommandKind.NEW:
                if order.order_type in MARKET_TYPES:
                    op, price = Op.MARKET, order.protection_price
                else:
                    op, price = OP_FOR_TIME_IN_FORCE[order.time_in_force], order.price
                records[i] = (op, SIDE_CODES[order.side], STP_CODES[order.stp_mode],
                              _flags(order.reduce_only or order.close_position), order.pk, order.user_id,
                              grid.ticks(price), grid.lots(order.quantity - order.executed_qty))
            elif command.kind == CommandKind.CANCEL:
                records[i] = (Op.CANCEL, 0, 0, 0, order.pk, order.user_id, 0, 0)
            else:
                new_price = grid.ticks(command.price) if command.price is not None else 0
                records[i] = (Op.AMEND, 0, 0, 0, order.pk, order.user_id, new_price,
                              grid.lots(command.quantity - order.executed_qty))
        return records

    def run(self, commands) -> EngineRun:
        """Execute journal commands in order. An AMEND sets the order's total quantity, while the
        C command takes the new open quantity: what the order has filled is subtracted, counting
        the fills of the commands before it in this run, so the run is cut before each AMEND.
        One the fills have overtaken (nothing left open) goes in as 0, which the book rejects."""
        records = self.command_records(commands)
        amended = {int(records[i]["oid"]) for i, c in enumerate(commands) if c.kind == CommandKind.AMEND}
        if not amended:
            return self.execute(records)
        starts = sorted({0, *(i for i, c in enumerate(commands) if c.kind == CommandKind.AMEND)})
        events, offsets, count = [], [np.zeros(1, np.int64)], 0
        filled: dict[int, int] = {}  # amended order id -> lots filled in this run so far
        for start, end in zip(starts, [*starts[1:], len(records)]):
            first = records[start]
            if first["op"] == Op.AMEND:
                first["qty"] = max(0, int(first["qty"]) - filled.get(int(first["oid"]), 0))
            part = self.execute(records[start:end])
            for event in part.events[part.events["kind"] == EventKind.FILL]:
                for oid in (int(event["oid"]), int(event["maker_oid"])):
                    if oid in amended:
                        filled[oid] = filled.get(oid, 0) + int(event["qty"])
            events.append(part.events)
            offsets.append(part.offsets[1:] + count)
            count += len(part.events)
        return EngineRun(events=np.concatenate(events), offsets=np.concatenate(offsets))

    def execute(self, records: np.ndarray) -> EngineRun:
        offsets = np.zeros(len(records) + 1, np.int64)
        self.book.execute(records, offsets)
        events = np.frombuffer(self.book.events(), dtype=EVENT_DTYPE)
        return EngineRun(events=events, offsets=offsets)

    def take_priority(self) -> int:
        priority = self.next_priority
        self.next_priority += 1
        return priority
