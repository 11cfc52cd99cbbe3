"""Reads of client access: the active API key behind a public key, a listen key's user.

`api_key_get_active` is on the hot path of every keyed request. It keeps the key (with
its user and decrypted secret) in process memory for `API_KEY_CACHE_SECONDS`, so a busy
key costs one dict lookup instead of a query and a decryption. A change or revocation
evicts it at once in this process; the request path of every other process passes the
key's generation, which the rate limiter's round trip reads from Redis anyway, and a
cached copy of an older generation is loaded again, so the change reaches every web
worker with its next request (within `API_KEY_CACHE_SECONDS` if Redis lost the bump).
"""
import ipaddress
import time
from dataclasses import dataclass

from django.conf import settings

from exchange.redis import get_redis

from .crypto import decrypt_secret
from .limits import key_user_remember
from .models import ApiKey

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class ActiveKey:
    """An active API key as the auth path needs it (immutable, shared across threads)."""

    api_key: ApiKey  # with .user loaded
    secret: bytes  # plaintext HMAC secret
    networks: tuple[IPNetwork, ...]  # empty: any address

    def allows_ip(self, ip: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


# public key -> (loaded at, expires at, ActiveKey, generation); only active keys are cached.
_cache: dict[str, tuple[float, float, ActiveKey, int | None]] = {}


def parse_ip_allowlist(entries) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip())


def api_key_cache_evict(key: str) -> None:
    _cache.pop(key, None)


def api_key_cache_clear() -> None:
    _cache.clear()


def api_key_cached_user_id(key: str) -> int | None:
    """The user id of a key this process has cached (no I/O; may be a few seconds stale)."""
    hit = _cache.get(key)
    return hit[2].api_key.user_id if hit is not None else None


def api_key_get_active(*, key: str, generation: int | None = None) -> ActiveKey | None:
    """The active (not revoked, user active) key with this public key, or None.

    `generation`: the key's current generation (`limits.Verdict.key_generation`, read
    before this call); a cached copy of another generation is not used.
    """
    now = time.time()
    hit = _cache.get(key)
    if hit is not None:
        loaded_at, expires_at, active, cached_generation = hit
        if loaded_at <= now < expires_at and (generation is None or generation == cached_generation):
            return active
        _cache.pop(key, None)
    api_key = ApiKey.objects.select_related("user").filter(key=key, revoked_at__isnull=True).first()
    if api_key is None or not api_key.user.is_active:
        return None
    # Fill the rate limiter's public key -> account map (lost if Redis was flushed).
    key_user_remember(api_key=key, user_id=api_key.user_id)
    active = ActiveKey(
        api_key=api_key,
        secret=decrypt_secret(api_key.secret_encrypted).encode(),
        networks=parse_ip_allowlist(api_key.ip_allowlist),
    )
    if len(_cache) >= _CACHE_MAX_ENTRIES:
        _cache.clear()
    _cache[key] = (now, now + settings.API_KEY_CACHE_SECONDS, active, generation)
    return active


def api_keys_of_user(*, user) -> list[ApiKey]:
    return list(ApiKey.objects.filter(user=user).order_by("revoked_at", "-created_at", "-pk"))


def listen_key_redis_key(listen_key: str) -> str:
    return f"{settings.API_REDIS_PREFIX}lk:{listen_key}"


def listen_key_of_user_redis_key(user_id: int) -> str:
    return f"{settings.API_REDIS_PREFIX}lku:{user_id}"


def user_may_stream(user_id: int) -> bool:
    """Whether the user is active and still holds an active (not revoked) API key (one query)."""
    return ApiKey.objects.filter(user_id=user_id, user__is_active=True, revoked_at__isnull=True).exists()


def listen_key_user_id(listen_key: str) -> int | None:
    """The user id a valid (not expired, not closed) listen key belongs to, else None.

    Valid also means its user may still use the API: active, with an active API key. A
    deactivated user (or one whose keys are all revoked) loses the stream at the next
    check even though the key is still in Redis; the stream consumer re-checks its keys
    every `LISTEN_KEY_CHECK_SECONDS`."""
    if not listen_key or len(listen_key) > 128:
        return None
    raw = get_redis().get(listen_key_redis_key(listen_key))
    if raw is None:
        return None
    user_id = int(raw)
    return user_id if user_may_stream(user_id) else None
