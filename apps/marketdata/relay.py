"""The stream relay: prices and matcher events -> the websocket streams' Redis channels.

One asyncio task (`StreamRelay.run`, started by `manage.py run_stream_relay`)
subscribes to the price channel `md:prices` (written by `price_publish` after
commit), to the matcher's `events:<symbol>` channels and to `user:margin_call`
(apps.liquidation), and turns each message into stream updates, published once
each on the group's channel `ws:<db>:<group>` (`apps.marketdata.fanout`, where every
web process fans them out to its own websockets; the updates of one message go
out in one pipeline, in order): markPriceUpdate per symbol and
`!markPrice@arr`, aggTrade (fills aggregated per taker order and price), the diff
depth stream and a 20-level book snapshot (partial depth and bookTicker). Each
symbol's book is loaded from the resting orders in the database on its first
event and then kept from the depth changes the matcher sends (new total per
level, "0" removes it), so applying a change twice is harmless. The relay also
writes the last trade price per symbol (`md:last_trade:<SYMBOL>`) for the
pricefeed's basis, and its heartbeat `ops:heartbeat:stream_relay`. A lost
message loses no data: clients re-read over REST, as with the matcher's publish.

Klines: the relay keeps the open candle per symbol and interval (1m ... 1d) from the
trades of the events and pushes it after each event; a symbol's candles are seeded
from the trades table on its first event, and a candle is pushed final (`x` true)
when a trade of the next interval arrives or, at the latest, a second after it ends.

User data stream: each execution report in an event's `orders` becomes an
ORDER_TRADE_UPDATE for its user's channel at once (no database read), for users with a
live listen key (one MGET per event; nobody else can be listening); a margin call
becomes a MARGIN_CALL the same way (`user_stream.margin_call`). Users whose
balances the batch moved (fills, margin released or re-held) are queued for an
ACCOUNT_UPDATE built from `account_overview`; a separate task does those reads (one
per user per round, a user queued twice meanwhile is read once), so a batch touching
many users never holds up the market streams.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from decimal import Decimal

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.models import F, Sum

from apps.accounts.selectors import listen_key_of_user_redis_key
from apps.accounts.user_stream import (
    ACCOUNT_EXEC_TYPES,
    FILL_EXEC_TYPES,
    account_update_for_user,
    margin_call,
    order_trade_update,
    user_events_message,
)
from apps.contracts.models import Contract
from apps.liquidation.services import MARGIN_CALL_CHANNEL
from apps.ops.health import HEARTBEAT_PREFIX
from apps.settlement.selectors import PREDICTED_KEY, predicted_parse
from exchange.redis import channel

from .engine.quotes import to_ms
from .fanout import channel_of
from .selectors import funding_time_next
from .snapshot import PRICE_CHANNEL
from .streams import (
    BOOK_GROUP,
    BOOK_LEVELS,
    DEPTH_GROUP,
    KLINE_GROUP,
    KLINE_INTERVALS_MS,
    MARK_ARR_GROUP,
    MARK_GROUP,
    TRADE_GROUP,
    Candle,
    LocalBook,
    agg_trades,
    kline_open_ms,
    mark_price_update,
)

logger = logging.getLogger(__name__)
EVENTS_PREFIX = channel("events:")
EVENTS_PATTERN = EVENTS_PREFIX + "*"
LAST_TRADE_KEY = "md:last_trade:{symbol}"
HEARTBEAT_NAME = "stream_relay"
CONTRACT_REFRESH_SECONDS = 60.0
KLINE_CLOSE_GRACE_MS = 1000  # a final candle waits this long past its end for late events


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
        c.symbol: {"perpetual": c.is_perpetual, "contract": c, "settle": c.settle_asset.code}
        for c in Contract.objects.select_related("settle_asset")
    }


def _candles_from_trades(contract_id: int, at_ms: int) -> dict[str, Candle]:
    """The candle of every interval that holds `at_ms`, from the trades table (one query each)."""
    from apps.trading.models import Trade
    from apps.trading.public_selectors import from_ms

    table = Trade._meta.db_table
    candles: dict[str, Candle] = {}
    with connection.cursor() as cursor:
        for interval in KLINE_INTERVALS_MS:
            candle = Candle(interval, kline_open_ms(interval, at_ms))
            cursor.execute(
                f"""
                SELECT min(t.id), max(t.id), (array_agg(t.price ORDER BY t.id))[1], max(t.price), min(t.price),
                       (array_agg(t.price ORDER BY t.id DESC))[1], sum(t.quantity),
                       sum(t.price * t.quantity) * c.contract_size, count(*),
                       coalesce(sum(t.quantity) FILTER (WHERE t.taker_side = 'BUY'), 0),
                       coalesce(sum(t.price * t.quantity) FILTER (WHERE t.taker_side = 'BUY'), 0) * c.contract_size
                FROM {table} t JOIN {Contract._meta.db_table} c ON c.id = t.contract_id
                WHERE t.contract_id = %s AND t.created_at >= %s AND t.created_at < %s
                GROUP BY c.contract_size
                """,
                [contract_id, from_ms(candle.open_ms), from_ms(candle.close_ms + 1)],
            )
            row = cursor.fetchone()
            if row is not None and row[8]:
                first, last, o, h, low, c, volume, quote, count, buy_volume, buy_quote = row
                candle.seed(first_id=first, last_id=last, open=o, high=h, low=low, close=c, volume=volume,
                            quote=quote, count=count, buy_volume=buy_volume, buy_quote=buy_quote)
            candles[interval] = candle
    return candles


def stream_update(group: str, kind: str, symbol: str | None, data, **extra) -> tuple[str, str]:
    """(Redis channel, message) of one market stream update: the group message of `apps.marketdata.streams`."""
    body = json.dumps({"kind": kind, "symbol": symbol, "data": data, **extra}, separators=(",", ":"))
    return channel_of(group), body


class StreamRelay:
    def __init__(self, *, redis_url: str | None = None) -> None:
        self.redis_url = redis_url or settings.REDIS_URL
        self._client = None  # the publishing client of the current connection
        self._outbox: list[tuple[str, str]] = []  # (channel, message) of the message being handled
        self.books: dict[str, LocalBook] = {}
        self._contracts: dict[str, dict] = {}
        self._contracts_loaded = 0.0
        self._last_heartbeat = 0.0
        self.candles: dict[str, dict[str, Candle]] = {}
        self.ready = asyncio.Event()
        self.forwarded = 0
        self._last_kline_check = 0.0
        # user id -> (settle assets, symbols with fills, latest transaction time) awaiting an ACCOUNT_UPDATE
        self._accounts_due: dict[int, tuple[set[str], set[str], int]] = {}
        self._accounts_wake = asyncio.Event()
        self.account_updates = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; reconnects to Redis after errors."""
        accounts = asyncio.create_task(self._account_worker(), name="stream-relay-accounts")
        try:
            await self._relay(stop)
        finally:
            accounts.cancel()
            try:
                await accounts
            except asyncio.CancelledError:
                pass

    async def _relay(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            client = aioredis.Redis.from_url(self.redis_url)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                self._client = client
                await pubsub.subscribe(PRICE_CHANNEL, MARGIN_CALL_CHANNEL)
                await pubsub.psubscribe(EVENTS_PATTERN)
                self.ready.set()
                backoff = 0.5
                while not stop.is_set():
                    message = await pubsub.get_message(timeout=0.5)
                    await self._heartbeat(client)
                    await self.klines_close_due()
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
                self._client = None
                self._outbox.clear()
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
                await self._prices(body, client)
            elif channel == MARGIN_CALL_CHANNEL:
                await self._margin_call(body, client)
            elif channel.startswith(EVENTS_PREFIX):
                await self._events(channel[len(EVENTS_PREFIX):], body, client)
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
            logger.warning("relay: malformed message on %s", channel, exc_info=True)
        finally:
            await self.flush()

    async def _contract(self, symbol: str) -> dict | None:
        if symbol not in self._contracts or time.monotonic() - self._contracts_loaded > CONTRACT_REFRESH_SECONDS:
            self._contracts = await sync_to_async(_contracts)()
            self._contracts_loaded = time.monotonic()
        return self._contracts.get(symbol)

    def _send(self, group: str, kind: str, symbol: str | None, data, **extra) -> None:
        """Queue one stream update for `flush`."""
        self._outbox.append(stream_update(group, kind, symbol, data, **extra))

    async def flush(self) -> None:
        """Publish the queued updates in one pipeline, in order (dropped when Redis is away)."""
        if not self._outbox:
            return
        outbox, self._outbox = self._outbox, []
        await self._publish(outbox)

    async def _publish(self, messages: list[tuple[str, str]]) -> None:
        if not messages:
            return
        client = self._client
        if client is None:
            logger.warning("relay: not connected, %d stream updates dropped", len(messages))
            return
        pipe = client.pipeline(transaction=False)
        for channel, body in messages:
            pipe.publish(channel, body)
        await pipe.execute()
        self.forwarded += len(messages)

    async def _predicted_rates(self, symbols: list[str], client) -> dict[str, dict]:
        """symbol -> the funding engine's cached predicted rate (`r`, `T`, `c`), one MGET."""
        if client is None or not symbols:
            return {}
        try:
            raw = await client.mget([PREDICTED_KEY.format(symbol=s) for s in symbols])
        except Exception:
            return {}
        parsed = {s: predicted_parse(v) for s, v in zip(symbols, raw, strict=True)}
        return {s: body for s, body in parsed.items() if body is not None}

    async def _prices(self, body: list, client=None) -> None:
        event_ms = _now_ms()
        updates = []
        items = body if isinstance(body, list) else [body]
        predicted = await self._predicted_rates([item["s"] for item in items], client)
        for item in items:
            symbol = item["s"]
            info = await self._contract(symbol)
            if info is None:
                continue
            next_funding = funding_time_next(contract=info["contract"])
            next_ms = to_ms(next_funding) if next_funding else 0
            # `r` is the predicted rate of the interval ending at `T`; a cached rate of another
            # interval (sampler stopped across a funding time) or database is not used.
            rate = predicted.get(symbol)
            usable = rate is not None and rate["T"] == next_ms and rate["c"] in (None, info["contract"].pk)
            update = mark_price_update(
                symbol=symbol, mark=Decimal(item["p"]), index=Decimal(item["i"]), event_ms=event_ms,
                funding_rate=rate["r"] if usable else None, next_funding_ms=next_ms,
            )
            updates.append(update)
            self._send(MARK_GROUP.format(symbol=symbol), "mark", symbol, update)
        if updates:
            self._send(MARK_ARR_GROUP, "markarr", None, updates)

    async def _events(self, symbol: str, body: dict, client) -> None:
        if not isinstance(body, dict) or await self._contract(symbol) is None:
            return
        event_ms = _now_ms()
        when = int(body.get("time") or event_ms)
        orders = body.get("orders")
        if orders and isinstance(orders, list):
            await self._user_events(symbol, orders, event_ms, when, client)
        trades = body.get("trades")
        if trades and isinstance(trades, list):
            aggs = agg_trades(symbol=symbol, trades=trades, event_ms=event_ms)
            if aggs:
                self._send(TRADE_GROUP.format(symbol=symbol), "aggTrade", symbol, aggs)
                if client is not None:
                    last = aggs[-1]
                    await client.set(LAST_TRADE_KEY.format(symbol=symbol),
                                     json.dumps({"p": last["p"], "t": last["T"]}), ex=3600)
            await self._klines(symbol, trades, event_ms)
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
        self._send(DEPTH_GROUP.format(symbol=symbol), "depth", symbol, {
            "e": "depthUpdate", "E": event_ms, "T": when, "s": symbol, "U": first, "u": u, "pu": pu,
            "b": bids, "a": asks,
        })
        top_bids, top_asks = book.top(BOOK_LEVELS)
        self._send(BOOK_GROUP.format(symbol=symbol), "book", symbol, {
            "E": event_ms, "T": when, "s": symbol, "U": first, "u": u, "pu": pu, "b": top_bids, "a": top_asks,
        })

    # -- klines ---------------------------------------------------------------------------

    async def _klines(self, symbol: str, trades: list, event_ms: int) -> None:
        info = await self._contract(symbol)
        size = info["contract"].contract_size
        fills = []
        for trade in trades:
            try:
                fills.append((int(trade["id"]), Decimal(str(trade["price"])), Decimal(str(trade["qty"])),
                              str(trade.get("taker_side", "")).upper() == "BUY", int(trade.get("time") or event_ms)))
            except (KeyError, TypeError, ValueError, ArithmeticError):
                continue
        fills = [f for f in fills if f[1].is_finite() and f[2].is_finite() and f[1] > 0 and f[2] > 0]
        if not fills:
            return
        fills.sort()
        candles = self.candles.get(symbol)
        seeded = candles is None  # the seed holds this event's trades already: push it anyway
        if seeded:
            candles = await sync_to_async(_candles_from_trades)(info["contract"].pk, fills[0][4])
            self.candles[symbol] = candles
        for interval in KLINE_INTERVALS_MS:
            out: list[dict] = []
            candle = candles.get(interval)
            changed = seeded and candle is not None and not candle.empty
            for trade_id, price, qty, buy, at in fills:
                opens = kline_open_ms(interval, at)
                if candle is None or opens > candle.open_ms:
                    if candle is not None and not candle.empty and not candle.closed:
                        candle.closed = True
                        out.append(candle.payload(symbol=symbol, event_ms=event_ms))
                    candle = candles[interval] = Candle(interval, opens)
                elif opens < candle.open_ms:
                    continue  # a late trade of a candle already pushed final
                changed |= candle.add(trade_id=trade_id, price=price, qty=qty, quote=price * qty * size,
                                      taker_buy=buy)
            if changed:
                out.append(candle.payload(symbol=symbol, event_ms=event_ms))
            if out:
                self._send(KLINE_GROUP.format(symbol=symbol, interval=interval), "kline", symbol, out,
                           interval=interval)

    async def klines_close_due(self, now_ms: int | None = None) -> None:
        """Push final (x=true) every candle whose interval ended over a grace period ago."""
        if now_ms is None:
            now = time.monotonic()
            if now - self._last_kline_check < 1.0:
                return
            self._last_kline_check = now
            now_ms = _now_ms()
        for symbol, candles in self.candles.items():
            for interval, candle in candles.items():
                if candle.closed or candle.empty or candle.close_ms + KLINE_CLOSE_GRACE_MS >= now_ms:
                    continue
                candle.closed = True
                self._send(KLINE_GROUP.format(symbol=symbol, interval=interval), "kline", symbol,
                           [candle.payload(symbol=symbol, event_ms=now_ms)], interval=interval)
        await self.flush()

    # -- user data stream -----------------------------------------------------------------

    async def listening(self, client, user_ids) -> set[int]:
        """Those of `user_ids` with a live listen key (one MGET): nobody else can be listening."""
        user_ids = list(user_ids)
        if client is None or not user_ids:
            return set(user_ids)
        values = await client.mget([listen_key_of_user_redis_key(uid) for uid in user_ids])
        return {uid for uid, value in zip(user_ids, values) if value is not None}

    async def _user_events(self, symbol: str, orders: list, event_ms: int, when: int, client=None) -> None:
        ids = set()
        for report in orders:
            try:
                ids.add(int(report["user_id"]))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        listening = await self.listening(client, ids)
        per_user: dict[int, list[dict]] = {}
        due: list[tuple[int, str, bool, int]] = []
        for report in orders:
            try:
                user_id = int(report["user_id"])
                if user_id not in listening:
                    continue
                payload = order_trade_update(symbol=symbol, report=report, event_ms=event_ms, transaction_ms=when)
            except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError):
                logger.warning("relay: malformed execution report on events:%s: %.200r", symbol, report)
                continue
            per_user.setdefault(user_id, []).append(payload)
            if report.get("exec_type") in ACCOUNT_EXEC_TYPES:
                due.append((user_id, symbol, report.get("exec_type") in FILL_EXEC_TYPES, when))
        if not per_user:
            return
        # Published before the ACCOUNT_UPDATEs are queued: those follow their ORDER_TRADE_UPDATEs.
        await self._publish([user_events_message(user_id=u, payloads=p) for u, p in per_user.items()])
        for user_id, symbol_, filled, when_ in due:
            self._account_due(user_id, symbol_, filled=filled, when=when_)

    async def _margin_call(self, body: dict, client) -> None:
        """MARGIN_CALL for the user's data stream, if the user has a live listen key."""
        user_id = int(body["user_id"])
        payload = margin_call(body["event"])
        if user_id in await self.listening(client, [user_id]):
            self._outbox.append(user_events_message(user_id=user_id, payloads=[payload]))

    def _account_due(self, user_id: int, symbol: str, *, filled: bool, when: int) -> None:
        info = self._contracts.get(symbol)
        assets, symbols, _ = self._accounts_due.setdefault(user_id, (set(), set(), when))
        if info is not None:
            assets.add(info["settle"])
        if filled:
            symbols.add(symbol)
        self._accounts_due[user_id] = (assets, symbols, when)
        self._accounts_wake.set()

    async def _account_worker(self) -> None:
        """ACCOUNT_UPDATE for the queued users, one `account_overview` read each, in its own task."""
        while True:
            await self._accounts_wake.wait()
            self._accounts_wake.clear()
            due, self._accounts_due = self._accounts_due, {}
            for user_id, (assets, symbols, when) in due.items():
                try:
                    payload = await sync_to_async(account_update_for_user)(
                        user_id=user_id, assets=assets, symbols=symbols, event_ms=_now_ms(), transaction_ms=when)
                    await self._publish([user_events_message(user_id=user_id, payloads=[payload])])
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("relay: ACCOUNT_UPDATE for user %s failed", user_id)
                    continue
                self.account_updates += 1
