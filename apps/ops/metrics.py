"""Prometheus metrics of the exchange, one module for every process, and the latency API.

Every process (web, matcher, pricefeed, Celery worker and beat) keeps its own registry
and serves it on its own `/metrics`: the web process through django-prometheus (HTTP
and database metrics included), the others through `metrics_serve` on a port of their
own. What each process exports:

- all processes: `process_*` and `python_gc_*` (prometheus_client defaults: CPU seconds,
  resident memory, open fds, GC collections), `exchange_gc_pause_seconds{generation}`
  (GC time), `exchange_process_io_{read,write}_bytes_total` (this process's disk I/O),
  `exchange_host_cpu_seconds_total{mode}`, `exchange_host_memory_{used,total}_bytes`,
  `exchange_host_disk_{read,written}_bytes_total`,
  `exchange_host_network_{received,sent}_bytes_total` (psutil, read at scrape time),
  `exchange_process_info{role}` and `exchange_operation_latency_seconds{operation}`.
- web only (`DatabaseCollector`, cheap SQL at scrape time, cached 5 s):
  `exchange_active_positions{symbol}`, `exchange_open_interest{symbol}`,
  `exchange_total_exposure{symbol}` (|size| × mark × contract size, settle asset),
  `exchange_margin_utilization_ratio`, `exchange_insurance_fund_balance{asset}`.
- whichever process runs the code that changes them (they are defined here so names
  stay in one place): `exchange_liquidations_total{symbol}`,
  `exchange_adl_events_total{symbol}`, `exchange_funding_rate{symbol}`,
  `exchange_premium_index{symbol}`, `exchange_funding_payments_total{symbol}`.

Latency: call `observe_latency("risk_check", seconds)` or wrap code in
`with measure_latency("position_update"):`. The histogram's buckets include each
operation's SLA (order 1 ms, market data 100 µs, risk check 500 µs, position update
200 µs, p95 in the seed's 高频交易优化), so "p95 above SLA" is exact at a bucket edge.
A daemon thread per process (started on the first observation) computes each
operation's p95 over the last minute from the histogram's buckets, the way
Prometheus' `histogram_quantile` does, and writes it to Redis every few seconds
(`ops:latency:<operation>`, one field per process) for the SLA alert rule; the
matcher's order-processing p95 also goes to `metric_publish("order_latency_p95_us")`.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from contextlib import ContextDecorator
from decimal import Decimal

import psutil
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

logger = logging.getLogger(__name__)

# -- latency -------------------------------------------------------------------------

ORDER_PROCESSING = "order_processing"
MARKET_DATA = "market_data"
RISK_CHECK = "risk_check"
POSITION_UPDATE = "position_update"
# p95 SLA per operation, seconds (seed: LatencyMonitor.check_sla_violations).
SLA_SECONDS = {ORDER_PROCESSING: 0.001, MARKET_DATA: 0.0001, RISK_CHECK: 0.0005, POSITION_UPDATE: 0.0002}
LATENCY_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
assert set(SLA_SECONDS.values()) <= set(LATENCY_BUCKETS)

OPERATION_LATENCY = Histogram(
    "exchange_operation_latency_seconds",
    "Latency of one operation (order processing per command, market data update, risk check, position update)",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
LATENCY_WINDOW_SECONDS = 60.0
LATENCY_PUBLISH_SECONDS = 5.0
LATENCY_KEY = "ops:latency:{operation}"
LATENCY_MAX_AGE_SECONDS = 120.0

# The orders one group commit of order entry placed in one go (apps.trading.group_commit).
ORDER_ENTRY_GROUP = Histogram("exchange_order_entry_group_orders", "Orders placed together by one group commit",
                              buckets=(1, 2, 4, 8, 16, 32, 64, 100))
# Where the API's new orders were placed (apps.trading.handover): by the contract's matcher,
# in the web process (no matcher serving), or unknown (no answer in time: -1007).
ORDER_ENTRY_ROUTE = Counter("exchange_order_entry_route_total", "New orders from the API by where they were placed",
                            ["route"])

# -- risk and funding: set or counted by the code that does the work -----------------

LIQUIDATIONS = Counter("exchange_liquidations_total", "Liquidations started (accounts × symbol)", ["symbol"])
ADL_EVENTS = Counter("exchange_adl_events_total", "Auto-deleveraging fills against counterparties", ["symbol"])
FUNDING_RATE = Gauge("exchange_funding_rate", "Current (last computed) funding rate", ["symbol"])
PREMIUM_INDEX = Gauge("exchange_premium_index", "Current premium index (contract price vs mark)", ["symbol"])
FUNDING_PAYMENTS = Counter(
    "exchange_funding_payments_total", "Funding paid between positions, settle-asset volume", ["symbol"]
)

# -- process identity --------------------------------------------------------------

_role = "web"


def process_role_set(role: str) -> None:
    """Name this process's kind (matcher, pricefeed, celery-worker, celery-beat); default web.

    Only the web process runs the database collector, so a metric that the database
    knows is exported once, not once per process.
    """
    global _role
    _role = role


def process_role() -> str:
    return _role


def _unknown(operation: str) -> ValueError:
    return ValueError(f"unknown operation {operation!r}; one of {', '.join(SLA_SECONDS)}")


def observe_latency(operation: str, seconds: float, *, count: int = 1) -> None:
    """Record `count` operations that took `seconds` each (count > 1: a batch's mean)."""
    if operation not in SLA_SECONDS:
        raise _unknown(operation)
    if count <= 0:
        return
    _observe_n(OPERATION_LATENCY.labels(operation), seconds, count)
    _publisher_ensure()


def _observe_n(child, value: float, count: int) -> None:
    if count == 1:
        child.observe(value)
        return
    # prometheus_client has no weighted observe; adding `count` to the one bucket and
    # value × count to the sum is what `count` observe() calls would do, in O(1) (the
    # matcher books 2,000 commands a batch). Fall back to the loop if internals change.
    try:
        bounds, buckets, total = child._upper_bounds, child._buckets, child._sum
    except AttributeError:
        for _ in range(count):
            child.observe(value)
        return
    total.inc(value * count)
    for i, bound in enumerate(bounds):
        if value <= bound:
            buckets[i].inc(count)
            break


class measure_latency(ContextDecorator):
    """`with measure_latency("risk_check"):` (or as a decorator) observes the block's time."""

    def __init__(self, operation: str):
        if operation not in SLA_SECONDS:
            raise _unknown(operation)
        self.operation = operation

    def __enter__(self):
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc):
        observe_latency(self.operation, time.perf_counter() - self._started)
        return False


# -- quantiles from histogram buckets -------------------------------------------------

def histogram_buckets(histogram) -> dict[tuple, list[tuple[float, float]]]:
    """Cumulative buckets of each child: label values → [(upper bound, count)], +Inf last."""
    result: dict[tuple, list[tuple[float, float]]] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if not sample.name.endswith("_bucket"):
                continue
            key = tuple(v for k, v in sorted(sample.labels.items()) if k != "le")
            result.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    for buckets in result.values():
        buckets.sort()
    return result


def buckets_delta(new: list[tuple[float, float]], old: list[tuple[float, float]] | None) -> list[tuple[float, float]]:
    if not old:
        return list(new)
    before = dict(old)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in new]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q·N.

    None when there are no observations. A rank in the +Inf bucket returns the highest
    finite bound (all Prometheus can say).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


class HistogramWindow:
    """Quantiles of a histogram over a sliding window, from snapshots of its buckets."""

    def __init__(self, histogram, window_seconds: float, *, from_now: bool = False, now: float | None = None):
        """The first window counts from process start, or from now with `from_now`."""
        self.histogram = histogram
        self.window = window_seconds
        start = histogram_buckets(histogram) if from_now else {}
        self.snapshots: deque[tuple[float, dict]] = deque([(time.monotonic() if now is None else now, start)])

    def advance(self, now: float | None = None) -> dict[tuple, list[tuple[float, float]]]:
        """Take a snapshot; return each child's buckets observed since the window's start."""
        now = time.monotonic() if now is None else now
        current = histogram_buckets(self.histogram)
        while len(self.snapshots) > 1 and self.snapshots[1][0] <= now - self.window:
            self.snapshots.popleft()
        base = self.snapshots[0][1]
        self.snapshots.append((now, current))
        return {key: buckets_delta(buckets, base.get(key)) for key, buckets in current.items()}


def latency_publish(window: HistogramWindow, *, now: float | None = None) -> dict[str, dict]:
    """Write this process's p95 per observed operation to Redis; returns what it wrote."""
    from exchange.redis import get_redis

    from .sources import metric_publish

    field = f"{_role}:{socket.gethostname()}:{os.getpid()}"
    written = {}
    redis = get_redis()
    pipe = redis.pipeline(transaction=False)
    for (operation,), buckets in window.advance(now).items():
        count = int(buckets[-1][1]) if buckets else 0
        p95 = histogram_quantile(0.95, buckets) if count else 0.0
        p95_us = round(p95 * 1_000_000, 1)
        entry = {"p95_us": p95_us, "count": count, "at": time.time(), "role": _role}
        pipe.hset(LATENCY_KEY.format(operation=operation), field, json.dumps(entry))
        pipe.expire(LATENCY_KEY.format(operation=operation), 3600)
        written[operation] = entry
    pipe.execute()
    if ORDER_PROCESSING in written:
        metric_publish("order_latency_p95_us", written[ORDER_PROCESSING]["p95_us"])
    return written


def latency_read(operation: str, *, max_age: float = LATENCY_MAX_AGE_SECONDS) -> dict[str, dict]:
    """The fresh p95 entries of `operation`, one per process; stale ones are removed."""
    from exchange.redis import get_redis

    redis = get_redis()
    key = LATENCY_KEY.format(operation=operation)
    fresh, stale = {}, []
    now = time.time()
    for field, raw in redis.hgetall(key).items():
        entry = json.loads(raw)
        if now - entry["at"] <= max_age:
            fresh[field.decode() if isinstance(field, bytes) else field] = entry
        elif now - entry["at"] > 3600:
            stale.append(field)
    if stale:
        redis.hdel(key, *stale)
    return fresh


def latency_sla_ratios() -> dict[str, Decimal | None]:
    """Worst p95 / SLA per operation over the processes that report it (None: no report)."""
    result: dict[str, Decimal | None] = {}
    for operation, sla in SLA_SECONDS.items():
        entries = latency_read(operation)
        if not entries:
            result[operation] = None
            continue
        worst = max(entry["p95_us"] for entry in entries.values())
        result[operation] = (Decimal(str(worst)) / Decimal(str(sla * 1_000_000))).quantize(Decimal("0.001"))
    return result


class _Publisher(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(name="latency-publisher", daemon=True)
        self.interval = interval
        self.window = HistogramWindow(OPERATION_LATENCY, LATENCY_WINDOW_SECONDS)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                latency_publish(self.window)
            except Exception:  # Redis down: the next round tries again
                logger.warning("latency p95 not published", exc_info=True)


_publisher: _Publisher | None = None
_publisher_pid = 0
_publisher_lock = threading.Lock()


def _publisher_ensure() -> None:
    """Start this process's publisher thread once (again after a fork: threads don't survive it)."""
    global _publisher, _publisher_pid
    if _publisher_pid == os.getpid():
        return
    with _publisher_lock:
        if _publisher_pid == os.getpid():
            return
        interval = _setting("OPS_LATENCY_PUBLISH_SECONDS", LATENCY_PUBLISH_SECONDS)
        _publisher_pid = os.getpid()
        if interval <= 0:
            return
        _publisher = _Publisher(interval)
        _publisher.start()


def publisher_stop() -> None:
    """Stop this process's publisher and start none (tests publish by hand)."""
    global _publisher, _publisher_pid
    with _publisher_lock:
        if _publisher is not None:
            _publisher.stop.set()
            _publisher.join(timeout=10)
        _publisher, _publisher_pid = None, os.getpid()


def _setting(name: str, default):
    from django.conf import settings

    return getattr(settings, name, default)


# -- collectors ---------------------------------------------------------------------

_gc_started: dict[int, float] = {}


class _GcPauseHistogram(Histogram):
    """Records the pauses the GC callback queued (`gc_pauses_observe`) each time it is collected."""

    def collect(self):
        gc_pauses_observe()
        return super().collect()


GC_PAUSE = _GcPauseHistogram(
    "exchange_gc_pause_seconds", "Time spent in one garbage collection", ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
)


# A GC callback must not touch a metric. In multiprocess mode (the web workers) every metric
# value shares one non-reentrant lock, and a collection that starts while this thread holds it
# (creating a metric's labelled child allocates) would wait for that lock forever, and the
# worker with it (prometheus/client_python#322; seen as a web worker whose /metrics never
# answered). The callback queues each pause; `gc_pauses_observe` records them at every scrape.
_gc_pauses: deque[tuple[int, float]] = deque(maxlen=10_000)


def _gc_callback(phase: str, info: dict) -> None:
    generation = info.get("generation", 0)
    if phase == "start":
        _gc_started[generation] = time.perf_counter()
    else:
        started = _gc_started.pop(generation, None)
        if started is not None:
            _gc_pauses.append((generation, time.perf_counter() - started))


def gc_pauses_observe() -> None:
    """Record the GC pauses queued since the last call in GC_PAUSE (never from a GC callback)."""
    while True:
        try:
            generation, seconds = _gc_pauses.popleft()
        except IndexError:
            return
        GC_PAUSE.labels(str(generation)).observe(seconds)


class SystemCollector:
    """Host and process resources the default process collector lacks (psutil, at scrape)."""

    def collect(self):
        info = GaugeMetricFamily("exchange_process_info", "This process's kind", labels=["role", "pid"])
        info.add_metric([_role, str(os.getpid())], 1)
        yield info
        cpu = CounterMetricFamily("exchange_host_cpu_seconds", "Host CPU time by mode", labels=["mode"])
        for mode, seconds in psutil.cpu_times()._asdict().items():
            cpu.add_metric([mode], seconds)
        yield cpu
        memory = psutil.virtual_memory()
        yield GaugeMetricFamily("exchange_host_memory_used_bytes", "Host memory in use", value=memory.used)
        yield GaugeMetricFamily("exchange_host_memory_total_bytes", "Host memory", value=memory.total)
        disk = psutil.disk_io_counters()
        if disk is not None:
            yield CounterMetricFamily("exchange_host_disk_read_bytes", "Host disk bytes read", value=disk.read_bytes)
            yield CounterMetricFamily(
                "exchange_host_disk_written_bytes", "Host disk bytes written", value=disk.write_bytes
            )
        net = psutil.net_io_counters()
        if net is not None:
            yield CounterMetricFamily(
                "exchange_host_network_received_bytes", "Host network bytes received", value=net.bytes_recv
            )
            yield CounterMetricFamily("exchange_host_network_sent_bytes", "Host network bytes sent", value=net.bytes_sent)
        try:
            io = psutil.Process().io_counters()
        except (AttributeError, psutil.Error):  # not on every platform
            return
        yield CounterMetricFamily("exchange_process_io_read_bytes", "Bytes this process read", value=io.read_bytes)
        yield CounterMetricFamily("exchange_process_io_write_bytes", "Bytes this process wrote", value=io.write_bytes)


class DatabaseCollector:
    """What only the database knows, read at scrape time by the web process alone.

    Four cheap queries (open positions grouped by contract on a partial index, latest
    prices through Redis, three balance sums), cached for a few seconds so several
    scrapers cost one read.
    """

    cache_seconds = 5.0
    names = (
        "exchange_active_positions", "exchange_open_interest", "exchange_total_exposure",
        "exchange_margin_utilization_ratio", "exchange_insurance_fund_balance",
    )

    def __init__(self):
        self._cached: tuple[float, list] | None = None
        self._lock = threading.Lock()

    def describe(self):
        # Without describe() the registry would call collect() at registration: a query
        # during app loading.
        return [GaugeMetricFamily(name, name) for name in self.names]

    def collect(self):
        if _role != "web":
            return []
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.cache_seconds:
                try:
                    self._cached = (now, self._families())
                except Exception:  # the database is down: /metrics still answers
                    logger.warning("database metrics not collected", exc_info=True)
                    return []
            return self._cached[1]

    def _families(self) -> list:
        from .selectors import risk_snapshot

        snap = risk_snapshot()
        positions = GaugeMetricFamily("exchange_active_positions", "Open positions", labels=["symbol"])
        open_interest = GaugeMetricFamily("exchange_open_interest", "Open interest (long size)", labels=["symbol"])
        exposure = GaugeMetricFamily(
            "exchange_total_exposure", "Notional of open positions at mark (|size| × mark × contract size)",
            labels=["symbol"],
        )
        for symbol, row in snap["symbols"].items():
            positions.add_metric([symbol], row["positions"])
            open_interest.add_metric([symbol], float(row["open_interest"]))
            if row["exposure"] is not None:
                exposure.add_metric([symbol], float(row["exposure"]))
        utilization = GaugeMetricFamily(
            "exchange_margin_utilization_ratio",
            "Initial margin of open positions plus order margin held, over users' total balances",
            value=float(snap["margin_utilization"]) if snap["margin_utilization"] is not None else float("nan"),
        )
        fund = GaugeMetricFamily("exchange_insurance_fund_balance", "Insurance fund balance", labels=["asset"])
        fund.add_metric([snap["insurance_fund_asset"]], float(snap["insurance_fund_balance"]))
        return [positions, open_interest, exposure, utilization, fund]


DATABASE_COLLECTOR = DatabaseCollector()
_installed = False


def install() -> None:
    """Register the collectors and the GC timer in this process (AppConfig.ready; once)."""
    global _installed
    if _installed:
        return
    _installed = True
    REGISTRY.register(SystemCollector())
    REGISTRY.register(DATABASE_COLLECTOR)
    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)


def process_metrics_registry(*, multiprocess_dir: str | None):
    """What this process's /metrics reports: its own registry, or — for web workers sharing a
    multiprocess directory — every worker's metrics from it (counters summed, gauges per pid)
    plus the collectors computed at scrape time (host, database)."""
    if not multiprocess_dir:
        return REGISTRY
    gc_pauses_observe()  # into this worker's file (read below: GC_PAUSE itself is not collected)
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)
    registry.register(SystemCollector())
    registry.register(DATABASE_COLLECTOR)
    return registry


def metrics_serve(port: int, *, role: str | None = None, addr: str | None = None) -> bool:
    """Serve this process's registry on http://addr:port/metrics; False if the port is taken."""
    if role:
        process_role_set(role)
    if not port:
        return False
    addr = addr or _setting("OPS_METRICS_ADDR", "127.0.0.1")
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        logger.warning("metrics exporter not started on %s:%s: %s", addr, port, exc)
        return False
    logger.info("metrics of %s (pid %d) on http://%s:%d/metrics", _role, os.getpid(), addr, port)
    return True


# -- short series for the ops dashboard ----------------------------------------------

SERIES_KEY = "ops:series:{name}"
SERIES_KEEP = 360  # 30 minutes at one point per 5 s


def series_append(name: str, point: dict, *, keep: int = SERIES_KEEP, redis=None) -> None:
    """Append a point (a dict with `t`, epoch seconds) to a capped list in Redis."""
    from exchange.redis import get_redis

    redis = redis or get_redis()
    key = SERIES_KEY.format(name=name)
    pipe = redis.pipeline(transaction=False)
    pipe.rpush(key, json.dumps(point))
    pipe.ltrim(key, -keep, -1)
    pipe.expire(key, 3600)
    pipe.execute()


def series_read(name: str, *, since: float = 0.0) -> list[dict]:
    from exchange.redis import get_redis

    points = [json.loads(raw) for raw in get_redis().lrange(SERIES_KEY.format(name=name), 0, -1)]
    return [p for p in points if p.get("t", 0) > since]
