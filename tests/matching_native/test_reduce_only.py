"""Positions and reduce-only orders: worked examples, run against the C book and the reference.

Every test gets books from `make_book` (validated, state hash checked against the
snapshot and the positions before and after the test).
"""
import numpy as np
import pytest

from matching_native import (
    MAX_POSITION, ORDER_DTYPE, POSITION_DTYPE, CommandFlag, EventKind,
)

from .util import (
    AMEND, BUY, CANCEL, FOK, IOC, LIMIT, MARKET, POST, SELL, Reason, Stp, amended, as_tuples,
    cancelled, cmd_array, fill, pos_array, positions_dict, rejected, rested, submit,
)

RO = Reason.REDUCE_ONLY


def ro(book, op, side, oid, owner, price, qty, stp=0):
    """A reduce-only command through the single-call path."""
    return submit(book, op, side, oid, owner, price, qty, stp, reduce_only=True)


def flags_of(book):
    return {int(r["oid"]): int(r["flags"]) for r in np.frombuffer(book.snapshot(), ORDER_DTYPE)}


# ---------------------------------------------------------------- positions


def test_positions_follow_fills(book):
    assert book.position(1) == 0 and book.position_count == 0
    submit(book, LIMIT, SELL, 1, 1, 100, 5)
    submit(book, IOC, BUY, 2, 2, 100, 3)           # taker BUY: +3, maker -3
    assert (book.position(1), book.position(2)) == (-3, 3)
    submit(book, LIMIT, BUY, 3, 3, 99, 4)
    submit(book, IOC, SELL, 4, 2, 99, 3)           # taker SELL: -3, maker +3
    assert (book.position(2), book.position(3)) == (0, 3)
    assert positions_dict(book) == {1: -3, 3: 3}   # a flat owner leaves the map
    assert book.position_count == 2


def test_self_trade_leaves_the_position_unchanged(book):
    book.set_positions(pos_array({5: 10}))
    submit(book, LIMIT, SELL, 1, 5, 100, 4)
    assert submit(book, LIMIT, BUY, 2, 5, 100, 4) == [fill(LIMIT, BUY, 2, 5, 1, 5, 100, 4, 0, 0)]
    assert positions_dict(book) == {5: 10}


def test_set_positions_position_positions_and_clear(book):
    lo, hi = -(1 << 63), (1 << 63) - 1
    assert book.set_positions(pos_array({1: 5, 2: -7, 3: 0, lo: 1, hi: -1})) is None
    assert (book.position(1), book.position(2), book.position(3), book.position(99)) == (5, -7, 0, 0)
    assert positions_dict(book) == {lo: 1, 1: 5, 2: -7, hi: -1}          # by ascending owner
    assert [o for o, _ in np.frombuffer(book.positions(), POSITION_DTYPE).tolist()] == [lo, 1, 2, hi]
    book.set_positions(pos_array({1: 0, 2: 4}))                          # 0 removes; others untouched
    assert positions_dict(book) == {lo: 1, 2: 4, hi: -1}
    dup = np.array([(4, 1), (4, 9)], POSITION_DTYPE)                     # a later record wins
    book.set_positions(dup.tobytes())                                    # raw bytes accepted
    assert book.position(4) == 9
    book.set_positions(pos_array({4: MAX_POSITION, 2: -MAX_POSITION}))
    assert (book.position(4), book.position(2)) == (MAX_POSITION, -MAX_POSITION)
    before = book.positions()
    with pytest.raises(ValueError):
        book.set_positions(pos_array({7: 3, 8: MAX_POSITION + 1}))       # nothing changed
    with pytest.raises(ValueError):
        book.set_positions(pos_array({7: -MAX_POSITION - 1}))
    with pytest.raises(ValueError):
        book.set_positions(b"\x00" * 17)
    with pytest.raises((TypeError, ValueError)):
        book.set_positions(np.zeros(4, np.int32))
    with pytest.raises(TypeError):
        book.set_positions(42)
    assert book.positions() == before
    submit(book, LIMIT, BUY, 1, 1, 100, 1)
    book.clear()
    assert len(book) == 0 and book.positions() == b"" and book.position_count == 0


def test_many_owners_grow_the_map(book):
    n = 3000
    book.set_positions(pos_array({i: i - n // 2 for i in range(n)}))
    assert book.position_count == n - 1                                  # owner n//2 is flat
    assert all(book.position(i) == i - n // 2 for i in range(n))
    book.set_positions(pos_array({i: 0 for i in range(0, n, 2)}))
    assert positions_dict(book) == {i: i - n // 2 for i in range(1, n, 2) if i != n // 2}
    # fills from many owners against one maker
    book.clear()
    submit(book, LIMIT, SELL, 1, 0, 100, 10_000)
    for i in range(1, 600):
        submit(book, IOC, BUY, i + 1, i, 100, 1)
    assert book.position(0) == -599 and all(book.position(i) == 1 for i in range(1, 600))


def test_state_hash_covers_positions_and_flags(make_book):
    a, b = make_book(), make_book()
    h0 = a.state_hash()
    a.set_positions(pos_array({1: 1}))
    assert a.state_hash() != h0
    a.set_positions(pos_array({1: -1}))
    h_short = a.state_hash()
    assert h_short != h0
    a.set_positions(pos_array({1: 0}))
    assert a.state_hash() == h0
    # same orders, one of them reduce-only: different hashes
    a.set_positions(pos_array({1: 5}))
    b.set_positions(pos_array({1: 5}))
    submit(a, LIMIT, SELL, 1, 1, 100, 5)
    ro(b, LIMIT, SELL, 1, 1, 100, 5)
    assert a.snapshot() != b.snapshot() and a.state_hash() != b.state_hash()


# ---------------------------------------------------------------- reduce-only taker


def test_taker_cut_to_position(book):
    book.set_positions(pos_array({5: 4}))
    submit(book, LIMIT, BUY, 1, 9, 100, 10)
    assert ro(book, IOC, SELL, 2, 5, 100, 10) == [
        cancelled(IOC, RO, SELL, 2, 5, 100, 6, leaves=4),
        fill(IOC, SELL, 2, 5, 1, 9, 100, 4, 0, 6),
    ]
    assert positions_dict(book) == {9: 4}


def test_taker_cut_rests_its_remainder_with_the_flag(book):
    book.set_positions(pos_array({5: -3}))
    assert ro(book, LIMIT, BUY, 1, 5, 100, 8) == [
        cancelled(LIMIT, RO, BUY, 1, 5, 100, 5, leaves=3),
        rested(LIMIT, BUY, 1, 5, 100, 3),
    ]
    assert flags_of(book) == {1: CommandFlag.REDUCE_ONLY}
    assert book.get(1) == (BUY, 100, 3, 5)


def test_taker_within_position_is_not_cut(book):
    book.set_positions(pos_array({5: 10}))
    submit(book, LIMIT, BUY, 1, 9, 100, 4)
    assert ro(book, LIMIT, SELL, 2, 5, 100, 10) == [
        fill(LIMIT, SELL, 2, 5, 1, 9, 100, 4, 6, 0),
        rested(LIMIT, SELL, 2, 5, 100, 6),
    ]
    assert positions_dict(book) == {5: 6, 9: 4}


@pytest.mark.parametrize("op", [LIMIT, IOC, POST, MARKET])
def test_taker_without_position_is_only_cancelled(book, op):
    submit(book, LIMIT, BUY, 1, 9, 100, 10)
    h = book.state_hash()
    assert ro(book, op, SELL, 2, 5, 100, 5) == [cancelled(op, RO, SELL, 2, 5, 100, 5, leaves=0)]
    # a long owner cannot reduce with a BUY either
    book.set_positions(pos_array({5: 7}))
    assert ro(book, op, BUY, 3, 5, 99, 2) == [cancelled(op, RO, BUY, 3, 5, 99, 2, leaves=0)]
    book.set_positions(pos_array({5: 0}))
    assert book.state_hash() == h and len(book) == 1


def test_fok_over_position_is_not_fillable(book):
    book.set_positions(pos_array({5: 4}))
    submit(book, LIMIT, BUY, 1, 9, 100, 10)
    h = book.state_hash()
    assert ro(book, FOK, SELL, 2, 5, 100, 5) == [cancelled(FOK, Reason.FOK_NOT_FILLABLE, SELL, 2, 5, 100, 5)]
    assert book.state_hash() == h
    assert ro(book, FOK, SELL, 3, 5, 100, 4) == [fill(FOK, SELL, 3, 5, 1, 9, 100, 4, 0, 6)]
    assert positions_dict(book) == {9: 4}


def test_post_only_is_cut_before_its_cross_check(book):
    book.set_positions(pos_array({5: 4}))
    submit(book, LIMIT, BUY, 1, 9, 100, 10)
    assert ro(book, POST, SELL, 2, 5, 100, 10) == [
        cancelled(POST, RO, SELL, 2, 5, 100, 6, leaves=4),
        cancelled(POST, Reason.POST_ONLY_WOULD_TAKE, SELL, 2, 5, 100, 4),
    ]
    assert ro(book, POST, SELL, 3, 5, 101, 10) == [
        cancelled(POST, RO, SELL, 3, 5, 101, 6, leaves=4),
        rested(POST, SELL, 3, 5, 101, 4),
    ]


def test_market_cut_then_protection_and_remainder(book):
    book.set_positions(pos_array({5: 2}))
    submit(book, LIMIT, BUY, 1, 9, 100, 1)
    submit(book, LIMIT, BUY, 2, 9, 98, 5)
    assert ro(book, MARKET, SELL, 3, 5, 99, 5) == [
        cancelled(MARKET, RO, SELL, 3, 5, 99, 3, leaves=2),
        fill(MARKET, SELL, 3, 5, 1, 9, 100, 1, 1, 0),
        cancelled(MARKET, Reason.REMAINDER_EXPIRED, SELL, 3, 5, 99, 1),
    ]
    assert positions_dict(book) == {5: 1, 9: 1}


def test_rejects_come_before_the_reduce_only_check(book):
    submit(book, LIMIT, BUY, 1, 9, 100, 10)
    assert ro(book, LIMIT, SELL, 2, 5, 100, 0) == [rejected(LIMIT, Reason.BAD_QTY, SELL, 2, 5, 100, 0)]
    assert ro(book, LIMIT, SELL, 1, 5, 100, 3) == [
        rejected(LIMIT, Reason.DUPLICATE_ORDER_ID, SELL, 1, 5, 100, 3)]
    assert ro(book, LIMIT, SELL, 2, 5, 5000, 3) == [
        rejected(LIMIT, Reason.PRICE_OUT_OF_BAND, SELL, 2, 5, 5000, 3)]


def test_taker_self_trade_keeps_its_position(book):
    book.set_positions(pos_array({5: -4}))
    submit(book, LIMIT, SELL, 1, 5, 100, 4)
    assert ro(book, LIMIT, BUY, 2, 5, 100, 4) == [fill(LIMIT, BUY, 2, 5, 1, 5, 100, 4, 0, 0)]
    assert positions_dict(book) == {5: -4}


# ---------------------------------------------------------------- reduce-only maker


def test_maker_skipped_when_owner_flat(book):
    book.set_positions(pos_array({5: 3}))
    assert ro(book, LIMIT, SELL, 1, 5, 100, 3) == [rested(LIMIT, SELL, 1, 5, 100, 3)]
    book.set_positions(pos_array({5: 0}))          # closed elsewhere
    submit(book, LIMIT, SELL, 2, 6, 101, 4)
    assert submit(book, LIMIT, BUY, 3, 9, 101, 4) == [
        cancelled(LIMIT, RO, SELL, 1, 5, 100, 3),
        fill(LIMIT, BUY, 3, 9, 2, 6, 101, 4, 0, 0),
    ]
    assert positions_dict(book) == {6: -4, 9: 4} and len(book) == 0


def test_maker_cut_at_position_then_removed(book):
    book.set_positions(pos_array({5: 3}))
    ro(book, LIMIT, SELL, 1, 5, 100, 3)
    # an amend keeps the flag (and may raise the qty: it is checked at match time)
    assert submit(book, AMEND, 0, 1, 0, 0, 8) == [amended(SELL, 1, 5, 100, 8, kept=False)]
    assert flags_of(book) == {1: CommandFlag.REDUCE_ONLY}
    submit(book, LIMIT, SELL, 2, 6, 100, 5)
    assert submit(book, LIMIT, BUY, 3, 9, 100, 10) == [
        fill(LIMIT, BUY, 3, 9, 1, 5, 100, 3, 7, 5),
        cancelled(LIMIT, RO, SELL, 1, 5, 100, 5),
        fill(LIMIT, BUY, 3, 9, 2, 6, 100, 5, 2, 0),
        rested(LIMIT, BUY, 3, 9, 100, 2),
    ]
    assert positions_dict(book) == {6: -5, 9: 8}


def test_maker_partially_filled_within_position_stays(book):
    book.set_positions(pos_array({5: 10}))
    ro(book, LIMIT, SELL, 1, 5, 100, 6)
    assert submit(book, IOC, BUY, 2, 9, 100, 4) == [fill(IOC, BUY, 2, 9, 1, 5, 100, 4, 0, 2)]
    assert book.get(1) == (SELL, 100, 2, 5) and positions_dict(book) == {5: 6, 9: 4}


@pytest.mark.parametrize("op", [LIMIT, IOC, MARKET])
def test_two_order_sweep_from_the_problem(book, op):
    """Long 10: a SELL 10 and a reduce-only SELL 10 rest; one BUY 20 must not make the owner short."""
    book.set_positions(pos_array({7: 10}))
    submit(book, LIMIT, SELL, 1, 7, 100, 10)
    assert ro(book, LIMIT, SELL, 2, 7, 100, 10) == [rested(LIMIT, SELL, 2, 7, 100, 10)]
    tail = (rested(LIMIT, BUY, 3, 8, 100, 10) if op == LIMIT
            else cancelled(op, Reason.REMAINDER_EXPIRED, BUY, 3, 8, 100, 10))
    assert submit(book, op, BUY, 3, 8, 100, 20) == [
        fill(op, BUY, 3, 8, 1, 7, 100, 10, 10, 0),
        cancelled(op, RO, SELL, 2, 7, 100, 10),
        tail,
    ]
    assert book.position(7) == 0 and book.position(8) == 10
    assert book.get(2) is None


def test_maker_removed_across_levels_and_sides(book):
    # short 4: reduce-only bids at two levels; a SELL 10 sweep fills 4 and removes the rest
    book.set_positions(pos_array({5: -4}))
    ro(book, LIMIT, BUY, 1, 5, 100, 3)
    ro(book, LIMIT, BUY, 2, 5, 99, 1)
    book.set_positions(pos_array({5: -4}))
    book.amend(2, 4)                                # 4 more lots than the position allows
    submit(book, LIMIT, BUY, 3, 6, 99, 2)
    assert submit(book, IOC, SELL, 4, 9, 98, 10) == [
        fill(IOC, SELL, 4, 9, 1, 5, 100, 3, 7, 0),
        fill(IOC, SELL, 4, 9, 2, 5, 99, 1, 6, 3),
        cancelled(IOC, RO, BUY, 2, 5, 99, 3),
        fill(IOC, SELL, 4, 9, 3, 6, 99, 2, 4, 0),
        cancelled(IOC, Reason.REMAINDER_EXPIRED, SELL, 4, 9, 98, 4),
    ]
    assert positions_dict(book) == {6: 2, 9: -6}


def test_stp_is_handled_before_the_reduce_only_maker(book):
    book.set_positions(pos_array({5: 3}))
    ro(book, LIMIT, SELL, 1, 5, 100, 3)
    book.set_positions(pos_array({5: 0}))
    # EXPIRE_TAKER: the taker expires at its own (reduce-only, flat) maker, which stays
    assert submit(book, LIMIT, BUY, 2, 5, 100, 2, Stp.EXPIRE_TAKER) == [
        cancelled(LIMIT, Reason.STP_TAKER, BUY, 2, 5, 100, 2)]
    assert book.get(1) == (SELL, 100, 3, 5)
    # another owner reaches it: removed for reduce-only
    assert submit(book, IOC, BUY, 3, 9, 100, 2) == [
        cancelled(IOC, RO, SELL, 1, 5, 100, 3),
        cancelled(IOC, Reason.REMAINDER_EXPIRED, BUY, 3, 9, 100, 2),
    ]


def test_self_trade_with_a_reduce_only_maker(book):
    """Same owner on both sides (STP NONE): the fill nets 0, so the maker keeps what it may
    reduce; each fill is still capped at that amount (the maker stays first in line)."""
    book.set_positions(pos_array({5: 10}))
    ro(book, LIMIT, SELL, 1, 5, 100, 10)
    book.set_positions(pos_array({5: 3}))
    assert submit(book, LIMIT, BUY, 2, 5, 100, 8) == [
        fill(LIMIT, BUY, 2, 5, 1, 5, 100, 3, 5, 7),
        fill(LIMIT, BUY, 2, 5, 1, 5, 100, 3, 2, 4),
        fill(LIMIT, BUY, 2, 5, 1, 5, 100, 2, 0, 2),
    ]
    assert positions_dict(book) == {5: 3} and book.get(1) == (SELL, 100, 2, 5)


def test_fok_check_counts_reduce_only_makers_as_zero(book):
    book.set_positions(pos_array({5: 10}))
    ro(book, LIMIT, SELL, 1, 5, 100, 10)
    submit(book, LIMIT, SELL, 2, 6, 100, 3)
    h = book.state_hash()
    # 13 lots rest, but only 3 count: conservative refusal
    assert submit(book, FOK, BUY, 3, 9, 100, 5) == [cancelled(FOK, Reason.FOK_NOT_FILLABLE, BUY, 3, 9, 100, 5)]
    assert book.state_hash() == h
    # 3 is fillable; the sweep takes them from the reduce-only maker first in line
    assert submit(book, FOK, BUY, 4, 9, 100, 3) == [fill(FOK, BUY, 4, 9, 1, 5, 100, 3, 0, 7)]
    # STP EXPIRE_MAKER skips own orders as before
    assert submit(book, FOK, BUY, 5, 6, 100, 4, Stp.EXPIRE_MAKER) == [
        cancelled(FOK, Reason.FOK_NOT_FILLABLE, BUY, 5, 6, 100, 4)]


def test_fok_passing_the_check_fills_completely_past_reduce_only_makers(book):
    book.set_positions(pos_array({5: 1}))
    ro(book, LIMIT, SELL, 1, 5, 100, 1)
    book.amend(1, 6)
    submit(book, LIMIT, SELL, 2, 6, 101, 5)
    assert submit(book, FOK, BUY, 3, 9, 101, 5) == [
        fill(FOK, BUY, 3, 9, 1, 5, 100, 1, 4, 5),
        cancelled(FOK, RO, SELL, 1, 5, 100, 5),
        fill(FOK, BUY, 3, 9, 2, 6, 101, 4, 0, 1),
    ]


# ---------------------------------------------------------------- snapshot / batch


def test_snapshot_restore_keeps_the_flag(make_book):
    src = make_book()
    src.set_positions(pos_array({5: 4, 6: -2}))
    ro(src, LIMIT, SELL, 1, 5, 105, 4)
    submit(src, LIMIT, SELL, 2, 5, 106, 4)
    ro(src, LIMIT, BUY, 3, 6, 95, 2)
    snap = src.snapshot()
    assert np.frombuffer(snap, ORDER_DTYPE)["flags"].tolist() == [1, 1, 0]   # bids first
    dst = make_book()
    dst.restore(snap)
    assert dst.snapshot() == snap
    assert dst.state_hash() != src.state_hash()          # positions not restored yet
    dst.set_positions(src.positions())
    assert dst.state_hash() == src.state_hash()
    # the restored reduce-only order is enforced: owner 5 closes elsewhere, then a taker comes
    dst.set_positions(pos_array({5: 0}))
    assert submit(dst, IOC, BUY, 4, 9, 106, 4) == [
        cancelled(IOC, RO, SELL, 1, 5, 105, 4),
        fill(IOC, BUY, 4, 9, 2, 5, 106, 4, 0, 0),
    ]
    # restore ignores flag bits other than REDUCE_ONLY; positions are left alone
    arr = np.frombuffer(snap, ORDER_DTYPE).copy()
    arr["flags"] = [3, 2, 0]
    dst.restore(arr.tobytes())
    assert np.frombuffer(dst.snapshot(), ORDER_DTYPE)["flags"].tolist() == [1, 0, 0]
    assert dst.position(5) == -4 and dst.position(9) == 4


def test_cancel_and_amend_ignore_command_flags(book):
    book.set_positions(pos_array({5: 3}))
    submit(book, LIMIT, SELL, 1, 5, 100, 3)
    rows = [(AMEND, 0, 1, 0, 0, 2, 0, 1), (CANCEL, 0, 1, 0, 0, 0, 0, 1)]
    book.clear_events()
    book.execute(cmd_array(rows))
    assert as_tuples(book.events()) == [
        amended(SELL, 1, 5, 100, 2, kept=True),
        cancelled(CANCEL, Reason.USER_CANCEL, SELL, 1, 5, 100, 2),
    ]


def test_batch_flags_equal_single_calls(make_book):
    rows = [
        (LIMIT, SELL, 1, 7, 100, 10, 0, 0),
        (LIMIT, SELL, 2, 7, 100, 10, 0, 1),
        (LIMIT, BUY, 3, 8, 100, 20, 0, 0),
        (IOC, SELL, 4, 8, 99, 15, 0, 1),       # long 7: cut to 7, fills its own bid (net 0)
        (LIMIT, BUY, 5, 7, 90, 5, 0, 3),       # reserved bit ignored; owner 7 flat: cancelled
        (FOK, SELL, 6, 9, 100, 1, 0, 1),       # flat: FOK_NOT_FILLABLE
        (MARKET, BUY, 7, 8, 200, 4, 0, 1),     # long: nothing to reduce with a BUY
    ]
    single, batch = make_book(), make_book()
    for b in (single, batch):
        b.set_positions(pos_array({7: 10, 8: -3}))
    per_call = []
    for op, side, oid, owner, price, qty, stp, flags in rows:
        per_call += submit(single, op, side, oid, owner, price, qty, stp, reduce_only=bool(flags & 1))
    batch.clear_events()
    batch.execute(cmd_array(rows))
    assert as_tuples(batch.events()) == per_call
    assert batch.positions() == single.positions() and batch.state_hash() == single.state_hash()
    kinds = [(e[0], e[1]) for e in per_call]
    assert (EventKind.CANCELLED, RO) in kinds


def test_reduce_only_keyword_on_every_shorthand(book):
    book.set_positions(pos_array({5: 1}))
    for i, name in enumerate(("limit", "ioc", "fok", "post_only", "market")):
        book.clear_events()
        assert getattr(book, name)(SELL, 10 + i, 6, 100, 2, reduce_only=True) == 1
        ev = as_tuples(book.events())[0]
        assert ev[:2] == (EventKind.CANCELLED,
                          Reason.FOK_NOT_FILLABLE if name == "fok" else RO), name
    assert book.limit(SELL, 20, 5, 100, 1, 0, reduce_only=1) == 1    # any truthy value
    assert book.limit(SELL, 21, 6, 101, 1, reduce_only=False) == 1
    assert flags_of(book) == {20: 1, 21: 0}
    with pytest.raises(TypeError):
        book.limit(SELL, 22, 6, 100, 1, reduceonly=True)
    with pytest.raises(TypeError):
        book.submit(LIMIT, SELL, 22, 6, 100, 1, 0, True)
    with pytest.raises(TypeError):
        book.submit(LIMIT, SELL, 22, 6, 100, 1, stp=0)
