"""Reads of contract specifications for the client API: symbol lookup and exchangeInfo.

Everything a client sees about a contract is read from its row (and its first margin
tier); the only derived values are the Binance classifications: the status a Binance
client understands and the quarter (CURRENT_QUARTER / NEXT_QUARTER) of a delivery
contract, ranked by delivery time among the listed quarterlies of the same pair.
"""
import re
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import OuterRef, Subquery

from exchange.errors import ErrorCode, ExchangeError

from .models import Contract, ContractStatus, ContractType, MarginTier

# Binance publishes this delivery date (2100-12-25 08:00 UTC) for every perpetual.
PERPETUAL_DELIVERY_DATE_MS = 4133404800000

# Our lifecycle → Binance's symbol status. HALTED has no Binance twin: a suspended
# Binance symbol shows SETTLING (no new orders), which is what a halt means here.
_PERPETUAL_STATUS = {
    ContractStatus.PENDING: "PENDING_TRADING",
    ContractStatus.TRADING: "TRADING",
    ContractStatus.CLOSE_ONLY: "PRE_SETTLE",
    ContractStatus.HALTED: "SETTLING",
    ContractStatus.SETTLING: "SETTLING",
    ContractStatus.SETTLED: "CLOSE",
}
_DELIVERY_STATUS = {
    ContractStatus.PENDING: "PENDING_TRADING",
    ContractStatus.TRADING: "TRADING",
    ContractStatus.CLOSE_ONLY: "PRE_DELIVERING",
    ContractStatus.HALTED: "SETTLING",
    ContractStatus.SETTLING: "DELIVERING",
    ContractStatus.SETTLED: "DELIVERED",
}
# Quarterlies that still count when ranking CURRENT_QUARTER / NEXT_QUARTER.
_LISTED_STATUSES = (ContractStatus.PENDING, ContractStatus.TRADING, ContractStatus.CLOSE_ONLY, ContractStatus.HALTED)
_QUARTER_NAMES = ("CURRENT_QUARTER", "NEXT_QUARTER")


class BadSymbol(ExchangeError):
    code = ErrorCode.BAD_SYMBOL


@dataclass(frozen=True)
class SymbolInfo:
    contract: Contract
    pair: str
    contract_type: str  # Binance contractType
    status: str  # Binance status
    # First-bracket maintenance rate (None when the contract has no tiers).
    maintenance_rate: Decimal | None


# The shape the contract table's CHECK allows; anything else is unknown without a query
# (and never reaches PostgreSQL, which refuses NUL bytes in text with an error).
SYMBOL_RE = re.compile(r"[A-Z0-9]{1,24}(_[0-9]{6})?")


def contract_get(*, symbol: str | None) -> Contract:
    """The contract (with its assets) of a symbol; an unknown symbol is -1121."""
    contract = (
        Contract.objects.select_related("base_asset", "quote_asset", "settle_asset").filter(symbol=symbol).first()
        if symbol and SYMBOL_RE.fullmatch(symbol)
        else None
    )
    if contract is None:
        raise BadSymbol("Invalid symbol.")
    return contract


def contract_pair(symbol: str) -> str:
    """BTCUSDT_261225 → BTCUSDT (Binance's `pair`); a perpetual is its own pair."""
    return symbol.split("_", 1)[0]


def binance_status(contract: Contract) -> str:
    table = _PERPETUAL_STATUS if contract.is_perpetual else _DELIVERY_STATUS
    return table[contract.status]


def exchange_info_symbols() -> list[SymbolInfo]:
    """Every contract with its Binance classification, in symbol order (one query)."""
    first_tier = MarginTier.objects.filter(contract=OuterRef("pk")).order_by("bracket").values("maintenance_rate")[:1]
    contracts = list(
        Contract.objects.select_related("base_asset", "quote_asset", "settle_asset")
        .annotate(first_maintenance_rate=Subquery(first_tier))
        .order_by("symbol")
    )
    quarter_of = _quarter_names(contracts)
    return [
        SymbolInfo(
            contract=c,
            pair=contract_pair(c.symbol),
            contract_type=quarter_of.get(c.pk, "PERPETUAL" if c.is_perpetual else ""),
            status=binance_status(c),
            maintenance_rate=c.first_maintenance_rate,
        )
        for c in contracts
    ]


def _quarter_names(contracts: list[Contract]) -> dict[int, str]:
    """Delivery contracts → CURRENT_QUARTER / NEXT_QUARTER by delivery time within their pair.

    One being delivered is Binance's "CURRENT_QUARTER DELIVERING" and no longer takes a
    rank (the next one is already the current quarter); a settled one, or a third listed
    quarterly, has no Binance name and gets "".
    """
    names: dict[int, str] = {}
    listed: dict[str, list[Contract]] = {}
    for c in contracts:
        if c.contract_type != ContractType.DELIVERY:
            continue
        if c.status == ContractStatus.SETTLING:
            names[c.pk] = "CURRENT_QUARTER DELIVERING"
        elif c.status in _LISTED_STATUSES:
            listed.setdefault(contract_pair(c.symbol), []).append(c)
    for group in listed.values():
        group.sort(key=lambda c: (c.delivery_time, c.symbol))
        for rank, c in enumerate(group):
            names[c.pk] = _QUARTER_NAMES[rank] if rank < len(_QUARTER_NAMES) else ""
    return names
