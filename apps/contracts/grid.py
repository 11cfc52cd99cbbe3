"""Exact conversion between Decimal prices/quantities and the matcher's integer ticks/lots.

The boundary refuses what does not divide (the API answers -1111), including a value so
large that the division itself fails (more steps than the Decimal context has digits);
nothing is rounded on the way into the book.
"""
from dataclasses import dataclass
from decimal import Decimal


class OffGrid(ValueError):
    pass


@dataclass(frozen=True)
class Grid:
    tick_size: Decimal
    lot_size: Decimal

    @classmethod
    def of(cls, contract) -> "Grid":
        return cls(tick_size=contract.tick_size, lot_size=contract.lot_size)

    def ticks(self, price: Decimal) -> int:
        return _exact_multiple(price, self.tick_size, "price", "tick size")

    def lots(self, quantity: Decimal) -> int:
        return _exact_multiple(quantity, self.lot_size, "quantity", "lot size")

    def price(self, ticks: int) -> Decimal:
        return (self.tick_size * ticks).normalize() if ticks else Decimal(0)

    def quantity(self, lots: int) -> Decimal:
        return (self.lot_size * lots).normalize() if lots else Decimal(0)


def _exact_multiple(value: Decimal, step: Decimal, what: str, step_name: str) -> int:
    try:
        units, remainder = divmod(value, step)
    except ArithmeticError as exc:  # decimal.InvalidOperation: more steps than the context's digits
        raise OffGrid(f"{what} {value} is too large to be a multiple of the {step_name} {step.normalize()}") from exc
    if remainder != 0:
        raise OffGrid(f"{what} {value} is not a multiple of the {step_name} {step.normalize()}")
    return int(units)
