"""The ops dashboard's live data: a snapshot, and what changed since a cursor.

`dashboard_feed()` is everything the charts and panels show (times in epoch seconds):
- matcher: per symbol, the points the matcher writes every 5 s (orders/s, trades/s,
  batch p95 in ms) from its Prometheus counters and histogram;
- prices: per symbol, index and mark from the stored samples (≤ 1 a second);
- insurance_fund: its balance after each ledger entry, and now;
- latency: per operation, the worst p95 reported by a process and the SLA;
- alerts (firing and pending, then the last resolved), liquidations (the latest),
  health (as /readyz).

The polling endpoint serves the snapshot; the websocket consumer
(apps.ops.consumers) sends it once and then, every second, `dashboard_changes`: only
the points newer than the cursor, the small panels (latency) every time, and alerts,
liquidations and health when they changed. The cursor is per connection: a handful of
indexed queries and Redis reads a second for each open dashboard (staff only, few).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from apps.contracts.models import Contract, ContractStatus

from .health import readiness
from .metrics import SLA_SECONDS, latency_read, series_read
from .models import Alert, AlertStatus
from .sources import insurance_fund_balance, metric_read

WINDOW_MINUTES = 10
MAX_POINTS = 300
LIQUIDATIONS_SHOWN = 20
HEALTH_EVERY_SECONDS = 5.0
RATIO_PLACES = Decimal("0.0001")


def _thin(rows: list, limit: int = MAX_POINTS) -> list:
    """Every n-th row so at most `limit` remain, always keeping the newest."""
    if len(rows) <= limit:
        return rows
    step = -(-len(rows) // limit)
    return rows[::-1][::step][::-1]


def _contracts() -> list[Contract]:
    return list(
        Contract.objects.exclude(status__in=(ContractStatus.PENDING, ContractStatus.SETTLED)).order_by("symbol")
    )


def _matcher_points(symbol: str, since: float) -> dict:
    points = series_read(f"matcher:{symbol}", since=since)
    return {
        "t": [p["t"] for p in points],
        "orders_per_s": [p["orders_per_s"] for p in points],
        "trades_per_s": [p["trades_per_s"] for p in points],
        "batch_p95_ms": [p["batch_p95_ms"] for p in points],
    }


def _price_points(contract: Contract, *, after: datetime, end: datetime, thin: bool) -> dict:
    from apps.marketdata.selectors import price_history

    samples = [s for s in price_history(contract=contract, start=after, end=end) if s.at > after]
    if thin:
        samples = _thin(samples)
    return {
        "t": [s.at.timestamp() for s in samples],
        "mark": [float(s.mark_price) for s in samples],
        "index": [float(s.index_price) for s in samples],
    }


def _fund(*, after_id: int, limit: int, now: datetime) -> dict:
    """Fund balance after each entry with id > after_id (the newest `limit`), then now.

    Ids are taken in insert order, so an entry committed after a later-numbered one
    could be skipped by an update; the closing "now" point is always the true balance.
    """
    from apps.ledger.models import AccountKind, LedgerEntry

    asset = getattr(settings, "OPS_INSURANCE_FUND_ASSET", "USDT")
    rows = LedgerEntry.objects.filter(
        account__kind=AccountKind.INSURANCE_FUND, account__user__isnull=True, asset__code=asset, id__gt=after_id
    ).order_by("-id").values_list("id", "transaction__created_at", "balance_after")
    entries = list(rows[:limit])[::-1]
    balance = insurance_fund_balance()
    return {
        "asset": asset,
        "t": [at.timestamp() for _, at, _ in entries] + [now.timestamp()],
        "balance": [float(b) for _, _, b in entries] + [float(balance)],
        "current": str(balance),
        "last_id": entries[-1][0] if entries else after_id,
    }


def _latency() -> dict:
    latency = {}
    for operation, sla in SLA_SECONDS.items():
        reports = latency_read(operation)
        worst = max((r["p95_us"] for r in reports.values()), default=None)
        latency[operation] = {"p95_us": worst, "sla_us": round(sla * 1_000_000), "processes": len(reports),
                              "violated": worst is not None and worst > sla * 1_000_000}
    return latency


def _order_p95() -> float | None:
    value = metric_read("order_latency_p95_us")
    return None if value is None else float(value)


def alerts_feed(*, resolved: int = 10) -> list[dict]:
    rank = {"CRITICAL": 0, "HIGH": 1, "WARNING": 2, "INFO": 3}
    open_alerts = sorted(
        Alert.objects.filter(status__in=(AlertStatus.FIRING, AlertStatus.PENDING)),
        key=lambda a: (a.status != AlertStatus.FIRING, rank.get(a.level, 9), -a.last_seen.timestamp()),
    )
    recent = list(Alert.objects.filter(status=AlertStatus.RESOLVED).order_by("-resolved_at")[:resolved])
    return [
        {
            "id": a.pk, "level": a.level, "status": a.status, "message": a.message, "count": a.count,
            "since": (a.fired_at or a.first_seen).timestamp(),
            "resolved_at": a.resolved_at.timestamp() if a.resolved_at else None,
            "acknowledged": a.acknowledged_at is not None,
        }
        for a in open_alerts + recent
    ]


def liquidations_feed(*, limit: int = LIQUIDATIONS_SHOWN) -> list[dict]:
    """The latest liquidations, newest first: who, which scope, state, the ratio that started it."""
    from apps.liquidation.models import Liquidation

    rows = Liquidation.objects.select_related("user", "contract", "asset").order_by("-id")[:limit]
    return [
        {
            "id": row.pk, "user": row.user.get_username(),
            "scope": row.contract.symbol if row.contract_id else "cross", "status": row.status,
            "ratio": str(row.ratio.quantize(RATIO_PLACES)), "steps": row.steps,
            "asset": row.asset.code, "started_at": row.started_at.timestamp(),
            "finished_at": row.finished_at.timestamp() if row.finished_at else None,
        }
        for row in rows
    ]


def dashboard_feed(*, now: datetime | None = None) -> dict:
    """The whole dashboard (see the module docstring), JSON-ready."""
    now = now or timezone.now()
    start = now - timedelta(minutes=WINDOW_MINUTES)
    contracts = _contracts()
    return {
        "at": now.timestamp(),
        "window_seconds": WINDOW_MINUTES * 60,
        "symbols": [c.symbol for c in contracts],
        "matcher": {c.symbol: _matcher_points(c.symbol, start.timestamp()) for c in contracts},
        "prices": {
            c.symbol: _price_points(c, after=start, end=now + timedelta(seconds=1), thin=True) for c in contracts
        },
        "insurance_fund": _fund(after_id=0, limit=MAX_POINTS, now=now),
        "latency": _latency(),
        "order_latency_p95_us": _order_p95(),
        "alerts": alerts_feed(),
        "liquidations": liquidations_feed(),
        "health": readiness(),
    }


@dataclass
class FeedCursor:
    """What one websocket connection has been sent so far."""

    symbols: list[str]
    matcher_t: dict[str, float]
    price_t: dict[str, float]
    fund_id: int
    alerts: str
    liquidations: str
    health_at: float = field(default_factory=time.monotonic)

    @classmethod
    def after(cls, feed: dict) -> FeedCursor:
        return cls(
            symbols=list(feed["symbols"]),
            matcher_t={s: (m["t"][-1] if m["t"] else feed["at"] - feed["window_seconds"])
                       for s, m in feed["matcher"].items()},
            price_t={s: (p["t"][-1] if p["t"] else feed["at"] - feed["window_seconds"])
                     for s, p in feed["prices"].items()},
            fund_id=feed["insurance_fund"]["last_id"],
            alerts=_signature(feed["alerts"]),
            liquidations=_signature(feed["liquidations"]),
        )


def _signature(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=dt_timezone.utc)


def dashboard_changes(*, cursor: FeedCursor, now: datetime | None = None) -> dict | None:
    """What is new since `cursor` (which it advances), or None when the contracts changed
    (the caller then sends a new snapshot)."""
    now = now or timezone.now()
    contracts = _contracts()
    if [c.symbol for c in contracts] != cursor.symbols:
        return None
    update: dict = {"at": now.timestamp(), "matcher": {}, "prices": {}}
    for contract in contracts:
        symbol = contract.symbol
        points = _matcher_points(symbol, cursor.matcher_t[symbol])
        if points["t"]:
            update["matcher"][symbol] = points
            cursor.matcher_t[symbol] = points["t"][-1]
        prices = _price_points(contract, after=_at(cursor.price_t[symbol]), end=now + timedelta(seconds=1),
                               thin=False)
        if prices["t"]:
            update["prices"][symbol] = prices
            cursor.price_t[symbol] = prices["t"][-1]
    update["insurance_fund"] = fund = _fund(after_id=cursor.fund_id, limit=MAX_POINTS, now=now)
    cursor.fund_id = fund["last_id"]
    update["latency"] = _latency()
    update["order_latency_p95_us"] = _order_p95()
    alerts = alerts_feed()
    if (signature := _signature(alerts)) != cursor.alerts:
        update["alerts"], cursor.alerts = alerts, signature
    liquidations = liquidations_feed()
    if (signature := _signature(liquidations)) != cursor.liquidations:
        update["liquidations"], cursor.liquidations = liquidations, signature
    if time.monotonic() - cursor.health_at >= HEALTH_EVERY_SECONDS:
        update["health"], cursor.health_at = readiness(), time.monotonic()
    return update


def dashboard_message(*, cursor: FeedCursor | None) -> tuple[dict, FeedCursor]:
    """The next websocket message: a snapshot first (or after the contracts changed), then updates."""
    if cursor is not None:
        update = dashboard_changes(cursor=cursor)
        if update is not None:
            return {"type": "update", **update}, cursor
    feed = dashboard_feed()
    return {"type": "snapshot", **feed}, FeedCursor.after(feed)
