"""Parsing of client API parameters (Binance conventions: everything arrives as strings).

Each helper either returns a typed value or raises the `ExchangeError` Binance would
send (-1102 missing or malformed, -1130 invalid value, -1121 unknown symbol), so views
stay a few lines of "parse, call one service, shape the output".
"""
import time
from decimal import Decimal, InvalidOperation

from apps.contracts.models import Contract
from apps.contracts.selectors import contract_get
from apps.trading.public_selectors import MAX_TIME_MS
from exchange.errors import ErrorCode, ExchangeError

CONTRACT_CACHE_SECONDS = 1.0
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_contracts: dict[str, tuple[float, Contract]] = {}


def missing(name: str) -> ExchangeError:
    return ExchangeError(f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
                         code=ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED)


def invalid(name: str, value) -> ExchangeError:
    return ExchangeError(f"Invalid value {value!r} for parameter '{name}'.", code=ErrorCode.INVALID_PARAMETER)


def required(params: dict, name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise missing(name)
    return value


def optional(params: dict, name: str) -> str | None:
    value = params.get(name)
    return None if value == "" else value


def integer(params: dict, name: str, *, default: int | None = None, low: int | None = None,
            high: int | None = None) -> int | None:
    value = optional(params, name)
    if value is None:
        return default
    try:
        result = int(value)
    except ValueError as exc:
        raise invalid(name, value) from exc
    # Ids and times are PostgreSQL bigints: anything wider is refused here, not by the database.
    low = INT64_MIN if low is None else low
    high = INT64_MAX if high is None else high
    if not low <= result <= high:
        raise invalid(name, value)
    return result


def boolean(params: dict, name: str, *, default: bool = False) -> bool:
    value = optional(params, name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise invalid(name, value)
    return lowered == "true"


def decimal(params: dict, name: str) -> Decimal | None:
    value = optional(params, name)
    if value is None:
        return None
    try:
        result = Decimal(value)
    except InvalidOperation as exc:
        raise missing(name) from exc
    if not result.is_finite():
        raise missing(name)
    return result


def choice(params: dict, name: str, choices, *, default: str | None = None, code: ErrorCode | None = None) -> str | None:
    value = optional(params, name)
    if value is None:
        return default
    if value not in choices:
        raise ExchangeError(f"Invalid {name} {value!r}.", code=code or ErrorCode.INVALID_PARAMETER)
    return value


def contract(params: dict, name: str = "symbol", *, required_: bool = True) -> Contract | None:
    """The contract named by `symbol` (-1121 when unknown), briefly cached per process."""
    symbol = params.get(name)
    if not symbol:
        if required_:
            raise missing(name)
        return None
    now = time.monotonic()
    hit = _contracts.get(symbol)
    if hit is not None and now - hit[0] < CONTRACT_CACHE_SECONDS:
        return hit[1]
    found = contract_get(symbol=symbol)
    _contracts[symbol] = (now, found)
    return found


def time_range(params: dict) -> tuple[int | None, int | None]:
    """startTime / endTime in epoch ms, 0 up to the last millisecond of year 9999 (the last a
    datetime holds; later is -1130, not an overflow in the query)."""
    start = integer(params, "startTime", low=0, high=MAX_TIME_MS)
    end = integer(params, "endTime", low=0, high=MAX_TIME_MS)
    if start is not None and end is not None and start > end:
        raise ExchangeError("startTime must not be after endTime.", code=ErrorCode.INVALID_PARAMETER)
    return start, end


def contracts_forget() -> None:
    """Drop the contract cache (tests; a process sees edits within a second anyway)."""
    _contracts.clear()
