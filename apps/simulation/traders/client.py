"""A small asynchronous client of the exchange's REST API, signed as Binance clients sign.

`RestClient.call(method, path, params, weight=..., security=...)` sends every parameter
in the query string with an empty body (binance-futures-connector style): for SIGNED
requests it appends `timestamp` (strictly increasing per client, because the server
refuses a signature it has seen, -1099), `recvWindow` and `signature` = hex
HMAC-SHA256(secret, query string); KEY and SIGNED requests carry `X-MBX-APIKEY`.

Failure policy, so that a trader process outlives the web server restarting:
- the server cannot be reached (connection refused, connect timeout): nothing was
  sent, so the request waits with exponential backoff and is sent again, until it
  goes through or the process stops (`Stopping`);
- 429/418 (rate limit, ban): the shared `WeightBudget` holds every participant off
  for `Retry-After`, then the request is sent again (a refused request did nothing);
- the connection broke after sending, or a 5xx: a GET is repeated (a few times for
  5xx); anything else
  raises `ServerUnavailable`, because whether it took effect is unknown (the caller
  reconciles its state from the server later);
- any other 4xx: `ApiError(code, msg)` with the exchange's error code.

`WeightBudget` is a token bucket shared by every participant of the process: the
server limits request weight per IP, and all demo traders share 127.0.0.1 with
whoever else is using the exchange locally.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from urllib.parse import urlencode

import httpx

logger = logging.getLogger(__name__)

NONE, KEY, SIGNED = "NONE", "KEY", "SIGNED"
GET_RETRIES_ON_5XX = 5  # a GET that keeps failing with 5xx is a server bug, not a restart


class ApiError(Exception):
    """The exchange refused a request: its `{code, msg}` and HTTP status."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{code}: {msg}")
        self.status, self.code, self.msg = status, code, msg


class ServerUnavailable(Exception):
    """A non-GET request whose outcome is unknown (connection lost after sending, or a 5xx)."""


class Stopping(Exception):
    """The process is stopping; raised out of waits so loops unwind."""


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or raise `Stopping` as soon as the process is asked to stop."""
    if stopping.is_set():
        raise Stopping
    try:
        await asyncio.wait_for(stopping.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return
    raise Stopping


class Backoff:
    """Exponential backoff with jitter: 0.25 s doubling to `cap`; `reset()` after a success.

    The cap is short because the server is usually a local process coming back from a
    restart, and a few requests every 5 s cost it nothing while it is down."""

    def __init__(self, *, base: float = 0.25, cap: float = 5.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * 2 ** self.attempt)
        self.attempt += 1
        return delay * (0.5 + self._rng.random() / 2)

    def reset(self) -> None:
        self.attempt = 0


class WeightBudget:
    """Request weight per minute for the whole process, as a token bucket (10 s of burst)."""

    def __init__(self, per_minute: int, *, clock=time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(self.rate * 10, 10.0)
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self.held_until = 0.0

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def delay_for(self, weight: int) -> float:
        """Seconds to wait before `weight` may be spent (0: take it now)."""
        self._refill()
        now = self._clock()
        if now < self.held_until:
            return self.held_until - now
        if self.tokens >= min(weight, self.capacity):
            return 0.0
        return (min(weight, self.capacity) - self.tokens) / self.rate

    def spend(self, weight: int) -> None:
        self._refill()
        self.tokens -= weight

    async def take(self, weight: int, stopping: asyncio.Event) -> None:
        # One event loop, no await between the check and the spend: no lock needed.
        while (delay := self.delay_for(weight)) > 0:
            await pause(stopping, delay)
        self.spend(weight)

    def hold_off(self, seconds: float) -> None:
        self.held_until = max(self.held_until, self._clock() + seconds)


class RestClient:
    """One participant's view of the REST API (or a key-less one for public data)."""

    def __init__(self, http: httpx.AsyncClient, *, budget: WeightBudget, stopping: asyncio.Event,
                 api_key: str | None = None, secret: str | None = None, recv_window: int = 20000,
                 name: str = "public") -> None:
        self.http = http
        self.budget = budget
        self.stopping = stopping
        self.api_key = api_key
        self._secret = secret.encode() if secret else None
        self.recv_window = recv_window
        self.name = name
        self._last_ts = 0
        self.unreachable_since: float | None = None

    def _timestamp(self) -> int:
        # Strictly increasing: two requests with equal parameters in one millisecond would
        # carry the same signature, and the server refuses a repeated one (-1099).
        self._last_ts = max(int(time.time() * 1000), self._last_ts + 1)
        return self._last_ts

    def _query(self, params: dict, security: str) -> str:
        pairs = [(k, v) for k, v in params.items() if v is not None]
        if security != SIGNED:
            return urlencode(pairs)
        pairs += [("recvWindow", self.recv_window), ("timestamp", self._timestamp())]
        query = urlencode(pairs)
        signature = hmac.new(self._secret, query.encode(), hashlib.sha256).hexdigest()
        return f"{query}&signature={signature}"

    async def call(self, method: str, path: str, params: dict | None = None, *, weight: int = 1,
                   security: str = NONE):
        """The decoded JSON answer; raises ApiError, ServerUnavailable or Stopping."""
        if security != NONE and not self.api_key:
            raise ValueError(f"{path} needs an API key")
        headers = {"X-MBX-APIKEY": self.api_key} if security != NONE else {}
        backoff = Backoff()
        while True:
            await self.budget.take(weight, self.stopping)
            query = self._query(params or {}, security)
            url = f"{path}?{query}" if query else path
            try:
                response = await self.http.request(method, url, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                self._unreachable(exc)
                await pause(self.stopping, backoff.next_delay())
                continue
            except httpx.TransportError as exc:
                if method != "GET":
                    raise ServerUnavailable(f"{method} {path}: {exc!r}") from exc
                self._unreachable(exc)
                await pause(self.stopping, backoff.next_delay())
                continue
            if self.unreachable_since is not None:
                logger.info("%s: web server reachable again after %.1f s", self.name,
                            time.monotonic() - self.unreachable_since)
                self.unreachable_since = None
            status = response.status_code
            if status in (429, 418):
                retry_after = _float(response.headers.get("Retry-After"), 5.0)
                logger.warning("%s: %s %s answered %d; holding every trader off for %.0f s", self.name, method,
                               path, status, retry_after)
                self.budget.hold_off(retry_after)
                continue
            if status >= 500:
                if method != "GET" or backoff.attempt >= GET_RETRIES_ON_5XX:
                    raise ServerUnavailable(f"{method} {path}: HTTP {status}")
                await pause(self.stopping, backoff.next_delay())
                continue
            body = _json(response)
            if status >= 400:
                if isinstance(body, dict) and "code" in body:
                    raise ApiError(status, int(body["code"]), str(body.get("msg", "")))
                raise ApiError(status, -1000, f"HTTP {status}: {response.text[:200]}")
            return body

    def _unreachable(self, exc: Exception) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
            logger.warning("%s: web server unreachable (%s); retrying with backoff", self.name,
                           type(exc).__name__)


def _json(response: httpx.Response):
    try:
        return response.json()
    except (json.JSONDecodeError, ValueError):
        return None


def _float(value, default: float) -> float:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return default
