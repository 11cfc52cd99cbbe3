"""Position netting for one fill in one-way mode (design section 3).

Opening or adding moves the entry price to the size-weighted average; reducing
realizes (fill − entry) × qty for longs and (entry − fill) × qty for shorts and keeps
the entry price; a fill larger than the position closes it and opens the rest at the
fill price. Pure Decimal arithmetic; the entry price keeps 18 fractional digits
(the column's scale), realized PnL is rounded by the ledger's rule by the caller.
"""
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal

ENTRY_EXPONENT = Decimal(1).scaleb(-18)


@dataclass(frozen=True)
class NettingResult:
    size: Decimal
    entry_price: Decimal
    realized_pnl: Decimal  # unrounded, in quote units
    opened: Decimal  # quantity added to |size| by this fill (>= 0)
    closed: Decimal  # quantity removed from |size| by this fill (>= 0)


def net_fill(*, size: Decimal, entry_price: Decimal, signed_qty: Decimal, price: Decimal,
             contract_size: Decimal = Decimal(1)) -> NettingResult:
    if signed_qty == 0:
        return NettingResult(size, entry_price, Decimal(0), Decimal(0), Decimal(0))
    new_size = size + signed_qty
    if size == 0 or (size > 0) == (signed_qty > 0):
        total = abs(size) * entry_price + abs(signed_qty) * price
        entry = (total / abs(new_size)).quantize(ENTRY_EXPONENT, rounding=ROUND_HALF_EVEN)
        return NettingResult(new_size, entry, Decimal(0), abs(signed_qty), Decimal(0))
    closed = min(abs(signed_qty), abs(size))
    direction = 1 if size > 0 else -1
    realized = (price - entry_price) * closed * direction * contract_size
    if new_size == 0:
        entry = Decimal(0)
    elif (new_size > 0) != (size > 0):
        entry = price  # flipped: the remainder opens at the fill price
    else:
        entry = entry_price
    opened = abs(new_size) if (new_size != 0 and (new_size > 0) != (size > 0)) else Decimal(0)
    return NettingResult(new_size, entry, realized, opened, closed)
