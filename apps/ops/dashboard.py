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
the points newer than the cursor (all symbols' prices in one query, all matcher series
in one Redis pipeline, new fund entries), and alerts and liquidations when they
changed; every SLOW_EVERY_SECONDS also latency (processes publish it every 5 s), health,
and a check that the contracts are the same (else a new snapshot). The cursor is per
connection: about five indexed queries and one Redis round trip a second for each open
dashboard (staff only, few); bench/ops_dashboard.py measures it.
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
from .metrics import SERIES_KEY, SLA_SECONDS, latency_read
from .models import Alert, AlertStatus
from .sources import insurance_fund_balance, metric_read

WINDOW_MINUTES = 10
MAX_POINTS = 300
LIQUIDATIONS_SHOWN = 20
SLOW_EVERY_SECONDS = 5.0
MATCHER_TAIL = 12  # matcher points an update reads (one per 5 s: a minute of slack)
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


def _matcher_series(symbols: list[str], since: dict[str, float], *, tail: int | None = None) -> dict[str, dict]:
    """Each symbol's matcher points newer than since[symbol]: one Redis round trip."""
    from exchange.redis import get_redis

    pipe = get_redis().pipeline(transaction=False)
    for symbol in symbols:
        pipe.lrange(SERIES_KEY.format(name=f"matcher:{symbol}"), -tail if tail else 0, -1)
    out = {}
    for symbol, raw in zip(symbols, pipe.execute(), strict=True):
        points = [p for p in map(json.loads, raw) if p.get("t", 0) > since[symbol]]
        out[symbol] = {
            "t": [p["t"] for p in points],
            "orders_per_s": [p["orders_per_s"] for p in points],
            "trades_per_s": [p["trades_per_s"] for p in points],
            "batch_p95_ms": [p["batch_p95_ms"] for p in points],
        }
    return out


def _prices(contracts: list[Contract], since: dict[str, float], *, end: datetime, thin: bool) -> dict[str, dict]:
    """Each contract's stored index and mark newer than since[symbol], before `end`: one query."""
    from apps.marketdata.models import PriceSample

    symbol_of = {c.pk: c.symbol for c in contracts}
    out = {c.symbol: {"t": [], "mark": [], "index": []} for c in contracts}
    if not contracts:
        return out
    rows = (
        PriceSample.objects.filter(contract_id__in=list(symbol_of), at__gt=_at(min(since.values())), at__lt=end)
        .order_by("contract_id", "at")
        .values_list("contract_id", "at", "mark_price", "index_price")
    )
    for contract_id, at, mark, index in rows:
        symbol, t = symbol_of[contract_id], at.timestamp()
        if t > since[symbol]:
            series = out[symbol]
            series["t"].append(t)
            series["mark"].append(float(mark))
            series["index"].append(float(index))
    if thin:
        for symbol, series in out.items():
            keep = _thin(list(range(len(series["t"]))))
            out[symbol] = {k: [v[i] for i in keep] for k, v in series.items()}
    return out


def _fund(*, after_id: int, limit: int, now: datetime, balance: Decimal | None = None) -> dict:
    """Fund balance after each entry with id > after_id (the newest `limit`), then now.

    The balance now is the newest entry's balance after; with no entry it is `balance`
    (an update's last known one), else read. Ids are taken in insert order: an
    entry committed after a later-numbered one could be skipped by an update, not the
    balance itself.
    """
    from apps.ledger.models import AccountKind, LedgerEntry

    asset = getattr(settings, "OPS_INSURANCE_FUND_ASSET", "USDT")
    rows = LedgerEntry.objects.filter(
        account__kind=AccountKind.INSURANCE_FUND, account__user__isnull=True, asset__code=asset, id__gt=after_id
    ).order_by("-id").values_list("id", "transaction__created_at", "balance_after")
    entries = list(rows[:limit])[::-1]
    if entries:
        balance = entries[-1][2]
    elif balance is None:
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


def dashboard_feed(*, now: datetime | None = None, contracts: list[Contract] | None = None) -> dict:
    """The whole dashboard (see the module docstring), JSON-ready."""
    now = now or timezone.now()
    start = (now - timedelta(minutes=WINDOW_MINUTES)).timestamp()
    contracts = _contracts() if contracts is None else contracts
    symbols = [c.symbol for c in contracts]
    since = {symbol: start for symbol in symbols}
    fund = _fund(after_id=0, limit=MAX_POINTS, now=now)
    return {
        "at": now.timestamp(),
        "window_seconds": WINDOW_MINUTES * 60,
        "symbols": symbols,
        "matcher": _matcher_series(symbols, since),
        "prices": _prices(contracts, since, end=now + timedelta(seconds=1), thin=True),
        "insurance_fund": fund,
        "latency": _latency(),
        "order_latency_p95_us": _order_p95(),
        "alerts": alerts_feed(),
        "liquidations": liquidations_feed(),
        "health": readiness(),
    }


@dataclass
class FeedCursor:
    """What one websocket connection has been sent so far."""

    contracts: list[Contract]
    matcher_t: dict[str, float]
    price_t: dict[str, float]
    fund_id: int
    fund_balance: Decimal
    alerts: str
    liquidations: str
    slow_at: float = field(default_factory=time.monotonic)

    @classmethod
    def after(cls, feed: dict, contracts: list[Contract] | None = None) -> FeedCursor:
        start = feed["at"] - feed["window_seconds"]
        return cls(
            contracts=contracts if contracts is not None else _contracts(),
            matcher_t={s: (m["t"][-1] if m["t"] else start) for s, m in feed["matcher"].items()},
            price_t={s: (p["t"][-1] if p["t"] else start) for s, p in feed["prices"].items()},
            fund_id=feed["insurance_fund"]["last_id"],
            fund_balance=Decimal(feed["insurance_fund"]["current"]),
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
    slow = time.monotonic() - cursor.slow_at >= SLOW_EVERY_SECONDS
    if slow:
        cursor.slow_at = time.monotonic()
        if [c.symbol for c in _contracts()] != [c.symbol for c in cursor.contracts]:
            return None
    symbols = [c.symbol for c in cursor.contracts]
    update: dict = {"at": now.timestamp(), "matcher": {}, "prices": {}}
    for symbol, points in _matcher_series(symbols, cursor.matcher_t, tail=MATCHER_TAIL).items():
        if points["t"]:
            update["matcher"][symbol] = points
            cursor.matcher_t[symbol] = points["t"][-1]
    for symbol, prices in _prices(cursor.contracts, cursor.price_t, end=now + timedelta(seconds=1),
                                  thin=False).items():
        if prices["t"]:
            update["prices"][symbol] = prices
            cursor.price_t[symbol] = prices["t"][-1]
    fund = _fund(after_id=cursor.fund_id, limit=MAX_POINTS, now=now, balance=cursor.fund_balance)
    update["insurance_fund"] = fund
    cursor.fund_id, cursor.fund_balance = fund["last_id"], Decimal(fund["current"])
    alerts = alerts_feed()
    if (signature := _signature(alerts)) != cursor.alerts:
        update["alerts"], cursor.alerts = alerts, signature
    liquidations = liquidations_feed()
    if (signature := _signature(liquidations)) != cursor.liquidations:
        update["liquidations"], cursor.liquidations = liquidations, signature
    if slow:
        update["latency"] = _latency()
        update["order_latency_p95_us"] = _order_p95()
        update["health"] = readiness()
    return update


def dashboard_message(*, cursor: FeedCursor | None) -> tuple[dict, FeedCursor]:
    """The next websocket message: a snapshot first (or after the contracts changed), then updates."""
    if cursor is not None:
        update = dashboard_changes(cursor=cursor)
        if update is not None:
            return {"type": "update", **update}, cursor
    contracts = _contracts()
    feed = dashboard_feed(contracts=contracts)
    return {"type": "snapshot", **feed}, FeedCursor.after(feed, contracts)
