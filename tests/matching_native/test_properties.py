"""Property tests: random command streams through the C book and the reference book.

Checked: identical event streams (byte for byte), identical snapshots, positions
and state hashes, batch == one call per command, snapshot/restore round trips, and
the internal invariants (validate()) after every command. Commands carry random
`flags` (REDUCE_ONLY, sometimes with a reserved bit) and every stream starts from
random positions of its owners, set on all books.
"""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matching_native import (
    EVENT_DTYPE, ORDER_DTYPE, POSITION_DTYPE, Book, CommandFlag, EventKind, Side,
)
from matching_native.reference import ReferenceBook

from .util import AMEND, CANCEL, FOK, IOC, LIMIT, MARKET, POST, cmd_array, pos_array

SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MIN_TICK, MAX_TICK = 10, 30


def command(price_st, oid_st=st.integers(1, 25)):
    return st.tuples(
        st.sampled_from([LIMIT] * 6 + [IOC, FOK, POST, POST, MARKET, CANCEL, CANCEL, CANCEL,
                                       AMEND, AMEND, AMEND, 0, 9]),
        st.sampled_from([1] * 6 + [2] * 6 + [0, 3]),
        oid_st,
        st.integers(1, 3),
        price_st,
        st.one_of(st.integers(1, 9), st.integers(1, 9), st.integers(-1, 0),
                  st.just((1 << 36) - 1), st.just(1 << 36)),
        st.sampled_from([0] * 8 + [1, 2, 3, 4]),
        # flags: REDUCE_ONLY = 1; bit 2 is reserved (ignored by the books)
        st.sampled_from([0] * 6 + [1] * 4 + [2, 3]),
    )


# initial positions of the owners of `command` (1..3); a few larger than any order
POSITIONS = st.dictionaries(st.integers(1, 3), st.one_of(st.integers(-12, 12), st.integers(-40, 40)),
                            max_size=3)


NARROW = st.lists(command(st.one_of(st.integers(MIN_TICK - 1, MAX_TICK + 1), st.just(0))), max_size=120)
WIDE_MAX = MIN_TICK + (1 << 28) - 1
WIDE = st.lists(
    command(st.one_of(st.integers(MIN_TICK, MIN_TICK + 200), st.integers(MIN_TICK, WIDE_MAX),
                      st.sampled_from([MIN_TICK, WIDE_MAX, WIDE_MAX + 1, 0])),
            oid_st=st.one_of(st.integers(1, 25), st.integers(-(1 << 63), (1 << 63) - 1))),
    max_size=80)


def dense_command():
    """Valid new orders near one price (so most of them trade), many reduce-only."""
    return st.tuples(
        st.sampled_from([LIMIT] * 5 + [IOC, IOC, FOK, POST, MARKET, CANCEL, AMEND]),
        st.sampled_from([1, 2]),
        st.integers(1, 15),
        st.integers(1, 3),
        st.integers(MIN_TICK, MIN_TICK + 6),
        st.integers(1, 9),
        st.sampled_from([0] * 6 + [1, 2, 3]),
        st.sampled_from([0, 0, 1, 1, 1, 3]),
    )


DENSE = st.lists(dense_command(), min_size=5, max_size=80)


def submit_cmd(book, c):
    """One (op, side, oid, owner, price, qty, stp, flags) command through submit()."""
    flags = c[7]
    if flags & 1:
        return book.submit(*c[:7], reduce_only=True)
    if flags:
        return book.submit(*c[:7], reduce_only=False)
    return book.submit(*c[:7])


def run_single(book, cmds, check_each=True):
    out = []
    for c in cmds:
        n = submit_cmd(book, c)
        raw = book.events()
        assert len(raw) == 72 * n
        out.append(raw)
        if check_each:
            book.validate()
    return out


def assert_same_book(a, b):
    a.validate()
    b.validate()
    assert a.snapshot() == b.snapshot()
    assert a.positions() == b.positions()
    assert [a.position(o) for o in range(5)] == [b.position(o) for o in range(5)]
    assert a.state_hash() == b.state_hash()
    assert len(a) == len(b) == a.order_count == b.order_count
    assert (a.best_bid(), a.best_ask()) == (b.best_bid(), b.best_ask())
    assert a.depth(1000) == b.depth(1000)


def books(factories, positions):
    out = [f() for f in factories]
    for b in out:
        b.set_positions(pos_array(positions))
    return out


def run_checked(book, cmds, positions):
    """run_single() that also replays the FILL events on a copy of the positions and checks,
    fill by fill, that no reduce-only order (a flagged taker, or a maker resting with the
    flag) opens or flips its owner's position; the replay must end at book.positions()."""
    pos = {o: v for o, v in positions.items() if v}
    out = []
    for c in cmds:
        snap = np.frombuffer(book.snapshot(), ORDER_DTYPE)
        ro_makers = set(snap["oid"][snap["flags"] & CommandFlag.REDUCE_ONLY != 0].tolist())
        taker_ro = bool(c[7] & 1) and LIMIT <= c[0] <= MARKET
        n = submit_cmd(book, c)
        raw = book.events()
        assert len(raw) == 72 * n
        out.append(raw)
        book.validate()
        for e in np.frombuffer(raw, EVENT_DTYPE).tolist():
            kind, _, side, _, _, _, taker, maker_oid, maker, _, q, _, _ = e
            if kind != EventKind.FILL or taker == maker:
                continue
            d = q if side == Side.BUY else -q
            if taker_ro:   # reduces: a SELL needs a long of >= q, a BUY a short
                assert pos.get(taker, 0) * (-1 if side == Side.BUY else 1) >= q
            if maker_oid in ro_makers:
                assert pos.get(maker, 0) * (1 if side == Side.BUY else -1) >= q
            pos[taker] = pos.get(taker, 0) + d
            pos[maker] = pos.get(maker, 0) - d
        pos = {o: v for o, v in pos.items() if v}
    got = {int(o): int(v) for o, v in np.frombuffer(book.positions(), POSITION_DTYPE).tolist()}
    assert got == pos
    assert sum(got.values()) == sum(positions.values())   # fills move lots, never create them
    return out


@SETTINGS
@given(NARROW, POSITIONS)
def test_c_matches_reference_single_calls(cmds, positions):
    c, r = books([lambda: Book(MIN_TICK, MAX_TICK, 4), lambda: ReferenceBook(MIN_TICK, MAX_TICK, 4)],
                 positions)
    assert run_checked(c, cmds, positions) == run_single(r, cmds)
    assert_same_book(c, r)
    for side in (Side.BUY, Side.SELL):
        for notional in (1, 17, 100, 1000, 5000):
            assert c.impact_price(side, notional) == r.impact_price(side, notional)


@SETTINGS
@given(DENSE, POSITIONS)
def test_reduce_only_dense_streams(cmds, positions):
    """Mostly trading commands, about half of them reduce-only: C == reference, batch ==
    single calls, and no reduce-only order ever opens or flips a position."""
    c, r, batch = books([lambda: Book(MIN_TICK, MAX_TICK, 4), lambda: ReferenceBook(MIN_TICK, MAX_TICK),
                         lambda: Book(MIN_TICK, MAX_TICK, 4)], positions)
    per_call = run_checked(c, cmds, positions)
    assert per_call == run_single(r, cmds)
    batch.execute(cmd_array(cmds))
    assert batch.events() == b"".join(per_call)
    assert_same_book(c, r)
    assert_same_book(c, batch)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WIDE, POSITIONS)
def test_c_matches_reference_wide_band(cmds, positions):
    c, r = books([lambda: Book(MIN_TICK, WIDE_MAX, 16), lambda: ReferenceBook(MIN_TICK, WIDE_MAX, 16)],
                 positions)
    assert run_single(c, cmds, check_each=False) == run_single(r, cmds, check_each=False)
    assert_same_book(c, r)


@SETTINGS
@given(NARROW, POSITIONS)
def test_batch_equals_single_calls(cmds, positions):
    single, batch, ref = books([lambda: Book(MIN_TICK, MAX_TICK, 4), lambda: Book(MIN_TICK, MAX_TICK, 4),
                                lambda: ReferenceBook(MIN_TICK, MAX_TICK)], positions)
    per_call = run_single(single, cmds, check_each=False)
    arr = cmd_array(cmds)
    offsets = np.full(len(cmds) + 1, -1, np.int64)
    n = batch.execute(arr, offsets)
    raw = batch.events()
    assert raw == b"".join(per_call)
    assert n * 72 == len(raw)
    assert offsets[0] == 0 and offsets[-1] == n
    assert [int(offsets[i + 1] - offsets[i]) * 72 for i in range(len(cmds))] == [len(e) for e in per_call]
    # the raw-bytes form of the batch and the reference's batch give the same events
    ref_offsets = np.full(len(cmds) + 1, -1, np.int64)
    ref.execute(arr.tobytes(), ref_offsets)
    assert ref.events() == raw
    assert np.array_equal(ref_offsets, offsets)
    assert_same_book(single, batch)
    assert_same_book(single, ref)


@SETTINGS
@given(NARROW, NARROW, POSITIONS)
def test_snapshot_restore_round_trip(first, second, positions):
    (src,) = books([lambda: Book(MIN_TICK, MAX_TICK, 4)], positions)
    run_single(src, first, check_each=False)
    snap = src.snapshot()
    restored, ref = Book(MIN_TICK, MAX_TICK, 1), ReferenceBook(MIN_TICK, MAX_TICK)
    restored.submit(LIMIT, 1, 1000, 1, MIN_TICK, 1)  # restore replaces existing orders
    restored.restore(snap)
    restored.clear_events()
    ref.restore(snap)
    if src.positions():  # orders only: the positions are set separately
        assert restored.state_hash() != src.state_hash()
    for b in (restored, ref):
        b.set_positions(src.positions())
    assert_same_book(src, restored)
    assert_same_book(src, ref)
    assert restored.snapshot() == snap
    # the restored books behave identically afterwards
    out = [run_single(b, second, check_each=False) for b in (src, restored, ref)]
    assert out[0] == out[1] == out[2]
    assert_same_book(src, restored)
    assert_same_book(src, ref)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(200, 2000))
def test_long_random_streams_match(seed, n):
    """Longer streams with a random-walk mid, more orders per level, all ops, reduce-only
    orders (about 1 in 4 new orders) and random initial positions."""
    rng = np.random.default_rng(seed)
    cmds, live, mid, oid = [], [], 500, 0
    positions = {o: int(rng.integers(-40, 41)) for o in range(1, 6)}
    for _ in range(n):
        mid = int(np.clip(mid + rng.integers(-2, 3), 450, 550))
        u = rng.random()
        if u < 0.55 or not live:
            oid += 1
            side = int(rng.integers(1, 3))
            px = mid - int(rng.integers(0, 8)) if side == 1 else mid + int(rng.integers(1, 9))
            op = POST if rng.random() < 0.1 else LIMIT
            cmds.append((op, side, oid, int(rng.integers(1, 6)), px, int(rng.integers(1, 20)), 0,
                         int(rng.random() < 0.25)))
            live.append(oid)
        elif u < 0.75:
            cmds.append((CANCEL, 0, live.pop(int(rng.integers(len(live)))), 0, 0, 0, 0, 0))
        elif u < 0.9:
            oid += 1
            side = int(rng.integers(1, 3))
            op = [IOC, FOK, MARKET, LIMIT][int(rng.integers(4))]
            px = mid + 5 if side == 1 else mid - 5
            cmds.append((op, side, oid, int(rng.integers(1, 6)), px, int(rng.integers(1, 60)),
                         int(rng.integers(0, 4)), int(rng.random() < 0.25)))
        else:
            tgt = live[int(rng.integers(len(live)))]
            cmds.append((AMEND, 0, tgt, 0, int(rng.choice([0, mid - 3, mid + 3])), int(rng.integers(1, 25)), 0, 0))
    c, r = books([lambda: Book(1, 1000, 8), lambda: ReferenceBook(1, 1000)], positions)
    arr = cmd_array(cmds)
    c.execute(arr)
    r.execute(arr)
    assert c.events() == r.events()
    assert_same_book(c, r)
