"""Writes of market data: publishing prices, per-minute records, anomalies, pauses.

`price_publish` is the one way a mark price enters the system: it stores the
sample row and, after commit, caches the snapshot in Redis (`md:price:<SYMBOL>`),
announces it on the pub/sub channel `md:prices` (the stream relay forwards it to
the websocket groups) and calls the registered mark listeners (the conditional-
order check and the liquidation screen plug in there). Nothing leaves before the
row is committed. Prices are Decimals; floats are refused.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.utils import timezone

from apps.contracts.models import Contract
from exchange.redis import get_redis

from .engine import AnomalyRecord
from .engine.quotes import ms_to_datetime, quantize_to_tick, to_decimal
from .models import (
    AnomalyKind,
    AnomalySeverity,
    IndexConstituent,
    PriceAnomaly,
    PriceMinute,
    PriceSample,
    PriceStatus,
)
from .snapshot import PRICE_CHANNEL, PRICE_KEY, PRICE_KEY_TTL_SECONDS, PriceSnapshot

logger = logging.getLogger(__name__)
INDEX_QUANTUM = Decimal("0.00000001")

MarkListener = Callable[[Contract, PriceSnapshot], None]
_mark_listeners: list[MarkListener] = []


def mark_listener_register(listener: MarkListener) -> MarkListener:
    """Call `listener(contract, snapshot)` after each committed mark (usable as a decorator).

    Listeners run in the publishing process after commit; one that raises is
    logged and does not stop the others.
    """
    if listener not in _mark_listeners:
        _mark_listeners.append(listener)
    return listener


def mark_listener_unregister(listener: MarkListener) -> None:
    if listener in _mark_listeners:
        _mark_listeners.remove(listener)


@dataclass(frozen=True, slots=True)
class PriceInput:
    """One contract's prices for `price_publish_many`."""

    contract: Contract
    index_price: Decimal
    mark_price: Decimal
    at: datetime
    valid_venues: int = 0
    status: str = PriceStatus.FRESH


def _price(value, name: str) -> Decimal:
    price = to_decimal(value, name=name)
    if price <= 0:
        raise ValueError(f"{name} must be positive, got {price}")
    return price


def _aware(at: datetime) -> datetime:
    if not isinstance(at, datetime) or timezone.is_naive(at):
        raise ValueError(f"at must be an aware datetime, got {at!r}")
    return at


def price_publish(
    *,
    contract: Contract,
    index_price: Decimal,
    mark_price: Decimal,
    at: datetime,
    valid_venues: int = 0,
    status: str = PriceStatus.FRESH,
) -> PriceSnapshot:
    """Publish a contract's index and mark price at `at`; returns the snapshot.

    The mark is rounded to the contract tick (half to even) and the index to 8
    places. The sample row is stored at second resolution (a second publish in
    the same second replaces it). Redis and the streams get it after commit.
    """
    return price_publish_many(
        prices=[
            PriceInput(
                contract=contract,
                index_price=index_price,
                mark_price=mark_price,
                at=at,
                valid_venues=valid_venues,
                status=status,
            )
        ]
    )[0]


_STATUSES = frozenset(PriceStatus.values)
# What bulk_create(update_conflicts=True) would send, without building models and compiling it
# at every tick (the pricefeed publishes every second).
SAMPLES_UPSERT_SQL = f"""
INSERT INTO {PriceSample._meta.db_table} (contract_id, at, index_price, mark_price, basis, valid_venues, status)
SELECT * FROM unnest(%s::bigint[], %s::timestamptz[], %s::numeric[], %s::numeric[], %s::numeric[],
                     %s::smallint[], %s::varchar[])
ON CONFLICT (contract_id, at) DO UPDATE SET index_price = EXCLUDED.index_price, mark_price = EXCLUDED.mark_price,
    basis = EXCLUDED.basis, valid_venues = EXCLUDED.valid_venues, status = EXCLUDED.status
"""


def price_publish_many(*, prices: Sequence[PriceInput]) -> list[PriceSnapshot]:
    """`price_publish` for several contracts at once: one upsert, one Redis round trip."""
    columns: tuple[list, ...] = ([], [], [], [], [], [], [])  # SAMPLES_UPSERT_SQL's, in order
    published: list[tuple[Contract, PriceSnapshot]] = []
    for item in prices:
        at = _aware(item.at)
        index = _price(item.index_price, "index_price")
        if index.as_tuple().exponent < INDEX_QUANTUM.as_tuple().exponent:
            index = quantize_to_tick(index, INDEX_QUANTUM)
        mark = quantize_to_tick(_price(item.mark_price, "mark_price"), item.contract.tick_size)
        if item.status not in _STATUSES:
            raise ValueError(f"unknown price status {item.status!r}")
        for column, value in zip(columns, (item.contract.pk, at.replace(microsecond=0), index, mark, mark - index,
                                           max(0, int(item.valid_venues)), str(item.status)), strict=True):
            column.append(value)
        published.append(
            (item.contract, PriceSnapshot(symbol=item.contract.symbol, index_price=index, mark_price=mark, at=at))
        )
    if not published:
        return []
    with connection.cursor() as cursor:
        cursor.execute(SAMPLES_UPSERT_SQL, columns)
    transaction.on_commit(lambda: _announce(published))
    return [snapshot for _, snapshot in published]


def _announce(published: list[tuple[Contract, PriceSnapshot]]) -> None:
    """After commit: cache in Redis, tell the stream relay, call the mark listeners."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        for contract, snapshot in published:
            pipe.set(PRICE_KEY.format(symbol=snapshot.symbol), snapshot.to_json(contract_id=contract.pk),
                     ex=PRICE_KEY_TTL_SECONDS)
        pipe.publish(PRICE_CHANNEL, "[" + ",".join(s.to_json(contract_id=c.pk) for c, s in published) + "]")
        pipe.execute()
    except Exception:
        # The row is committed; readers fall back to it and the next tick re-announces.
        logger.warning("price announce failed for %s", [s.symbol for _, s in published], exc_info=True)
    for contract, snapshot in published:
        for listener in list(_mark_listeners):
            try:
                listener(contract, snapshot)
            except Exception:
                logger.exception("mark listener %r failed for %s", listener, snapshot.symbol)


def price_cache_clear(*, symbols: Iterable[str] | None = None) -> None:
    """Drop cached snapshots from Redis (tests, or after deleting samples by hand)."""
    redis = get_redis()
    if symbols is None:
        keys = list(redis.scan_iter(match=PRICE_KEY.format(symbol="*")))
    else:
        keys = [PRICE_KEY.format(symbol=s) for s in symbols]
    if keys:
        redis.delete(*keys)


def price_minute_record(
    *,
    contract: Contract,
    minute: datetime,
    index_price: Decimal,
    mark_price: Decimal,
    venues: dict[str, dict],
) -> PriceMinute:
    """Store (or merge into) a contract's minute record.

    `venues` maps venue -> {"price", "volume", "quotes", "last_ts"} for the quotes
    of that minute. Merging into an existing row (a restart mid-minute) combines
    the volume-weighted prices, so the minute stays the VWAP of all its quotes.
    """
    minute = _aware(minute).replace(second=0, microsecond=0)
    index_price = _price(index_price, "index_price")
    mark_price = quantize_to_tick(_price(mark_price, "mark_price"), contract.tick_size)
    clean = {venue: _venue_entry(entry) for venue, entry in venues.items()}
    with transaction.atomic():
        row = PriceMinute.objects.select_for_update().filter(contract=contract, minute=minute).first()
        if row is None:
            row, created = PriceMinute.objects.get_or_create(
                contract=contract,
                minute=minute,
                defaults={"index_price": index_price, "mark_price": mark_price, "venues": clean},
            )
            if created:
                return row
            row = PriceMinute.objects.select_for_update().get(pk=row.pk)
        merged = dict(row.venues)
        for venue, entry in clean.items():
            merged[venue] = _venue_merge(merged.get(venue), entry)
        row.venues = merged
        row.index_price = index_price
        row.mark_price = mark_price
        row.save(update_fields=["venues", "index_price", "mark_price"])
        return row


@dataclass(frozen=True, slots=True)
class MinuteInput:
    """One contract's minute for `price_minutes_record`."""

    contract: Contract
    minute: datetime
    index_price: Decimal
    mark_price: Decimal
    venues: dict[str, dict]


MINUTES_INSERT_SQL = f"""
INSERT INTO {PriceMinute._meta.db_table} (contract_id, minute, index_price, mark_price, venues)
SELECT * FROM unnest(%s::bigint[], %s::timestamptz[], %s::numeric[], %s::numeric[], %s::jsonb[])
ON CONFLICT (contract_id, minute) DO NOTHING
RETURNING contract_id, minute
"""


def price_minutes_record(*, minutes: Sequence[MinuteInput]) -> int:
    """`price_minute_record` for several contracts: one INSERT for the minutes not stored yet
    (the pricefeed's case every minute), the merge only for those already stored (a restart
    mid-minute). Returns how many were merged."""
    rows = []
    for item in minutes:
        minute = _aware(item.minute).replace(second=0, microsecond=0)
        index_price = _price(item.index_price, "index_price")
        mark_price = quantize_to_tick(_price(item.mark_price, "mark_price"), item.contract.tick_size)
        clean = {venue: _venue_entry(entry) for venue, entry in item.venues.items()}
        rows.append((item, minute, index_price, mark_price, clean))
    if not rows:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(MINUTES_INSERT_SQL, [
            [item.contract.pk for item, *_ in rows], [r[1] for r in rows], [r[2] for r in rows],
            [r[3] for r in rows], [json.dumps(r[4]) for r in rows],
        ])
        created = set(cursor.fetchall())
    merged = 0
    for item, minute, index_price, mark_price, clean in rows:
        if (item.contract.pk, minute) not in created:
            price_minute_record(contract=item.contract, minute=minute, index_price=index_price,
                                mark_price=mark_price, venues=clean)
            merged += 1
    return merged


def _venue_entry(entry: dict) -> dict:
    price = _price(entry["price"], "venue price")
    volume = to_decimal(entry["volume"], name="venue volume")
    if volume < 0:
        raise ValueError("venue volume must not be negative")
    return {"price": str(price), "volume": str(volume), "quotes": int(entry.get("quotes", 1)),
            "last_ts": int(entry.get("last_ts", 0))}


def _venue_merge(old: dict | None, new: dict) -> dict:
    if old is None:
        return new
    v_old, v_new = Decimal(old["volume"]), Decimal(new["volume"])
    p_old, p_new = Decimal(old["price"]), Decimal(new["price"])
    total = v_old + v_new
    if total > 0:
        price = quantize_to_tick((p_old * v_old + p_new * v_new) / total, INDEX_QUANTUM)
    else:
        price = p_new
    return {"price": str(price), "volume": str(total), "quotes": int(old.get("quotes", 0)) + new["quotes"],
            "last_ts": max(int(old.get("last_ts", 0)), new["last_ts"])}


def price_samples_prune(*, older_than: timedelta) -> int:
    """Delete per-second samples older than `older_than` (minute rows are kept)."""
    cutoff = timezone.now() - older_than
    deleted, _ = PriceSample.objects.filter(at__lt=cutoff).delete()
    return deleted


# -- anomalies and pauses ----------------------------------------------------------


def anomaly_record(*, contract: Contract, record: AnomalyRecord, paused_until: datetime | None) -> PriceAnomaly:
    """Store one anomaly from the detector; HIGH ones carry the pause they imposed."""
    high = record.severity.value == AnomalySeverity.HIGH
    anomaly = PriceAnomaly.objects.create(
        contract=contract,
        kind=record.type.value,
        severity=record.severity.value,
        detected_at=ms_to_datetime(record.at),
        value=_ratio(record.value),
        threshold=_ratio(record.threshold),
        observed=record.observed,
        reference=record.reference,
        message=record.message[:500],
        detail=record.to_audit(),
        paused_until=paused_until if high else None,
    )
    log = logger.error if high else logger.warning
    log("pricefeed.anomaly %s", record.message, extra={"event": "pricefeed.anomaly", "symbol": contract.symbol})
    return anomaly


def _ratio(value: Decimal | None) -> Decimal | None:
    return None if value is None else value.quantize(Decimal("1e-12"))


def anomaly_event_open(
    *, contract: Contract, kind: str, at: datetime, message: str, detail: dict | None = None
) -> PriceAnomaly:
    """Record the start of a data-quality episode (stale index, mark fallback).

    An episode of the same kind that is still open is returned instead of a new
    row, so a long outage is one row, not one per tick.
    """
    if kind not in (AnomalyKind.INDEX_STALE, AnomalyKind.MARK_FALLBACK):
        raise ValueError(f"{kind!r} is not an episode kind")
    open_row = PriceAnomaly.objects.filter(contract=contract, kind=kind, ended_at__isnull=True).first()
    if open_row is not None:
        return open_row
    logger.error("pricefeed.%s %s: %s", kind, contract.symbol, message,
                 extra={"event": f"pricefeed.{kind}", "symbol": contract.symbol})
    return PriceAnomaly.objects.create(
        contract=contract, kind=kind, severity=AnomalySeverity.ALERT, detected_at=_aware(at),
        message=message[:500], detail=detail or {},
    )


def anomaly_event_close(*, contract: Contract, kind: str, at: datetime) -> int:
    """Close the open episode of `kind` (valid quotes are back); returns rows closed."""
    closed = PriceAnomaly.objects.filter(contract=contract, kind=kind, ended_at__isnull=True).update(
        ended_at=_aware(at)
    )
    if closed:
        logger.warning("pricefeed.%s_recovered %s", kind, contract.symbol)
    return closed


def price_pause_lift(*, anomalies: Iterable[PriceAnomaly], by, at: datetime | None = None) -> int:
    """Ops action: end the mark pause of the contracts of these anomalies now.

    Every HIGH pause still in force on those contracts is lifted (the pause is
    per symbol); returns how many rows. The running pricefeed
    polls for lifts and resumes mark updates of the symbol on its next tick.
    """
    at = at or timezone.now()
    contract_ids = {a.contract_id for a in anomalies}
    with transaction.atomic():
        # A symbol's pause is lifted as a whole: every HIGH pause of its contract in force.
        lifted = PriceAnomaly.objects.filter(
            contract_id__in=contract_ids, severity=AnomalySeverity.HIGH, paused_until__gt=at,
            lifted_at__isnull=True,
        ).update(lifted_at=at, lifted_by=by)
    if lifted:
        logger.warning("pricefeed.pause_lifted %d pause(s) by %s", lifted, by)
    return lifted


# -- constituents ------------------------------------------------------------------

# Venues of a contract's index when ops have not configured any (the simulated
# source quotes these three; weights follow their usual liquidity).
DEFAULT_CONSTITUENTS = (("binance", Decimal(4)), ("okx", Decimal(3)), ("bybit", Decimal(3)))


def source_symbol_for(contract: Contract) -> str:
    """The spot symbol behind a contract: BTCUSDT for BTCUSDT and BTCUSDT_261225."""
    return contract.symbol.split("_", 1)[0]


def constituents_ensure_default(*, contract: Contract) -> list[IndexConstituent]:
    """Create the default constituents for a contract that has none; returns them all."""
    with transaction.atomic():
        existing = list(IndexConstituent.objects.filter(contract=contract))
        if existing:
            return existing
        rows = [
            IndexConstituent(contract=contract, venue=venue, source_symbol=source_symbol_for(contract), weight=weight)
            for venue, weight in DEFAULT_CONSTITUENTS
        ]
        IndexConstituent.objects.bulk_create(rows, ignore_conflicts=True)
        return list(IndexConstituent.objects.filter(contract=contract))
