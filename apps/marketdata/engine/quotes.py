"""Value types and exact-arithmetic helpers shared by the pricing engine.

`VenueQuote` is the one shape in which a price reaches the engine, whatever its
source (simulated venues, a CSV replay, a live adapter). Prices and volumes are
`Decimal` because the index, mark and settlement prices feed margin, funding and
delivery, which are booked; floats are refused at this boundary so a binary
rounding error can never leak into a booked number. Time is always an explicit
integer of epoch milliseconds (aware datetimes are accepted and converted), so no
calculator ever reads the wall clock. The rounding rule for published prices also
lives here, in one place: `quantize_to_tick` rounds half to even (banker's
rounding), which has no upward or downward bias over many publications.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import (
    ROUND_CEILING,
    ROUND_FLOOR,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)

__all__ = [
    "CALC_CONTEXT",
    "DEFAULT_PRICE_QUANTUM",
    "PRICE_ROUNDING",
    "VenueQuote",
    "ceil_to_tick",
    "floor_to_tick",
    "dsum",
    "median",
    "ms_to_datetime",
    "quantize_to_tick",
    "relative_spread",
    "to_decimal",
    "to_ms",
]

# Context for every intermediate computation in the engine. 50 significant digits
# keep weighted sums exact for any realistic price/volume/weight, so the only
# rounding that happens is the final, documented quantization. Invalid operations
# raise instead of producing NaN.
CALC_CONTEXT = Context(
    prec=50,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)

# The one rounding rule for published prices (index, mark, settlement).
PRICE_ROUNDING = ROUND_HALF_EVEN

# Index and settlement prices are published to 8 decimal places (the USDT
# precision) unless the caller asks for the contract tick.
DEFAULT_PRICE_QUANTUM = Decimal("0.00000001")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_decimal(value: Decimal | int | str, *, name: str = "value") -> Decimal:
    """Return `value` as a finite Decimal; floats and bools are refused.

    Strings are parsed exactly ("67000.5"), ints are exact. A float has already
    lost its decimal value, so it is a TypeError rather than a silent conversion.
    """
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{name} must be Decimal, int or str, not {type(value).__name__} ({value!r})")
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{name} {value!r} is not a decimal number") from None
    else:
        raise TypeError(f"{name} must be Decimal, int or str, not {type(value).__name__}")
    if not result.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return result


def to_ms(value: int | datetime, *, name: str = "timestamp") -> int:
    """Return epoch milliseconds for an int (already ms) or an aware datetime.

    Naive datetimes are refused: their meaning depends on the machine's zone.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be epoch milliseconds (int) or an aware datetime")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} {value!r} is a naive datetime; pass an aware datetime")
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    raise TypeError(f"{name} must be epoch milliseconds (int) or an aware datetime, not {type(value).__name__}")


def ms_to_datetime(ms: int) -> datetime:
    """Aware UTC datetime for epoch milliseconds (for messages and audit)."""
    return _EPOCH + timedelta(milliseconds=ms)


def _check_tick(tick: Decimal) -> None:
    if not isinstance(tick, Decimal) or not tick.is_finite() or tick <= 0:
        raise ValueError(f"tick must be a positive Decimal, got {tick!r}")


def _to_tick(value: Decimal, tick: Decimal, rounding: str) -> Decimal:
    _check_tick(tick)
    steps = CALC_CONTEXT.divide(value, tick).to_integral_value(rounding=rounding)
    result = CALC_CONTEXT.multiply(steps, tick)
    # Give every result the tick's exponent so "1007.3" and "1007.30" never mix.
    return CALC_CONTEXT.quantize(result, tick) if tick.as_tuple().exponent <= 0 else result


def quantize_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    """Round `value` to a multiple of `tick`, half to even (the engine's one rule).

    Works for ticks that are not powers of ten (0.5, 0.25): the value is divided
    into tick steps, the step count is rounded half-even, and multiplied back.
    """
    return _to_tick(value, tick, PRICE_ROUNDING)


def floor_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    """Largest multiple of `tick` that is <= value (used to stay inside a band)."""
    return _to_tick(value, tick, ROUND_FLOOR)


def ceil_to_tick(value: Decimal, tick: Decimal) -> Decimal:
    """Smallest multiple of `tick` that is >= value (used to stay inside a band)."""
    return _to_tick(value, tick, ROUND_CEILING)


def dsum(values) -> Decimal:
    """Exact sum of Decimals in the engine context (the builtin sum uses the
    caller's thread context, whose precision the engine does not control)."""
    total = Decimal(0)
    for v in values:
        total = CALC_CONTEXT.add(total, v)
    return total


def median(values: list[Decimal]) -> Decimal:
    """Median of a non-empty list; the mean of the two middle values when even."""
    if not values:
        raise ValueError("median of an empty list")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return CALC_CONTEXT.divide(CALC_CONTEXT.add(ordered[mid - 1], ordered[mid]), 2)


def relative_spread(bid: Decimal | None, ask: Decimal | None) -> Decimal | None:
    """(ask - bid) / mid, or None when the pair is missing or not a usable book."""
    if bid is None or ask is None or bid <= 0 or ask < bid:
        return None
    mid = CALC_CONTEXT.divide(CALC_CONTEXT.add(bid, ask), 2)
    return CALC_CONTEXT.divide(CALC_CONTEXT.subtract(ask, bid), mid)


@dataclass(frozen=True, slots=True)
class VenueQuote:
    """One venue's quote for one symbol at one instant.

    `price` is the venue's last/reference price, `volume` the base-asset volume
    the venue traded over its reporting interval (it drives the index weight and
    the volume-spike rule), `bid`/`ask` the venue's top of book when known, and
    `timestamp` the venue's own event time in epoch milliseconds. Values are
    coerced to Decimal / int on construction; floats and naive datetimes raise.
    Validity (positive price, non-negative volume, freshness) is *not* enforced
    here: a bad quote is data the index must be able to drop and report.
    """

    venue: str
    symbol: str
    price: Decimal
    volume: Decimal
    bid: Decimal | None
    ask: Decimal | None
    timestamp: int

    def __post_init__(self) -> None:
        if not self.venue or not isinstance(self.venue, str):
            raise ValueError("venue must be a non-empty string")
        if not self.symbol or not isinstance(self.symbol, str):
            raise ValueError("symbol must be a non-empty string")
        if type(self.price) is not Decimal or not self.price.is_finite():
            object.__setattr__(self, "price", to_decimal(self.price, name="price"))
        if type(self.volume) is not Decimal or not self.volume.is_finite():
            object.__setattr__(self, "volume", to_decimal(self.volume, name="volume"))
        if self.bid is not None and (type(self.bid) is not Decimal or not self.bid.is_finite()):
            object.__setattr__(self, "bid", to_decimal(self.bid, name="bid"))
        if self.ask is not None and (type(self.ask) is not Decimal or not self.ask.is_finite()):
            object.__setattr__(self, "ask", to_decimal(self.ask, name="ask"))
        if type(self.timestamp) is not int:
            object.__setattr__(self, "timestamp", to_ms(self.timestamp))

    @property
    def spread(self) -> Decimal | None:
        """Relative bid/ask spread, (ask - bid) / mid, or None without a book."""
        return relative_spread(self.bid, self.ask)

    def age_ms(self, now: int) -> int:
        return now - self.timestamp

    def to_audit(self) -> dict:
        """JSON-ready dict (decimals as strings) for storing with a result."""
        return {
            "venue": self.venue,
            "symbol": self.symbol,
            "price": str(self.price),
            "volume": str(self.volume),
            "bid": None if self.bid is None else str(self.bid),
            "ask": None if self.ask is None else str(self.ask),
            "timestamp": self.timestamp,
        }
