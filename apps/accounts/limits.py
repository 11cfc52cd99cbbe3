"""Request-weight and order-count limits in fixed one-minute windows, with 429 then 418 bans.

One Lua script, one round trip per request, run before any other work of a request:
 1. a subject (the client IP, the API key) under a ban -> 418 with the time left;
 2. add the request's weight to the IP's and the key's counter for this minute, and one
    to the account's order counter on order endpoints;
 3. a subject over its weight limit -> 429 until the minute ends; one that has already
    been refused API_BAN_AFTER_REFUSALS times this minute and still sends -> a ban of
    API_BAN_BASE_SECONDS doubling with each ban remembered (API_BAN_MEMORY_SECONDS),
    capped at API_BAN_MAX_SECONDS -> 418;
 4. orders over the account limit -> 429 (no ban: the weight limits bound the request rate);
 5. only for an accepted request: SET NX the replay marker of its signature.
Ban deadlines are stored as epoch milliseconds (Redis TTLs only clean up), so the clock
the web processes use (and tests travel) decides.

The same round trip reads the API key's generation (a Redis hash, public key -> counter)
that every change or revocation of the key bumps after commit: a web process that has
the key cached with an older generation loads it again (`api_key_get_active`), so a
revocation or a permission change reaches every web worker with its next request.

The account behind an API key is read inside the script from a Redis hash (public key ->
user id) that key creation and every key lookup from the database fill, and that the
script refills from the process's key cache; only when Redis lost it and no process has
the key cached does a first order count per key instead of per account.
"""
import hashlib
import math
from dataclasses import dataclass

import redis
from django.conf import settings

from exchange.errors import ErrorCode, ExchangeError
from exchange.redis import get_redis

WINDOW_MS = 60_000

OK, WEIGHT_LIMITED, ORDER_LIMITED, BANNED, REPLAYED = 0, 1, 2, 3, 4

# KEYS: 1 user-of-key hash, 2 ip ban, 3 ip refusals, 4 ip ban level, 5 ip weight,
#       6 key ban, 7 key refusals, 8 key ban level, 9 key weight,
#       10 orders (per user, or per key when the user is unknown; suffix added here), 11 replay marker,
#       12 key generations
# ARGV: 1 now ms, 2 window end ms, 3 weight, 4 has key, 5 is order, 6 ip limit, 7 key limit,
#       8 order limit, 9 refusals before ban, 10 ban base s, 11 ban max s, 12 ban memory s,
#       13 replay ttl ms (0: none), 14 api key, 15 window id, 16 user id if known in-process
# Returns {status, used weight, order count, retry after ms, key generation}.
_SCRIPT = """
local now = tonumber(ARGV[1])
local window_left = tonumber(ARGV[2]) - now
local weight = tonumber(ARGV[3])
local has_key = ARGV[4] == '1'
local is_order = ARGV[5] == '1'
local expire_ms = window_left + 5000
local generation = 0
if has_key then generation = tonumber(redis.call('HGET', KEYS[12], ARGV[14]) or '0') end

local function banned_until(ban_key)
  local until_ms = tonumber(redis.call('GET', ban_key) or '0')
  if until_ms > now then return until_ms end
  return 0
end

local function current(key)
  return tonumber(redis.call('GET', key) or '0')
end

local until_ms = banned_until(KEYS[2])
if has_key then until_ms = math.max(until_ms, banned_until(KEYS[6])) end
if until_ms > 0 then
  local used = current(KEYS[5])
  if has_key then used = math.max(used, current(KEYS[9])) end
  return {3, used, 0, until_ms - now, generation}
end

local function add(key, amount)
  local value = redis.call('INCRBY', key, amount)
  if value == amount then redis.call('PEXPIRE', key, expire_ms) end
  return value
end

local used_ip = add(KEYS[5], weight)
local used = used_ip
local used_key = 0
if has_key then
  used_key = add(KEYS[9], weight)
  used = math.max(used, used_key)
end
local orders = 0
if is_order then
  local user = redis.call('HGET', KEYS[1], ARGV[14])
  if not user and ARGV[16] ~= '' then
    user = ARGV[16]
    redis.call('HSET', KEYS[1], ARGV[14], user)
  end
  local order_key
  if user then order_key = KEYS[10] .. 'u:' .. user .. ':' .. ARGV[15]
  else order_key = KEYS[10] .. 'k:' .. ARGV[14] .. ':' .. ARGV[15] end
  orders = add(order_key, 1)
end

local function over(refusals_key, level_key, ban_key)
  local refusals = add(refusals_key, 1)
  if refusals > tonumber(ARGV[9]) then
    local level = redis.call('INCR', level_key)
    redis.call('EXPIRE', level_key, tonumber(ARGV[12]))
    local seconds = math.min(tonumber(ARGV[10]) * 2 ^ (level - 1), tonumber(ARGV[11]))
    local deadline = now + seconds * 1000
    redis.call('SET', ban_key, string.format('%d', deadline), 'PX', seconds * 1000 + 5000)
    return {3, used, orders, seconds * 1000, generation}
  end
  return {1, used, orders, window_left, generation}
end

if used_ip > tonumber(ARGV[6]) then return over(KEYS[3], KEYS[4], KEYS[2]) end
if has_key and used_key > tonumber(ARGV[7]) then return over(KEYS[7], KEYS[8], KEYS[6]) end
if is_order and orders > tonumber(ARGV[8]) then return {2, used, orders, window_left, generation} end

local replay_ttl = tonumber(ARGV[13])
if replay_ttl > 0 then
  if not redis.call('SET', KEYS[11], '1', 'NX', 'PX', replay_ttl) then
    return {4, used, orders, 0, generation}
  end
end
return {0, used, orders, 0, generation}
"""

_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()


def _run_script(keys: list[str], args: list) -> list:
    # EVALSHA straight through execute_command (the Script helper costs more CPU per call
    # than the round trip's own packing); the script is loaded on first use and after a
    # Redis restart.
    client = get_redis()
    try:
        return client.execute_command("EVALSHA", _SCRIPT_SHA, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        client.script_load(_SCRIPT)
        return client.execute_command("EVALSHA", _SCRIPT_SHA, len(keys), *keys, *args)


@dataclass(frozen=True)
class Verdict:
    status: int
    used_weight: int
    order_count: int
    retry_after_ms: int
    key_generation: int = 0  # of the request's API key (0: never changed, or no key)

    @property
    def retry_after_seconds(self) -> int:
        return max(1, math.ceil(self.retry_after_ms / 1000))


def key_user_hash() -> str:
    return settings.API_REDIS_PREFIX + "keyuser"


def key_generation_hash() -> str:
    return settings.API_REDIS_PREFIX + "keygen"


def check(
    *, now_ms: int, ip: str, api_key: str | None, weight: int, is_order: bool, replay_signature: str | None = None,
    replay_ttl_ms: int = 0, user_id_hint: int | None = None,
) -> Verdict:
    """Count this request against the limits (one round trip) and say whether it may proceed."""
    s = settings
    p = s.API_REDIS_PREFIX
    window = now_ms // WINDOW_MS
    window_end = (window + 1) * WINDOW_MS
    key = api_key or ""
    keys = [
        key_user_hash(),
        f"{p}ban:ip:{ip}", f"{p}ref:ip:{ip}:{window}", f"{p}lvl:ip:{ip}", f"{p}w:ip:{ip}:{window}",
        f"{p}ban:k:{key}", f"{p}ref:k:{key}:{window}", f"{p}lvl:k:{key}", f"{p}w:k:{key}:{window}",
        f"{p}o:",
        f"{p}rp:{replay_signature or ''}",
        key_generation_hash(),
    ]
    args = [
        now_ms, window_end, weight, 1 if api_key else 0, 1 if is_order else 0,
        s.API_IP_WEIGHT_LIMIT_1M, s.API_KEY_WEIGHT_LIMIT_1M, s.API_ACCOUNT_ORDER_LIMIT_1M,
        s.API_BAN_AFTER_REFUSALS, s.API_BAN_BASE_SECONDS, s.API_BAN_MAX_SECONDS, s.API_BAN_MEMORY_SECONDS,
        replay_ttl_ms if replay_signature else 0, key, window, user_id_hint or "",
    ]
    try:
        status, used, orders, retry_ms, generation = _run_script(keys, args)
    except redis.RedisError as exc:
        # Fail closed: without the limiter (and the replay guard) nothing is served.
        raise ExchangeError(
            "Internal error; unable to process your request. Please try again.",
            code=ErrorCode.DISCONNECTED, http_status=503,
        ) from exc
    return Verdict(int(status), int(used), int(orders), int(retry_ms), int(generation))


def key_user_remember(*, api_key: str, user_id: int) -> None:
    get_redis().hset(key_user_hash(), api_key, user_id)


def key_user_forget(*, api_key: str) -> None:
    get_redis().hdel(key_user_hash(), api_key)


def key_generation_bump(*, api_key: str) -> None:
    """Tell every web process that the key changed (they reload it on its next request)."""
    get_redis().hincrby(key_generation_hash(), api_key, 1)
