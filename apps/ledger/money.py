"""Decimal rules for booked amounts: the one rounding rule and the precision check.

Amounts handed to the ledger must already fit the asset's precision (an amount with
more digits is refused, not silently rounded). Code that derives an amount (a fee, a
PnL, a funding payment) rounds it with `quantize_amount`, the single rounding rule:
ROUND_HALF_EVEN to the asset's precision. Splits that must sum back exactly use
`split_exact` (largest remainder), never "round each part".
"""
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation
from functools import lru_cache
from typing import Sequence

ROUNDING = ROUND_HALF_EVEN


def to_decimal(value) -> Decimal:
    """A Decimal from a Decimal, int or string; floats are refused (they are inexact)."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError("money must be a Decimal, int or str, never a float")
    if isinstance(value, Decimal):
        result = value
    else:
        try:
            result = Decimal(str(value).strip())
        except InvalidOperation as exc:
            raise ValueError(f"{value!r} is not a number") from exc
    if not result.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return result


@lru_cache(maxsize=64)  # on the fill-booking path (a few per fill); scaleb costs more than the quantize
def exponent_for(precision: int) -> Decimal:
    return Decimal(1).scaleb(-precision)


def quantize_amount(value: Decimal, precision: int) -> Decimal:
    return value.quantize(exponent_for(precision), rounding=ROUNDING)


def fits_precision(value: Decimal, precision: int) -> bool:
    """Whether `value` has at most `precision` decimals; False (not an exception) for a value
    too large to carry them in the Decimal context (quantize raises InvalidOperation)."""
    try:
        return value == value.quantize(exponent_for(precision), rounding=ROUND_DOWN)
    except ArithmeticError:
        return False


def split_exact(total: Decimal, weights: Sequence[Decimal], precision: int) -> list[Decimal]:
    """Split `total` in proportion to `weights` so the parts sum back to `total` exactly.

    Each part is rounded down to the precision; the remaining units go one by one to
    the parts with the largest remainders (ties: earlier part first).
    """
    if not weights:
        return []
    weight_sum = sum(weights, Decimal(0))
    if weight_sum == 0:
        raise ValueError("weights sum to zero")
    unit = exponent_for(precision)
    sign = -1 if total < 0 else 1
    magnitude = abs(total)
    raw = [magnitude * weight / weight_sum for weight in weights]
    floored = [part.quantize(unit, rounding=ROUND_DOWN) for part in raw]
    leftover_units = int((magnitude - sum(floored, Decimal(0))) / unit)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - floored[i]), i))
    for i in order[:leftover_units]:
        floored[i] += unit
    return [sign * part for part in floored]
