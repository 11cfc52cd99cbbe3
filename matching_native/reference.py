"""Pure-Python reference order book with exactly the semantics of ``_book.Book``.

Slow and simple on purpose: dicts (insertion ordered = FIFO) per price level,
sorted price lists per side. The shared test suite runs against both books and
the property tests require identical event streams, snapshots and state hashes.
It exposes the same methods as the C ``Book`` (events, snapshots and restore use
the same byte layouts).
"""
from __future__ import annotations

import bisect
import operator
from fractions import Fraction

import numpy as np

from . import _book
from ._book import BookInvariantError

LIMIT, IOC, FOK, POST_ONLY, MARKET, CANCEL, AMEND = range(1, 8)
BUY, SELL = 1, 2
STP_NONE, STP_EXPIRE_TAKER, STP_EXPIRE_MAKER, STP_EXPIRE_BOTH = range(4)
FILL, RESTED, CANCELLED, AMENDED, REJECTED = range(1, 6)
(R_USER_CANCEL, R_REMAINDER_EXPIRED, R_FOK_NOT_FILLABLE, R_STP_TAKER, R_STP_MAKER,
 R_POST_ONLY_WOULD_TAKE, R_REDUCE_ONLY) = range(1, 8)
(R_UNKNOWN_ORDER, R_DUPLICATE_ORDER_ID, R_BAD_QTY, R_PRICE_OUT_OF_BAND, R_AMEND_UNKNOWN_ORDER,
 R_BAD_OP, R_BAD_SIDE, R_BAD_STP, R_BOOK_FULL, R_AMEND_WOULD_CROSS) = range(10, 20)
F_MAKER_DONE, F_TAKER_DONE, F_PRIORITY_KEPT = 1, 2, 4
CF_REDUCE_ONLY = 1

MAX_QTY = _book.MAX_QTY
MAX_LEVELS = _book.MAX_LEVELS
MAX_ORDERS = _book.MAX_ORDERS
MAX_POSITION = _book.MAX_POSITION
_M64 = (1 << 64) - 1
_HASH_SEED = 0xCBF29CE484222325
_HASH_PRIME = 0x100000001B3

_EVENT_FIELDS = ("kind", "reason", "side", "flags", "op", "oid", "owner", "maker_oid",
                 "maker_owner", "price", "qty", "leaves", "maker_leaves")


def _dtypes():
    from . import COMMAND_DTYPE, EVENT_DTYPE, ORDER_DTYPE
    return COMMAND_DTYPE, EVENT_DTYPE, ORDER_DTYPE


def _position_dtype():
    from . import POSITION_DTYPE
    return POSITION_DTYPE


def _wrap64(v: int) -> int:
    """v as a (wrapping) int64, like the C book's position arithmetic."""
    v &= _M64
    return v - (1 << 64) if v >> 63 else v


def _mix(h: int, v: int) -> int:
    h = ((h ^ (v & _M64)) * _HASH_PRIME) & _M64
    return h ^ (h >> 32)


def _i64(v, name):
    try:
        v = operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int in the int64 range, got {v!r}") from None
    if not -(1 << 63) <= v < (1 << 63):
        raise OverflowError(f"{name} must be an int in the int64 range, got {v!r}")
    return v


def _u8(v, name):
    try:
        v = operator.index(v)
    except TypeError:
        raise ValueError(f"{name} must be an int in 0..255, got {v!r}") from None
    if not 0 <= v <= 255:
        raise ValueError(f"{name} must be an int in 0..255, got {v}")
    return v


class _Order:
    __slots__ = ("oid", "owner", "side", "price", "qty", "flags")

    def __init__(self, oid, owner, side, price, qty, flags=0):
        self.oid, self.owner, self.side, self.price, self.qty = oid, owner, side, price, qty
        self.flags = flags & CF_REDUCE_ONLY


class ReferenceBook:
    """Reference implementation; same constructor and methods as ``Book``."""

    def __init__(self, min_tick, max_tick, capacity=1024):
        min_tick, max_tick = _i64(min_tick, "min_tick"), _i64(max_tick, "max_tick")
        if min_tick < 1 or max_tick < min_tick:
            raise ValueError("need 1 <= min_tick <= max_tick")
        if max_tick - min_tick >= MAX_LEVELS:
            raise ValueError(f"price band too wide: at most {MAX_LEVELS} ticks")
        if not 1 <= operator.index(capacity) <= MAX_ORDERS:
            raise ValueError(f"capacity must be in 1..{MAX_ORDERS}")
        self.min_tick, self.max_tick = min_tick, max_tick
        self.capacity = capacity
        self._ev: list[tuple] = []
        self.clear()

    # ------------------------------------------------------------ state
    def clear(self):
        self._clear_orders()
        self._pos: dict[int, int] = {}       # owner -> non-zero position (lots)

    def _clear_orders(self):
        self._orders: dict[int, _Order] = {}
        self._levels = {BUY: {}, SELL: {}}   # price -> {oid: _Order} (FIFO)
        self._prices = {BUY: [], SELL: []}   # ascending

    # ------------------------------------------------------------ positions
    def set_positions(self, positions):
        mv = memoryview(positions)
        if not mv.c_contiguous:
            raise BufferError("positions buffer is not C-contiguous")
        if mv.itemsize not in (16, 1) or mv.nbytes % 16:
            raise ValueError(f"positions must be POSITION_DTYPE records (16 bytes each); "
                             f"got item size {mv.itemsize}, length {mv.nbytes}")
        rows = np.frombuffer(mv.cast("B"), _position_dtype()).tolist()
        for i, (_, lots) in enumerate(rows):
            if not -MAX_POSITION <= lots <= MAX_POSITION:
                raise ValueError(f"positions record {i}: lots {lots} outside -2**62..2**62")
        for owner, lots in rows:
            if lots:
                self._pos[owner] = lots
            else:
                self._pos.pop(owner, None)

    def position(self, owner):
        return self._pos.get(_i64(owner, "owner"), 0)

    def positions(self):
        arr = np.zeros(len(self._pos), _position_dtype())
        for i, owner in enumerate(sorted(self._pos)):
            arr[i] = (owner, self._pos[owner])
        return arr.tobytes()

    @property
    def position_count(self):
        return len(self._pos)

    def _pos_add(self, owner, delta):
        v = _wrap64(self._pos.get(owner, 0) + delta)
        if v:
            self._pos[owner] = v
        else:
            self._pos.pop(owner, None)

    def _reducible(self, owner, side):
        p = self._pos.get(owner, 0)
        return max(0, p) if side == SELL else max(0, -p)

    def __len__(self):
        return len(self._orders)

    @property
    def order_count(self):
        return len(self._orders)

    @property
    def pending_events(self):
        return len(self._ev)

    def best_bid(self):
        p = self._prices[BUY]
        return p[-1] if p else None

    def best_ask(self):
        p = self._prices[SELL]
        return p[0] if p else None

    def _best(self, side):
        return self.best_bid() if side == BUY else self.best_ask()

    def _crosses(self, side, price):
        if side == BUY:
            a = self.best_ask()
            return a is not None and price >= a
        b = self.best_bid()
        return b is not None and price <= b

    def _append(self, o):
        levels = self._levels[o.side]
        lvl = levels.get(o.price)
        if lvl is None:
            lvl = levels[o.price] = {}
            bisect.insort(self._prices[o.side], o.price)
        lvl[o.oid] = o

    def _unlink(self, o):
        levels = self._levels[o.side]
        lvl = levels[o.price]
        del lvl[o.oid]
        if not lvl:
            del levels[o.price]
            prices = self._prices[o.side]
            del prices[bisect.bisect_left(prices, o.price)]

    def _remove(self, o):
        self._unlink(o)
        del self._orders[o.oid]

    def _levels_from_best(self, opp):
        prices = self._prices[opp]
        seq = reversed(prices) if opp == BUY else prices
        for p in list(seq):
            yield p, self._levels[opp][p]

    # ------------------------------------------------------------ events
    def _push(self, kind, reason, op, side=0, flags=0, oid=0, owner=0, maker_oid=0,
              maker_owner=0, price=0, qty=0, leaves=0, maker_leaves=0):
        self._ev.append((kind, reason, side, flags, op, oid, owner, maker_oid, maker_owner,
                         price, qty, leaves, maker_leaves))

    def _reject(self, op, side, oid, owner, price, qty, reason):
        self._push(REJECTED, reason, op, side=side, oid=oid, owner=owner, price=price, qty=qty)

    def _cancelled(self, op, reason, side, oid, owner, price, qty):
        self._push(CANCELLED, reason, op, side=side, oid=oid, owner=owner, price=price, qty=qty)

    def events(self, clear=True):
        _, event_dtype, _ = _dtypes()
        arr = np.zeros(len(self._ev), event_dtype)
        if self._ev:
            cols = list(zip(*self._ev))
            for name, col in zip(_EVENT_FIELDS, cols):
                arr[name] = col
        if clear:
            self._ev = []
        return arr.tobytes()

    def clear_events(self):
        self._ev = []

    def read_events(self, out):
        mv = memoryview(out)
        if mv.readonly or not mv.c_contiguous:
            raise BufferError("out must be a writable C-contiguous buffer")
        if mv.itemsize not in (72, 1):
            raise TypeError(f"out must be EVENT_DTYPE records or raw bytes; got item size {mv.itemsize}")
        k = min(mv.nbytes // 72, len(self._ev))
        keep = self._ev[k:]
        self._ev = self._ev[:k]
        raw = self.events()
        self._ev = keep
        mv.cast("B")[:len(raw)] = raw
        return k

    # ------------------------------------------------------------ commands
    def submit(self, op, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False):
        op, side = _u8(op, "op"), _u8(side, "side")
        oid, owner = _i64(oid, "oid"), _i64(owner, "owner")
        price, qty = _i64(price, "price"), _i64(qty, "qty")
        stp = _u8(stp, "stp")
        flags = CF_REDUCE_ONLY if reduce_only else 0
        n = len(self._ev)
        self._process(op, side, stp, flags, oid, owner, price, qty)
        return len(self._ev) - n

    def limit(self, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False):
        return self.submit(LIMIT, side, oid, owner, price, qty, stp, reduce_only=reduce_only)

    def ioc(self, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False):
        return self.submit(IOC, side, oid, owner, price, qty, stp, reduce_only=reduce_only)

    def fok(self, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False):
        return self.submit(FOK, side, oid, owner, price, qty, stp, reduce_only=reduce_only)

    def post_only(self, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False):
        return self.submit(POST_ONLY, side, oid, owner, price, qty, stp, reduce_only=reduce_only)

    def market(self, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False):
        return self.submit(MARKET, side, oid, owner, price, qty, stp, reduce_only=reduce_only)

    def cancel(self, oid):
        return self.submit(CANCEL, 0, oid, 0, 0, 0, 0)

    def amend(self, oid, qty, price=0):
        return self.submit(AMEND, 0, oid, 0, price, qty, 0)

    def execute(self, commands, offsets=None):
        command_dtype, _, _ = _dtypes()
        mv = memoryview(commands)
        if not mv.c_contiguous:
            raise BufferError("commands buffer is not C-contiguous")
        if mv.itemsize not in (command_dtype.itemsize, 1):
            raise TypeError(f"commands must be COMMAND_DTYPE records or raw bytes; got item size {mv.itemsize}")
        if mv.nbytes % command_dtype.itemsize:
            raise ValueError(f"commands buffer length {mv.nbytes} is not a multiple of 40")
        rows = np.frombuffer(mv.cast("B"), command_dtype).tolist()
        offs = None
        if offsets is not None:
            ov = memoryview(offsets)
            if ov.readonly or ov.itemsize != 8 or ov.nbytes < (len(rows) + 1) * 8 or not ov.c_contiguous:
                raise ValueError(f"offsets must be a writable int64 buffer of at least {len(rows) + 1} items")
            offs = ov.cast("B").cast("q")
        n0 = len(self._ev)
        process = self._process
        for i, (op, side, stp, flags, oid, owner, price, qty) in enumerate(rows):
            if offs is not None:
                offs[i] = len(self._ev)
            process(op, side, stp, flags, oid, owner, price, qty)
        if offs is not None:
            offs[len(rows)] = len(self._ev)
        return len(self._ev) - n0

    def _process(self, op, side, stp, flags, oid, owner, price, qty):
        if LIMIT <= op <= MARKET:
            self._new(op, side, stp, flags & CF_REDUCE_ONLY, oid, owner, price, qty)
        elif op == CANCEL:
            o = self._orders.get(oid)
            if o is None:
                self._reject(op, side, oid, owner, price, qty, R_UNKNOWN_ORDER)
                return
            self._cancelled(op, R_USER_CANCEL, o.side, o.oid, o.owner, o.price, o.qty)
            self._remove(o)
        elif op == AMEND:
            self._amend(op, side, oid, owner, price, qty)
        else:
            self._reject(op, side, oid, owner, price, qty, R_BAD_OP)

    def _new(self, op, side, stp, flags, oid, owner, price, qty):
        def rej(reason):
            self._reject(op, side, oid, owner, price, qty, reason)

        if side not in (BUY, SELL):
            return rej(R_BAD_SIDE)
        if stp > STP_EXPIRE_BOTH:
            return rej(R_BAD_STP)
        if qty <= 0 or qty > MAX_QTY:
            return rej(R_BAD_QTY)
        if not self.min_tick <= price <= self.max_tick:
            return rej(R_PRICE_OUT_OF_BAND)
        if oid in self._orders:
            return rej(R_DUPLICATE_ORDER_ID)
        if flags & CF_REDUCE_ONLY:
            allowed = self._reducible(owner, side)
            if qty > allowed:
                if op == FOK:
                    return self._cancelled(op, R_FOK_NOT_FILLABLE, side, oid, owner, price, qty)
                self._push(CANCELLED, R_REDUCE_ONLY, op, side=side, oid=oid, owner=owner, price=price,
                           qty=qty - allowed, leaves=allowed)
                if allowed == 0:
                    return
                qty = allowed
        if op == POST_ONLY and self._crosses(side, price):
            return self._cancelled(op, R_POST_ONLY_WOULD_TAKE, side, oid, owner, price, qty)
        if op == FOK and not self._fok_fillable(side, stp, owner, price, qty):
            return self._cancelled(op, R_FOK_NOT_FILLABLE, side, oid, owner, price, qty)
        rem, expired = self._match(op, side, stp, oid, owner, price, qty)
        if rem == 0 or expired:
            return
        if op in (LIMIT, POST_ONLY):
            o = _Order(oid, owner, side, price, rem, flags)
            self._orders[oid] = o
            self._append(o)
            self._push(RESTED, 0, op, side=side, oid=oid, owner=owner, price=price, qty=rem, leaves=rem)
        else:
            self._cancelled(op, R_REMAINDER_EXPIRED, side, oid, owner, price, rem)

    def _fok_fillable(self, side, stp, owner, price, qty):
        need = qty
        opp = SELL if side == BUY else BUY
        for p, lvl in self._levels_from_best(opp):
            if (p > price) if side == BUY else (p < price):
                break
            for o in lvl.values():
                if stp != STP_NONE and o.owner == owner:
                    if stp == STP_EXPIRE_MAKER:
                        continue
                    return False
                if o.flags & CF_REDUCE_ONLY:   # counts as 0: conservative
                    continue
                if o.qty >= need:
                    return True
                need -= o.qty
        return False

    def _match(self, op, side, stp, oid, owner, price, qty):
        rem = qty
        opp = SELL if side == BUY else BUY
        while rem > 0:
            best = self._best(opp)
            if best is None or ((best > price) if side == BUY else (best < price)):
                break
            o = next(iter(self._levels[opp][best].values()))
            if stp != STP_NONE and o.owner == owner:
                if stp != STP_EXPIRE_TAKER:
                    self._cancelled(op, R_STP_MAKER, o.side, o.oid, o.owner, o.price, o.qty)
                    self._remove(o)
                if stp != STP_EXPIRE_MAKER:
                    self._cancelled(op, R_STP_TAKER, side, oid, owner, price, rem)
                    return rem, True
                continue
            q = min(rem, o.qty)
            ro = o.flags & CF_REDUCE_ONLY
            if ro:
                allowed = self._reducible(o.owner, o.side)
                if allowed == 0:
                    self._cancelled(op, R_REDUCE_ONLY, o.side, o.oid, o.owner, o.price, o.qty)
                    self._remove(o)
                    continue
                q = min(q, allowed)
            rem -= q
            o.qty -= q
            if o.owner != owner:
                d = q if side == BUY else -q
                self._pos_add(owner, d)
                self._pos_add(o.owner, -d)
            flags = (F_MAKER_DONE if o.qty == 0 else 0) | (F_TAKER_DONE if rem == 0 else 0)
            self._push(FILL, 0, op, side=side, flags=flags, oid=oid, owner=owner, maker_oid=o.oid,
                       maker_owner=o.owner, price=best, qty=q, leaves=rem, maker_leaves=o.qty)
            if o.qty == 0:
                self._remove(o)
            elif ro and self._reducible(o.owner, o.side) == 0:
                self._cancelled(op, R_REDUCE_ONLY, o.side, o.oid, o.owner, o.price, o.qty)
                self._remove(o)
        return rem, False

    def _amend(self, op, side, oid, owner, price, qty):
        def rej(reason):
            self._reject(op, side, oid, owner, price, qty, reason)

        if qty <= 0 or qty > MAX_QTY:
            return rej(R_BAD_QTY)
        if price != 0 and not self.min_tick <= price <= self.max_tick:
            return rej(R_PRICE_OUT_OF_BAND)
        o = self._orders.get(oid)
        if o is None:
            return rej(R_AMEND_UNKNOWN_ORDER)
        new_price = o.price if price == 0 else price
        flags = 0
        if new_price == o.price and qty <= o.qty:
            o.qty = qty
            flags = F_PRIORITY_KEPT
        else:
            if new_price != o.price and self._crosses(o.side, new_price):
                return rej(R_AMEND_WOULD_CROSS)
            self._unlink(o)
            o.price, o.qty = new_price, qty
            self._append(o)
        self._push(AMENDED, 0, op, side=o.side, flags=flags, oid=o.oid, owner=o.owner,
                   price=o.price, qty=o.qty, leaves=o.qty)

    # ------------------------------------------------------------ queries
    def _priority_order(self):
        for side in (BUY, SELL):
            for _, lvl in self._levels_from_best(side):
                yield from lvl.values()

    def depth(self, n):
        n = operator.index(n)
        if n < 0:
            raise ValueError("depth(n): n must be >= 0")
        out = []
        for side in (BUY, SELL):
            rows = []
            for p, lvl in self._levels_from_best(side):
                if len(rows) >= n:
                    break
                rows.append((p, sum(o.qty for o in lvl.values()), len(lvl)))
            out.append(rows)
        return tuple(out)

    def impact_price(self, side, notional):
        side, notional = _u8(side, "side"), _i64(notional, "notional")
        if side not in (BUY, SELL):
            raise ValueError("side must be BUY (1) or SELL (2)")
        if notional <= 0:
            raise ValueError("notional must be > 0")
        rem, q = notional, 0
        for p, lvl in self._levels_from_best(SELL if side == BUY else BUY):
            total = sum(o.qty for o in lvl.values())
            if p * total >= rem:
                f = Fraction(notional * p, q * p + rem)
                return (f.numerator, f.denominator)
            rem -= p * total
            q += total
        return None

    def get(self, oid):
        o = self._orders.get(_i64(oid, "oid"))
        return None if o is None else (o.side, o.price, o.qty, o.owner)

    def snapshot(self):
        _, _, order_dtype = _dtypes()
        rows = [(o.oid, o.owner, o.price, o.qty, o.side, o.flags) for o in self._priority_order()]
        arr = np.zeros(len(rows), order_dtype)
        if rows:
            for name, col in zip(("oid", "owner", "price", "qty", "side", "flags"), zip(*rows)):
                arr[name] = col
        return arr.tobytes()

    def restore(self, snapshot):
        _, _, order_dtype = _dtypes()
        mv = memoryview(snapshot)
        if mv.itemsize not in (order_dtype.itemsize, 1) or mv.nbytes % order_dtype.itemsize:
            raise ValueError("snapshot must be ORDER_DTYPE records (40 bytes each)")
        rows = np.frombuffer(mv.cast("B"), order_dtype).tolist()
        bids = [r[2] for r in rows if r[4] == BUY]
        asks = [r[2] for r in rows if r[4] == SELL]
        for i, (oid, owner, price, qty, side, flags) in enumerate(rows):
            if side not in (BUY, SELL):
                raise ValueError(f"snapshot record {i}: bad side {side}")
            if qty <= 0 or qty > MAX_QTY:
                raise ValueError(f"snapshot record {i}: bad qty {qty}")
            if not self.min_tick <= price <= self.max_tick:
                raise ValueError(f"snapshot record {i}: price {price} outside the band")
        if bids and asks and max(bids) >= min(asks):
            raise ValueError("snapshot is crossed (a bid at or above an ask)")
        self._clear_orders()
        for i, (oid, owner, price, qty, side, flags) in enumerate(rows):
            if oid in self._orders:
                self._clear_orders()
                raise ValueError(f"snapshot record {i}: duplicate order id {oid}")
            o = _Order(oid, owner, side, price, qty, flags)
            self._orders[oid] = o
            self._append(o)

    def state_hash(self):
        h = _HASH_SEED
        for o in self._priority_order():
            for v in (o.side | o.flags << 8, o.price, o.oid, o.owner, o.qty):
                h = _mix(h, v)
        h = _mix(h, len(self._orders))
        if self._pos:
            for owner in sorted(self._pos):
                h = _mix(_mix(h, owner), self._pos[owner])
            h = _mix(h, len(self._pos))
        return h

    def validate(self):
        seen = 0
        for side in (BUY, SELL):
            levels, prices = self._levels[side], self._prices[side]
            if sorted(levels) != prices:
                raise BookInvariantError("price list does not match the levels")
            for p, lvl in levels.items():
                if not lvl:
                    raise BookInvariantError("empty level kept")
                for oid, o in lvl.items():
                    if o.oid != oid or o.side != side or o.price != p or o.qty <= 0 or o.flags & ~CF_REDUCE_ONLY:
                        raise BookInvariantError("order fields inconsistent with its level")
                    if self._orders.get(oid) is not o:
                        raise BookInvariantError("order map does not point at the resting order")
                    seen += 1
        if seen != len(self._orders):
            raise BookInvariantError("order map size mismatch")
        if any(v == 0 for v in self._pos.values()):
            raise BookInvariantError("zero position kept")
        b, a = self.best_bid(), self.best_ask()
        if b is not None and a is not None and b >= a:
            raise BookInvariantError("book crossed")
