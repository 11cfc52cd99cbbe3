"""Readiness probes of the parts a running exchange depends on, and heartbeats.

Each probe returns a dict with `ok` and detail; `/readyz` is ready when all are ok.
Processes record heartbeats in Redis under `ops:heartbeat:<name>` (epoch seconds):
`beat`, `matcher:<symbol>` (every second from the lease holder) and `pricefeed`.
Beat, each matcher and the pricefeed also say which pid holds their lease (`leader_pid`).
"""
import time

from django.conf import settings

from exchange.redis import get_redis

from .maintenance import autovacuum_on

HEARTBEAT_PREFIX = "ops:heartbeat:"
BEAT_MAX_AGE_SECONDS = 60
MATCHER_LEADER_KEY = "matcher:leader:{symbol}"  # written by apps.trading.matcher


def heartbeat_record(name: str) -> None:
    get_redis().set(HEARTBEAT_PREFIX + name, f"{time.time():.3f}", ex=3600)


def heartbeat_age(name: str) -> float | None:
    raw = get_redis().get(HEARTBEAT_PREFIX + name)
    return None if raw is None else max(0.0, time.time() - float(raw))


def matcher_symbols() -> list[str]:
    """Contracts a matcher must be serving: every one listed and not yet settled."""
    from apps.contracts.models import Contract, ContractStatus

    return list(
        Contract.objects.exclude(status__in=(ContractStatus.PENDING, ContractStatus.SETTLED))
        .order_by("symbol")
        .values_list("symbol", flat=True)
    )


def probe_database() -> dict:
    """Reachable; and whether the server vacuums by itself (informational: without autovacuum
    the exchange still works, slower as the hot tables bloat; the "Autovacuum off" alert says so)."""
    try:
        return {"ok": True, "autovacuum": autovacuum_on()}
    except Exception as exc:  # any failure means not ready; the message says which
        return {"ok": False, "error": str(exc)[:200]}


def probe_redis() -> dict:
    try:
        get_redis().ping()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}


def _heartbeat(name: str, max_age: float) -> dict:
    age = heartbeat_age(name)
    if age is None:
        return {"ok": False, "age_seconds": None, "max_age_seconds": max_age, "error": "no heartbeat recorded"}
    return {"ok": age <= max_age, "age_seconds": round(age, 1), "max_age_seconds": max_age}


def probe_beat() -> dict:
    try:
        age = heartbeat_age("beat")
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}
    leader = _leader_pid("beat")
    if age is None:
        return {"ok": False, "error": "no scheduler heartbeat recorded", "leader_pid": leader}
    return {"ok": age <= BEAT_MAX_AGE_SECONDS, "age_seconds": round(age, 1), "max_age_seconds": BEAT_MAX_AGE_SECONDS,
            "leader_pid": leader}


def _leader_pid(service: str) -> int | None:
    """Pid of the process holding `service`'s lease (apps.ops.leases); None if unknown."""
    from .leases import leader_pid

    try:
        return leader_pid(service)
    except Exception:
        return None


def probe_matchers() -> dict:
    """Heartbeat age of each symbol's matcher, the pid of its lease holder, and whether it takes
    the API's new orders (`takes_orders`: its live mark, apps.trading.handover; without it the
    web places them). Only the heartbeat decides `ok`."""
    from apps.trading.handover import LIVE_KEY  # not at import: apps.trading imports this module

    max_age = settings.OPS_MATCHER_MAX_AGE_SECONDS
    try:
        symbols = matcher_symbols()
        redis = get_redis()
        result = {}
        for symbol in symbols:
            entry = _heartbeat(f"matcher:{symbol}", max_age)
            leader = redis.get(MATCHER_LEADER_KEY.format(symbol=symbol))
            entry["leader_pid"] = int(leader) if leader else None
            entry["takes_orders"] = bool(redis.exists(LIVE_KEY.format(symbol=symbol)))
            result[symbol] = entry
    except Exception as exc:
        return {"ok": False, "error": str(exc)[:200]}
    stale = sorted(symbol for symbol, entry in result.items() if not entry["ok"])
    probe = {"ok": not stale, "max_age_seconds": max_age, "symbols": result}
    if stale:
        probe["error"] = "no fresh heartbeat for " + ", ".join(stale)
    return probe


def probe_pricefeed() -> dict:
    """Freshness of the price service; it decides readiness only when OPS_PRICEFEED_REQUIRED."""
    required = settings.OPS_PRICEFEED_REQUIRED
    try:
        entry = _heartbeat("pricefeed", settings.OPS_PRICEFEED_MAX_AGE_SECONDS)
    except Exception as exc:
        entry = {"ok": False, "error": str(exc)[:200]}
    fresh = entry["ok"]
    return {**entry, "ok": fresh or not required, "fresh": fresh, "required": required,
            "leader_pid": _leader_pid("pricefeed")}


def readiness() -> dict:
    checks = {
        "database": probe_database(),
        "redis": probe_redis(),
        "beat": probe_beat(),
        "matchers": probe_matchers(),
        "pricefeed": probe_pricefeed(),
    }
    return {"ready": all(check["ok"] for check in checks.values()), "checks": checks}
