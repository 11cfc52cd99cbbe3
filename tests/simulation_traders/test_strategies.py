"""The demo participants' decisions, without a server: the pure functions of strategies.py.

Worked examples with hand-checked numbers, and properties over random inputs for the
rules that must always hold (a maker's inventory limit, quotes on the grid and around
the fair value, a taker past its cap only reducing, a trend follower closing before it
flips).
"""
import random
from dataclasses import replace
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.simulation.traders.rules import SymbolRules, fmt, rules_from_exchange_info
from apps.simulation.traders.strategies import (
    MakerParams,
    Momentum,
    Quote,
    TakerParams,
    TrendParams,
    TrendPlan,
    maker_center,
    maker_quotes,
    needs_requote,
    taker_order,
    trend_direction,
    trend_order,
    trend_plan,
    trend_target,
)

D = Decimal
BTC = SymbolRules(symbol="BTCUSDT", contract_type="PERPETUAL", tick_size=D("0.1"), step_size=D("0.001"),
                  min_qty=D("0.001"), max_qty=D("1000"), market_max_qty=D("120"), min_notional=D("5"))
ETH = replace(BTC, symbol="ETHUSDT", tick_size=D("0.01"))


def bids(quotes):
    return [q for q in quotes if q.side == "BUY"]


def asks(quotes):
    return [q for q in quotes if q.side == "SELL"]


def on_grid(value: Decimal, unit: Decimal) -> bool:
    return value % unit == 0


# -- rules --------------------------------------------------------------------------------


def test_rules_come_from_exchange_info_filters_and_skip_symbols_not_trading():
    info = {"symbols": [
        {"symbol": "BTCUSDT", "status": "TRADING", "contractType": "PERPETUAL", "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.1", "maxPrice": "1000000", "tickSize": "0.1"},
            {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120", "stepSize": "0.001"},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": "5"}]},
        {"symbol": "OLDUSDT_250926", "status": "SETTLING", "contractType": "CURRENT_QUARTER", "filters": []},
    ]}
    rules = rules_from_exchange_info(info)
    assert list(rules) == ["BTCUSDT"]
    assert rules["BTCUSDT"] == BTC
    assert rules_from_exchange_info(info, symbols=["ethusdt"]) == {}


def test_grid_rounding_is_exact_and_in_the_safe_direction():
    assert BTC.price_down(D("90000.19")) == D("90000.1")
    assert BTC.price_up(D("90000.11")) == D("90000.2")
    assert BTC.price_up(D("90000.1")) == D("90000.1")
    assert BTC.qty_down(D("0.0339")) == D("0.033")
    assert BTC.qty_down(D("-1")) == 0
    assert fmt(D("90000.10")) == "90000.1" and fmt(D("1E+1")) == "10"


# -- market maker -------------------------------------------------------------------------


def test_flat_maker_ladder_worked_example():
    params = MakerParams(levels=2, half_spread_bps=D("4"), level_step_bps=D("3"), level_notional=D("3000"),
                         level_growth=D("2"), max_inventory_notional=D("150000"), index_pull=D("0.5"))
    quotes = maker_quotes(rules=BTC, mark=D("90000"), index=D("90010"), position=D(0), params=params)
    # Centre 90,005 (halfway to the index); bids 4 and 7 bps below, asks above, on the tick.
    assert quotes == [
        Quote("BUY", "B0", D("89968.9"), D("0.033")),  # 90005 × 0.9996 = 89968.998, down to the tick
        Quote("BUY", "B1", D("89941.9"), D("0.066")),  # 90005 × 0.9993 = 89941.9965; 6000 / 89941.9 = 0.0667
        Quote("SELL", "A0", D("90041.1"), D("0.033")),  # 90005 × 1.0004 = 90041.002, up to the tick
        Quote("SELL", "A1", D("90068.1"), D("0.066")),
    ]
    assert maker_center(mark=D("90000"), index=None, params=params) == D("90000")


def test_a_long_maker_quotes_lower_and_a_short_one_higher():
    params = MakerParams()
    flat = maker_quotes(rules=BTC, mark=D("90000"), position=D(0), params=params)
    long = maker_quotes(rules=BTC, mark=D("90000"), position=D("1"), params=params)
    short = maker_quotes(rules=BTC, mark=D("90000"), position=D("-1"), params=params)
    assert bids(long)[0].price < bids(flat)[0].price < bids(short)[0].price
    assert asks(long)[0].price < asks(flat)[0].price < asks(short)[0].price


def test_a_maker_at_its_inventory_limit_quotes_only_the_reducing_side():
    params = MakerParams(max_inventory_notional=D("90000"))  # 1 BTC at 90,000
    full_long = maker_quotes(rules=BTC, mark=D("90000"), position=D("1"), params=params)
    assert bids(full_long) == [] and asks(full_long)
    full_short = maker_quotes(rules=BTC, mark=D("90000"), position=D("-1.2"), params=params)
    assert asks(full_short) == [] and bids(full_short)
    # Near the limit the bid ladder is cut to the room that is left: 1 − 0.98 = 0.02 BTC.
    near = maker_quotes(rules=BTC, mark=D("90000"), position=D("0.98"), params=params)
    assert sum(q.qty for q in bids(near)) == D("0.02")


def test_post_only_quotes_stay_off_the_other_side_of_the_book():
    quotes = maker_quotes(rules=BTC, mark=D("90000"), position=D(0), params=MakerParams(),
                          best_bid=D("90100"), best_ask=D("89900"))  # a book that moved away from the mark
    assert all(q.price < D("89900") for q in bids(quotes))
    assert all(q.price > D("90100") for q in asks(quotes))


@settings(max_examples=300, deadline=None)
@given(
    mark=st.decimals(min_value=D("100"), max_value=D("200000"), places=1),
    position=st.decimals(min_value=D("-5"), max_value=D("5"), places=3),
    limit=st.decimals(min_value=D("1000"), max_value=D("500000"), places=0),
    levels=st.integers(min_value=1, max_value=5),
    index_offset_bps=st.integers(min_value=-50, max_value=50),
)
def test_maker_ladder_properties(mark, position, limit, levels, index_offset_bps):
    params = MakerParams(levels=levels, max_inventory_notional=limit)
    index = mark * (1 + D(index_offset_bps) / 10000)
    quotes = maker_quotes(rules=BTC, mark=mark, index=index, position=position, params=params)
    cap = BTC.qty_down(limit / mark)
    bought, sold = sum(q.qty for q in bids(quotes)), sum(q.qty for q in asks(quotes))
    # Inventory: even if every bid (or every ask) filled, |position| stays within the cap
    # (or, when it is already beyond, quotes only bring it back).
    assert position + bought <= max(cap, position)
    assert position - sold >= min(-cap, position)
    # On the grid, above the filters, distinct slots.
    for q in quotes:
        assert on_grid(q.price, BTC.tick_size) and on_grid(q.qty, BTC.step_size)
        assert BTC.tradable(q.qty, q.price)
    assert len({q.tag for q in quotes}) == len(quotes)
    # Around the fair value: every bid below the reservation price, every ask above it,
    # and the best quotes no further than half spread + skew + a tick from the centre.
    center = maker_center(mark=mark, index=index, params=params)
    reach = center * (params.half_spread_bps + params.skew_bps) / 10000 + BTC.tick_size
    if bids(quotes):
        assert max(q.price for q in bids(quotes)) < center + reach
        assert max(q.price for q in bids(quotes)) >= center - reach - BTC.tick_size
    if asks(quotes):
        assert min(q.price for q in asks(quotes)) > center - reach
        assert min(q.price for q in asks(quotes)) <= center + reach + BTC.tick_size
    if bids(quotes) and asks(quotes):
        assert max(q.price for q in bids(quotes)) < min(q.price for q in asks(quotes))


def test_requote_only_when_the_quote_drifted_or_resized():
    params = MakerParams(requote_bps=D("3"))
    wanted = Quote("BUY", "B0", D("90000.0"), D("0.033"))
    assert not needs_requote(resting_price=D("90020.0"), resting_qty=D("0.033"), wanted=wanted, params=params)
    assert needs_requote(resting_price=D("90030.0"), resting_qty=D("0.033"), wanted=wanted, params=params)
    assert needs_requote(resting_price=D("90000.0"), resting_qty=D("0.034"), wanted=wanted, params=params)


# -- taker --------------------------------------------------------------------------------


def test_taker_past_its_cap_only_reduces():
    params = TakerParams(max_position_notional=D("40000"))
    rng = random.Random(3)
    for _ in range(50):
        assert taker_order(rng=rng, rules=BTC, mark=D("90000"), position=D("0.5"), params=params).side == "SELL"
        assert taker_order(rng=rng, rules=BTC, mark=D("90000"), position=D("-0.5"), params=params).side == "BUY"


def test_taker_orders_pass_the_filters_and_ioc_prices_sit_just_through_the_mark():
    params = TakerParams(ioc_probability=0.5, ioc_through_bps=D("6"))
    rng = random.Random(11)
    sides, types = set(), set()
    for rules, mark in ((BTC, D("90000")), (ETH, D("3000"))):
        for _ in range(200):
            order = taker_order(rng=rng, rules=rules, mark=mark, position=D(0), params=params)
            sides.add(order.side)
            types.add(order.order_type)
            assert rules.tradable(order.qty, mark) and order.qty <= rules.market_max_qty
            assert on_grid(order.qty, rules.step_size)
            if order.order_type == "LIMIT":
                assert order.time_in_force == "IOC" and on_grid(order.price, rules.tick_size)
                if order.side == "BUY":
                    assert mark < order.price <= mark * D("1.0006") + rules.tick_size
                else:
                    assert mark * D("0.9994") - rules.tick_size <= order.price < mark
    assert sides == {"BUY", "SELL"} and types == {"MARKET", "LIMIT"}


def test_same_seed_same_taker_decisions():
    def draws(seed):
        rng = random.Random(seed)
        return [taker_order(rng=rng, rules=BTC, mark=D("90000"), position=D(0), params=TakerParams())
                for _ in range(20)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


# -- trend follower -----------------------------------------------------------------------


def test_momentum_follows_the_direction_of_the_mark():
    rising, falling = Momentum(3, 10), Momentum(3, 10)
    for i in range(30):
        rising.update(D(90000 + 10 * i))
        falling.update(D(90000 - 10 * i))
        if i < 9:
            assert not rising.ready and rising.signal_bps == 0.0
    assert rising.signal_bps > 2 and falling.signal_bps < -2


def test_trend_direction_has_hysteresis():
    params = TrendParams(entry_bps=2.0, exit_bps=0.5)
    assert trend_direction(signal_bps=2.5, current=0, params=params) == 1
    assert trend_direction(signal_bps=-2.5, current=1, params=params) == -1
    assert trend_direction(signal_bps=1.0, current=1, params=params) == 1  # weaker, still in
    assert trend_direction(signal_bps=1.0, current=0, params=params) == 0  # not strong enough to enter
    assert trend_direction(signal_bps=0.2, current=-1, params=params) == 0  # faded: flat
    assert trend_direction(signal_bps=0.2, current=-1, params=params, hold=True) == -1  # reckless: holds on
    assert trend_direction(signal_bps=2.5, current=-1, params=params, hold=True) == 1


def test_trend_plans_are_sometimes_reckless_isolated_bets():
    params = TrendParams(reckless_probability=0.3, reckless_leverage=(50, 100))
    rng = random.Random(1)
    plans = [trend_plan(rng=rng, direction=1, params=params) for _ in range(400)]
    reckless = [p for p in plans if p.reckless]
    assert 60 < len(reckless) < 180
    assert {p.leverage for p in reckless} == {50, 100}
    assert all(p.exposure == params.reckless_exposure and p.margin_type == "ISOLATED" for p in reckless)
    normal = [p for p in plans if not p.reckless]
    assert {(p.leverage, p.exposure, p.margin_type) for p in normal} == {(params.leverage, params.exposure,
                                                                           "CROSSED")}
    assert trend_plan(rng=rng, direction=0, params=params).reckless is False


def test_trend_target_is_a_multiple_of_the_wallet_within_margin_and_bracket():
    plan = TrendPlan(direction=-1, leverage=100, exposure=D("25"), reckless=True)
    # 2,000 × 25 = 50,000 USDT, 500 of initial margin at 100x: 0.555 BTC short at 90,000.
    assert trend_target(rules=BTC, plan=plan, wallet=D("2000"), mark=D("90000"), max_notional=D("250000")) == D(
        "-0.555")
    # At 10x the wallet margins at most 2,000 × 10 × 0.95 = 19,000.
    assert trend_target(rules=BTC, plan=replace(plan, leverage=10), wallet=D("2000"), mark=D("90000"),
                        max_notional=None) == D("-0.211")
    # The bracket's cap (95% of it) binds too.
    assert trend_target(rules=BTC, plan=plan, wallet=D("2000"), mark=D("90000"),
                        max_notional=D("40000")) == D("-0.422")
    assert trend_target(rules=BTC, plan=replace(plan, direction=0), wallet=D("2000"), mark=D("90000"),
                        max_notional=None) == 0


def test_trend_orders_close_reduce_only_before_flipping_and_go_in_slices():
    params = TrendParams(slice_notional=D("9000"))  # 0.1 BTC at 90,000
    mark = D("90000")
    opening = trend_order(rules=BTC, position=D(0), target=D("0.25"), mark=mark, params=params)
    assert (opening.side, opening.qty, opening.reduce_only) == ("BUY", D("0.1"), False)
    flip = trend_order(rules=BTC, position=D("0.05"), target=D("-0.3"), mark=mark, params=params)
    assert (flip.side, flip.qty, flip.reduce_only) == ("SELL", D("0.05"), True)  # close first
    trim = trend_order(rules=BTC, position=D("0.3"), target=D("0.25"), mark=mark, params=params)
    assert (trim.side, trim.qty, trim.reduce_only) == ("SELL", D("0.05"), True)
    assert trend_order(rules=BTC, position=D("0.25"), target=D("0.25"), mark=mark, params=params) is None
    assert trend_order(rules=BTC, position=D(0), target=D(0), mark=mark, params=params) is None
