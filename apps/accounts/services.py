"""Writes of client access: creating and revoking API keys, listen-key lifecycle.

API keys: a 64-character public key and a 64-character secret, both from `secrets`;
the secret is encrypted with the server key (crypto.py) before it touches the database
and returned in plaintext exactly once, by `api_key_create`.

Listen keys (user data stream) live in Redis with a TTL: `lk:<listenKey>` -> user id and
`lku:<user id>` -> listenKey, so a user has at most one active listen key, and a POST
while one is active returns it and extends it (as the reference exchange does).
"""
import ipaddress
import secrets
import string
import time

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from exchange.errors import ErrorCode, ExchangeError
from exchange.redis import get_redis

from .crypto import encrypt_secret
from .limits import key_generation_bump, key_user_forget, key_user_remember
from .models import API_KEY_LENGTH, ApiKey
from .selectors import api_key_cache_evict, listen_key_of_user_redis_key, listen_key_redis_key

_ALPHABET = string.ascii_letters + string.digits
LISTEN_KEY_LENGTH = 64
# API key id -> when this process last wrote its last_used_at.
_last_touch: dict[int, float] = {}


class InvalidIpAllowList(ExchangeError):
    code = ErrorCode.INVALID_PARAMETER


def random_token(length: int = API_KEY_LENGTH) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def normalize_ip_allowlist(entries) -> list[str]:
    """Validate IPs/CIDRs (strings, or one comma-separated string); return canonical forms."""
    if isinstance(entries, str):
        entries = entries.replace("\n", ",").split(",")
    out = []
    for entry in entries or ():
        entry = entry.strip()
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise InvalidIpAllowList(f"Not an IP address or CIDR network: {entry!r}.") from exc
        text = str(network.network_address) if network.num_addresses == 1 else str(network)
        if text not in out:
            out.append(text)
    return out


def api_key_create(*, user, label: str = "", can_trade: bool = False, ip_allowlist=()) -> tuple[ApiKey, str]:
    """Create an API key; returns it and the plaintext secret (shown to the user once)."""
    secret = random_token()
    api_key = ApiKey.objects.create(
        user=user,
        label=label.strip(),
        key=random_token(),
        secret_encrypted=encrypt_secret(secret),
        can_trade=can_trade,
        ip_allowlist=normalize_ip_allowlist(ip_allowlist),
    )
    # The limiter's key -> account map; a key whose row is rolled back maps nowhere harmful.
    key_user_remember(api_key=api_key.key, user_id=user.pk)
    return api_key, secret


def api_key_update(*, api_key: ApiKey, label: str, can_trade: bool, ip_allowlist) -> ApiKey:
    api_key.label = label.strip()
    api_key.can_trade = can_trade
    api_key.ip_allowlist = normalize_ip_allowlist(ip_allowlist)
    api_key.save(update_fields=["label", "can_trade", "ip_allowlist"])
    # Now (this process) and after commit (so a concurrent lookup cannot re-cache the old
    # row); the generation bump makes the other processes load it again.
    api_key_cache_evict(api_key.key)
    transaction.on_commit(lambda: (api_key_cache_evict(api_key.key), key_generation_bump(api_key=api_key.key)))
    return api_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    """Revoke a key for good (idempotent). Other web processes drop it on its next request
    (the generation bump), or within API_KEY_CACHE_SECONDS if Redis lost the bump."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(revoked_at=api_key.revoked_at)
    api_key_cache_evict(api_key.key)
    transaction.on_commit(lambda: (api_key_cache_evict(api_key.key), key_user_forget(api_key=api_key.key),
                                   key_generation_bump(api_key=api_key.key), _listen_key_close_if_keyless(api_key)))
    return api_key


def _listen_key_close_if_keyless(api_key: ApiKey) -> None:
    """After a revocation commits: the user's last active key gone, their listen key (the
    user data stream) is closed too. Judged at commit, so a key rotated in one transaction
    (revoke the old, create the new) keeps the stream."""
    if not ApiKey.objects.filter(user_id=api_key.user_id, revoked_at__isnull=True).exists():
        listen_key_close(user=api_key.user)


def api_key_touch(*, api_key: ApiKey) -> None:
    """Record use, at most once per API_KEY_LAST_USED_RESOLUTION_SECONDS per key and process."""
    now = time.time()
    last = _last_touch.get(api_key.pk)
    if last is not None and last <= now < last + settings.API_KEY_LAST_USED_RESOLUTION_SECONDS:
        return
    _last_touch[api_key.pk] = now
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=timezone.now())


def listen_key_start(*, user) -> str:
    """The user's active listen key, extended; a new one when there is none."""
    redis = get_redis()
    ttl = settings.LISTEN_KEY_TTL_SECONDS
    user_key = listen_key_of_user_redis_key(user.pk)
    candidate = random_token(LISTEN_KEY_LENGTH)
    # Claim the user's slot for a new key unless a key is there already (two racing
    # POSTs get the same key).
    pipe = redis.pipeline(transaction=False)
    pipe.set(user_key, candidate, nx=True, ex=ttl)
    pipe.get(user_key)
    _, current = pipe.execute()
    listen_key = current.decode() if current is not None else candidate
    pipe = redis.pipeline(transaction=True)
    pipe.set(listen_key_redis_key(listen_key), user.pk, ex=ttl)
    pipe.expire(user_key, ttl)
    pipe.execute()
    return listen_key


def listen_key_keepalive(*, user, listen_key: str | None = None) -> str:
    """Extend the user's listen key to a full validity again; -1125 if it is not alive."""
    redis = get_redis()
    ttl = settings.LISTEN_KEY_TTL_SECONDS
    user_key = listen_key_of_user_redis_key(user.pk)
    current = redis.get(user_key)
    current = current.decode() if current is not None else None
    if current is None or (listen_key and listen_key != current):
        raise ExchangeError("This listenKey does not exist.", code=ErrorCode.INVALID_LISTEN_KEY)
    pipe = redis.pipeline(transaction=True)
    pipe.expire(listen_key_redis_key(current), ttl)
    pipe.expire(user_key, ttl)
    alive, _ = pipe.execute()
    if not alive:
        redis.delete(user_key)
        raise ExchangeError("This listenKey does not exist.", code=ErrorCode.INVALID_LISTEN_KEY)
    return current


def listen_key_close(*, user, listen_key: str | None = None) -> None:
    """Close the user's listen key (idempotent); a key of another user is refused."""
    redis = get_redis()
    user_key = listen_key_of_user_redis_key(user.pk)
    current = redis.get(user_key)
    current = current.decode() if current is not None else None
    if listen_key and listen_key != current:
        raise ExchangeError("This listenKey does not exist.", code=ErrorCode.INVALID_LISTEN_KEY)
    if current is not None:
        redis.delete(listen_key_redis_key(current), user_key)
