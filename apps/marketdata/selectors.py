"""Reads of market data: latest prices, price history, settlement inputs, pauses.

`price_latest` reads the Redis snapshot written by `services.price_publish` after
commit and falls back to the newest stored sample, so it works when Redis was
flushed, when the pricefeed is down (the last price stays, with its time), and
inside a transaction that published a price not yet committed (tests). A Redis
snapshot whose contract id does not match is ignored (a key left by another
database on the same Redis).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.db.models import Q
from django.utils import timezone

from apps.contracts.models import Contract
from exchange.redis import get_redis

from .engine import VenueQuote
from .engine.quotes import to_ms
from .models import AnomalySeverity, IndexConstituent, PriceAnomaly, PriceMinute, PriceSample
from .snapshot import PRICE_KEY, PriceSnapshot


def _from_sample(symbol: str, row: PriceSample) -> PriceSnapshot:
    return PriceSnapshot(symbol=symbol, index_price=row.index_price, mark_price=row.mark_price, at=row.at)


def _redis_snapshots(contracts: Sequence[Contract]) -> list[PriceSnapshot | None]:
    try:
        raw = get_redis().mget([PRICE_KEY.format(symbol=c.symbol) for c in contracts])
    except Exception:
        return [None] * len(contracts)
    out: list[PriceSnapshot | None] = []
    for contract, value in zip(contracts, raw, strict=True):
        snapshot = None
        if value is not None:
            try:
                parsed, contract_id = PriceSnapshot.from_json(value)
            except (ValueError, KeyError, TypeError):
                parsed, contract_id = None, None
            if parsed is not None and contract_id in (None, contract.pk) and parsed.symbol == contract.symbol:
                snapshot = parsed
        out.append(snapshot)
    return out


def price_latest(*, contract: Contract) -> PriceSnapshot | None:
    """The contract's latest published prices, or None if none were ever published."""
    return price_latest_many(contracts=[contract])[contract.symbol]


def price_latest_many(*, contracts: Iterable[Contract]) -> dict[str, PriceSnapshot | None]:
    """`price_latest` for several contracts: one Redis MGET, one query for the misses."""
    contracts = list(contracts)
    if not contracts:
        return {}
    cached = _redis_snapshots(contracts)
    result: dict[str, PriceSnapshot | None] = {}
    missing: dict[int, Contract] = {}
    for contract, snapshot in zip(contracts, cached, strict=True):
        result[contract.symbol] = snapshot
        if snapshot is None:
            missing[contract.pk] = contract
    if missing:
        rows = (
            PriceSample.objects.filter(contract_id__in=list(missing))
            .order_by("contract_id", "-at")
            .distinct("contract_id")
        )
        for row in rows:
            result[missing[row.contract_id].symbol] = _from_sample(missing[row.contract_id].symbol, row)
    return result


def price_history(*, contract: Contract, start: datetime, end: datetime) -> list[PriceSnapshot]:
    """Stored samples with start <= at < end, oldest first (second resolution)."""
    rows = PriceSample.objects.filter(contract=contract, at__gte=start, at__lt=end).order_by("at")
    return [_from_sample(contract.symbol, row) for row in rows.iterator(chunk_size=5000)]


def price_minutes(*, contract: Contract, start: datetime, end: datetime) -> list[PriceMinute]:
    """Minute records with start <= minute < end, oldest first."""
    return list(PriceMinute.objects.filter(contract=contract, minute__gte=start, minute__lt=end).order_by("minute"))


def price_settlement_quotes(*, contract: Contract, start: datetime, end: datetime) -> list[VenueQuote]:
    """The per-minute venue prices of [start, end) as quotes for the settlement calculator.

    Each minute record gives one quote per venue (its VWAP and summed volume),
    stamped at the start of the minute, so `SettlementPriceCalculator.calculate`
    over these quotes reproduces the stored settlement price at any later time.
    """
    quotes: list[VenueQuote] = []
    for row in price_minutes(contract=contract, start=start, end=end):
        stamp = to_ms(row.minute)
        for venue, entry in sorted(row.venues.items()):
            quotes.append(
                VenueQuote(
                    venue=venue,
                    symbol=contract.symbol,
                    price=Decimal(entry["price"]),
                    volume=Decimal(entry["volume"]),
                    bid=None,
                    ask=None,
                    timestamp=stamp,
                )
            )
    return quotes


def constituents_of(*, contract: Contract) -> list[IndexConstituent]:
    """The enabled index constituents of a contract."""
    return list(IndexConstituent.objects.filter(contract=contract, enabled=True).order_by("venue"))


def pauses_active(*, contracts: Iterable[Contract], now: datetime | None = None) -> dict[int, datetime]:
    """contract id -> the end of its longest mark pause still in force (not lifted)."""
    now = now or timezone.now()
    out: dict[int, datetime] = {}
    rows = PriceAnomaly.objects.filter(
        contract__in=list(contracts),
        severity=AnomalySeverity.HIGH,
        paused_until__gt=now,
        lifted_at__isnull=True,
    ).values_list("contract_id", "paused_until")
    for contract_id, until in rows:
        if contract_id not in out or until > out[contract_id]:
            out[contract_id] = until
    return out


def pause_lifts_since(*, contracts: Iterable[Contract], since: datetime) -> list[PriceAnomaly]:
    """Pauses of these contracts lifted at or after `since`, oldest lift first."""
    return list(
        PriceAnomaly.objects.filter(contract__in=list(contracts), lifted_at__gte=since)
        .select_related("lifted_by")
        .order_by("lifted_at")
    )


def funding_time_next(*, contract: Contract, now: datetime | None = None) -> datetime | None:
    """The next funding time of a perpetual (every `funding_interval_hours` from 00:00 UTC).

    None for delivery contracts, which do not fund.
    """
    if not contract.is_perpetual:
        return None
    now = now or timezone.now()
    interval = timedelta(hours=contract.funding_interval_hours)
    day = now.astimezone(dt_timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = now - day
    periods = int(elapsed // interval) + 1
    return day + periods * interval


def price_sample_count(*, contract: Contract, since: datetime | None = None) -> int:
    """How many samples a contract has (since a time); for ops pages and tests."""
    q = Q(contract=contract)
    if since is not None:
        q &= Q(at__gte=since)
    return PriceSample.objects.filter(q).count()
