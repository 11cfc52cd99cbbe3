"""The pricefeed process: venue quotes -> index -> anomaly rules -> mark, every tick.

`PriceFeed` runs the engine's `PricingPipeline` for each live contract, fed by one
price source (simulated venues by default, a CSV replay, or live venues), and
publishes each result through `services.price_publish_many`. Around the pure
engine it does what a process must: it restores state at start (last index and
mark from the newest stored sample when recent, pauses still in force), records
every anomaly and every stale-index episode, notices pauses lifted by ops in the
admin, keeps per-minute venue prices for settlement, reloads constituent weights,
writes the heartbeat `ops:heartbeat:pricefeed` and Prometheus metrics (pricing time
per symbol as `exchange_operation_latency_seconds{operation="market_data"}`), and stops
cleanly on SIGTERM/SIGINT (the tick in progress completes, the partial minute is
stored). Only the holder of the `pricefeed` lease (apps.ops.leases) runs: a second
process waits as a hot standby and takes over within a second or two of the leader's
death. It never publishes a price without an index: until the first valid
quotes arrive nothing is published, and when every venue goes bad the last good
index is held (status "held") and an `index_stale` event is recorded.
"""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import Counter, Gauge, Histogram

from apps.contracts.models import Contract, ContractStatus
from apps.ops.health import heartbeat_record
from apps.ops.leases import lease_wait
from apps.ops.metrics import MARKET_DATA, observe_latency, process_role_set
from exchange.redis import get_redis

from .engine import (
    AnomalyDetector,
    CsvReplay,
    IndexCalculator,
    IndexStatus,
    LiveVenues,
    MarkCalculator,
    MarkStatus,
    PriceSource,
    PricingPipeline,
    SimulatedVenues,
    SymbolSpec,
    VenueQuote,
    VenueSpec,
)
from .engine.quotes import ms_to_datetime, to_ms
from .models import AnomalyKind, IndexConstituent, PriceStatus
from .selectors import pause_lifts_since, pauses_active, price_latest_many
from .services import (
    MinuteInput,
    PriceInput,
    anomaly_event_close,
    anomaly_event_open,
    anomaly_record,
    constituents_ensure_default,
    price_minutes_record,
    price_publish_many,
)

logger = logging.getLogger(__name__)

HEARTBEAT_NAME = "pricefeed"
LAST_TRADE_KEY = "md:last_trade:{symbol}"  # written by the stream relay: {"p": price, "t": ms}
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
DEFAULT_REPLAY = SAMPLES_DIR / "ticks_sample.csv"

# Where the simulated market starts when nothing is stored yet: the region the
# demo book trades in (override with the setting MARKETDATA_SIMULATED_PRICES).
DEFAULT_SIMULATED_PRICES = {"BTCUSDT": "90000", "ETHUSDT": "3000"}
# Venues the simulation knows how to quote, with their data quality.
SIMULATED_VENUES = {
    "binance": {"latency_ms": 50, "noise_bps": 2.0, "volume_mean": 1500.0},
    "okx": {"latency_ms": 120, "noise_bps": 3.0, "volume_mean": 900.0},
    "bybit": {"interval_ms": 2000, "latency_ms": 200, "jitter_ms": 400, "noise_bps": 4.0},
}

TICKS = Counter("pricefeed_ticks_total", "Pricing ticks run")
TICK_SECONDS = Histogram(
    "pricefeed_tick_seconds", "Time to price and publish one tick",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
INDEX_PRICE = Gauge("pricefeed_index_price", "Last index price", ["symbol"])
MARK_PRICE = Gauge("pricefeed_mark_price", "Last mark price", ["symbol"])
VALID_VENUES = Gauge("pricefeed_valid_venues", "Venues in the last index", ["symbol"])
INDEX_STALE = Gauge("pricefeed_index_stale", "1 while the index is held (no valid venue)", ["symbol"])
MARK_PAUSED = Gauge("pricefeed_mark_paused", "1 while mark updates are paused", ["symbol"])
ANOMALIES = Counter("pricefeed_anomalies_total", "Anomalies detected", ["symbol", "kind", "severity"])
PUBLISHED = Counter("pricefeed_published_total", "Prices published", ["symbol"])


def _setting(name: str, default):
    return getattr(settings, name, default)


@dataclass
class _MinuteBucket:
    minute: datetime | None = None
    index_price: Decimal | None = None
    mark_price: Decimal | None = None
    # venue -> {(timestamp): quote}; distinct quotes of the minute
    quotes: dict[str, dict[int, VenueQuote]] = field(default_factory=lambda: defaultdict(dict))

    def venues(self) -> dict[str, dict]:
        out = {}
        for venue, by_ts in self.quotes.items():
            volume = sum((q.volume for q in by_ts.values()), Decimal(0))
            if volume > 0:
                price = sum((q.price * q.volume for q in by_ts.values()), Decimal(0)) / volume
            else:
                price = sum((q.price for q in by_ts.values()), Decimal(0)) / len(by_ts)
            out[venue] = {
                "price": price.quantize(Decimal("0.00000001")),
                "volume": volume,
                "quotes": len(by_ts),
                "last_ts": max(by_ts),
            }
        return out


@dataclass
class _Symbol:
    contract: Contract
    source_symbol: str
    pipeline: PricingPipeline
    constituents_version: tuple = ()
    stale_open: bool = False
    minute: _MinuteBucket = field(default_factory=_MinuteBucket)


class PriceFeed:
    """See the module docstring. `interval` is seconds between ticks."""

    def __init__(
        self,
        *,
        source: str = "simulated",
        symbols: list[str] | None = None,
        interval: float = 1.0,
        seed: int | None = None,
        replay_paths: list[str] | None = None,
        replay_loop: bool = False,
        max_ticks: int | None = None,
        lease: bool = True,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.source_kind = source
        self.symbols = symbols
        self.interval = interval
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
        self.replay_paths = replay_paths or [str(DEFAULT_REPLAY)]
        self.replay_loop = replay_loop
        self.max_ticks = max_ticks
        self.lease = lease
        self.stopping = threading.Event()
        self.feeds: dict[str, _Symbol] = {}
        self.source: PriceSource | None = None
        self._replay_offset = 0  # replay: source time = wall time + offset
        self._replay_lap = 0  # --replay-loop: the file's time = source time - this
        self._lift_checked_at: datetime | None = None
        self._lifts_seen: set[int] = set()
        self._last_heartbeat = 0.0
        self._last_reload = time.monotonic()
        self.ticks = 0

    # -- set-up -----------------------------------------------------------------------

    def contracts(self) -> list[Contract]:
        rows = Contract.objects.all()
        if self.symbols is None:
            return list(rows.exclude(status__in=(ContractStatus.SETTLED, ContractStatus.PENDING)))
        found = list(rows.filter(symbol__in=self.symbols))
        missing = set(self.symbols) - {c.symbol for c in found}
        if missing:
            raise SystemExit(f"unknown symbol(s): {', '.join(sorted(missing))}")
        return found

    def setup(self, *, now_ms: int | None = None) -> None:
        now_ms = now_ms if now_ms is not None else to_ms(timezone.now())
        contracts = self.contracts()
        if not contracts:
            raise SystemExit("no contract to price (seed the demo data or list one with --symbols)")
        latest = price_latest_many(contracts=contracts)
        weights_by_symbol: dict[str, dict[str, Decimal]] = {}
        for contract in contracts:
            constituents = [c for c in constituents_ensure_default(contract=contract) if c.enabled]
            weights = {c.venue: c.weight for c in constituents}
            if not weights:
                logger.error("%s has no enabled index constituent; not priced", contract.symbol)
                continue
            source_symbol = constituents[0].source_symbol
            weights_by_symbol[contract.symbol] = weights
            pipeline = PricingPipeline(
                IndexCalculator(weights, cache_ms=int(_setting("MARKETDATA_INDEX_CACHE_MS", 5000))),
                MarkCalculator(tick=contract.tick_size),
                AnomalyDetector(),
            )
            self.feeds[contract.symbol] = _Symbol(
                contract=contract, source_symbol=source_symbol, pipeline=pipeline,
                constituents_version=_version(constituents),
            )
        self.source = self._make_source(latest, now_ms)
        self._restore(latest, now_ms)
        self._lift_checked_at = timezone.now()

    def _reference_price(self, source_symbol: str, latest: dict) -> Decimal:
        """Where the simulation starts: the stored index, else the configured region."""
        for feed in self.feeds.values():
            snap = latest.get(feed.contract.symbol)
            if feed.source_symbol == source_symbol and snap is not None:
                return snap.index_price
        table = {**DEFAULT_SIMULATED_PRICES, **_setting("MARKETDATA_SIMULATED_PRICES", {})}
        if source_symbol not in table:
            raise SystemExit(
                f"no start price for simulated {source_symbol}: publish a price first or set "
                f"MARKETDATA_SIMULATED_PRICES[{source_symbol!r}]"
            )
        return Decimal(str(table[source_symbol]))

    def _make_source(self, latest: dict, now_ms: int) -> PriceSource:
        source_symbols = sorted({f.source_symbol for f in self.feeds.values()})
        venues = sorted({v for f in self.feeds.values() for v in f.pipeline.index.weights})
        if self.source_kind == "simulated":
            specs = []
            for sym in source_symbols:
                start = self._reference_price(sym, latest)
                tick = min(f.contract.tick_size for f in self.feeds.values() if f.source_symbol == sym)
                places = max(0, -tick.normalize().as_tuple().exponent)
                specs.append(SymbolSpec(sym, start, price_places=places, volatility=0.6,
                                        volume_scale=1.0 if start > 10_000 else 5.0))
            venue_specs = [
                VenueSpec(v, weight=Decimal(1), **SIMULATED_VENUES.get(v, {"latency_ms": 150, "noise_bps": 3.0}))
                for v in venues
            ]
            # Open the simulated market a little before now so the first tick has quotes.
            logger.info("simulated venues %s for %s, seed %d", venues, source_symbols, self.seed)
            return SimulatedVenues(specs, venue_specs, seed=self.seed, t0=now_ms - 5_000)
        if self.source_kind == "replay":
            replay = CsvReplay(self.replay_paths)
            if replay.start is None:
                raise SystemExit("the replay files hold no tick")
            self._replay_offset = replay.start - now_ms
            logger.info("replaying %d ticks from %s", len(replay.ticks_loaded), self.replay_paths)
            return replay
        if self.source_kind == "live":
            return LiveVenues(venues, source_symbols)
        raise SystemExit(f"unknown source {self.source_kind!r}; choose simulated, replay or live")

    def _restore(self, latest: dict, now_ms: int) -> None:
        """Seed last index/mark from recent stored samples and re-impose stored pauses."""
        max_age = timedelta(seconds=float(_setting("MARKETDATA_RESTORE_MAX_AGE_SECONDS", 600)))
        now = ms_to_datetime(now_ms)
        for symbol, feed in self.feeds.items():
            snap = latest.get(symbol)
            if snap is None or now - snap.at > max_age or self.source_kind == "replay":
                continue
            at = to_ms(snap.at)
            feed.pipeline.index.seed(symbol, snap.index_price, at=at)
            feed.pipeline.mark.seed(symbol, snap.mark_price, at=at)
            logger.info("%s restored: index %s, mark %s from %s", symbol, snap.index_price, snap.mark_price, snap.at)
        by_id = {f.contract.pk: f for f in self.feeds.values()}
        for contract_id, until in pauses_active(contracts=[f.contract for f in self.feeds.values()]).items():
            feed = by_id[contract_id]
            feed.pipeline.detector.restore_pause(feed.contract.symbol, until=until)
            logger.warning("%s mark updates stay paused until %s", feed.contract.symbol, until.isoformat())

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        process_role_set("pricefeed")
        # One publishing pricefeed (apps.ops.leases): a second one stands by here, and loads
        # its state only once it leads, from what the previous leader stored.
        lease = None
        if self.lease:
            lease = lease_wait("pricefeed", stop=self.stopping)
            if lease is None:
                logger.info("pricefeed stopped while standing by")
                return
        try:
            self._run_leading()
        finally:
            if lease is not None:
                lease.release()

    def _run_leading(self) -> None:
        self.setup()
        logger.info("pricefeed started (pid %d): %s, source %s, every %.3fs",
                    os.getpid(), ",".join(self.feeds), self.source_kind, self.interval)
        next_at = time.monotonic()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                if not self.tick():
                    break
            except Exception:
                logger.exception("pricefeed tick failed; retrying next tick")
                _close_broken_connection()
            TICK_SECONDS.observe(time.monotonic() - started)
            if self.max_ticks is not None and self.ticks >= self.max_ticks:
                break
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind: skip missed ticks rather than bunch them
                next_at = time.monotonic()
                delay = 0
            self.stopping.wait(delay)
        self.shutdown()

    def _stop(self, *_):
        self.stopping.set()

    def shutdown(self) -> None:
        """Store the partial minutes so a restart merges into them."""
        for feed in self.feeds.values():
            try:
                self._flush_minute(feed)
            except Exception:
                logger.exception("minute of %s not stored at shutdown", feed.contract.symbol)
        logger.info("pricefeed stopped after %d ticks", self.ticks)

    def tick(self, *, now: datetime | None = None) -> bool:
        """Price and publish every contract once; False when a replay is exhausted."""
        now = now or timezone.now()
        now_ms = to_ms(now)
        source_ms = now_ms + self._replay_offset
        if isinstance(self.source, CsvReplay) and source_ms - self._replay_lap > self.source.end + 10_000:
            if not self.replay_loop:
                logger.info("replay finished")
                return False
            # The next lap replays the file shifted forward in time, not rewound: the mark's basis
            # series and the anomaly windows only accept time that moves forward.
            self._replay_lap = source_ms - self.source.start
            for feed in self.feeds.values():
                feed.pipeline.index.reset_reference(feed.contract.symbol)
        self._apply_lifts(source_ms)
        self._maybe_reload()
        quotes = self.source.quotes_at(source_ms - self._replay_lap,
                                       symbols=sorted({f.source_symbol for f in self.feeds.values()}))
        if self._replay_lap:
            quotes = [replace(q, timestamp=q.timestamp + self._replay_lap) for q in quotes]
        by_source: dict[str, list[VenueQuote]] = defaultdict(list)
        for q in quotes:
            by_source[q.symbol].append(q)
        contract_prices = self._contract_prices()
        inputs: list[PriceInput] = []
        minutes: list[MinuteInput] = []  # minutes that ended, stored together
        with transaction.atomic():
            for symbol, feed in self.feeds.items():
                own = [replace(q, symbol=symbol) for q in by_source.get(feed.source_symbol, ())]
                item = self._price_one(feed, own, now, source_ms, contract_prices.get(symbol), minutes)
                if item is not None:
                    inputs.append(item)
            if minutes:
                price_minutes_record(minutes=minutes)
            if inputs:
                price_publish_many(prices=inputs)
        for item in inputs:
            PUBLISHED.labels(item.contract.symbol).inc()
        self.ticks += 1
        TICKS.inc()
        self._heartbeat()
        return True

    def _price_one(
        self, feed: _Symbol, quotes: list[VenueQuote], now: datetime, source_ms: int, contract_price: Decimal | None,
        minutes: list[MinuteInput],
    ) -> PriceInput | None:
        symbol = feed.contract.symbol
        started = time.perf_counter()
        update = feed.pipeline.update(symbol, quotes, now=source_ms, contract_price=contract_price)
        # The market data SLA (100 µs p95) is the pricing itself: index, anomaly rules, mark.
        observe_latency(MARKET_DATA, time.perf_counter() - started)
        index, mark = update.index, update.mark
        # Stale index: one event per episode, closed when valid quotes are back.
        if index.status is IndexStatus.FRESH:
            if feed.stale_open:
                anomaly_event_close(contract=feed.contract, kind=AnomalyKind.INDEX_STALE, at=now)
                feed.stale_open = False
            INDEX_STALE.labels(symbol).set(0)
        else:
            INDEX_STALE.labels(symbol).set(1)
            if not feed.stale_open:
                anomaly_event_open(
                    contract=feed.contract, kind=AnomalyKind.INDEX_STALE, at=now,
                    message=f"{symbol} index {index.status.value}: {index.reason}",
                    detail=index.to_audit(),
                )
                feed.stale_open = True
        if update.check is not None:
            for record in update.check.anomalies:
                paused_until = update.state.paused_until
                anomaly_record(
                    contract=feed.contract, record=record,
                    paused_until=None if paused_until is None else self._wall(paused_until, now, source_ms),
                )
                ANOMALIES.labels(symbol, record.type.value, record.severity.value).inc()
        MARK_PAUSED.labels(symbol).set(1 if update.state.paused else 0)
        if index.is_fresh and not update.cached:
            self._collect_minute(feed, index, mark, now, minutes)
        if index.price is None or mark.price is None:
            return None  # nothing trustworthy yet: publish nothing rather than a guess
        if mark.status is MarkStatus.PAUSED:
            status = PriceStatus.PAUSED
        elif index.status is not IndexStatus.FRESH:
            status = PriceStatus.HELD
        elif mark.status is MarkStatus.FALLBACK:
            status = PriceStatus.FALLBACK
        else:
            status = PriceStatus.FRESH
        INDEX_PRICE.labels(symbol).set(float(index.price))
        MARK_PRICE.labels(symbol).set(float(mark.price))
        VALID_VENUES.labels(symbol).set(len(index.used))
        return PriceInput(
            contract=feed.contract, index_price=index.price, mark_price=mark.price, at=now,
            valid_venues=len(index.used), status=status,
        )

    def _wall(self, source_ms: int, now: datetime, now_source_ms: int) -> datetime:
        """A source instant as wall-clock time (they differ during a replay)."""
        return now + timedelta(milliseconds=source_ms - now_source_ms)

    # -- per-minute records -------------------------------------------------------------

    def _collect_minute(self, feed: _Symbol, index, mark, now: datetime, ended: list[MinuteInput]) -> None:
        """Add the tick's quotes to the minute; a minute that ended goes to `ended` (stored by the caller)."""
        minute = now.replace(second=0, microsecond=0)
        bucket = feed.minute
        if bucket.minute is not None and bucket.minute != minute:
            ended.extend(self._detach_minute(feed))
            bucket = feed.minute
        bucket.minute = minute
        bucket.index_price = index.price
        bucket.mark_price = mark.price if mark.price is not None else bucket.mark_price
        for used in index.used:
            bucket.quotes[used.quote.venue][used.quote.timestamp] = used.quote

    def _detach_minute(self, feed: _Symbol) -> list[MinuteInput]:
        """Start a new minute; the one it replaces, as a record to store (none when empty)."""
        bucket = feed.minute
        feed.minute = _MinuteBucket()
        if bucket.minute is None or not bucket.quotes or bucket.mark_price is None:
            return []
        return [MinuteInput(contract=feed.contract, minute=bucket.minute, index_price=bucket.index_price,
                            mark_price=bucket.mark_price, venues=bucket.venues())]

    def _flush_minute(self, feed: _Symbol) -> None:
        minutes = self._detach_minute(feed)
        if minutes:
            price_minutes_record(minutes=minutes)

    # -- ops interaction ----------------------------------------------------------------

    def _apply_lifts(self, source_ms: int) -> None:
        """Resume mark updates of symbols whose pause ops lifted in the admin."""
        since = self._lift_checked_at - timedelta(seconds=5)  # overlap: lifts committed late
        self._lift_checked_at = timezone.now()
        # Ops can only lift a pause in force (price_pause_lift), and every pause in force is
        # in a detector (imposed here, or restored at set-up): with none, no query each tick.
        if not any(f.pipeline.detector.is_paused(f.contract.symbol, now=source_ms) for f in self.feeds.values()):
            return
        by_id = {f.contract.pk: f for f in self.feeds.values()}
        for anomaly in pause_lifts_since(contracts=[f.contract for f in self.feeds.values()], since=since):
            if anomaly.pk in self._lifts_seen:
                continue
            self._lifts_seen.add(anomaly.pk)
            feed = by_id[anomaly.contract_id]
            by = anomaly.lifted_by.get_username() if anomaly.lifted_by else None
            feed.pipeline.detector.lift_pause(feed.contract.symbol, at=source_ms, by=by)
            logger.warning("%s mark pause lifted by %s", feed.contract.symbol, by)

    def _maybe_reload(self) -> None:
        """Pick up listed and delivered contracts and constituent weight edits (checked every 10 s)."""
        if time.monotonic() - self._last_reload < 10:
            return
        self._last_reload = time.monotonic()
        if self._contracts_changed():
            return
        for feed in self.feeds.values():
            rows = list(IndexConstituent.objects.filter(contract=feed.contract))
            version = _version(rows)
            if version == feed.constituents_version:
                continue
            weights = {c.venue: c.weight for c in rows if c.enabled}
            if not weights:
                logger.error("%s: every constituent disabled; keeping the previous weights", feed.contract.symbol)
                continue
            feed.pipeline.index.weights.clear()
            feed.pipeline.index.weights.update(weights)
            feed.constituents_version = version
            logger.warning("%s index weights reloaded: %s", feed.contract.symbol,
                           {k: str(v) for k, v in weights.items()})

    def _contracts_changed(self) -> bool:
        """A contract was listed (the delivery roll) or delivered: set up again, as a restart would.

        Collected minutes are stored first; the new set-up resumes from the stored prices. A
        replay is not set up again (it would start its file over); it keeps its contracts.
        """
        if self.symbols is not None or isinstance(self.source, CsvReplay):
            return False
        current = {c.symbol for c in self.contracts()}
        if not current or current == set(self.feeds):
            return False
        logger.warning("contracts changed (%s → %s): setting the pricing up again",
                       ",".join(sorted(self.feeds)), ",".join(sorted(current)))
        for feed in self.feeds.values():
            self._flush_minute(feed)
        previous, source = dict(self.feeds), self.source
        self.feeds.clear()
        try:
            self.setup()
        except (Exception, SystemExit):  # keep pricing what it priced; the next check tries again
            logger.exception("setting the pricing up again failed; keeping %s", ",".join(sorted(previous)))
            self.feeds, self.source = previous, source
        return True

    def _contract_prices(self) -> dict[str, Decimal]:
        """Recent last-trade prices (from the relay) for the basis; absent means basis 0."""
        symbols = list(self.feeds)
        try:
            raw = get_redis().mget([LAST_TRADE_KEY.format(symbol=s) for s in symbols])
        except Exception:
            return {}
        out = {}
        now_ms = to_ms(timezone.now())
        max_age_ms = int(float(_setting("MARKETDATA_CONTRACT_PRICE_MAX_AGE_SECONDS", 60)) * 1000)
        for symbol, value in zip(symbols, raw, strict=True):
            if value is None:
                continue
            try:
                body = json.loads(value)
                price, at = Decimal(body["p"]), int(body["t"])
            except (ValueError, KeyError, TypeError, ArithmeticError):
                continue
            if price.is_finite() and price > 0 and now_ms - at <= max_age_ms:
                out[symbol] = price
        return out

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < 1.0:
            return
        self._last_heartbeat = now
        try:
            heartbeat_record(HEARTBEAT_NAME)
        except Exception:
            logger.warning("heartbeat not recorded", exc_info=True)


def _version(rows: list[IndexConstituent]) -> tuple:
    return tuple(sorted((c.pk, c.venue, c.source_symbol, str(c.weight), c.enabled) for c in rows))


def _close_broken_connection() -> None:
    try:
        if not connection.is_usable():
            connection.close()
    except Exception:
        connection.close()


__all__ = ["HEARTBEAT_NAME", "LAST_TRADE_KEY", "PriceFeed"]
