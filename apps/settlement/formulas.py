"""The funding formulas, pure Decimal functions with no I/O (tested with hand numbers).

SEED policy (design section 3, seed 资金费率计算引擎):
    premium component = clamp(weighted mean of (contract − mark) / mark, ±5%)
    raw  = clamp(premium component + interest, floor, cap)
    rate = α·raw + (1 − α)·previous rate   (α = 0.3; no previous rate: rate = raw)
IMPACT policy (Binance):
    premium index of a sample = (max(0, impact bid − index) − max(0, index − impact ask)) / index
    P = weighted mean of the premium index; rate = clamp(P + clamp(I − P, ±0.05%), floor, cap)
The interval average weights later samples more: Σ i·Pᵢ / Σ i with i the sample's slot
number in the interval (design 4a). A rate is rounded to 8 places (what the API
publishes, and what payments are computed from) with the ledger's one rounding rule.

Payment of a position (its owner's cash flow): −size × contract size × mark × rate,
rounded to the settle asset's precision: longs pay when the rate is positive, shorts
receive it (the seed's sign bug is not reproduced).
"""
from collections.abc import Iterable, Sequence
from decimal import Decimal, localcontext

from apps.ledger.money import quantize_amount

RATE_PLACES = 8
PREMIUM_PLACES = 12
PREMIUM_CLAMP = Decimal("0.05")
IMPACT_INTEREST_CLAMP = Decimal("0.0005")
EMA_ALPHA = Decimal("0.3")
ZERO = Decimal(0)


def clamp(value: Decimal, low: Decimal, high: Decimal) -> Decimal:
    return max(low, min(high, value))


def premium_seed(*, contract_price: Decimal, mark_price: Decimal) -> Decimal:
    if mark_price <= 0:
        raise ValueError("mark price must be positive")
    return quantize_amount((contract_price - mark_price) / mark_price, PREMIUM_PLACES)


def premium_impact(*, impact_bid: Decimal | None, impact_ask: Decimal | None, index_price: Decimal) -> Decimal:
    """Binance's premium index; a side the book cannot fill at the impact notional counts 0."""
    if index_price <= 0:
        raise ValueError("index price must be positive")
    up = max(ZERO, impact_bid - index_price) if impact_bid is not None else ZERO
    down = max(ZERO, index_price - impact_ask) if impact_ask is not None else ZERO
    return quantize_amount((up - down) / index_price, PREMIUM_PLACES)


def weighted_mean(samples: Iterable[tuple[int, Decimal]]) -> Decimal | None:
    """Σ i·Pᵢ / Σ i over (slot i, premium Pᵢ); None without samples."""
    weighted = ZERO
    weights = 0
    for slot, premium in samples:
        weighted += slot * premium
        weights += slot
    return weighted_mean_of_sums(weighted, weights)


def weighted_mean_of_sums(weighted: Decimal | None, weights: int | None) -> Decimal | None:
    if not weights:
        return None
    return quantize_amount(Decimal(weighted) / Decimal(weights), PREMIUM_PLACES)


def rate_seed(*, premium: Decimal | None, interest: Decimal, floor: Decimal, cap: Decimal,
              previous: Decimal | None) -> Decimal:
    component = clamp(premium if premium is not None else ZERO, -PREMIUM_CLAMP, PREMIUM_CLAMP)
    raw = clamp(component + interest, floor, cap)
    smoothed = raw if previous is None else EMA_ALPHA * raw + (1 - EMA_ALPHA) * previous
    return quantize_amount(smoothed, RATE_PLACES)


def rate_impact(*, premium: Decimal | None, interest: Decimal, floor: Decimal, cap: Decimal) -> Decimal:
    p = premium if premium is not None else ZERO
    rate = p + clamp(interest - p, -IMPACT_INTEREST_CLAMP, IMPACT_INTEREST_CLAMP)
    return quantize_amount(clamp(rate, floor, cap), RATE_PLACES)


def impact_price(levels: Sequence[tuple[Decimal, Decimal]], *, notional: Decimal,
                 contract_size: Decimal) -> Decimal | None:
    """Average fill price of a market order for `notional` (quote) walking `levels` best first.

    `levels` are (price, open quantity); None when the book cannot fill the notional.
    The result is notional / quantity filled, so it is exactly the volume-weighted price.
    """
    if notional <= 0:
        raise ValueError("impact notional must be positive")
    left = notional
    quantity = ZERO
    for price, qty in levels:
        level_notional = price * qty * contract_size
        if level_notional >= left:
            quantity += left / (price * contract_size)
            return quantize_amount(notional / (quantity * contract_size), PREMIUM_PLACES)
        left -= level_notional
        quantity += qty
    return None


def payment(*, size: Decimal, mark_price: Decimal, rate: Decimal, contract_size: Decimal, precision: int) -> Decimal:
    """The position owner's cash flow: negative = pays. Longs pay a positive rate.

    The product is exact (wide context: no rounding before the one half-even rounding),
    as in `PAYMENT_SQL`, the same formula the settlement runs over every position.
    """
    with localcontext(prec=PRODUCT_DIGITS):
        return quantize_amount(-size * contract_size * mark_price * rate, precision)


PRODUCT_DIGITS = 200
# `payment` in PostgreSQL over the column p.size, for a settlement of every position in
# one statement: NUMERIC products are exact, and PostgreSQL's round() rounds ties away
# from zero, so a tie whose truncation is even is truncated instead (half-even, the
# ledger's one rounding rule). The factor −contract size × mark × rate × 10^places is the
# same for every position: multiplied out once, exactly, in Python, so a row costs one
# product, the payment in units of the last place kept (`pay.units`); it is rounded to a
# whole unit and scaled back by 10^−places, which is exact and gives the value the scale
# `places`, as round(x, places) does (a tie is a fractional part of exactly ±0.5).
# Parameters: `payment_sql_params`. Proven equal to `payment` on random data by
# tests/settlement/test_formulas.py.
PAYMENT_SQL = """
(CASE WHEN abs(mod(pay.units, 1)) = 0.5 AND mod(trunc(pay.units), 2) = 0
      THEN trunc(pay.units) ELSE round(pay.units) END * %(pay_unit)s::numeric)
"""
# A LATERAL subquery after positions_position p, naming the exact product for PAYMENT_SQL.
# (Flattened into the CASE: a subquery kept per row, OFFSET 0, costs twice as much.)
PAYMENT_SQL_FROM = """
CROSS JOIN LATERAL (SELECT p.size * %(pay_units)s::numeric AS units) pay
"""


def exact_product(*factors: Decimal) -> Decimal:
    """The product of Decimals with no rounding (a wide context), without trailing zeros."""
    with localcontext(prec=PRODUCT_DIGITS):
        product = Decimal(1)
        for factor in factors:
            product *= factor
        return product.normalize() if product else Decimal(0)


def payment_sql_params(*, mark_price: Decimal, rate: Decimal, contract_size: Decimal, precision: int) -> dict:
    return {"pay_units": exact_product(Decimal(-1), contract_size, mark_price, rate, Decimal(10) ** precision),
            "pay_unit": Decimal((0, (1,), -precision))}


def half_even_sql(expr: str) -> str:
    """SQL rounding `expr` (an exact NUMERIC expression) half-even to %(places)s places (scale
    %(scale)s = 10^places): `quantize_amount` in PostgreSQL, as PAYMENT_SQL does for a payment.
    Parameters: `half_even_sql_params`. Proven equal to `quantize_amount` by tests/settlement/test_formulas.py."""
    return (f"CASE WHEN abs(({expr}) * %(scale)s - trunc(({expr}) * %(scale)s)) = 0.5"
            f" AND mod(trunc(({expr}) * %(scale)s), 2) = 0"
            f" THEN trunc({expr}, %(places)s) ELSE round({expr}, %(places)s) END")


def half_even_sql_params(*, precision: int) -> dict:
    return {"places": precision, "scale": Decimal(10) ** precision}
