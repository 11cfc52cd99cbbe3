"""Worked examples with hand-checked outcomes, run against the C book and the reference.

Every test gets books from `make_book`, which validates them and checks their
state hash before and after the test.
"""
import pytest

from .util import (
    AMEND, BUY, CANCEL, FOK, IOC, LIMIT, MARKET, POST, SELL, Reason, Stp, amended, cancelled,
    fill, rejected, rested, submit,
)

# ---------------------------------------------------------------- limit / GTC


def test_limit_rests_on_empty_book(book):
    assert submit(book, LIMIT, BUY, 1, 7, 100, 10) == [rested(LIMIT, BUY, 1, 7, 100, 10)]
    assert submit(book, LIMIT, SELL, 2, 8, 105, 4) == [rested(LIMIT, SELL, 2, 8, 105, 4)]
    assert (book.best_bid(), book.best_ask()) == (100, 105)
    assert book.depth(5) == ([(100, 10, 1)], [(105, 4, 1)])
    assert len(book) == book.order_count == 2
    assert book.get(1) == (BUY, 100, 10, 7)
    assert book.get(3) is None


def test_limit_crossing_fills_at_maker_price_then_rests(book):
    submit(book, LIMIT, SELL, 1, 7, 101, 3)
    submit(book, LIMIT, SELL, 2, 8, 102, 4)
    # buy 10 @ 103 takes 3 @ 101 and 4 @ 102, rests 3 @ 103
    assert submit(book, LIMIT, BUY, 3, 9, 103, 10) == [
        fill(LIMIT, BUY, 3, 9, 1, 7, 101, 3, 7, 0),
        fill(LIMIT, BUY, 3, 9, 2, 8, 102, 4, 3, 0),
        rested(LIMIT, BUY, 3, 9, 103, 3),
    ]
    assert (book.best_bid(), book.best_ask()) == (103, None)


def test_fifo_within_level_and_partial_maker(book):
    submit(book, LIMIT, BUY, 1, 7, 100, 5)
    submit(book, LIMIT, BUY, 2, 8, 100, 5)
    submit(book, LIMIT, BUY, 3, 9, 99, 5)
    assert submit(book, LIMIT, SELL, 4, 10, 99, 7) == [
        fill(LIMIT, SELL, 4, 10, 1, 7, 100, 5, 2, 0),
        fill(LIMIT, SELL, 4, 10, 2, 8, 100, 2, 0, 3),
    ]
    assert book.depth(3) == ([(100, 3, 1), (99, 5, 1)], [])
    assert book.get(2) == (BUY, 100, 3, 8)


def test_limit_does_not_trade_through_its_price(book):
    submit(book, LIMIT, SELL, 1, 7, 105, 5)
    assert submit(book, LIMIT, BUY, 2, 8, 104, 5) == [rested(LIMIT, BUY, 2, 8, 104, 5)]


# ---------------------------------------------------------------- IOC


def test_ioc_fills_and_expires_remainder(book):
    submit(book, LIMIT, SELL, 1, 7, 100, 3)
    assert submit(book, IOC, BUY, 2, 8, 100, 5) == [
        fill(IOC, BUY, 2, 8, 1, 7, 100, 3, 2, 0),
        cancelled(IOC, Reason.REMAINDER_EXPIRED, BUY, 2, 8, 100, 2),
    ]
    assert len(book) == 0


def test_ioc_on_empty_book_expires_everything(book):
    assert submit(book, IOC, SELL, 1, 7, 100, 5) == [
        cancelled(IOC, Reason.REMAINDER_EXPIRED, SELL, 1, 7, 100, 5)]


def test_ioc_fully_filled_emits_only_fills(book):
    submit(book, LIMIT, SELL, 1, 7, 100, 5)
    assert submit(book, IOC, BUY, 2, 8, 100, 5) == [fill(IOC, BUY, 2, 8, 1, 7, 100, 5, 0, 0)]


# ---------------------------------------------------------------- FOK


def test_fok_not_fillable_leaves_book_untouched(book):
    submit(book, LIMIT, SELL, 1, 7, 100, 3)
    submit(book, LIMIT, SELL, 2, 7, 102, 3)
    h = book.state_hash()
    assert submit(book, FOK, BUY, 3, 8, 101, 4) == [
        cancelled(FOK, Reason.FOK_NOT_FILLABLE, BUY, 3, 8, 101, 4)]
    assert book.state_hash() == h


def test_fok_fillable_across_levels(book):
    submit(book, LIMIT, SELL, 1, 7, 100, 3)
    submit(book, LIMIT, SELL, 2, 7, 102, 3)
    assert submit(book, FOK, BUY, 3, 8, 102, 4) == [
        fill(FOK, BUY, 3, 8, 1, 7, 100, 3, 1, 0),
        fill(FOK, BUY, 3, 8, 2, 7, 102, 1, 0, 2),
    ]


def test_fok_with_stp_expire_taker_counts_own_order_as_blocking(book):
    submit(book, LIMIT, SELL, 1, 5, 100, 3)  # own order first in line
    submit(book, LIMIT, SELL, 2, 7, 100, 10)
    assert submit(book, FOK, BUY, 3, 5, 100, 4, Stp.EXPIRE_TAKER) == [
        cancelled(FOK, Reason.FOK_NOT_FILLABLE, BUY, 3, 5, 100, 4)]
    assert len(book) == 2


def test_fok_with_stp_expire_maker_skips_own_orders(book):
    submit(book, LIMIT, SELL, 1, 5, 100, 3)
    submit(book, LIMIT, SELL, 2, 7, 100, 4)
    # only 4 lots fillable from others: 5 is not fillable, nothing is cancelled
    assert submit(book, FOK, BUY, 3, 5, 100, 5, Stp.EXPIRE_MAKER) == [
        cancelled(FOK, Reason.FOK_NOT_FILLABLE, BUY, 3, 5, 100, 5)]
    assert submit(book, FOK, BUY, 4, 5, 100, 4, Stp.EXPIRE_MAKER) == [
        cancelled(FOK, Reason.STP_MAKER, SELL, 1, 5, 100, 3),
        fill(FOK, BUY, 4, 5, 2, 7, 100, 4, 0, 0),
    ]


# ---------------------------------------------------------------- post-only


def test_post_only_rests_when_passive(book):
    submit(book, LIMIT, SELL, 1, 7, 101, 3)
    assert submit(book, POST, BUY, 2, 8, 100, 3) == [rested(POST, BUY, 2, 8, 100, 3)]


@pytest.mark.parametrize("price", [101, 105])
def test_post_only_cancelled_when_it_would_take(book, price):
    submit(book, LIMIT, SELL, 1, 7, 101, 3)
    assert submit(book, POST, BUY, 2, 8, price, 3) == [
        cancelled(POST, Reason.POST_ONLY_WOULD_TAKE, BUY, 2, 8, price, 3)]
    assert submit(book, POST, SELL, 3, 8, 100, 3) == [rested(POST, SELL, 3, 8, 100, 3)]
    assert submit(book, LIMIT, BUY, 4, 8, 99, 3) == [rested(LIMIT, BUY, 4, 8, 99, 3)]
    assert submit(book, POST, SELL, 5, 8, 99, 3) == [
        cancelled(POST, Reason.POST_ONLY_WOULD_TAKE, SELL, 5, 8, 99, 3)]


# ---------------------------------------------------------------- market


def test_market_buy_stops_at_protection_price(book):
    submit(book, LIMIT, SELL, 1, 7, 100, 2)
    submit(book, LIMIT, SELL, 2, 7, 101, 2)
    submit(book, LIMIT, SELL, 3, 7, 103, 2)
    assert submit(book, MARKET, BUY, 4, 8, 102, 10) == [
        fill(MARKET, BUY, 4, 8, 1, 7, 100, 2, 8, 0),
        fill(MARKET, BUY, 4, 8, 2, 7, 101, 2, 6, 0),
        cancelled(MARKET, Reason.REMAINDER_EXPIRED, BUY, 4, 8, 102, 6),
    ]
    assert book.best_ask() == 103


def test_market_sell_never_below_protection(book):
    submit(book, LIMIT, BUY, 1, 7, 100, 2)
    submit(book, LIMIT, BUY, 2, 7, 98, 2)
    assert submit(book, MARKET, SELL, 3, 8, 99, 3) == [
        fill(MARKET, SELL, 3, 8, 1, 7, 100, 2, 1, 0),
        cancelled(MARKET, Reason.REMAINDER_EXPIRED, SELL, 3, 8, 99, 1),
    ]
    assert book.best_bid() == 98


def test_market_never_rests(book):
    assert submit(book, MARKET, BUY, 1, 8, 1000, 3) == [
        cancelled(MARKET, Reason.REMAINDER_EXPIRED, BUY, 1, 8, 1000, 3)]
    assert len(book) == 0


# ---------------------------------------------------------------- cancel


def test_cancel_resting_order(book):
    submit(book, LIMIT, BUY, 1, 7, 100, 5)
    submit(book, LIMIT, BUY, 2, 7, 100, 6)
    assert submit(book, CANCEL, 0, 1, 0, 0, 0) == [
        cancelled(CANCEL, Reason.USER_CANCEL, BUY, 1, 7, 100, 5)]
    assert book.depth(1) == ([(100, 6, 1)], [])
    assert submit(book, CANCEL, 0, 2, 0, 0, 0) == [
        cancelled(CANCEL, Reason.USER_CANCEL, BUY, 2, 7, 100, 6)]
    assert book.best_bid() is None


def test_cancel_unknown_and_filled_orders_rejected(book):
    assert submit(book, CANCEL, 0, 42, 3, 0, 0) == [
        rejected(CANCEL, Reason.UNKNOWN_ORDER, 0, 42, 3, 0, 0)]
    submit(book, LIMIT, SELL, 1, 7, 100, 5)
    submit(book, LIMIT, BUY, 2, 8, 100, 5)  # fills order 1 completely
    assert submit(book, CANCEL, 0, 1, 0, 0, 0) == [
        rejected(CANCEL, Reason.UNKNOWN_ORDER, 0, 1, 0, 0, 0)]
    assert submit(book, CANCEL, 0, 1, 0, 0, 0) == [
        rejected(CANCEL, Reason.UNKNOWN_ORDER, 0, 1, 0, 0, 0)]


def test_cancel_best_level_moves_best_price(book):
    for i, p in enumerate([100, 99, 97]):
        submit(book, LIMIT, BUY, i + 1, 7, p, 1)
    for i, p in enumerate([101, 104, 110]):
        submit(book, LIMIT, SELL, i + 11, 7, p, 1)
    book.cancel(1)
    book.cancel(11)
    assert (book.best_bid(), book.best_ask()) == (99, 104)
    book.cancel(2)
    book.cancel(12)
    assert (book.best_bid(), book.best_ask()) == (97, 110)
    book.cancel(3)
    book.cancel(13)
    assert (book.best_bid(), book.best_ask()) == (None, None)


# ---------------------------------------------------------------- amend


def _three_bids(book):
    submit(book, LIMIT, BUY, 1, 7, 100, 5)
    submit(book, LIMIT, BUY, 2, 8, 100, 5)
    submit(book, LIMIT, BUY, 3, 9, 99, 5)


def test_amend_qty_down_keeps_priority(book):
    _three_bids(book)
    assert submit(book, AMEND, 0, 1, 0, 0, 3) == [amended(BUY, 1, 7, 100, 3, kept=True)]
    assert submit(book, LIMIT, SELL, 4, 10, 100, 4) == [
        fill(LIMIT, SELL, 4, 10, 1, 7, 100, 3, 1, 0),
        fill(LIMIT, SELL, 4, 10, 2, 8, 100, 1, 0, 4),
    ]


def test_amend_same_qty_same_price_keeps_priority(book):
    _three_bids(book)
    assert submit(book, AMEND, 0, 1, 0, 100, 5) == [amended(BUY, 1, 7, 100, 5, kept=True)]
    assert submit(book, IOC, SELL, 4, 10, 100, 1) == [fill(IOC, SELL, 4, 10, 1, 7, 100, 1, 0, 4)]


def test_amend_qty_up_loses_priority(book):
    _three_bids(book)
    assert submit(book, AMEND, 0, 1, 0, 0, 6) == [amended(BUY, 1, 7, 100, 6, kept=False)]
    assert book.depth(1) == ([(100, 11, 2)], [])
    assert submit(book, IOC, SELL, 4, 10, 100, 6) == [
        fill(IOC, SELL, 4, 10, 2, 8, 100, 5, 1, 0),
        fill(IOC, SELL, 4, 10, 1, 7, 100, 1, 0, 5),
    ]


def test_amend_price_change_loses_priority(book):
    _three_bids(book)
    # move order 3 (99) to 100: behind 1 and 2
    assert submit(book, AMEND, 0, 3, 0, 100, 5) == [amended(BUY, 3, 9, 100, 5, kept=False)]
    # move order 1 down and back up: now last at 100
    submit(book, AMEND, 0, 1, 0, 98, 5)
    submit(book, AMEND, 0, 1, 0, 100, 2)
    assert book.depth(3) == ([(100, 12, 3)], [])
    evs = submit(book, IOC, SELL, 4, 10, 100, 12)
    assert [e[7] for e in evs] == [2, 3, 1]


def test_amend_rejects(book):
    submit(book, LIMIT, BUY, 1, 7, 100, 5)
    submit(book, LIMIT, SELL, 2, 7, 105, 5)
    h = book.state_hash()
    assert submit(book, AMEND, 0, 1, 0, 0, 0) == [rejected(AMEND, Reason.BAD_QTY, 0, 1, 0, 0, 0)]
    assert submit(book, AMEND, 0, 1, 0, 0, -3) == [rejected(AMEND, Reason.BAD_QTY, 0, 1, 0, 0, -3)]
    assert submit(book, AMEND, 0, 9, 0, 0, 3) == [
        rejected(AMEND, Reason.AMEND_UNKNOWN_ORDER, 0, 9, 0, 0, 3)]
    assert submit(book, AMEND, 0, 1, 0, 5000, 3) == [
        rejected(AMEND, Reason.PRICE_OUT_OF_BAND, 0, 1, 0, 5000, 3)]
    # an amend never trades
    assert submit(book, AMEND, 0, 1, 0, 105, 3) == [
        rejected(AMEND, Reason.AMEND_WOULD_CROSS, 0, 1, 0, 105, 3)]
    assert submit(book, AMEND, 0, 2, 0, 100, 3) == [
        rejected(AMEND, Reason.AMEND_WOULD_CROSS, 0, 2, 0, 100, 3)]
    assert book.state_hash() == h


def test_amend_of_filled_order_rejected(book):
    submit(book, LIMIT, SELL, 1, 7, 100, 5)
    submit(book, LIMIT, BUY, 2, 8, 100, 5)
    assert submit(book, AMEND, 0, 1, 0, 0, 3) == [
        rejected(AMEND, Reason.AMEND_UNKNOWN_ORDER, 0, 1, 0, 0, 3)]


def test_amend_ask_and_best_prices(book):
    submit(book, LIMIT, SELL, 1, 7, 105, 5)
    submit(book, LIMIT, SELL, 2, 7, 107, 5)
    assert submit(book, AMEND, 0, 1, 0, 110, 5) == [amended(SELL, 1, 7, 110, 5, kept=False)]
    assert book.best_ask() == 107
    assert submit(book, AMEND, 0, 1, 0, 101, 5) == [amended(SELL, 1, 7, 101, 5, kept=False)]
    assert book.best_ask() == 101


# ---------------------------------------------------------------- self-trade prevention


def _stp_book(book):
    submit(book, LIMIT, SELL, 1, 7, 100, 2)   # other owner
    submit(book, LIMIT, SELL, 2, 5, 100, 3)   # same owner as the taker
    submit(book, LIMIT, SELL, 3, 7, 101, 4)


def test_stp_none_trades_with_self(book):
    _stp_book(book)
    assert submit(book, LIMIT, BUY, 10, 5, 100, 5, Stp.NONE) == [
        fill(LIMIT, BUY, 10, 5, 1, 7, 100, 2, 3, 0),
        fill(LIMIT, BUY, 10, 5, 2, 5, 100, 3, 0, 0),
    ]


def test_stp_expire_taker(book):
    _stp_book(book)
    assert submit(book, LIMIT, BUY, 10, 5, 101, 9, Stp.EXPIRE_TAKER) == [
        fill(LIMIT, BUY, 10, 5, 1, 7, 100, 2, 7, 0),
        cancelled(LIMIT, Reason.STP_TAKER, BUY, 10, 5, 101, 7),
    ]
    assert book.get(2) == (SELL, 100, 3, 5)
    assert book.get(10) is None


def test_stp_expire_maker(book):
    _stp_book(book)
    assert submit(book, LIMIT, BUY, 10, 5, 101, 9, Stp.EXPIRE_MAKER) == [
        fill(LIMIT, BUY, 10, 5, 1, 7, 100, 2, 7, 0),
        cancelled(LIMIT, Reason.STP_MAKER, SELL, 2, 5, 100, 3),
        fill(LIMIT, BUY, 10, 5, 3, 7, 101, 4, 3, 0),
        rested(LIMIT, BUY, 10, 5, 101, 3),
    ]


def test_stp_expire_both(book):
    _stp_book(book)
    assert submit(book, IOC, BUY, 10, 5, 101, 9, Stp.EXPIRE_BOTH) == [
        fill(IOC, BUY, 10, 5, 1, 7, 100, 2, 7, 0),
        cancelled(IOC, Reason.STP_MAKER, SELL, 2, 5, 100, 3),
        cancelled(IOC, Reason.STP_TAKER, BUY, 10, 5, 101, 7),
    ]
    assert book.depth(5) == ([], [(101, 4, 1)])


def test_stp_only_applies_at_matchable_prices(book):
    submit(book, LIMIT, SELL, 1, 5, 102, 3)
    assert submit(book, LIMIT, BUY, 10, 5, 101, 3, Stp.EXPIRE_TAKER) == [
        rested(LIMIT, BUY, 10, 5, 101, 3)]


def test_stp_market_sell_expire_maker(book):
    submit(book, LIMIT, BUY, 1, 5, 100, 3)
    submit(book, LIMIT, BUY, 2, 6, 99, 3)
    assert submit(book, MARKET, SELL, 3, 5, 1, 4, Stp.EXPIRE_MAKER) == [
        cancelled(MARKET, Reason.STP_MAKER, BUY, 1, 5, 100, 3),
        fill(MARKET, SELL, 3, 5, 2, 6, 99, 3, 1, 0),
        cancelled(MARKET, Reason.REMAINDER_EXPIRED, SELL, 3, 5, 1, 1),
    ]


# ---------------------------------------------------------------- rejects


@pytest.mark.parametrize("op", [LIMIT, IOC, FOK, POST, MARKET])
def test_new_order_rejects(make_book, op):
    book = make_book(min_tick=10, max_tick=200)
    submit(book, LIMIT, BUY, 1, 7, 100, 5)
    h = book.state_hash()
    assert submit(book, op, 3, 2, 7, 100, 5) == [rejected(op, Reason.BAD_SIDE, 3, 2, 7, 100, 5)]
    assert submit(book, op, 0, 2, 7, 100, 5) == [rejected(op, Reason.BAD_SIDE, 0, 2, 7, 100, 5)]
    assert submit(book, op, SELL, 2, 7, 100, 5, 4) == [
        rejected(op, Reason.BAD_STP, SELL, 2, 7, 100, 5)]
    assert submit(book, op, SELL, 2, 7, 100, 0) == [rejected(op, Reason.BAD_QTY, SELL, 2, 7, 100, 0)]
    assert submit(book, op, SELL, 2, 7, 100, -1) == [rejected(op, Reason.BAD_QTY, SELL, 2, 7, 100, -1)]
    big = (1 << 36)
    assert submit(book, op, SELL, 2, 7, 100, big) == [
        rejected(op, Reason.BAD_QTY, SELL, 2, 7, 100, big)]
    for p in (9, 201, 0, -5):
        assert submit(book, op, SELL, 2, 7, p, 5) == [
            rejected(op, Reason.PRICE_OUT_OF_BAND, SELL, 2, 7, p, 5)]
    assert submit(book, op, SELL, 1, 7, 100, 5) == [
        rejected(op, Reason.DUPLICATE_ORDER_ID, SELL, 1, 7, 100, 5)]
    assert book.state_hash() == h


@pytest.mark.parametrize("op", [0, 8, 255])
def test_bad_op_rejected(book, op):
    assert submit(book, op, BUY, 1, 7, 100, 5) == [rejected(op, Reason.BAD_OP, BUY, 1, 7, 100, 5)]


def test_band_edges_accepted(make_book):
    book = make_book(min_tick=10, max_tick=20)
    assert submit(book, LIMIT, BUY, 1, 7, 10, 1) == [rested(LIMIT, BUY, 1, 7, 10, 1)]
    assert submit(book, LIMIT, SELL, 2, 7, 20, 1) == [rested(LIMIT, SELL, 2, 7, 20, 1)]


def test_extreme_ids_and_owners(book):
    lo, hi = -(1 << 63), (1 << 63) - 1
    assert submit(book, LIMIT, BUY, lo, hi, 100, 1) == [rested(LIMIT, BUY, lo, hi, 100, 1)]
    assert submit(book, LIMIT, BUY, hi, lo, 100, 1) == [rested(LIMIT, BUY, hi, lo, 100, 1)]
    assert submit(book, LIMIT, BUY, 0, 0, 100, 1) == [rested(LIMIT, BUY, 0, 0, 100, 1)]
    assert book.get(lo) == (BUY, 100, 1, hi)
    assert submit(book, CANCEL, 0, hi, 0, 0, 0) == [
        cancelled(CANCEL, Reason.USER_CANCEL, BUY, hi, lo, 100, 1)]


def test_a_filled_order_id_may_be_reused(book):
    submit(book, LIMIT, SELL, 1, 7, 100, 1)
    submit(book, LIMIT, BUY, 2, 7, 100, 1)
    assert submit(book, LIMIT, BUY, 1, 7, 99, 1) == [rested(LIMIT, BUY, 1, 7, 99, 1)]


# ---------------------------------------------------------------- queries


def test_depth_levels_and_counts(book):
    for i, (side, p, q) in enumerate([(BUY, 100, 1), (BUY, 100, 2), (BUY, 98, 3), (BUY, 90, 4),
                                      (SELL, 101, 5), (SELL, 103, 6), (SELL, 103, 7)]):
        submit(book, LIMIT, side, i + 1, 7, p, q)
    assert book.depth(2) == ([(100, 3, 2), (98, 3, 1)], [(101, 5, 1), (103, 13, 2)])
    assert book.depth(10) == ([(100, 3, 2), (98, 3, 1), (90, 4, 1)], [(101, 5, 1), (103, 13, 2)])
    assert book.depth(0) == ([], [])
    with pytest.raises(ValueError):
        book.depth(-1)


def test_impact_price_exact_rational(book):
    from fractions import Fraction
    submit(book, LIMIT, SELL, 1, 7, 100, 2)   # notional 200
    submit(book, LIMIT, SELL, 2, 7, 110, 3)   # notional 330
    submit(book, LIMIT, BUY, 3, 7, 90, 10)
    # 200 at 100 exactly
    assert book.impact_price(BUY, 200) == (100, 1)
    # 150 at 100: inside the first level
    assert book.impact_price(BUY, 150) == (100, 1)
    # 200 @100 (2 lots) + 110 @110 (1 lot): 310 / 3 lots
    assert Fraction(*book.impact_price(BUY, 310)) == Fraction(310, 3)
    # 200 @100 + 55 @110 (0.5 lot): 255 / 2.5
    assert book.impact_price(BUY, 255) == (102, 1)
    assert Fraction(*book.impact_price(BUY, 260)) == Fraction(260) / (2 + Fraction(60, 110))
    assert book.impact_price(BUY, 530) == (106, 1)
    assert book.impact_price(BUY, 531) is None
    assert book.impact_price(SELL, 900) == (90, 1)
    assert book.impact_price(SELL, 901) is None
    with pytest.raises(ValueError):
        book.impact_price(BUY, 0)
    with pytest.raises(ValueError):
        book.impact_price(3, 10)


def test_impact_price_large_values_exact(make_book):
    from fractions import Fraction
    # notional is an int64; numerator notional*price needs ~103 bits
    book = make_book(min_tick=1 << 40, max_tick=(1 << 40) + 1000)
    p1, p2 = (1 << 40) + 1, (1 << 40) + 7
    q = (1 << 21) + 3
    submit(book, LIMIT, SELL, 1, 7, p1, q)
    submit(book, LIMIT, SELL, 2, 7, p2, q)
    notional = p1 * q + 12345
    assert notional < (1 << 63)
    num, den = book.impact_price(BUY, notional)
    assert num > (1 << 64)
    assert Fraction(num, den) == Fraction(notional) / (q + Fraction(12345, p2))
    with pytest.raises(OverflowError):
        book.impact_price(BUY, 1 << 63)


def test_snapshot_restore_round_trip(make_book):
    book = make_book()
    for i in range(30):
        submit(book, LIMIT, BUY if i % 2 else SELL, i + 1, i % 4, 100 - i if i % 2 else 101 + i % 5, i + 1)
    book.amend(3, 1)
    book.cancel(8)
    snap = book.snapshot()
    other = make_book()
    other.restore(snap)
    assert other.state_hash() == book.state_hash()
    assert other.snapshot() == snap
    assert other.depth(50) == book.depth(50)
    # same future behaviour
    for b in (book, other):
        b.clear_events()
        b.submit(MARKET, BUY, 999, 1, 1000, 40)
        b.submit(MARKET, SELL, 998, 1, 1, 40)
    assert book.events() == other.events()
    assert book.state_hash() == other.state_hash()


def test_restore_rejects_bad_snapshots(make_book):
    import numpy as np

    from matching_native import ORDER_DTYPE
    book = make_book(min_tick=10, max_tick=200)
    submit(book, LIMIT, BUY, 1, 7, 100, 5)

    def snap(*rows):  # (oid, owner, price, qty, side) rows, flags 0
        arr = np.zeros(len(rows), ORDER_DTYPE)
        for i, r in enumerate(rows):
            arr[i] = (*r, 0)
        return arr.tobytes()

    good = (1, 7, 100, 5, BUY)
    for bad, msg in [((2, 7, 100, 5, 3), "bad side"), ((2, 7, 100, 0, BUY), "bad qty"),
                     ((2, 7, 5, 5, BUY), "outside the band"), ((2, 7, 201, 5, SELL), "outside the band")]:
        with pytest.raises(ValueError, match=msg):
            book.restore(snap(good, bad))
    with pytest.raises(ValueError, match="crossed"):
        book.restore(snap(good, (2, 7, 100, 5, SELL)))
    with pytest.raises(ValueError, match="duplicate"):
        book.restore(snap(good, (1, 7, 90, 5, BUY)))
    assert len(book) == 0  # left empty after a failed restore
    with pytest.raises(ValueError):
        book.restore(b"x" * 41)
    book.restore(snap(good))
    assert book.get(1) == (BUY, 100, 5, 7)
    book.restore(b"")
    assert len(book) == 0


def test_clear_and_state_hash_of_empty_books(make_book):
    a, b = make_book(), make_book(min_tick=5, max_tick=7)
    assert a.state_hash() == b.state_hash()
    submit(a, LIMIT, BUY, 1, 7, 100, 5)
    assert a.state_hash() != b.state_hash()
    a.clear()
    assert a.state_hash() == b.state_hash()
    assert submit(a, LIMIT, BUY, 1, 7, 100, 5) == [rested(LIMIT, BUY, 1, 7, 100, 5)]


def test_shorthand_methods_match_submit(make_book):
    a, b = make_book(), make_book()
    a.limit(SELL, 1, 7, 100, 5)
    b.submit(LIMIT, SELL, 1, 7, 100, 5)
    a.post_only(SELL, 2, 7, 102, 5)
    b.submit(POST, SELL, 2, 7, 102, 5, 0)
    a.ioc(BUY, 3, 5, 100, 1, Stp.EXPIRE_TAKER)
    b.submit(IOC, BUY, 3, 5, 100, 1, Stp.EXPIRE_TAKER)
    a.fok(BUY, 4, 5, 100, 1)
    b.submit(FOK, BUY, 4, 5, 100, 1)
    a.market(BUY, 5, 5, 101, 10)
    b.submit(MARKET, BUY, 5, 5, 101, 10)
    a.amend(2, 3)
    b.submit(AMEND, 0, 2, 0, 0, 3)
    a.amend(2, 3, 103)
    b.submit(AMEND, 1, 2, 9, 103, 3)
    a.cancel(2)
    b.submit(CANCEL, 2, 2, 0, 0, 0, 0)
    assert a.events() == b.events()
