"""Readiness probes of the parts a running exchange depends on, and heartbeats.

Each probe returns a dict with `ok` and detail; `/readyz` is ready when all are ok.
Processes record heartbeats in Redis under `ops:heartbeat:<name>` (epoch seconds).
"""
import time

from django.db import connection

from exchange.redis import get_redis

HEARTBEAT_PREFIX = "ops:heartbeat:"
BEAT_MAX_AGE_SECONDS = 60


def heartbeat_record(name: str) -> None:
    get_redis().set(HEARTBEAT_PREFIX + name, f"{time.time():.3f}", ex=3600)


def heartbeat_age(name: str) -> float | None:
    raw = get_redis().get(HEARTBEAT_PREFIX + name)
    return None if raw is None else max(0.0, time.time() - float(raw))


def probe_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any failure means not ready; the message says which
        return {"ok": False, "error": str(exc)[:200]}


def probe_redis() -> dict:
    try:
        get_redis().ping()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}


def probe_beat() -> dict:
    try:
        age = heartbeat_age("beat")
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}
    if age is None:
        return {"ok": False, "error": "no scheduler heartbeat recorded"}
    return {"ok": age <= BEAT_MAX_AGE_SECONDS, "age_seconds": round(age, 1), "max_age_seconds": BEAT_MAX_AGE_SECONDS}


def readiness() -> dict:
    checks = {"database": probe_database(), "redis": probe_redis(), "beat": probe_beat()}
    return {"ready": all(check["ok"] for check in checks.values()), "checks": checks}
