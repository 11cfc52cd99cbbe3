"""The matcher worker: leases, the batch loop, heartbeats and metrics.

One process serves a group of symbols. For each it holds a lease — a session-level
PostgreSQL advisory lock, released by the server when the process or its connection
dies — so exactly one matcher writes a symbol's book, orders, trades and positions.
A second process for the same symbols waits as a standby, retrying the locks, and
takes over within a poll interval of the leader's death: it rebuilds the book from
the database and continues with the pending commands.

Metrics (its own `/metrics`, `--metrics-port`, 9101 in the Procfile): commands and
trades per symbol, batch time, order processing latency per command
(`exchange_operation_latency_seconds{operation="order_processing"}`, whose p95 the
latency publisher of apps.ops.metrics writes to Redis for the alert rules), and every
5 s the book's depth per symbol, plus a point per symbol for the ops dashboard
(`ops:series:matcher:<symbol>`: orders/s, trades/s, batch p95).
"""
import logging
import os
import signal
import time

from django.conf import settings
from django.db import connection
from prometheus_client import Counter, Gauge, Histogram

from apps.contracts.models import Contract, ContractStatus
from apps.ops.health import heartbeat_record
from apps.ops.metrics import (
    ORDER_PROCESSING,
    HistogramWindow,
    histogram_quantile,
    observe_latency,
    process_role_set,
    series_append,
)
from exchange.redis import get_redis

from . import handover
from .doorbell import CHANNEL as DOORBELL_CHANNEL
from .engine import SymbolEngine
from .matching import batch_process
from .models import CommandStatus, OrderCommand
from .quarantine import command_quarantine

logger = logging.getLogger(__name__)
LEASE_NAMESPACE = 0x4D41  # "MA": first key of the two-int advisory lock
HEARTBEAT_EVERY = 1.0
LEASE_RETRY_SECONDS = 0.5
LEADER_KEY = "matcher:leader:{symbol}"
# Failed batches before matching one command at a time, and (twice as many) before the
# command that still fails alone is quarantined.
POISON_AFTER = 3  # OS pid of the lease holder, for ops and tests

COMMANDS = Counter("matcher_commands_total", "Journal commands processed", ["symbol"])
TRADES = Counter("matcher_trades_total", "Trades produced", ["symbol"])
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCH_SECONDS = Histogram("matcher_batch_seconds", "Time to match and book one batch", ["symbol"], buckets=_SECONDS)
# The other half of the matcher's loop: with the batches, what an operator needs to see where
# its time goes (and how long a handed-over order waits at most for its turn).
ENTRY_SECONDS = Histogram("matcher_entry_seconds", "Time to place and answer one contract's handed-over orders",
                          ["symbol"], buckets=_SECONDS)
LEASES = Gauge("matcher_leases_held", "Symbols whose lease this process holds")
BOOK_ORDERS = Gauge("matcher_book_orders", "Resting orders in the book", ["symbol"])
BOOK_LEVELS = Gauge("matcher_book_levels", "Price levels in the book (top 1000 counted)", ["symbol", "side"])
BOOK_DEPTH = Gauge("matcher_book_depth_quantity", "Resting quantity on the top 20 levels", ["symbol", "side"])
BOOK_BEST = Gauge("matcher_book_best_price", "Best bid / ask price (NaN when the side is empty)", ["symbol", "side"])
SAMPLE_EVERY = 5.0  # seconds between book-depth gauges and dashboard points


def lease_try(contract_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LEASE_NAMESPACE, contract_id])
        return bool(cursor.fetchone()[0])


class Matcher:
    def __init__(self, symbols: list[str] | None, *, batch_size: int = 2000, poll_seconds: float = 0.2):
        self.symbols = symbols
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.engines: dict[str, SymbolEngine] = {}
        self.stopping = False
        self._last_heartbeat = 0.0
        self._last_lease_attempt = -LEASE_RETRY_SECONDS
        self._last_sample = time.monotonic()
        self._failures: dict[str, int] = {}  # consecutive failed batches per symbol
        self._batch_window = HistogramWindow(BATCH_SECONDS, SAMPLE_EVERY)
        self._counted: dict[str, list[float]] = {}  # symbol → [commands, trades] since the last sample

    def contracts(self) -> list[Contract]:
        """The group's contracts; with no explicit symbols, every contract that is not settled."""
        rows = Contract.objects.select_related("settle_asset")
        if self.symbols is None:
            return list(rows.exclude(status__in=(ContractStatus.SETTLED, ContractStatus.PENDING)))
        found = list(rows.filter(symbol__in=self.symbols))
        missing = set(self.symbols) - {c.symbol for c in found}
        if missing:
            raise SystemExit(f"unknown symbol(s): {', '.join(sorted(missing))}")
        return found

    def acquire_leases(self) -> None:
        for contract in self.contracts():
            if contract.symbol in self.engines or contract.status == ContractStatus.SETTLED \
                    or not lease_try(contract.pk):
                continue
            engine = SymbolEngine(contract)
            resting = engine.rebuild()
            self.engines[contract.symbol] = engine
            self._announce_leader(contract.symbol)
            self._serving([contract.symbol])
            logger.info("lease on %s acquired; book rebuilt with %d resting orders", contract.symbol, resting)
        LEASES.set(len(self.engines))

    def step(self) -> int:
        """Place the orders handed over by the web (`apps.trading.handover`), then process one
        batch per held symbol; returns the number of requests and commands processed."""
        processed = self._serve_handed()
        for symbol, engine in self.engines.items():
            # After a failed batch, one command per batch until one succeeds: a command that
            # keeps failing on its own is a poison command and is set aside.
            single = self._failures.get(symbol, 0) >= POISON_AFTER
            try:
                result = batch_process(engine, limit=1 if single else self.batch_size)
            except Exception as exc:
                logger.exception("batch for %s failed; its transaction rolled back", symbol)
                self._recover(engine)
                if symbol in self.engines:
                    self._failed(symbol, single, exc)
                return processed
            self._failures.pop(symbol, None)
            if result is None:
                continue
            processed += result.commands
            COMMANDS.labels(symbol).inc(result.commands)
            TRADES.labels(symbol).inc(len(result.trades))
            BATCH_SECONDS.labels(symbol).observe(result.seconds)
            # Per command: the batch's time spread over its commands (they are matched
            # and booked together, in one transaction).
            if result.commands:  # none: a batch that only took close-only's opening orders out
                observe_latency(ORDER_PROCESSING, result.seconds / result.commands, count=result.commands)
            counted = self._counted.setdefault(symbol, [0, 0])
            counted[0] += result.commands
            counted[1] += len(result.trades)
        return processed

    def _serve_handed(self) -> int:
        """Every held contract's queued orders, placed (one transaction per contract) and answered
        before its batch matches them. A failure here leaves them unanswered: their clients get
        -1007 (status unknown), and what committed is matched as any journal command."""
        if not self.engines:
            return 0
        try:
            taken = handover.take(self.engines, self.batch_size)
        except Exception:
            logger.warning("handed-over orders not read", exc_info=True)
            return 0
        served = 0
        for symbol, messages in taken.items():
            started = time.perf_counter()
            try:
                served += handover.serve(self.engines[symbol].contract, messages)
            except Exception:
                logger.exception("handed-over orders for %s not placed or not answered", symbol)
            ENTRY_SECONDS.labels(symbol).observe(time.perf_counter() - started)
        return served

    def _serving(self, symbols) -> None:
        try:
            handover.announce(symbols)
        except Exception:
            logger.warning("order handover not announced", exc_info=True)

    def _not_serving(self, symbols) -> None:
        try:
            handover.retract(symbols)
        except Exception:
            logger.warning("order handover not retracted (it lapses by itself)", exc_info=True)

    def _failed(self, symbol: str, single: bool, exc: Exception) -> None:
        failures = self._failures.get(symbol, 0) + 1
        self._failures[symbol] = failures
        if single and failures >= 2 * POISON_AFTER:
            seq = pending_head(self.engines[symbol].contract)
            if seq is not None and command_quarantine(seq=seq, error=f"{type(exc).__name__}: {exc}"):
                self._failures[symbol] = POISON_AFTER  # stay careful for the next command

    def _recover(self, engine: SymbolEngine) -> None:
        """After a failed batch: rebuild the book from the database, or give up every lease.

        The leases are session-level advisory locks on this connection. If it is broken,
        they are gone (a standby may already hold them), so this process must drop its
        books and compete for the leases again, never keep matching on a lost lease.
        """
        try:
            if connection.is_usable():
                engine.rebuild()
                return
        except Exception:
            logger.exception("rebuild of %s failed", engine.contract.symbol)
        logger.error("database connection lost: dropping all leases and books")
        self._not_serving(list(self.engines))
        connection.close()
        self.engines.clear()
        LEASES.set(0)

    def retire_settled(self) -> None:
        """Drop the books of contracts that have been delivered and give their leases back.

        Settlement expires every resting order in the database, so the book would only hold
        stale orders (the batch refuses new ones once the contract is no longer matching).
        """
        if not self.engines:
            return
        try:
            ids = {engine.contract.pk: symbol for symbol, engine in self.engines.items()}
            settled = Contract.objects.filter(pk__in=ids, status=ContractStatus.SETTLED).values_list("pk", flat=True)
            for contract_id in settled:
                symbol = ids[contract_id]
                self._not_serving([symbol])
                del self.engines[symbol]
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LEASE_NAMESPACE, contract_id])
                logger.info("%s is settled: book dropped, lease released", symbol)
        except Exception:
            logger.warning("checking for settled contracts failed", exc_info=True)
        LEASES.set(len(self.engines))

    def _announce_leader(self, symbol: str) -> None:
        try:
            get_redis().set(LEADER_KEY.format(symbol=symbol), os.getpid())
        except Exception:
            logger.warning("leader key for %s not written", symbol, exc_info=True)

    def heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_EVERY:
            return
        self._last_heartbeat = now
        self.retire_settled()
        try:
            for symbol in self.engines:
                heartbeat_record(f"matcher:{symbol}")
        except Exception:
            logger.warning("heartbeat not recorded", exc_info=True)
        self._serving(list(self.engines))
        if now - self._last_sample >= SAMPLE_EVERY:
            self.sample(elapsed=now - self._last_sample)
            self._last_sample = now

    def sample(self, *, elapsed: float) -> None:
        """Book depth gauges and one dashboard point per held symbol (main thread: the
        C book is only touched between batches)."""
        batches = self._batch_window.advance()
        t = round(time.time(), 3)
        points = {}
        for symbol, engine in self.engines.items():
            grid, book = engine.grid, engine.book
            BOOK_ORDERS.labels(symbol).set(book.order_count)
            bids, asks = book.depth(1000)
            for side, levels, best in (("bid", bids, book.best_bid()), ("ask", asks, book.best_ask())):
                BOOK_LEVELS.labels(symbol, side).set(len(levels))
                BOOK_DEPTH.labels(symbol, side).set(float(grid.quantity(sum(lots for _, lots, _ in levels[:20]))))
                BOOK_BEST.labels(symbol, side).set(float(grid.price(best)) if best is not None else float("nan"))
            commands, trades = self._counted.pop(symbol, (0, 0))
            p95 = histogram_quantile(0.95, batches.get((symbol,), []))
            points[symbol] = {
                "t": t, "orders_per_s": round(commands / elapsed, 3), "trades_per_s": round(trades / elapsed, 3),
                "batch_p95_ms": None if p95 is None else round(p95 * 1000, 3),
            }
        try:
            for symbol, point in points.items():
                series_append(f"matcher:{symbol}", point)
        except Exception:
            logger.warning("dashboard points not recorded", exc_info=True)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        process_role_set("matcher")
        pubsub = self._subscribe()
        logger.info("matcher for %s started (pid %d)", ",".join(self.symbols or ["all contracts"]), os.getpid())
        while not self.stopping:
            if self.symbols is None or len(self.engines) < len(self.symbols):
                self._maybe_acquire()
            processed = self.step() if self.engines else 0
            self.heartbeat()
            if processed == 0:
                self._wait(pubsub)
        # Orders stop coming; those already queued are placed and answered (the book and the
        # journal keep them for the next leader), the rest time out at the web as unknown.
        self._not_serving(list(self.engines))
        self._serve_handed()
        logger.info("matcher stopping")

    def _maybe_acquire(self) -> None:
        now = time.monotonic()
        if now - self._last_lease_attempt >= LEASE_RETRY_SECONDS:
            self._last_lease_attempt = now
            self.acquire_leases()

    def _stop(self, *_):
        self.stopping = True

    def _subscribe(self):
        try:
            pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(DOORBELL_CHANNEL)
            return pubsub
        except Exception:
            logger.warning("doorbell unavailable; polling only", exc_info=True)
            return None

    def _wait(self, pubsub) -> None:
        if pubsub is None:
            time.sleep(self.poll_seconds)
            return
        try:
            ring = pubsub.get_message(timeout=self.poll_seconds)
            # One batch answers every ring already here (each web request handed over and each
            # commit rings): taking them one per wake made ~5 polls per batch, 4 of them empty.
            while ring is not None:
                ring = pubsub.get_message(timeout=0)
        except Exception:
            time.sleep(self.poll_seconds)


def pending_head(contract) -> int | None:
    """Sequence number of the contract's first pending command (the one a batch of 1 takes)."""
    return (OrderCommand.objects.filter(contract=contract, status=CommandStatus.PENDING)
            .order_by("seq").values_list("seq", flat=True).first())


def pin_cpu() -> None:
    """Optional (MATCHER_CPU): pin this single-threaded process to one core."""
    cpu = settings.MATCHER_CPU
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
        logger.info("matcher pinned to CPU %s", cpu)
