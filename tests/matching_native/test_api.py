"""Python-level API: dtypes vs the C layout, codes, argument errors, capacity growth, 1M orders."""
from pathlib import Path

import numpy as np
import pytest

import matching_native as mn
from matching_native import (
    COMMAND_DTYPE, EVENT_DTYPE, ORDER_DTYPE, POSITION_DTYPE, Book, BookInvariantError, _book,
)
from matching_native.reference import ReferenceBook

from .conftest import check_book
from .util import BUY, CANCEL, LIMIT, SELL, cmd_array, rested, submit


def test_dtypes_match_c_layout():
    layout = _book._layout()
    for name, dtype in (("command", COMMAND_DTYPE), ("event", EVENT_DTYPE), ("order", ORDER_DTYPE),
                        ("position", POSITION_DTYPE)):
        size, offsets = layout[name]
        assert dtype.itemsize == size
        assert {f: dtype.fields[f][1] for f in dtype.names} == offsets


def test_enums_match_c_constants():
    for enum_cls, prefix in ((mn.Op, "OP_"), (mn.Side, "SIDE_"), (mn.Stp, "STP_"),
                             (mn.EventKind, "EV_"), (mn.Reason, "R_"), (mn.Flag, "F_"),
                             (mn.CommandFlag, "CF_")):
        c_names = {n[len(prefix):] for n in dir(_book) if n.startswith(prefix)}
        assert c_names == set(enum_cls.__members__)
        for member in enum_cls:
            assert getattr(_book, prefix + member.name) == member.value


def test_every_code_is_documented():
    readme = (Path(mn.__file__).parent / "README.md").read_text()
    for enum_cls in (mn.Op, mn.Side, mn.Stp, mn.EventKind, mn.Reason, mn.Flag, mn.CommandFlag):
        for member in enum_cls:
            assert f"{member.name}={member.value}" in mn.__doc__, member
            assert f"`{member.name}`" in readme and f"| {member.value} " in readme, member
    for dtype in (COMMAND_DTYPE, EVENT_DTYPE, ORDER_DTYPE, POSITION_DTYPE):
        for field in dtype.names:
            assert field in mn.__doc__ and f"`{field}`" in readme


def test_methods_have_signature_docstrings():
    for name in ("submit", "execute", "events", "depth", "impact_price", "snapshot", "restore",
                 "state_hash", "validate", "limit", "cancel", "amend", "set_positions", "position",
                 "positions"):
        doc = getattr(Book, name).__doc__
        assert doc and len(doc) > 20, name
    assert Book.__text_signature__ == "(min_tick, max_tick, capacity=1024)"
    assert Book.submit.__text_signature__ == (
        "($self, op, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False)")
    for name in ("limit", "ioc", "fok", "post_only", "market"):
        assert getattr(Book, name).__text_signature__ == (
            "($self, side, oid, owner, price, qty, stp=0, /, *, reduce_only=False)"), name


@pytest.mark.parametrize("args", [(0, 10), (5, 4), (-3, 10), (1, 1 << 28 + 1)])
def test_constructor_rejects_bad_band(book_cls, args):
    with pytest.raises(ValueError):
        book_cls(*args)


def test_constructor_rejects_bad_capacity(book_cls):
    with pytest.raises(ValueError):
        book_cls(1, 10, 0)
    with pytest.raises(ValueError):
        book_cls(1, 10, (1 << 26) + 1)


def test_widest_band_and_single_tick_band(make_book):
    wide = make_book(min_tick=1, max_tick=1 << 28)
    assert submit(wide, LIMIT, BUY, 1, 1, 1, 1) == [rested(LIMIT, BUY, 1, 1, 1, 1)]
    assert submit(wide, LIMIT, SELL, 2, 1, 1 << 28, 1) == [rested(LIMIT, SELL, 2, 1, 1 << 28, 1)]
    assert wide.depth(3) == ([(1, 1, 1)], [(1 << 28, 1, 1)])
    one = make_book(min_tick=7, max_tick=7)
    submit(one, LIMIT, BUY, 1, 1, 7, 3)
    assert one.best_bid() == 7 and one.best_ask() is None


def test_submit_argument_errors(book):
    with pytest.raises(TypeError):
        book.submit(LIMIT, BUY, 1, 1, 100)
    with pytest.raises(TypeError):
        book.submit(LIMIT, BUY, 1, 1, 100, 1, 0, 0)
    with pytest.raises(ValueError):
        book.submit(256, BUY, 1, 1, 100, 1)
    with pytest.raises(ValueError):
        book.submit(LIMIT, -1, 1, 1, 100, 1)
    with pytest.raises(ValueError):
        book.submit(LIMIT, BUY, 1, 1, 100, 1, 300)
    with pytest.raises(OverflowError):
        book.submit(LIMIT, BUY, 1 << 63, 1, 100, 1)
    with pytest.raises(TypeError):
        book.submit(LIMIT, BUY, "1", 1, 100, 1)
    with pytest.raises(TypeError):
        book.submit(LIMIT, BUY, 1, 1, 100.0, 1)
    with pytest.raises(TypeError):
        book.cancel()
    with pytest.raises(TypeError):
        book.amend(1)
    assert book.pending_events == 0 and len(book) == 0


def test_execute_buffer_errors(book):
    good = cmd_array([(LIMIT, BUY, 1, 1, 100, 1, 0)])
    with pytest.raises(TypeError):
        book.execute(np.zeros(5, np.int64))          # item size 8
    with pytest.raises(ValueError):
        book.execute(b"\x00" * 41)                   # not a multiple of 40
    with pytest.raises((ValueError, BufferError)):
        book.execute(cmd_array([(LIMIT, BUY, 1, 1, 100, 1, 0)] * 4)[::2])  # not contiguous
    with pytest.raises(TypeError):
        book.execute(42)
    with pytest.raises(ValueError):
        book.execute(good, np.zeros(1, np.int64))    # offsets too short
    with pytest.raises(ValueError):
        book.execute(good, np.zeros(4, np.int32))    # offsets wrong item size
    with pytest.raises((TypeError, ValueError, BufferError)):
        book.execute(good, bytes(16))                # offsets read-only
    with pytest.raises(TypeError):
        mn.execute(book, np.zeros(1, [("x", "i8", 5)]))  # 40-byte record but not COMMAND_DTYPE
    assert book.pending_events == 0 and len(book) == 0
    assert book.execute(b"") == 0
    assert book.execute(good.tobytes()) == 1
    assert book.execute(memoryview(bytearray(good.tobytes()))) == 0 + 1  # duplicate -> reject
    evs = mn.events_array(book)
    assert evs["kind"].tolist() == [mn.EventKind.RESTED, mn.EventKind.REJECTED]
    assert evs["reason"][1] == mn.Reason.DUPLICATE_ORDER_ID


def test_events_accumulate_until_read(book):
    book.limit(BUY, 1, 1, 100, 1)
    book.limit(BUY, 2, 1, 100, 1)
    assert book.pending_events == 2
    assert len(book.events(False)) == 144 and book.pending_events == 2
    assert len(book.events()) == 144 and book.pending_events == 0
    assert book.events() == b""
    book.cancel(1)
    book.clear_events()
    assert book.pending_events == 0


def test_read_events_into_preallocated_buffer(book):
    for i in range(5):
        book.limit(BUY, i + 1, 1, 100 - i, 1)
    out = np.zeros(3, EVENT_DTYPE)
    assert book.read_events(out) == 3
    assert out["oid"].tolist() == [1, 2, 3] and book.pending_events == 2
    raw = bytearray(72 * 4)
    assert book.read_events(raw) == 2
    assert np.frombuffer(bytes(raw[:144]), EVENT_DTYPE)["oid"].tolist() == [4, 5]
    assert book.read_events(out) == 0
    assert book.read_events(bytearray(71)) == 0
    with pytest.raises((TypeError, BufferError)):
        book.read_events(b"x" * 72)                   # read-only
    with pytest.raises(TypeError):
        book.read_events(np.zeros(9, np.int64))       # item size 8


def test_helpers(book):
    arr = mn.commands([(LIMIT, BUY, 1, 7, 100, 5), (LIMIT, SELL, 2, 8, 100, 2, 1)])
    assert arr.dtype == COMMAND_DTYPE and arr["stp"].tolist() == [0, 1]
    evs = mn.execute(book, arr)
    assert evs["kind"].tolist() == [mn.EventKind.RESTED, mn.EventKind.FILL]
    evs["qty"][0] = 99  # writable copy
    snap = mn.snapshot_array(book)
    assert snap.dtype == ORDER_DTYPE and snap["qty"].tolist() == [3]


def test_validate_raises_invariant_error():
    assert issubclass(BookInvariantError, AssertionError)
    ref = ReferenceBook(1, 100)
    ref.limit(BUY, 1, 1, 50, 5)
    ref._orders[1].qty = 0   # corrupt the reference on purpose
    with pytest.raises(BookInvariantError):
        ref.validate()


def test_pool_grows_by_doubling_and_reuses_slots():
    book = Book(1, 100_000, capacity=16)
    assert book.capacity == 16
    arr = cmd_array([(LIMIT, BUY, i, 1, 1 + i % 5000, 1, 0) for i in range(1, 5001)])
    book.execute(arr)
    book.clear_events()
    assert len(book) == 5000 and book.capacity == 8192
    book.validate()
    book.execute(cmd_array([(CANCEL, 0, i, 0, 0, 0, 0) for i in range(1, 5001)]))
    book.execute(arr)
    assert len(book) == 5000 and book.capacity == 8192
    check_book(book)


def test_million_resting_orders_fit():
    n = 1_000_000
    book = Book(1, 200_000, capacity=n)
    cmds = np.zeros(n, COMMAND_DTYPE)
    cmds["op"] = LIMIT
    idx = np.arange(n)
    cmds["side"] = np.where(idx % 2 == 0, BUY, SELL)
    cmds["oid"] = idx + 1
    cmds["owner"] = idx % 1000
    cmds["price"] = np.where(idx % 2 == 0, 1 + idx % 99_000, 100_001 + idx % 99_000)
    cmds["qty"] = 1 + idx % 7
    assert book.execute(cmds) == n
    evs = np.frombuffer(book.events(), EVENT_DTYPE)
    assert (evs["kind"] == mn.EventKind.RESTED).all()
    assert len(book) == n and book.capacity == n
    assert book.memory_bytes() < 200 * 1024 * 1024
    book.validate()
    assert book.best_bid() == 98_999 and book.best_ask() == 100_002
    snap = book.snapshot()
    other = Book(1, 200_000, capacity=16)
    other.restore(snap)
    assert other.state_hash() == book.state_hash()
    other.validate()
    # cancel every other order; the rest is untouched
    cancels = np.zeros(n // 2, COMMAND_DTYPE)
    cancels["op"] = CANCEL
    cancels["oid"] = np.arange(1, n + 1, 2)
    book.execute(cancels)
    evs = np.frombuffer(book.events(), EVENT_DTYPE)
    assert (evs["reason"] == mn.Reason.USER_CANCEL).all()
    assert len(book) == n // 2
    book.validate()


def test_memory_bytes_counts_the_position_map():
    book = Book(1, 1000, capacity=16)
    before = book.memory_bytes()
    pos = np.zeros(10_000, POSITION_DTYPE)
    pos["owner"] = np.arange(10_000)
    pos["lots"] = 1
    book.set_positions(pos)
    assert book.position_count == 10_000
    assert book.memory_bytes() >= before + 2 * 10_000 * POSITION_DTYPE.itemsize
    book.validate()
    book.clear()   # keeps the allocation, forgets the positions
    assert book.position_count == 0 and book.position(5) == 0
    book.validate()
