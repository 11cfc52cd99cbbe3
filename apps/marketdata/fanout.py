"""Websocket fan-out inside each web process: one Redis pub/sub connection, one serialisation per stream.

The stream relay publishes every update once, on the Redis channel `ws:<db>:<group>`
(`channel_of`; the groups are those of `apps.marketdata.streams` and the user's
`user.<id>`). Each web process (each event loop: `get_hub`) has one `Hub`: a single
pub/sub connection subscribed to exactly the channels its websockets need (SUBSCRIBE
when the first local subscriber of a channel joins, UNSUBSCRIBE when the last
leaves). A message is parsed once; each stream subscribed to its channel renders it
and serialises each payload once (`Frame`, whose combined form `{"stream":…,
"data":…}` is made from the same text); the frame is queued to every connection of
that stream (`Sink`). Why: with one channel-layer message per client per update
(and a dispatch per message) the cost grew with clients × updates; here the Redis
and JSON work is per update and process, and what grows with the clients is one
websocket write each: under uvicorn the frame's bytes are built once too
(`Frame.wire`) and written straight to each connection's transport
(`consumers._write_now`), queued only when the connection cannot take them now.

Order: one pub/sub connection delivers in publish order, and each connection's
frames leave from one FIFO queue, so every stream keeps the relay's order.

A slow connection cannot hold up the others or grow memory: its queue is bounded
(`SINK_MAX_FRAMES`); when full, the connection leaves every stream at once, its
queue is dropped and its consumer closes it (`on_overflow`, close code 4013; a
client that does not read up to the close frame within the server's close handshake
timeout sees the TCP connection end instead). A
sink stops writing while the client's socket is backed up: its `send` awaits until
the server's transport has drained below its high-water mark (64 KiB), and
`write_now` declines meanwhile; the frames then wait in the bounded queue.

Redis reconnects: the registry, not the connection, is the truth. When the pub/sub
connection fails the hub reconnects with backoff and subscribes again to every
channel that has local subscribers; updates published while it was away are lost,
as with any pub/sub message (clients re-read over REST, as after the matcher's
publish).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from typing import Protocol

import redis.asyncio as aioredis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from exchange.redis import channel

logger = logging.getLogger(__name__)

CHANNEL_PREFIX = "ws:"
SINK_MAX_FRAMES = 1000  # frames one connection may have waiting before it is dropped as too slow
SUBSCRIBE_WAIT_SECONDS = 5.0  # a join waits this long for Redis to confirm a new subscription
RECONNECT_MIN_SECONDS = 0.1
RECONNECT_MAX_SECONDS = 5.0
WRITER_YIELD_EVERY = 64  # frames a writer sends back to back before it lets other tasks run
POLL_SECONDS = 1.0  # the reader's read timeout (it also notices an idle dead connection this way)


def channel_of(group: str) -> str:
    """The Redis pub/sub channel that carries a stream group's updates (`exchange.redis.channel`)."""
    return channel(CHANNEL_PREFIX + group)


class Renderable(Protocol):
    """A subscribable stream: `apps.marketdata.streams.Stream` or `apps.accounts.user_stream.UserStream`."""

    name: str
    min_interval: float

    def render(self, message: dict) -> list: ...


def ws_text_frame(text: str) -> bytes:
    """`text` as one unmasked, unfragmented websocket text frame (RFC 6455 5.2): what a server
    puts on the wire for a text message it sends uncompressed."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


class Frame:
    """One payload of one stream, serialised once for every connection that gets it: as JSON
    text (`text`) and as the websocket frame carrying that text (`wire`), raw or combined."""

    __slots__ = ("stream", "raw", "_combined", "_wire")

    def __init__(self, stream: str, raw: str) -> None:
        self.stream = stream
        self.raw = raw
        self._combined: str | None = None
        self._wire: list[bytes | None] = [None, None]

    def text(self, combined: bool) -> str:
        if not combined:
            return self.raw
        if self._combined is None:  # the same bytes json.dumps({"stream": …, "data": …}) would give
            self._combined = '{"stream":' + json.dumps(self.stream) + ',"data":' + self.raw + "}"
        return self._combined

    def wire(self, combined: bool) -> bytes:
        wire = self._wire[combined]
        if wire is None:
            wire = self._wire[combined] = ws_text_frame(self.text(combined))
        return wire


class Sink:
    """One connection's bounded queue of frames and the task that writes them in order.

    `write(frame)` sends one frame (the consumer picks raw or combined); `on_overflow()`
    is awaited once if the queue fills. `holding()` keeps queued frames back while the
    consumer answers a request, so a reply is never overtaken by a push.

    `write_now(frame)`, if given, writes a frame synchronously and says whether it could
    (False: use `write`). A frame offered while nothing is queued, held or being
    written goes out through it at once, from the hub's dispatch: no task wakes for it.
    That is the common case, and under uvicorn it saves most of a frame's cost.
    """

    def __init__(self, write: Callable[[Frame], Awaitable[None]], on_overflow: Callable[[], Awaitable[None]],
                 *, max_frames: int | None = None, write_now: Callable[[Frame], bool] | None = None) -> None:
        self._write = write
        self._write_now = write_now
        self._writing = False  # the task is inside `write`: a frame is on its way
        self._on_overflow = on_overflow
        self.max_frames = max_frames if max_frames is not None else SINK_MAX_FRAMES
        self._queue: deque[Frame] = deque()
        self._wake = asyncio.Event()
        self._holds = 0
        self.hub: Hub | None = None
        self.routes: set[tuple[str, str]] = set()  # (channel, stream name) this sink is registered on
        self.dropped = False
        self.written = 0
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ws-sink")
        self._overflow_task: asyncio.Task | None = None

    def offer(self, frame: Frame) -> None:
        if self.dropped:
            return
        if self._write_now is not None and not self._queue and not self._holds and not self._writing:
            try:
                sent = self._write_now(frame)
            except Exception:  # the connection is gone
                logger.debug("websocket write failed; the sink stops", exc_info=True)
                self._stop()
                return
            if sent:
                self.written += 1
                return
        if len(self._queue) >= self.max_frames:
            self._overflow()
            return
        self._queue.append(frame)
        self._wake.set()

    @contextmanager
    def holding(self):
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            self._wake.set()

    async def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue or self._holds:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._writing = True
                try:
                    await self._write(queue.popleft())
                finally:
                    self._writing = False
                self.written += 1
                if self.written % WRITER_YIELD_EVERY == 0:  # a send to a client keeping up never suspends: let others run
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception:  # the connection is gone: stop taking frames for it
            logger.debug("websocket write failed; the sink stops", exc_info=True)
            self._stop()

    def _stop(self) -> None:
        self.dropped = True
        self._queue.clear()
        if self.hub is not None:
            self.hub.detach(self)

    def _overflow(self) -> None:
        self.dropped = True
        self._queue.clear()
        if self.hub is not None:
            self.hub.detach(self)
            self.hub.dropped_sinks += 1
        self._task.cancel()  # it may be stuck in a write to the slow client
        self._overflow_task = asyncio.get_running_loop().create_task(self._on_overflow(), name="ws-sink-overflow")

    async def close(self) -> None:
        """Stop writing (the connection is gone); frames still queued are dropped."""
        self.dropped = True
        self._queue.clear()
        for task in (self._task, self._overflow_task):
            if task is None or task is asyncio.current_task() or task.done():
                continue
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.debug("websocket writer ended with an error", exc_info=True)


class _Route:
    __slots__ = ("stream", "sinks", "last_push")

    def __init__(self, stream: Renderable) -> None:
        self.stream = stream
        self.sinks: set[Sink] = set()
        self.last_push: float | None = None


class Hub:
    """This process's pub/sub subscription and its registry: channel -> stream name -> sinks."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.routes: dict[str, dict[str, _Route]] = {}
        self._confirm: dict[str, asyncio.Future] = {}
        self._pubsub = None
        self._reader: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self.connected = asyncio.Event()
        self.connections = 0  # pub/sub connections made (1 + reconnects)
        self.messages = 0
        self.frames = 0
        self.dropped_sinks = 0

    # -- registry --------------------------------------------------------------------------

    async def join(self, channel: str, stream: Renderable, sink: Sink) -> None:
        """Deliver `stream`'s updates from `channel` to `sink`; returns once Redis has the subscription."""
        if sink.dropped:
            return
        self._ensure_reader()
        routes = self.routes.setdefault(channel, {})
        fresh = not routes
        route = routes.get(stream.name)
        if route is None:
            route = routes[stream.name] = _Route(stream)
        route.sinks.add(sink)
        sink.hub = self
        sink.routes.add((channel, stream.name))
        confirmed = self._confirm.get(channel)
        if fresh and confirmed is None:
            confirmed = self._confirm[channel] = asyncio.get_running_loop().create_future()
            await self._command("subscribe", channel)
        if confirmed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_WAIT_SECONDS)
            except TimeoutError:  # Redis away: the reader subscribes it when it is back
                logger.warning("ws fan-out: no subscription confirmed for %s yet", channel)
                if self._confirm.get(channel) is confirmed:
                    del self._confirm[channel]

    async def leave(self, channel: str, name: str, sink: Sink) -> None:
        if self._remove(channel, name, sink):
            await self._command("unsubscribe", channel)

    def detach(self, sink: Sink) -> list[str]:
        """Take `sink` off every stream now (no awaiting); UNSUBSCRIBE what it leaves empty in a task."""
        emptied = [channel for channel, name in list(sink.routes) if self._remove(channel, name, sink)]
        if emptied:
            task = asyncio.get_running_loop().create_task(self._command("unsubscribe", *emptied))
            self._background.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._background.discard)
        return emptied

    async def leave_all(self, sink: Sink) -> None:
        emptied = [channel for channel, name in list(sink.routes) if self._remove(channel, name, sink)]
        if emptied:
            await self._command("unsubscribe", *emptied)

    def _remove(self, channel: str, name: str, sink: Sink) -> bool:
        """Unregister; True when the channel has no local subscriber left."""
        sink.routes.discard((channel, name))
        routes = self.routes.get(channel)
        if routes is None:
            return False
        route = routes.get(name)
        if route is not None:
            route.sinks.discard(sink)
            if not route.sinks:
                del routes[name]
        if routes:
            return False
        del self.routes[channel]
        return True

    async def _command(self, verb: str, *channels: str) -> None:
        pubsub = self._pubsub
        if pubsub is None or not channels:
            return  # not connected: the reader (re)subscribes from the registry
        try:
            await getattr(pubsub, verb)(*channels)
        except Exception:  # the reader sees the broken connection and starts over
            logger.warning("ws fan-out: %s %s failed", verb, channels, exc_info=True)

    # -- reading ---------------------------------------------------------------------------

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_forever(), name="ws-fanout-reader")

    async def _read_forever(self) -> None:
        backoff = RECONNECT_MIN_SECONDS
        while True:
            # No retries inside redis-py: a failure comes here, and the registry decides what to subscribe.
            client = aioredis.Redis.from_url(self.redis_url, retry=Retry(NoBackoff(), 0),
                                             client_name=f"ws-fanout-{os.getpid()}")
            pubsub = client.pubsub()
            try:
                await pubsub.connect()
                # From here joins send their own SUBSCRIBE; every channel registered before is in this list.
                self._pubsub = pubsub
                channels = list(self.routes)
                if channels:
                    await pubsub.subscribe(*channels)
                self.connections += 1
                self.connected.set()
                backoff = RECONNECT_MIN_SECONDS
                while True:
                    if not pubsub.subscribed:  # nothing to read until somebody joins
                        await asyncio.sleep(0.05)
                        continue
                    message = await pubsub.get_message(timeout=POLL_SECONDS)
                    if message is not None:
                        self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("ws fan-out: pub/sub connection lost; reconnecting in %.1fs", backoff, exc_info=True)
            finally:
                self.connected.clear()
                if self._pubsub is pubsub:
                    self._pubsub = None
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)

    def _handle(self, message: dict) -> None:
        kind = message["type"]
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if kind == "subscribe":
            confirmed = self._confirm.pop(channel, None)
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
            return
        if kind != "message":
            return
        self.dispatch(channel, message["data"])

    def dispatch(self, channel: str, data: bytes | str) -> None:
        """One update: parsed once, rendered and serialised once per stream, queued to each sink."""
        routes = self.routes.get(channel)
        if not routes:
            return
        try:
            message = json.loads(data)
        except (ValueError, TypeError):
            logger.warning("ws fan-out: %s carried a non-JSON message", channel)
            return
        self.messages += 1
        now = asyncio.get_running_loop().time()
        for route in list(routes.values()):
            stream = route.stream
            if stream.min_interval:
                if route.last_push is not None and now - route.last_push < stream.min_interval:
                    continue
                route.last_push = now
            try:
                payloads = stream.render(message)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                logger.warning("ws fan-out: malformed update on %s for %s", channel, stream.name, exc_info=True)
                continue
            for payload in payloads:
                frame = Frame(stream.name, json.dumps(payload, separators=(",", ":")))
                for sink in list(route.sinks):
                    sink.offer(frame)
                    self.frames += 1


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub() -> Hub:
    """This event loop's hub (one per web process; a test's fresh loop gets a fresh one)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = Hub(settings.REDIS_URL)
    return hub
