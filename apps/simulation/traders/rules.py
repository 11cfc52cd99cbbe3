"""A symbol's trading rules as a client learns them from `GET /fapi/v1/exchangeInfo`.

The traders know the exchange only through its public API, so tick, step, quantity
bounds and the minimum notional come from the `filters` of exchangeInfo, and every
price or quantity a strategy proposes is snapped to that grid here (exactly, in
Decimal) before it is sent.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal


@dataclass(frozen=True)
class SymbolRules:
    symbol: str
    contract_type: str  # PERPETUAL, CURRENT_QUARTER, ...
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal

    @classmethod
    def from_exchange_info(cls, symbol: dict) -> SymbolRules:
        filters = {f["filterType"]: f for f in symbol["filters"]}
        price, lot = filters["PRICE_FILTER"], filters["LOT_SIZE"]
        market_lot = filters.get("MARKET_LOT_SIZE", lot)
        return cls(
            symbol=symbol["symbol"],
            contract_type=symbol.get("contractType", "PERPETUAL"),
            tick_size=Decimal(price["tickSize"]),
            step_size=Decimal(lot["stepSize"]),
            min_qty=Decimal(lot["minQty"]),
            max_qty=Decimal(lot["maxQty"]),
            market_max_qty=Decimal(market_lot["maxQty"]),
            min_notional=Decimal(filters.get("MIN_NOTIONAL", {}).get("notional", "0")),
        )

    def price_down(self, price: Decimal) -> Decimal:
        """The tick at or below `price` (bids)."""
        return (price / self.tick_size).to_integral_value(ROUND_FLOOR) * self.tick_size

    def price_up(self, price: Decimal) -> Decimal:
        """The tick at or above `price` (asks)."""
        return (price / self.tick_size).to_integral_value(ROUND_CEILING) * self.tick_size

    def qty_down(self, qty: Decimal) -> Decimal:
        """The step at or below `qty` (never more than asked for)."""
        if qty <= 0:
            return Decimal(0)
        return (qty / self.step_size).to_integral_value(ROUND_FLOOR) * self.step_size

    def tradable(self, qty: Decimal, price: Decimal, *, reduce_only: bool = False) -> bool:
        """Whether an order of `qty` at `price` passes the quantity and notional filters."""
        if qty < self.min_qty or qty > self.max_qty:
            return False
        return reduce_only or qty * price >= self.min_notional


def rules_from_exchange_info(info: dict, *, symbols: list[str] | None = None) -> dict[str, SymbolRules]:
    """Rules of the TRADING symbols of an exchangeInfo answer (only `symbols` when given)."""
    wanted = {s.upper() for s in symbols} if symbols else None
    out = {}
    for entry in info.get("symbols", ()):
        if entry.get("status") != "TRADING":
            continue
        if wanted is not None and entry["symbol"] not in wanted:
            continue
        out[entry["symbol"]] = SymbolRules.from_exchange_info(entry)
    return out


def fmt(value: Decimal) -> str:
    """A decimal as the API expects it: plain notation, no exponent, no trailing zeros."""
    return format(value.normalize(), "f")
