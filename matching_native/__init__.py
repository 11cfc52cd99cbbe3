"""Native (C) price-time priority order book, one `Book` per symbol.

Everything is integer: prices in ticks, quantities in lots. The full description
with examples is in ``matching_native/README.md``; this docstring lists every
record field and code.

Entry points
------------
``Book(min_tick, max_tick, capacity=1024)``
    ``1 <= min_tick <= max_tick``, band at most ``MAX_LEVELS`` (2**28) ticks;
    ``capacity`` presizes the resting-order pool (doubles when full, up to
    ``MAX_ORDERS`` = 2**26).
``book.submit(op, side, oid, owner, price, qty, stp=0, *, reduce_only=False) -> int``
    one command (``reduce_only`` sets ``CommandFlag.REDUCE_ONLY``);
    ``limit/ioc/fok/post_only/market(side, oid, owner, price, qty, stp=0, *, reduce_only=False)``,
    ``cancel(oid)``, ``amend(oid, qty, price=0)`` are shorthands. Each returns the
    number of events appended to the book's pending event buffer.
``book.execute(commands, offsets=None) -> int``
    a batch: any C-contiguous buffer of ``COMMAND_DTYPE`` records. Produces the
    same events as one ``submit`` per command. Optional ``offsets`` (writable
    int64, n+1 items) receives the index of each command's first event.
``book.events(clear=True) -> bytes``
    the pending events as ``EVENT_DTYPE`` records; ``events_array(book)`` wraps
    them in a numpy array.
``book.read_events(out) -> int``
    moves pending events into a preallocated writable buffer (no allocation).
Queries: ``best_bid()``, ``best_ask()`` (int or None), ``depth(n)`` ->
``(bids, asks)`` lists of ``(price, total_qty, order_count)`` best first,
``impact_price(side, notional)`` -> exact ``(numerator, denominator)`` or None,
``get(oid)`` -> ``(side, price, qty, owner)`` or None, ``snapshot()`` ->
``ORDER_DTYPE`` bytes in priority order, ``restore(snapshot)``, ``clear()``,
``state_hash()`` -> uint64, ``validate()`` (raises ``BookInvariantError``),
``order_count`` / ``len(book)``, ``memory_bytes()``.
Positions: ``set_positions(positions)`` (any C-contiguous buffer of
``POSITION_DTYPE`` records: each owner's position is replaced, lots 0 removes
it, other owners untouched; ValueError if a ``|lots|`` exceeds ``MAX_POSITION``
= 2**62), ``position(owner)`` -> int (0 if none), ``positions()`` -> the non-zero
positions as ``POSITION_DTYPE`` bytes by ascending owner, ``position_count``.
``clear()`` removes the orders and the positions; ``snapshot()``/``restore()``
carry the orders only (a rebuild restores the orders, then ``set_positions``).
``state_hash()`` covers the positions too; ``validate()`` checks the map.

Positions and reduce-only orders
--------------------------------
The book keeps a signed position in lots per owner (long > 0, short < 0).
Every FILL moves both: a BUY taker gains ``qty`` and its maker loses it, a SELL
taker the opposite (the same owner on both sides: no change), whether or not
an order is reduce-only. reducible(owner, side) = max(0, position) for a SELL,
max(0, -position) for a BUY: what an order of that side may still reduce.

* Reduce-only taker (new order with ``flags`` bit REDUCE_ONLY, after the checks
  that produce REJECTED): if qty > allowed = reducible(owner, side), a CANCELLED
  event, reason REDUCE_ONLY, qty = the lots removed (qty - allowed), leaves =
  allowed (0: the order is finished, nothing else happens), price = command
  price; the order goes on with qty = allowed (post-only check, matching,
  resting of a GTC/POST_ONLY remainder, which keeps the flag). A FOK with qty >
  allowed is cancelled whole with FOK_NOT_FILLABLE instead (no REDUCE_ONLY event).
  Its own fills reduce its position, so it is not checked again in the sweep.
* Reduce-only maker (resting order with the flag), when the sweep reaches it
  (after self-trade prevention, which is unchanged and comes first): allowed = reducible(maker
  owner, maker side). If 0, the maker is removed with a CANCELLED event, reason
  REDUCE_ONLY, qty = its open qty, leaves 0, op = the taker's op, and the sweep
  goes on. Otherwise it fills min(taker remaining, maker open, allowed) (a
  normal FILL); if it then still has open qty but nothing left to reduce, it is
  removed the same way. (Against its own owner's taker, STP NONE, a fill nets
  0, so the maker stays first and is filled again, each fill capped likewise.)
* The FOK fillability check counts reduce-only makers as 0 lots: conservative, a
  FOK that passes is filled completely (the makers the sweep skips or cuts are
  reduce-only ones, which were not counted); a FOK may be refused although the
  reduce-only makers would have filled it.
* AMEND keeps the flag; CANCEL and AMEND ignore the command's ``flags``.

COMMAND_DTYPE (40 bytes)
------------------------
=====  ======  ====  ==========================================================
off    field   type  meaning
=====  ======  ====  ==========================================================
0      op      u1    ``Op`` code
1      side    u1    ``Side`` code (ignored by CANCEL and AMEND)
2      stp     u1    ``Stp`` mode of the taker (new orders only)
3      flags   u1    ``CommandFlag`` bits (new orders only; other bits ignored)
4      --      4x    padding, ignored
8      oid     i8    order id (CANCEL/AMEND: the order to act on)
16     owner   i8    owner (account) id, used for self-trade prevention
24     price   i8    limit price in ticks; MARKET: protection price; AMEND: new
                     price, 0 = keep; CANCEL: ignored
32     qty     i8    quantity in lots (1..MAX_QTY); AMEND: new open quantity
=====  ======  ====  ==========================================================

EVENT_DTYPE (72 bytes)
----------------------
=====  ============  ====  ====================================================
off    field         type  meaning
=====  ============  ====  ====================================================
0      kind          u1    ``EventKind``
1      reason        u1    ``Reason`` (0 for FILL, RESTED, AMENDED)
2      side          u1    side of order ``oid`` (the taker for FILL; the raw
                           command side for REJECTED)
3      flags         u1    ``Flag`` bits: MAKER_DONE, TAKER_DONE (FILL),
                           PRIORITY_KEPT (AMENDED)
4      op            u1    op of the command that caused the event
5      --            3x    padding, always zero
8      oid           i8    FILL: taker order id; else the order concerned
16     owner         i8    owner of ``oid``
24     maker_oid     i8    FILL: maker order id; else 0
32     maker_owner   i8    FILL: maker owner; else 0
40     price         i8    FILL: execution (maker) price; RESTED/CANCELLED: order
                           price; AMENDED: new price; REJECTED: command price
48     qty           i8    FILL: filled lots; RESTED: open qty; CANCELLED: qty
                           removed; AMENDED: new open qty; REJECTED: command qty
56     leaves        i8    FILL: taker open qty after the fill; RESTED/AMENDED:
                           open qty; CANCELLED REDUCE_ONLY of a taker: qty it
                           keeps; else 0
64     maker_leaves  i8    FILL: maker open qty after the fill; else 0
=====  ============  ====  ====================================================

ORDER_DTYPE (snapshot record, 40 bytes): oid i8 @0, owner i8 @8, price i8 @16,
qty i8 @24 (open qty), side u1 @32, flags u1 @33 (``CommandFlag`` bits of the
resting order: REDUCE_ONLY; restore ignores other bits), 6 padding bytes (zero).

POSITION_DTYPE (16 bytes): owner i8 @0, lots i8 @8 (signed position in lots).

Codes
-----
Op: LIMIT=1 (GTC), IOC=2, FOK=3, POST_ONLY=4, MARKET=5, CANCEL=6, AMEND=7.
Side: BUY=1, SELL=2.
Stp (self-trade prevention when maker owner == taker owner): NONE=0,
EXPIRE_TAKER=1 (taker remainder cancelled, maker untouched), EXPIRE_MAKER=2
(maker cancelled, matching continues), EXPIRE_BOTH=3 (maker then taker cancelled).
EventKind: FILL=1, RESTED=2, CANCELLED=3 (cancelled or expired), AMENDED=4,
REJECTED=5.
Reason, for CANCELLED: USER_CANCEL=1, REMAINDER_EXPIRED=2 (IOC/market
remainder), FOK_NOT_FILLABLE=3, STP_TAKER=4, STP_MAKER=5,
POST_ONLY_WOULD_TAKE=6, REDUCE_ONLY=7 (reduce-only order cut or removed: see
above); for REJECTED: UNKNOWN_ORDER=10 (cancel of an unknown
or already closed order), DUPLICATE_ORDER_ID=11 (oid already resting),
BAD_QTY=12 (qty <= 0 or > MAX_QTY, also amend to 0), PRICE_OUT_OF_BAND=13,
AMEND_UNKNOWN_ORDER=14 (amend of an unknown or already filled/cancelled order),
BAD_OP=15, BAD_SIDE=16, BAD_STP=17, BOOK_FULL=18 (pool cannot grow),
AMEND_WOULD_CROSS=19 (an amend never trades). NONE=0 otherwise.
Flag: MAKER_DONE=1, TAKER_DONE=2, PRIORITY_KEPT=4.
CommandFlag (``flags`` of COMMAND_DTYPE and ORDER_DTYPE): REDUCE_ONLY=1.
"""
from __future__ import annotations

import enum

import numpy as np

from . import _book
from ._book import MAX_LEVELS, MAX_ORDERS, MAX_POSITION, MAX_QTY, Book, BookInvariantError


class Op(enum.IntEnum):
    LIMIT = _book.OP_LIMIT
    IOC = _book.OP_IOC
    FOK = _book.OP_FOK
    POST_ONLY = _book.OP_POST_ONLY
    MARKET = _book.OP_MARKET
    CANCEL = _book.OP_CANCEL
    AMEND = _book.OP_AMEND


class Side(enum.IntEnum):
    BUY = _book.SIDE_BUY
    SELL = _book.SIDE_SELL


class Stp(enum.IntEnum):
    NONE = _book.STP_NONE
    EXPIRE_TAKER = _book.STP_EXPIRE_TAKER
    EXPIRE_MAKER = _book.STP_EXPIRE_MAKER
    EXPIRE_BOTH = _book.STP_EXPIRE_BOTH


class EventKind(enum.IntEnum):
    FILL = _book.EV_FILL
    RESTED = _book.EV_RESTED
    CANCELLED = _book.EV_CANCELLED
    AMENDED = _book.EV_AMENDED
    REJECTED = _book.EV_REJECTED


class Reason(enum.IntEnum):
    NONE = _book.R_NONE
    USER_CANCEL = _book.R_USER_CANCEL
    REMAINDER_EXPIRED = _book.R_REMAINDER_EXPIRED
    FOK_NOT_FILLABLE = _book.R_FOK_NOT_FILLABLE
    STP_TAKER = _book.R_STP_TAKER
    STP_MAKER = _book.R_STP_MAKER
    POST_ONLY_WOULD_TAKE = _book.R_POST_ONLY_WOULD_TAKE
    REDUCE_ONLY = _book.R_REDUCE_ONLY
    UNKNOWN_ORDER = _book.R_UNKNOWN_ORDER
    DUPLICATE_ORDER_ID = _book.R_DUPLICATE_ORDER_ID
    BAD_QTY = _book.R_BAD_QTY
    PRICE_OUT_OF_BAND = _book.R_PRICE_OUT_OF_BAND
    AMEND_UNKNOWN_ORDER = _book.R_AMEND_UNKNOWN_ORDER
    BAD_OP = _book.R_BAD_OP
    BAD_SIDE = _book.R_BAD_SIDE
    BAD_STP = _book.R_BAD_STP
    BOOK_FULL = _book.R_BOOK_FULL
    AMEND_WOULD_CROSS = _book.R_AMEND_WOULD_CROSS


class Flag(enum.IntFlag):
    MAKER_DONE = _book.F_MAKER_DONE
    TAKER_DONE = _book.F_TAKER_DONE
    PRIORITY_KEPT = _book.F_PRIORITY_KEPT


class CommandFlag(enum.IntFlag):
    REDUCE_ONLY = _book.CF_REDUCE_ONLY


COMMAND_DTYPE = np.dtype(
    {
        "names": ["op", "side", "stp", "flags", "oid", "owner", "price", "qty"],
        "formats": ["u1", "u1", "u1", "u1", "<i8", "<i8", "<i8", "<i8"],
        "offsets": [0, 1, 2, 3, 8, 16, 24, 32],
        "itemsize": 40,
    }
)

EVENT_DTYPE = np.dtype(
    {
        "names": [
            "kind", "reason", "side", "flags", "op",
            "oid", "owner", "maker_oid", "maker_owner", "price", "qty", "leaves", "maker_leaves",
        ],
        "formats": ["u1"] * 5 + ["<i8"] * 8,
        "offsets": [0, 1, 2, 3, 4, 8, 16, 24, 32, 40, 48, 56, 64],
        "itemsize": 72,
    }
)

ORDER_DTYPE = np.dtype(
    {
        "names": ["oid", "owner", "price", "qty", "side", "flags"],
        "formats": ["<i8", "<i8", "<i8", "<i8", "u1", "u1"],
        "offsets": [0, 8, 16, 24, 32, 33],
        "itemsize": 40,
    }
)

POSITION_DTYPE = np.dtype(
    {
        "names": ["owner", "lots"],
        "formats": ["<i8", "<i8"],
        "offsets": [0, 8],
        "itemsize": 16,
    }
)


def commands(rows) -> np.ndarray:
    """Build a ``COMMAND_DTYPE`` array from ``(op, side, oid, owner, price, qty[, stp[, flags]])`` rows."""
    rows = list(rows)
    arr = np.zeros(len(rows), COMMAND_DTYPE)
    for i, row in enumerate(rows):
        op, side, oid, owner, price, qty, *rest = row
        stp = rest[0] if rest else 0
        flags = rest[1] if len(rest) > 1 else 0
        arr[i] = (op, side, stp, flags, oid, owner, price, qty)
    return arr


def positions(rows) -> np.ndarray:
    """Build a ``POSITION_DTYPE`` array from ``(owner, lots)`` pairs or a ``{owner: lots}`` dict."""
    rows = list(rows.items()) if isinstance(rows, dict) else list(rows)
    arr = np.zeros(len(rows), POSITION_DTYPE)
    for i, (owner, lots) in enumerate(rows):
        arr[i] = (owner, lots)
    return arr


def positions_array(book) -> np.ndarray:
    """``book.positions()`` as a ``POSITION_DTYPE`` array."""
    return np.frombuffer(book.positions(), POSITION_DTYPE)


def events_array(book, clear: bool = True) -> np.ndarray:
    """The pending events of ``book`` as a (writable) ``EVENT_DTYPE`` array."""
    return np.frombuffer(bytearray(book.events(clear)), EVENT_DTYPE)


def execute(book, cmds) -> np.ndarray:
    """Run a ``COMMAND_DTYPE`` array through ``book.execute``; return its events.

    Checks the dtype (``book.execute`` itself only checks the record size) and
    drops events that were pending before the call.
    """
    if isinstance(cmds, np.ndarray) and cmds.dtype != COMMAND_DTYPE:
        raise TypeError(f"commands must have COMMAND_DTYPE, got {cmds.dtype}")
    book.clear_events()
    book.execute(np.ascontiguousarray(cmds))
    return events_array(book)


def snapshot_array(book) -> np.ndarray:
    """``book.snapshot()`` as an ``ORDER_DTYPE`` array."""
    return np.frombuffer(book.snapshot(), ORDER_DTYPE)


__all__ = [
    "Book", "BookInvariantError", "Op", "Side", "Stp", "EventKind", "Reason", "Flag", "CommandFlag",
    "COMMAND_DTYPE", "EVENT_DTYPE", "ORDER_DTYPE", "POSITION_DTYPE", "MAX_QTY", "MAX_LEVELS",
    "MAX_ORDERS", "MAX_POSITION", "commands", "events_array", "execute", "positions",
    "positions_array", "snapshot_array",
]
