"""Helpers shared by the matcher tests: expected-event constructors and runners."""
from __future__ import annotations

import numpy as np

from matching_native import (
    COMMAND_DTYPE, EVENT_DTYPE, ORDER_DTYPE, POSITION_DTYPE, EventKind, Flag, Op, Reason, Side, Stp,
)

LIMIT, IOC, FOK, POST, MARKET, CANCEL, AMEND = (
    Op.LIMIT, Op.IOC, Op.FOK, Op.POST_ONLY, Op.MARKET, Op.CANCEL, Op.AMEND)
BUY, SELL = Side.BUY, Side.SELL

_MASK = (1 << 64) - 1


def _ev(kind, reason=0, side=0, flags=0, op=0, oid=0, owner=0, maker_oid=0, maker_owner=0,
        price=0, qty=0, leaves=0, maker_leaves=0):
    return (int(kind), int(reason), int(side), int(flags), int(op), oid, owner, maker_oid,
            maker_owner, price, qty, leaves, maker_leaves)


def fill(op, side, taker, towner, maker, mowner, price, qty, leaves, maker_leaves):
    flags = (Flag.MAKER_DONE if maker_leaves == 0 else 0) | (Flag.TAKER_DONE if leaves == 0 else 0)
    return _ev(EventKind.FILL, 0, side, flags, op, taker, towner, maker, mowner, price, qty,
               leaves, maker_leaves)


def rested(op, side, oid, owner, price, qty):
    return _ev(EventKind.RESTED, 0, side, 0, op, oid, owner, price=price, qty=qty, leaves=qty)


def cancelled(op, reason, side, oid, owner, price, qty, leaves=0):
    return _ev(EventKind.CANCELLED, reason, side, 0, op, oid, owner, price=price, qty=qty, leaves=leaves)


def amended(side, oid, owner, price, qty, kept):
    return _ev(EventKind.AMENDED, 0, side, Flag.PRIORITY_KEPT if kept else 0, AMEND, oid, owner,
               price=price, qty=qty, leaves=qty)


def rejected(op, reason, side, oid, owner, price, qty):
    return _ev(EventKind.REJECTED, reason, side, 0, op, oid, owner, price=price, qty=qty)


def as_tuples(raw: bytes) -> list[tuple]:
    return [tuple(int(x) for x in row) for row in np.frombuffer(raw, EVENT_DTYPE).tolist()]


def submit(book, op, side, oid, owner, price, qty, stp=0, reduce_only=False) -> list[tuple]:
    """One command through the single-call path; returns its events as tuples."""
    book.clear_events()
    if reduce_only:
        n = book.submit(op, side, oid, owner, price, qty, stp, reduce_only=True)
    else:
        n = book.submit(op, side, oid, owner, price, qty, stp)
    evs = as_tuples(book.events())
    assert len(evs) == n
    return evs


def cmd_array(rows) -> np.ndarray:
    """COMMAND_DTYPE records from (op, side, oid, owner, price, qty, stp[, flags]) rows."""
    arr = np.zeros(len(rows), COMMAND_DTYPE)
    for i, (op, side, oid, owner, price, qty, stp, *flags) in enumerate(rows):
        arr[i] = (op, side, stp, flags[0] if flags else 0, oid, owner, price, qty)
    return arr


def pos_array(positions) -> np.ndarray:
    """POSITION_DTYPE records from a {owner: lots} dict."""
    arr = np.zeros(len(positions), POSITION_DTYPE)
    for i, (owner, lots) in enumerate(positions.items()):
        arr[i] = (owner, lots)
    return arr


def positions_dict(book) -> dict[int, int]:
    return {int(o): int(q) for o, q in np.frombuffer(book.positions(), POSITION_DTYPE).tolist()}


def snapshot_hash(raw: bytes, positions: bytes = b"") -> int:
    """state_hash() recomputed independently from a snapshot and positions() (same mixing rule)."""
    h = 0xCBF29CE484222325

    def mix(h, v):
        h = ((h ^ (v & _MASK)) * 0x100000001B3) & _MASK
        return h ^ (h >> 32)

    rows = np.frombuffer(raw, ORDER_DTYPE).tolist()
    for oid, owner, price, qty, side, flags in rows:
        for v in (side | flags << 8, price, oid, owner, qty):
            h = mix(h, v)
    h = mix(h, len(rows))
    pos = sorted(np.frombuffer(positions, POSITION_DTYPE).tolist())
    if pos:
        for owner, lots in pos:
            h = mix(mix(h, owner), lots)
        h = mix(h, len(pos))
    return h


__all__ = [
    "LIMIT", "IOC", "FOK", "POST", "MARKET", "CANCEL", "AMEND", "BUY", "SELL", "Reason", "Stp",
    "fill", "rested", "cancelled", "amended", "rejected", "as_tuples", "submit", "cmd_array",
    "pos_array", "positions_dict", "snapshot_hash",
]
