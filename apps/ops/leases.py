"""Leader leases for singleton processes: one active Celery beat even when two run.

Like the matcher's per-symbol lease, a lease is a session-level PostgreSQL advisory
lock, held on a connection of its own: the server releases it when the process or
its connection dies, so a standby waiting in `lease_wait` takes over within one poll
interval (1 s; the seed's failover timeouts are 10–30 s). A leader that loses its
lease connection while alive stops itself (SIGTERM) rather than keep scheduling next
to the standby that is taking over; the supervisor restarts it, as a standby.

Beat waits for its lease in the `beat_init` signal (apps.ops.celery_metrics), after
its exporter is up, so a standby shows `exchange_leader{service="beat"} 0` on its
/metrics; the leader's pid is in Redis `ops:leader:beat` (shown by /readyz).
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
LEASE_KEYS = {"beat": 1}
LEADER_KEY = "ops:leader:{service}"
POLL_SECONDS = 1.0
WATCH_SECONDS = 2.0

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

    def wait(self, *, poll: float = POLL_SECONDS) -> None:
        """Block until this process holds the lease; then watch the lease connection."""
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
            time.sleep(poll)
        LEADER.labels(self.service).set(1)
        try:
            get_redis().set(LEADER_KEY.format(service=self.service), os.getpid())
        except Exception:
            logger.warning("leader key for %s not written", self.service, exc_info=True)
        logger.info("%s lease acquired (pid %d)", self.service, os.getpid())
        threading.Thread(target=self._watch, name=f"{self.service}-lease", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopping.wait(WATCH_SECONDS):
            try:
                self.conn.execute("SELECT 1")
            except psycopg.Error:
                logger.critical("%s lease connection lost: stopping so that one leader remains", self.service)
                LEADER.labels(self.service).set(0)
                os.kill(os.getpid(), signal.SIGTERM)
                return


def beat_lease_wait() -> Lease | None:
    """Called as beat starts: returns once this beat may schedule (None: leases off)."""
    if not getattr(settings, "OPS_BEAT_LEASE", True):
        return None
    lease = Lease("beat")
    lease.wait()
    return lease
