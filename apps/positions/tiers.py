"""A contract's margin tiers as `TierSpec`s, cached briefly per process.

Order entry and risk reads need the tiers on every call; they change only when ops
edit them, so a few seconds of staleness is the price of not querying each time.
"""
import time

from apps.contracts.models import MarginTier
from apps.contracts.tiers import TierError, TierSpec, max_leverage_for_notional, tier_specs_from_rows

CACHE_SECONDS = 5.0
_cache: dict[int, tuple[float, list[TierSpec]]] = {}


def contract_tiers(contract) -> list[TierSpec]:
    now = time.monotonic()
    hit = _cache.get(contract.pk)
    if hit is not None and now - hit[0] < CACHE_SECONDS:
        return hit[1]
    specs = tier_specs_from_rows(MarginTier.objects.filter(contract_id=contract.pk))
    _cache[contract.pk] = (now, specs)
    return specs


def tiers_forget() -> None:
    """Drop the cache (tests, and after ops edit tiers in this process)."""
    _cache.clear()


def tier_leverage(contract, notional) -> int:
    """The highest leverage the contract's tiers allow for a notional; 0 beyond the last tier."""
    try:
        return max_leverage_for_notional(contract_tiers(contract), notional)
    except TierError:
        return 0
