"""Property tests: random command streams through the C book and the reference book.

Checked: identical event streams (byte for byte), identical snapshots and state
hashes, batch == one call per command, snapshot/restore round trips, and the
internal invariants (validate()) after every command.
"""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matching_native import Book, Side
from matching_native.reference import ReferenceBook

from .util import AMEND, CANCEL, FOK, IOC, LIMIT, MARKET, POST, cmd_array

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
    )


NARROW = st.lists(command(st.one_of(st.integers(MIN_TICK - 1, MAX_TICK + 1), st.just(0))), max_size=120)
WIDE_MAX = MIN_TICK + (1 << 28) - 1
WIDE = st.lists(
    command(st.one_of(st.integers(MIN_TICK, MIN_TICK + 200), st.integers(MIN_TICK, WIDE_MAX),
                      st.sampled_from([MIN_TICK, WIDE_MAX, WIDE_MAX + 1, 0])),
            oid_st=st.one_of(st.integers(1, 25), st.integers(-(1 << 63), (1 << 63) - 1))),
    max_size=80)


def run_single(book, cmds, check_each=True):
    out = []
    for c in cmds:
        n = book.submit(*c)
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
    assert a.state_hash() == b.state_hash()
    assert len(a) == len(b) == a.order_count == b.order_count
    assert (a.best_bid(), a.best_ask()) == (b.best_bid(), b.best_ask())
    assert a.depth(1000) == b.depth(1000)


@SETTINGS
@given(NARROW)
def test_c_matches_reference_single_calls(cmds):
    c, r = Book(MIN_TICK, MAX_TICK, 4), ReferenceBook(MIN_TICK, MAX_TICK, 4)
    assert run_single(c, cmds) == run_single(r, cmds)
    assert_same_book(c, r)
    for side in (Side.BUY, Side.SELL):
        for notional in (1, 17, 100, 1000, 5000):
            assert c.impact_price(side, notional) == r.impact_price(side, notional)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(WIDE)
def test_c_matches_reference_wide_band(cmds):
    c, r = Book(MIN_TICK, WIDE_MAX, 16), ReferenceBook(MIN_TICK, WIDE_MAX, 16)
    assert run_single(c, cmds, check_each=False) == run_single(r, cmds, check_each=False)
    assert_same_book(c, r)


@SETTINGS
@given(NARROW)
def test_batch_equals_single_calls(cmds):
    single, batch, ref = Book(MIN_TICK, MAX_TICK, 4), Book(MIN_TICK, MAX_TICK, 4), ReferenceBook(MIN_TICK, MAX_TICK)
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
@given(NARROW, NARROW)
def test_snapshot_restore_round_trip(first, second):
    src = Book(MIN_TICK, MAX_TICK, 4)
    run_single(src, first, check_each=False)
    snap = src.snapshot()
    restored, ref = Book(MIN_TICK, MAX_TICK, 1), ReferenceBook(MIN_TICK, MAX_TICK)
    restored.submit(LIMIT, 1, 1000, 1, MIN_TICK, 1)  # restore replaces existing orders
    restored.restore(snap)
    restored.clear_events()
    ref.restore(snap)
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
    """Longer streams with a random-walk mid, more orders per level, all ops."""
    rng = np.random.default_rng(seed)
    cmds, live, mid, oid = [], [], 500, 0
    for _ in range(n):
        mid = int(np.clip(mid + rng.integers(-2, 3), 450, 550))
        u = rng.random()
        if u < 0.55 or not live:
            oid += 1
            side = int(rng.integers(1, 3))
            px = mid - int(rng.integers(0, 8)) if side == 1 else mid + int(rng.integers(1, 9))
            op = POST if rng.random() < 0.1 else LIMIT
            cmds.append((op, side, oid, int(rng.integers(1, 6)), px, int(rng.integers(1, 20)), 0))
            live.append(oid)
        elif u < 0.75:
            cmds.append((CANCEL, 0, live.pop(int(rng.integers(len(live)))), 0, 0, 0, 0))
        elif u < 0.9:
            oid += 1
            side = int(rng.integers(1, 3))
            op = [IOC, FOK, MARKET, LIMIT][int(rng.integers(4))]
            px = mid + 5 if side == 1 else mid - 5
            cmds.append((op, side, oid, int(rng.integers(1, 6)), px, int(rng.integers(1, 60)),
                         int(rng.integers(0, 4))))
        else:
            tgt = live[int(rng.integers(len(live)))]
            cmds.append((AMEND, 0, tgt, 0, int(rng.choice([0, mid - 3, mid + 3])), int(rng.integers(1, 25)), 0))
    c, r = Book(1, 1000, 8), ReferenceBook(1, 1000)
    arr = cmd_array(cmds)
    c.execute(arr)
    r.execute(arr)
    assert c.events() == r.events()
    assert_same_book(c, r)
