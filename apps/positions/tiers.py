"""A contract's margin tiers as `TierSpec`s, cached briefly per process.

Order entry and risk reads need the tiers on every call; they change only when ops
edit them, so a few seconds of staleness is the price of not querying each time.
"""
import time

from apps.contracts.models import MarginTier
from apps.contracts.tiers import TierSpec, tier_specs_from_rows

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
