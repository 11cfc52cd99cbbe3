"""The stream relay: Redis pub/sub -> Channels groups, for the market streams.

One asyncio task (`StreamRelay.run`, started by `manage.py run_stream_relay`)
subscribes to the price channel `md:prices` (written by `price_publish` after
commit) and to the matcher's `events:<symbol>` channels, and turns each message
into group messages for the websocket consumers: markPriceUpdate per symbol and
`!markPrice@arr`, aggTrade (fills aggregated per taker order and price), the diff
depth stream and a 20-level book snapshot (partial depth and bookTicker). Each
symbol's book is loaded from the resting orders in the database on its first
event and then kept from the depth changes the matcher sends (new total per
level, "0" removes it), so applying a change twice is harmless. The relay also
writes the last trade price per symbol (`md:last_trade:<SYMBOL>`) for the
pricefeed's basis, and its heartbeat `ops:heartbeat:stream_relay`. A lost
message loses no data: clients re-read over REST, as with the matcher's publish.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from decimal import Decimal

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db.models import F, Sum

from apps.contracts.models import Contract
from apps.ops.health import HEARTBEAT_PREFIX

from .engine.quotes import to_ms
from .selectors import funding_time_next
from .snapshot import PRICE_CHANNEL
from .streams import (
    BOOK_GROUP,
    BOOK_LEVELS,
    DEPTH_GROUP,
    MARK_ARR_GROUP,
    MARK_GROUP,
    PUSH,
    TRADE_GROUP,
    LocalBook,
    agg_trades,
    mark_price_update,
)

logger = logging.getLogger(__name__)
EVENTS_PATTERN = "events:*"
LAST_TRADE_KEY = "md:last_trade:{symbol}"
HEARTBEAT_NAME = "stream_relay"
CONTRACT_REFRESH_SECONDS = 60.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _book_from_orders(symbol: str) -> tuple[list, list]:
    """Aggregated resting quantity per price level, from the order table."""
    from apps.trading.models import Order, OrderStatus

    rows = (
        Order.objects.filter(
            contract__symbol=symbol, status__in=(OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED),
            priority__isnull=False, price__isnull=False,
        )
        .values("side", "price")
        .annotate(qty=Sum(F("quantity") - F("executed_qty")))
    )
    bids, asks = [], []
    for row in rows:
        (bids if row["side"] == "BUY" else asks).append((row["price"], row["qty"]))
    return bids, asks


def _contracts() -> dict[str, dict]:
    return {
        c.symbol: {"perpetual": c.is_perpetual, "contract": c}
        for c in Contract.objects.all()
    }


class StreamRelay:
    def __init__(self, *, redis_url: str | None = None, channel_layer=None) -> None:
        self.redis_url = redis_url or settings.REDIS_URL
        self.layer = channel_layer or get_channel_layer()
        self.books: dict[str, LocalBook] = {}
        self._contracts: dict[str, dict] = {}
        self._contracts_loaded = 0.0
        self._last_heartbeat = 0.0
        self.ready = asyncio.Event()
        self.forwarded = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; reconnects to Redis after errors."""
        backoff = 0.5
        while not stop.is_set():
            client = aioredis.Redis.from_url(self.redis_url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(PRICE_CHANNEL)
                await pubsub.psubscribe(EVENTS_PATTERN)
                self.ready.set()
                backoff = 0.5
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=0.5)
                    await self._heartbeat(client)
                    if message is None:
                        continue
                    await self.handle(message["channel"], message["data"], client)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("stream relay error; reconnecting in %.1fs", backoff)
                self.ready.clear()
                try:
                    await asyncio.wait_for(stop.wait(), timeout=backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 10.0)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass

    async def _heartbeat(self, client) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < 1.0:
            return
        self._last_heartbeat = now
        await client.set(HEARTBEAT_PREFIX + HEARTBEAT_NAME, f"{time.time():.3f}", ex=3600)

    async def handle(self, channel: bytes | str, data: bytes | str, client=None) -> None:
        channel = channel.decode() if isinstance(channel, bytes) else channel
        try:
            body = json.loads(data)
        except (ValueError, TypeError):
            logger.warning("relay: %s carried a non-JSON message", channel)
            return
        try:
            if channel == PRICE_CHANNEL:
                await self._prices(body)
            elif channel.startswith("events:"):
                await self._events(channel.split(":", 1)[1], body, client)
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
            logger.warning("relay: malformed message on %s", channel, exc_info=True)

    async def _contract(self, symbol: str) -> dict | None:
        if symbol not in self._contracts or time.monotonic() - self._contracts_loaded > CONTRACT_REFRESH_SECONDS:
            self._contracts = await sync_to_async(_contracts)()
            self._contracts_loaded = time.monotonic()
        return self._contracts.get(symbol)

    async def _send(self, group: str, kind: str, symbol: str | None, data) -> None:
        await self.layer.group_send(group, {"type": PUSH, "kind": kind, "symbol": symbol, "data": data})
        self.forwarded += 1

    async def _prices(self, body: list) -> None:
        event_ms = _now_ms()
        updates = []
        for item in body if isinstance(body, list) else [body]:
            symbol = item["s"]
            info = await self._contract(symbol)
            if info is None:
                continue
            next_funding = funding_time_next(contract=info["contract"])
            update = mark_price_update(
                symbol=symbol, mark=Decimal(item["p"]), index=Decimal(item["i"]), event_ms=event_ms,
                next_funding_ms=to_ms(next_funding) if next_funding else 0,
            )
            updates.append(update)
            await self._send(MARK_GROUP.format(symbol=symbol), "mark", symbol, update)
        if updates:
            await self._send(MARK_ARR_GROUP, "markarr", None, updates)

    async def _events(self, symbol: str, body: dict, client) -> None:
        if not isinstance(body, dict) or await self._contract(symbol) is None:
            return
        event_ms = _now_ms()
        when = int(body.get("time") or event_ms)
        trades = body.get("trades") or []
        if trades:
            aggs = agg_trades(symbol=symbol, trades=trades, event_ms=event_ms)
            if aggs:
                await self._send(TRADE_GROUP.format(symbol=symbol), "aggTrade", symbol, aggs)
                if client is not None:
                    last = aggs[-1]
                    await client.set(LAST_TRADE_KEY.format(symbol=symbol),
                                     json.dumps({"p": last["p"], "t": last["T"]}), ex=3600)
        depth = body.get("depth")
        if not isinstance(depth, dict):
            return
        book = self.books.get(symbol)
        if book is None:
            book = LocalBook()
            bids, asks = await sync_to_async(_book_from_orders)(symbol)
            book.load(bids, asks)
            self.books[symbol] = book
        bids = book.apply("bids", depth.get("bids"))
        asks = book.apply("asks", depth.get("asks"))
        if not bids and not asks:
            return
        pu = book.last_u
        seq = body.get("last_seq")
        u = int(seq) if isinstance(seq, int) and seq > pu else pu + 1
        book.last_u = u
        first = pu + 1 if pu else u
        await self._send(DEPTH_GROUP.format(symbol=symbol), "depth", symbol, {
            "e": "depthUpdate", "E": event_ms, "T": when, "s": symbol, "U": first, "u": u, "pu": pu,
            "b": bids, "a": asks,
        })
        top_bids, top_asks = book.top(BOOK_LEVELS)
        await self._send(BOOK_GROUP.format(symbol=symbol), "book", symbol, {
            "E": event_ms, "T": when, "s": symbol, "U": first, "u": u, "pu": pu, "b": top_bids, "a": top_asks,
        })
