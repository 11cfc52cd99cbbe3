"""Check sources: what an alert rule's key reads.

A source is a function of no arguments returning the current value as a Decimal,
`None` when there is no data (the rule's state is left as it is), or a dict of
label → value for readings with parts (one alert per symbol). A heartbeat that was
never recorded reads as `MISSING` (infinitely old), so "age > N" fires for it.

Other apps register more with `@source_register("app.thing", description=...)`.

What the built-in sources read:
- trading.orders_per_second — NEW journal commands (trading_ordercommand) accepted in
  the last 60 s, divided by 60; PostgreSQL.
- trading.order_latency_p95_us — the value a process publishes with `metric_publish`
  under Redis key `ops:metric:order_latency_p95_us` (p95 of order processing in µs),
  ignored when older than 2 minutes. Process metrics live in each process's own
  Prometheus registry, out of a worker's reach, so they come through Redis.
- ops.latency_sla_ratio — per operation (order_processing, market_data, risk_check,
  position_update): the worst p95 over the last minute among the processes that report
  it (`ops:latency:<operation>`, written by apps.ops.metrics' publisher thread from the
  Prometheus histogram) divided by the seed's SLA; > 1 is a violation. A process that
  processed nothing in the window reports 0; no fresh report reads as no data.
- risk.insurance_fund_balance — the insurance fund system account's balance in
  OPS_INSURANCE_FUND_ASSET (USDT); PostgreSQL ledger_balance.
- system.cpu_percent — host CPU use since the previous evaluation (psutil).
- ops.matcher_heartbeat_age — seconds since `ops:heartbeat:matcher:<symbol>` per
  contract a matcher must serve (not PENDING or SETTLED); Redis.
- ops.beat_heartbeat_age, ops.pricefeed_heartbeat_age — `ops:heartbeat:beat`,
  `ops:heartbeat:pricefeed`; Redis.
- ledger.invariant_violations — violations in the last scheduled invariant check
  (`ops:invariants:last`, written every 5 minutes by ledger_check_invariants); Redis.
- db.autovacuum_off — 1 while the database server runs without autovacuum, else 0;
  db.hot_table_dead_rows — dead rows per hot table (apps.ops.maintenance); PostgreSQL's
  statistics views.
"""
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import psutil
from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from exchange.redis import get_redis

from .health import heartbeat_age, matcher_symbols

Reading = Decimal | None | dict[str, Decimal | None]
MISSING = Decimal("Infinity")
METRIC_PREFIX = "ops:metric:"
METRIC_MAX_AGE_SECONDS = 120
INVARIANT_RESULT_MAX_AGE_SECONDS = 900


@dataclass(frozen=True)
class Source:
    key: str
    read: Callable[[], Reading]
    description: str
    unit: str = ""


SOURCES: dict[str, Source] = {}


def source_register(key: str, *, description: str, unit: str = ""):
    def register(func: Callable[[], Reading]):
        SOURCES[key] = Source(key=key, read=func, description=description, unit=unit)
        return func

    return register


def source_read(key: str) -> dict[str, Decimal | None]:
    """The reading of `key` as label → value ('' for a single value)."""
    raw = SOURCES[key].read()
    if isinstance(raw, dict):
        return {str(label): _decimal(value) for label, value in raw.items()}
    return {"": _decimal(raw)}


def _decimal(value) -> Decimal | None:
    if value is None or isinstance(value, Decimal):
        return value
    return Decimal(str(value))


def metric_publish(name: str, value: Decimal | float | int) -> None:
    """Publish a process-level metric for the alert sources (value and time, in Redis)."""
    get_redis().set(METRIC_PREFIX + name, json.dumps({"value": str(value), "at": time.time()}), ex=3600)


def metric_read(name: str, *, max_age: float = METRIC_MAX_AGE_SECONDS) -> Decimal | None:
    raw = get_redis().get(METRIC_PREFIX + name)
    if raw is None:
        return None
    data = json.loads(raw)
    if time.time() - float(data["at"]) > max_age:
        return None
    return Decimal(data["value"])


def _age(name: str) -> Decimal:
    age = heartbeat_age(name)
    return MISSING if age is None else Decimal(f"{age:.3f}")


@source_register("trading.orders_per_second", description="New orders accepted per second (last 60 s)", unit="/s")
def orders_per_second() -> Decimal:
    from apps.trading.models import CommandKind, OrderCommand

    since = timezone.now() - timedelta(seconds=60)
    count = OrderCommand.objects.filter(kind=CommandKind.NEW, created_at__gte=since).count()
    return (Decimal(count) / 60).quantize(Decimal("0.001"))


@source_register(
    "trading.order_latency_p95_us", description="Order processing latency p95 (published by the matcher)", unit="µs"
)
def order_latency_p95_us() -> Decimal | None:
    return metric_read("order_latency_p95_us")


@source_register("risk.insurance_fund_balance", description="Insurance fund balance", unit="USDT")
def insurance_fund_balance() -> Decimal:
    from apps.ledger.models import AccountKind, Balance

    total = Balance.objects.filter(
        account__kind=AccountKind.INSURANCE_FUND,
        account__user__isnull=True,
        asset__code=getattr(settings, "OPS_INSURANCE_FUND_ASSET", "USDT"),
    ).aggregate(total=Sum("amount"))["total"]
    return total if total is not None else Decimal(0)


_cpu_primed = False


@source_register("system.cpu_percent", description="Host CPU use since the last evaluation", unit="%")
def cpu_percent() -> Decimal | None:
    global _cpu_primed
    value = psutil.cpu_percent(interval=None)
    if not _cpu_primed:  # the first call has nothing to compare against and returns 0
        _cpu_primed = True
        return None
    return Decimal(str(value))


@source_register("ops.matcher_heartbeat_age", description="Seconds since each symbol's matcher heartbeat", unit="s")
def matcher_heartbeat_age() -> dict[str, Decimal]:
    return {symbol: _age(f"matcher:{symbol}") for symbol in matcher_symbols()}


@source_register("ops.beat_heartbeat_age", description="Seconds since the beat scheduler's heartbeat", unit="s")
def beat_heartbeat_age() -> Decimal:
    return _age("beat")


@source_register("ops.pricefeed_heartbeat_age", description="Seconds since the price service's heartbeat", unit="s")
def pricefeed_heartbeat_age() -> Decimal:
    return _age("pricefeed")


@source_register("ledger.invariant_violations", description="Violations found by the last invariant check")
def invariant_violations() -> Decimal | None:
    from apps.ledger.tasks import LAST_RESULT_KEY

    raw = get_redis().get(LAST_RESULT_KEY)
    if raw is None:
        return None
    data = json.loads(raw)
    if time.time() - float(data["at"]) > INVARIANT_RESULT_MAX_AGE_SECONDS:
        return None
    return Decimal(len(data["violations"]))


@source_register("ops.latency_sla_ratio", description="Latency p95 over its SLA (per operation)", unit="× SLA")
def latency_sla_ratio() -> dict[str, Decimal | None]:
    from .metrics import latency_sla_ratios

    return latency_sla_ratios()


@source_register("db.autovacuum_off", description="1 while the database server runs without autovacuum")
def autovacuum_off() -> Decimal:
    from .maintenance import autovacuum_on

    return Decimal(0 if autovacuum_on() else 1)


@source_register("db.hot_table_dead_rows", description="Dead rows per hot table (orders, journal, positions, "
                 "balances)", unit="rows")
def hot_table_dead_rows() -> dict[str, Decimal]:
    from .maintenance import hot_tables_dead_rows

    return {table: Decimal(rows) for table, rows in hot_tables_dead_rows().items()}
