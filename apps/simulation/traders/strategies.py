"""What the demo participants decide, as pure functions of what they know.

No I/O here: the participant loops (`participants.py`) feed these functions the
market as the client sees it (mark, index, best bid/ask from the streams or REST)
and their own position, and send whatever comes back through the API. Keeping the
decisions pure is what lets the unit tests check the properties that matter
(inventory limits, quotes around the mark, leverage within the bracket) without a
server.

- `maker_quotes`: a ladder of post-only bids and asks around a reservation price
  (the mark, pulled toward the index, skewed against inventory) whose sizes are cut
  so that even if every bid (or every ask) filled, the position stays within the
  maker's inventory limit.
- `taker_order`: a market order, or an IOC limit a little through the mark, of a
  random (log-normal) notional; a taker past its own position cap only reduces.
- `Momentum` + `trend_plan` + `trend_order`: EMAs of the mark; a trend follower
  goes with the sign of fast − slow, sometimes with a reckless isolated bet at a high
  leverage so that occasional liquidations happen, and works toward its target in
  slices.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal

from .rules import SymbolRules

D = Decimal
BPS = D("0.0001")


@dataclass(frozen=True)
class Quote:
    """One resting order a maker wants: `tag` names its ladder slot (B0, A2, ...)."""

    side: str  # BUY | SELL
    tag: str
    price: Decimal
    qty: Decimal


@dataclass(frozen=True)
class OrderIntent:
    """One order a taker or trend follower wants to send now."""

    side: str
    order_type: str  # MARKET | LIMIT
    qty: Decimal
    price: Decimal | None = None
    time_in_force: str | None = None  # IOC for LIMIT
    reduce_only: bool = False


# ---------------------------------------------------------------------------------
# Market maker
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MakerParams:
    levels: int = 3
    half_spread_bps: Decimal = D("4")  # best quote distance from the reservation price
    level_step_bps: Decimal = D("3")  # extra distance per further level
    level_notional: Decimal = D("5000")  # size of the first level, in quote currency
    level_growth: Decimal = D("1.5")  # each further level is this much larger
    max_inventory_notional: Decimal = D("150000")  # |position| × mark may never exceed this
    skew_bps: Decimal = D("8")  # reservation shift at a full inventory
    # 0: centre on the mark; toward 1: on the index (an arbitrageur's pull, which also drags
    # the mark's basis back to the index through the trade prices).
    index_pull: Decimal = D("0")
    requote_bps: Decimal = D("3")  # move a resting quote only when it is this far off


def maker_center(*, mark: Decimal, index: Decimal | None, params: MakerParams) -> Decimal:
    """Fair value: the mark pulled toward the index (what arbitrage against the venues does)."""
    if index is None or index <= 0:
        return mark
    return mark + (index - mark) * params.index_pull


def maker_quotes(
    *,
    rules: SymbolRules,
    mark: Decimal,
    position: Decimal,
    params: MakerParams,
    index: Decimal | None = None,
    best_bid: Decimal | None = None,
    best_ask: Decimal | None = None,
) -> list[Quote]:
    """The ladder a maker wants resting now (bids high to low, then asks low to high).

    Inventory limit: with L = max_inventory_notional / mark (in contracts), the bids
    sum to at most L − position and the asks to at most L + position, so no
    combination of fills takes |position| beyond L. The reservation price moves
    against the inventory (a long maker quotes lower, to sell more than it buys).
    Post-only safety: a bid is kept below a known best ask and an ask above a known
    best bid, so GTX orders are not expired on arrival.
    """
    if mark <= 0:
        return []
    limit = rules.qty_down(params.max_inventory_notional / mark)
    inventory = max(D(-1), min(D(1), position / limit)) if limit > 0 else D(0)
    center = maker_center(mark=mark, index=index, params=params)
    reservation = center * (1 - params.skew_bps * BPS * inventory)
    room = {"BUY": limit - position, "SELL": limit + position}
    quotes: list[Quote] = []
    for side in ("BUY", "SELL"):
        left = room[side]
        slot = "B" if side == "BUY" else "A"
        for level in range(params.levels):
            distance = (params.half_spread_bps + params.level_step_bps * level) * BPS
            if side == "BUY":
                price = rules.price_down(reservation * (1 - distance))
                if best_ask is not None and best_ask > 0 and price >= best_ask:
                    price = best_ask - rules.tick_size
            else:
                price = rules.price_up(reservation * (1 + distance))
                if best_bid is not None and best_bid > 0 and price <= best_bid:
                    price = best_bid + rules.tick_size
            if price <= 0:
                break
            notional = params.level_notional * params.level_growth ** level
            qty = rules.qty_down(min(notional / price, left, rules.max_qty))
            if not rules.tradable(qty, price):
                break  # the inventory room is used up (or the level is below the filters)
            quotes.append(Quote(side=side, tag=f"{slot}{level}", price=price, qty=qty))
            left -= qty
    return quotes


def needs_requote(*, resting_price: Decimal, resting_qty: Decimal, wanted: Quote, params: MakerParams) -> bool:
    """Whether a resting quote is far enough from what is wanted to be amended."""
    if resting_qty != wanted.qty:
        return True
    return abs(resting_price - wanted.price) > wanted.price * params.requote_bps * BPS


# ---------------------------------------------------------------------------------
# Taker
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TakerParams:
    mean_interval_seconds: float = 2.5  # exponential waits between orders
    notional_median: float = 1500.0
    notional_sigma: float = 0.9  # of the log-normal order size
    max_position_notional: Decimal = D("40000")
    ioc_probability: float = 0.3
    ioc_through_bps: Decimal = D("6")  # an IOC limit buys up to mark × (1 + this)


def taker_wait(rng: random.Random, params: TakerParams) -> float:
    return rng.expovariate(1.0 / params.mean_interval_seconds)


def taker_order(*, rng: random.Random, rules: SymbolRules, mark: Decimal, position: Decimal,
                params: TakerParams) -> OrderIntent | None:
    """A random market (or IOC) order; past the position cap only the reducing side is drawn."""
    if mark <= 0:
        return None
    exposure = position * mark
    if exposure >= params.max_position_notional:
        side = "SELL"
    elif exposure <= -params.max_position_notional:
        side = "BUY"
    else:
        side = rng.choice(("BUY", "SELL"))
    notional = D(str(round(rng.lognormvariate(math.log(params.notional_median), params.notional_sigma), 2)))
    qty = rules.qty_down(min(notional / mark, rules.market_max_qty))
    qty = max(qty, rules.min_qty)
    if not rules.tradable(qty, mark):
        qty = rules.qty_down(rules.min_notional / mark) + rules.step_size
    if rng.random() < params.ioc_probability:
        through = params.ioc_through_bps * BPS
        price = rules.price_up(mark * (1 + through)) if side == "BUY" else rules.price_down(mark * (1 - through))
        return OrderIntent(side=side, order_type="LIMIT", qty=qty, price=price, time_in_force="IOC")
    return OrderIntent(side=side, order_type="MARKET", qty=qty)


# ---------------------------------------------------------------------------------
# Trend follower
# ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendParams:
    sample_seconds: float = 1.0
    fast: int = 10  # EMA spans, in samples
    slow: int = 40
    entry_bps: float = 3.0  # |fast − slow| / slow that opens a position
    exit_bps: float = 1.0  # below this the follower goes flat (a reckless one holds on)
    leverage: int = 10
    exposure: Decimal = D("5")  # position notional as a multiple of the wallet, normally (cross margin)
    # Per new trend, the chance of a reckless bet: ISOLATED margin at 75-100x, exposure 25x
    # the wallet. The pre-trade risk gate refuses accounts beyond about 45x (apps/risk/conf.py),
    # but an isolated position at 100x is liquidated by a move of well under 1%.
    reckless_probability: float = 0.3
    reckless_leverage: tuple[int, ...] = (75, 100)
    reckless_exposure: Decimal = D("25")
    slice_notional: Decimal = D("15000")  # at most this much per order


class Momentum:
    """Fast and slow EMAs of the mark; `signal_bps` is (fast − slow) / slow in basis points."""

    def __init__(self, fast: int, slow: int) -> None:
        if not 0 < fast < slow:
            raise ValueError("need 0 < fast < slow")
        self._a_fast = 2.0 / (fast + 1)
        self._a_slow = 2.0 / (slow + 1)
        self._warmup = slow
        self.samples = 0
        self.fast: float | None = None
        self.slow: float | None = None

    def update(self, price: Decimal) -> None:
        x = float(price)  # an indicator, never booked
        if self.fast is None:
            self.fast = self.slow = x
        else:
            self.fast += self._a_fast * (x - self.fast)
            self.slow += self._a_slow * (x - self.slow)
        self.samples += 1

    @property
    def ready(self) -> bool:
        return self.samples >= self._warmup

    @property
    def signal_bps(self) -> float:
        if not self.ready or not self.slow:
            return 0.0
        return (self.fast - self.slow) / self.slow * 1e4


@dataclass(frozen=True)
class TrendPlan:
    direction: int  # +1 long, −1 short, 0 flat
    leverage: int
    exposure: Decimal  # target notional / wallet
    reckless: bool = False  # and then on ISOLATED margin

    @property
    def margin_type(self) -> str:
        return "ISOLATED" if self.reckless else "CROSSED"


def trend_direction(*, signal_bps: float, current: int, params: TrendParams, hold: bool = False) -> int:
    """Go with a strong signal, go flat on a faint one, keep the position in between
    (hysteresis). `hold`: stay in until the opposite signal (the reckless follower's
    conviction, which is what gets it liquidated)."""
    if signal_bps >= params.entry_bps:
        return 1
    if signal_bps <= -params.entry_bps:
        return -1
    if abs(signal_bps) < params.exit_bps and not hold:
        return 0
    return current


def trend_plan(*, rng: random.Random, direction: int, params: TrendParams) -> TrendPlan:
    """Leverage and exposure for a new trend; sometimes reckless (the demo's liquidations)."""
    if direction != 0 and rng.random() < params.reckless_probability:
        return TrendPlan(direction, rng.choice(params.reckless_leverage), params.reckless_exposure, reckless=True)
    return TrendPlan(direction, params.leverage, params.exposure)


MARGIN_USE = D("0.95")  # never plan to tie up more than this share of the wallet as initial margin


def trend_target(*, rules: SymbolRules, plan: TrendPlan, wallet: Decimal, mark: Decimal,
                 max_notional: Decimal | None) -> Decimal:
    """Signed target position: wallet × exposure, within what the wallet can margin at the
    plan's leverage and within that leverage's bracket cap."""
    if plan.direction == 0 or mark <= 0 or wallet <= 0:
        return D(0)
    notional = min(wallet * plan.exposure, wallet * plan.leverage * MARGIN_USE)
    if max_notional is not None:
        notional = min(notional, max_notional * MARGIN_USE)
    return rules.qty_down(notional / mark) * plan.direction


def trend_order(*, rules: SymbolRules, position: Decimal, target: Decimal, mark: Decimal,
                params: TrendParams) -> OrderIntent | None:
    """The next market order toward `target`: reduce-only while closing, at most one slice."""
    if mark <= 0:
        return None
    slice_qty = rules.qty_down(min(params.slice_notional / mark, rules.market_max_qty))
    closing = position != 0 and (target == 0 or (target > 0) != (position > 0) or abs(target) < abs(position))
    if closing:
        # Close (all of it when flipping sides) before opening the other way.
        keep = target if target != 0 and (target > 0) == (position > 0) else D(0)
        qty = min(abs(position - keep), slice_qty)
        side = "SELL" if position > 0 else "BUY"
        if qty < rules.min_qty:
            return None
        return OrderIntent(side=side, order_type="MARKET", qty=qty, reduce_only=True)
    delta = target - position
    qty = min(abs(delta), slice_qty)
    if not rules.tradable(qty, mark):
        return None
    return OrderIntent(side="BUY" if delta > 0 else "SELL", order_type="MARKET", qty=qty)
