"""Leader leases for singleton processes: one active Celery beat and one publishing
pricefeed, even when two of each run.

Like the matcher's per-symbol lease, a lease is a session-level PostgreSQL advisory
lock, held on a connection of its own: the server releases it when the process or
its connection dies, so a standby waiting in `lease_wait` takes over within one poll
interval (1 s; the seed's failover timeouts are 10–30 s). A leader that loses its
lease connection while alive stops itself (SIGTERM) rather than keep scheduling next
to the standby that is taking over; the supervisor restarts it, as a standby.

Beat waits for its lease in the `beat_init` signal (apps.ops.celery_metrics), after
its exporter is up, so a standby shows `exchange_leader{service="beat"} 0` on its
/metrics; the pricefeed waits in `PriceFeed.run` before it loads anything (it restores
from what the leader stored when it takes over). The leader's pid is in Redis
`ops:leader:<service>`, refreshed by the watch thread with a short expiry so a dead
leader's pid does not linger; /readyz shows it (`leader_pid`).
"""
import logging
import os
import signal
import threading
import time

import psycopg
from django.conf import settings
from prometheus_client import Gauge

from exchange.redis import get_redis

logger = logging.getLogger(__name__)

LEASE_NAMESPACE = 0x4F50  # "OP": first key of the two-int advisory lock (the matcher's is 0x4D41)
LEASE_KEYS = {"beat": 1, "pricefeed": 2}
LEADER_KEY = "ops:leader:{service}"
POLL_SECONDS = 1.0
WATCH_SECONDS = 2.0
LEADER_KEY_TTL_SECONDS = 10  # > WATCH_SECONDS: refreshed while the leader lives

LEADER = Gauge("exchange_leader", "1 while this process holds its service's lease, 0 while standby", ["service"])


def _connect() -> psycopg.Connection:
    db = settings.DATABASES["default"]
    return psycopg.connect(
        dbname=db["NAME"], user=db.get("USER") or None, password=db.get("PASSWORD") or None,
        host=db.get("HOST") or None, port=db.get("PORT") or None, autocommit=True,
        application_name=f"lease-{os.getpid()}",
    )


class Lease:
    def __init__(self, service: str):
        self.service = service
        self.key = LEASE_KEYS[service]
        self.conn: psycopg.Connection | None = None
        self.stopping = threading.Event()

    def try_acquire(self) -> bool:
        if self.conn is None or self.conn.closed:
            self.conn = _connect()
        row = self.conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LEASE_NAMESPACE, self.key)).fetchone()
        return bool(row[0])

    def wait(self, *, poll: float = POLL_SECONDS, stop: threading.Event | None = None) -> bool:
        """Block until this process holds the lease, then watch the lease connection.

        Returns False, without the lease, when `stop` is set while standing by.
        """
        LEADER.labels(self.service).set(0)
        announced = False
        while True:
            try:
                if self.try_acquire():
                    break
            except psycopg.Error:
                logger.warning("%s lease: database unavailable, retrying", self.service, exc_info=True)
                self.conn = None
            if not announced:
                logger.info("%s lease held by another process; standing by (pid %d)", self.service, os.getpid())
                announced = True
            if stop is not None:
                if stop.wait(poll):
                    return False
            else:
                time.sleep(poll)
        LEADER.labels(self.service).set(1)
        self._announce()
        logger.info("%s lease acquired (pid %d)", self.service, os.getpid())
        threading.Thread(target=self._watch, name=f"{self.service}-lease", daemon=True).start()
        return True

    def _announce(self) -> None:
        try:
            get_redis().set(LEADER_KEY.format(service=self.service), os.getpid(), ex=LEADER_KEY_TTL_SECONDS)
        except Exception:
            logger.warning("leader key for %s not written", self.service, exc_info=True)

    def _watch(self) -> None:
        while not self.stopping.wait(WATCH_SECONDS):
            conn = self.conn
            if conn is None:  # released (a clean stop) just as the wait returned
                return
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                if self.stopping.is_set():
                    return
                logger.critical("%s lease connection lost: stopping so that one leader remains", self.service)
                LEADER.labels(self.service).set(0)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self._announce()

    def release(self) -> None:
        """Give the lease up at a clean stop, so a standby takes over at its next poll."""
        self.stopping.set()
        LEADER.labels(self.service).set(0)
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            conn.close()  # ends the session, and with it the advisory lock
        try:  # (a standby that took over in between re-announces at its next watch round)
            redis = get_redis()
            key = LEADER_KEY.format(service=self.service)
            if redis.get(key) in (str(os.getpid()).encode(), str(os.getpid())):
                redis.delete(key)
        except Exception:
            logger.warning("leader key for %s not cleared", self.service, exc_info=True)
        logger.info("%s lease released (pid %d)", self.service, os.getpid())


def leader_pid(service: str) -> int | None:
    """Pid of the process holding `service`'s lease, as it last announced (None: nobody)."""
    raw = get_redis().get(LEADER_KEY.format(service=service))
    return int(raw) if raw else None


def lease_wait(service: str, *, stop: threading.Event | None = None) -> Lease | None:
    """Block until this process leads `service`; None when `stop` was set while waiting."""
    lease = Lease(service)
    return lease if lease.wait(stop=stop) else None


def beat_lease_wait() -> Lease | None:
    """Called as beat starts: returns once this beat may schedule (None: leases off)."""
    if not getattr(settings, "OPS_BEAT_LEASE", True):
        return None
    return lease_wait("beat")
