"""Price rules of order entry and triggering, as pure functions of Decimals.

One place for each: the PERCENT_PRICE band around the mark price, the protection
price of market-type orders, and the trigger condition of conditional orders
(Binance semantics: a BUY STOP triggers when the working price rises to the stop
price, a BUY TAKE_PROFIT when it falls to it, and the mirror for SELL); and which
reduce-only orders a smaller position no longer covers.
"""
from collections import defaultdict
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from .models import OrderType, Side


def band_limits(*, mark: Decimal, up: Decimal, down: Decimal) -> tuple[Decimal, Decimal]:
    """(lowest sell price, highest buy price) the PERCENT_PRICE filter accepts."""
    return mark * (1 - down), mark * (1 + up)


def protection_price(*, side: str, mark: Decimal, deviation: Decimal, tick: Decimal,
                     min_price: Decimal, max_price: Decimal) -> Decimal:
    """The worst price a market order may fill at: mark ± deviation, on the tick grid, inside the band."""
    if side == Side.BUY:
        raw = mark * (1 + deviation)
        price = (raw / tick).to_integral_value(rounding=ROUND_FLOOR) * tick
    else:
        raw = mark * (1 - deviation)
        price = (raw / tick).to_integral_value(rounding=ROUND_CEILING) * tick
    return min(max(price, min_price), max_price)


def rises_to_trigger(*, order_type: str, side: str) -> bool:
    """True when the order triggers on a rising price (price >= stop), False on a falling one."""
    stop_like = order_type in (OrderType.STOP, OrderType.STOP_MARKET)
    return stop_like == (side == Side.BUY)


def is_triggered(*, order_type: str, side: str, stop_price: Decimal, price: Decimal) -> bool:
    if rises_to_trigger(order_type=order_type, side=side):
        return price >= stop_price
    return price <= stop_price


def trailing_step(*, side: str, price: Decimal, extreme: Decimal | None, activation_price: Decimal | None,
                  callback_rate: Decimal) -> tuple[Decimal | None, bool]:
    """Advance a trailing stop by one price: (new extreme, triggered).

    A SELL trailing stop tracks the highest price since activation and triggers when the
    price falls callback_rate percent below it; a BUY tracks the lowest and triggers on a
    rise. Before activation (price not yet through activation_price) nothing is tracked.
    """
    if extreme is None:
        if activation_price is not None:
            armed = price >= activation_price if side == Side.SELL else price <= activation_price
            if not armed:
                return None, False
        return price, False
    rate = callback_rate / 100
    if side == Side.SELL:
        extreme = max(extreme, price)
        return extreme, price <= extreme * (1 - rate)
    extreme = min(extreme, price)
    return extreme, price >= extreme * (1 + rate)


def reduce_only_excess(orders, sizes: dict[int, Decimal]) -> list:
    """The reduce-only orders a position no longer covers.

    `orders`: (user id, side, open quantity, item), oldest first; `sizes`: user id -> position
    size. Per account and side the oldest are kept up to the size they may still reduce; the
    items of the rest come back (to be cancelled, so no fill can open or flip a position).
    """
    kept: dict[tuple[int, str], Decimal] = defaultdict(Decimal)
    excess = []
    for user_id, side, open_qty, item in orders:
        size = sizes.get(user_id, Decimal(0))
        may_reduce = max(Decimal(0), size if side == Side.SELL else -size)
        if kept[user_id, side] + open_qty <= may_reduce:
            kept[user_id, side] += open_qty
        else:
            excess.append(item)
    return excess
