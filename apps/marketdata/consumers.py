"""Market-data websocket endpoint, Binance USDⓈ-M style.

Routes (see `exchange/routing.py`): `/ws/<streamName>` (raw payloads), `/stream?
streams=a/b/c` (combined payloads `{"stream": name, "data": payload}`) and `/ws`
with live `SUBSCRIBE` / `UNSUBSCRIBE` / `LIST_SUBSCRIPTIONS` / `SET_PROPERTY` /
`GET_PROPERTY` requests, answered `{"result": ..., "id": ...}`. A malformed request
gets an error frame `{"error": {"code": n, "msg": ...}, "id": ...}` and the
connection stays open (codes as Binance: 0 unknown property, 1 invalid value
type, 2 invalid request, 3 invalid JSON); an invalid stream in the URL gets the
error frame and the connection is then closed (code 4008, see CLOSE_POLICY).

Delivery (`apps.marketdata.fanout`): each stream is registered with this process's
hub, which holds one Redis pub/sub subscription per group channel for all local
connections, renders and serialises each update once per stream and queues the
frame to each subscribed connection (`Sink`, written by its own task, in order). A
connection too slow to take its frames (`SINK_MAX_FRAMES` waiting) is closed with
4013 (CLOSE_SLOW). markPrice streams are throttled per stream to 3 s (or 1 s for
`@1s`), as Binance pushes them on a fixed cadence. These consumers use no Channels
layer.

User data stream: a listen key is accepted wherever a stream name is (`/ws/<listenKey>`,
`/stream?streams=<listenKey>`, SUBSCRIBE params) and is recognised before any market
stream name is parsed. It subscribes to the user's channel (`UserStream`); an
unknown or expired key gets an error frame (and a close with 4008 in the URL form).
While the connection holds listen keys, they are re-checked every
`LISTEN_KEY_CHECK_SECONDS`: a key that has expired (or was closed) gets
`listenKeyExpired`, is dropped, and the connection is closed when nothing else is
subscribed on it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import parse_qs

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.db import close_old_connections

from apps.accounts.selectors import listen_key_user_id
from apps.accounts.user_stream import UserStream, is_listen_key_name, listen_key_expired
from apps.contracts.models import Contract, ContractStatus

from .fanout import Frame, Sink, channel_of, get_hub
from .streams import InvalidStream, Stream, parse_stream

logger = logging.getLogger(__name__)
MAX_STREAMS = 200
LISTEN_KEY_CHECK_SECONDS = 30.0
# "Policy violation" (1008) in the application range, where servers let an application close
# with any code (Daphne, which served until 2026-11-27, allowed only 1000 and 3000-4999);
# clients already know 4008.
CLOSE_POLICY = 4008
# "Try again later" (1013) in the application range: the client did not keep up with its streams.
CLOSE_SLOW = 4013
SYMBOL_CACHE_SECONDS = 5.0
SYMBOL_REFRESH_MIN_SECONDS = 1.0
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")

_symbols_cache: tuple[float, frozenset[str]] = (0.0, frozenset())


def _load_symbols() -> frozenset[str]:
    return frozenset(
        Contract.objects.exclude(status__in=(ContractStatus.SETTLED,)).values_list("symbol", flat=True)
    )


async def streamable_symbols(*, refresh: bool = False) -> frozenset[str]:
    global _symbols_cache
    loaded_at, symbols = _symbols_cache
    age = time.monotonic() - loaded_at
    # A refresh (asked for on an unknown symbol) reads at most once a second, whatever clients send.
    if age > SYMBOL_CACHE_SECONDS or not symbols or (refresh and age > SYMBOL_REFRESH_MIN_SECONDS):
        symbols = await database_sync_to_async(_load_symbols)()
        _symbols_cache = (time.monotonic(), symbols)
    return symbols


class RequestError(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code
        self.msg = msg


async def _checked_symbols(*, refresh: bool = False) -> frozenset[str]:
    """`streamable_symbols`, or a RequestError when they cannot be read now: the client gets
    an error frame instead of a socket dropped by the server (1011) with nothing said."""
    try:
        return await streamable_symbols(refresh=refresh)
    except Exception:
        logger.warning("stream symbols lookup failed", exc_info=True)
        raise RequestError(2, "Invalid request: stream names cannot be checked now; retry later") from None


class MarketStreamConsumer(AsyncWebsocketConsumer):
    channel_layer_alias = None  # pushes come through the fan-out hub: no per-connection layer channel

    async def connect(self):
        self.streams: dict[str, Stream] = {}
        self.listen_keys: dict[str, int] = {}  # listen key -> user id
        self._key_watch: asyncio.Task | None = None
        self._hub = get_hub()
        self._protocol = _frame_protocol(self.base_send)
        self._sink = Sink(self._write, self._too_slow, write_now=self._write_now if self._protocol else None)
        kwargs = self.scope["url_route"]["kwargs"]
        self.combined = bool(kwargs.get("combined"))
        names: list[str] = []
        if self.combined:
            query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
            for value in query.get("streams", []):
                names.extend(n for n in value.split("/") if n)
        elif kwargs.get("streams"):
            names.extend(n for n in kwargs["streams"].split("/") if n)
        # The URL's streams are live before the handshake completes: a client may count on
        # every update published after it connected (pushes wait until the accept is out).
        refused = None
        with self._sink.holding():
            if names:
                try:
                    await self._subscribe(names)
                except RequestError as exc:
                    refused = exc
            await self.accept()
        if refused is not None:
            await self._error(refused, None)
            await self.close(code=CLOSE_POLICY)

    async def disconnect(self, code):
        watch = getattr(self, "_key_watch", None)
        if watch is not None and watch is not asyncio.current_task() and not watch.done():
            watch.cancel()
            try:
                await watch
            except asyncio.CancelledError:
                pass
        self._key_watch = None
        sink = getattr(self, "_sink", None)
        if sink is not None:
            await self._hub.leave_all(sink)
            await sink.close()

    # -- requests -----------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
        with self._sink.holding():  # pushes that arrive meanwhile go out after the reply
            await self._request(text_data)

    async def _request(self, text_data) -> None:
        request_id = None
        try:
            if text_data is None:
                raise RequestError(3, "Invalid JSON: expected a text frame")
            try:
                request = json.loads(text_data)
            except ValueError as exc:
                raise RequestError(3, f"Invalid JSON: {exc}") from None
            if not isinstance(request, dict):
                raise RequestError(2, "Invalid request: expected a JSON object")
            request_id = request.get("id")
            if not _valid_id(request_id):
                request_id = None
                raise RequestError(2, "Invalid request: request ID must be an unsigned integer")
            method = request.get("method")
            if method not in METHODS:
                raise RequestError(
                    2, f"Invalid request: unknown variant {method!r}, expected one of {', '.join(METHODS)}"
                )
            params = request.get("params", [])
            handler = {
                "SUBSCRIBE": self._subscribe_request,
                "UNSUBSCRIBE": self._unsubscribe,
                "LIST_SUBSCRIPTIONS": self._list_subscriptions,
                "SET_PROPERTY": self._set_property,
                "GET_PROPERTY": self._get_property,
            }[method]
            result = await handler(params)
        except RequestError as exc:
            await self._error(exc, request_id)
            return
        await self.send(text_data=json.dumps({"result": result, "id": request_id}))

    async def _subscribe_request(self, params):
        await self._subscribe(_stream_list(params))
        return None

    async def _subscribe(self, names: list[str]) -> None:
        """Subscribe to all of `names` or, if any is invalid, to none of them."""
        parsed, keys, bad = [], {}, []
        for refresh in (False, True):  # an unknown symbol may be a contract listed since the cache was loaded
            symbols = await _checked_symbols(refresh=refresh)
            parsed, keys, bad = [], {}, []
            for name in names:
                if is_listen_key_name(name):
                    keys[name] = None
                    continue
                try:
                    parsed.append(parse_stream(name, symbols=symbols))
                except InvalidStream:
                    bad.append(name)
            if not bad:
                break
        if bad:
            raise RequestError(2, f"Invalid request: invalid stream name(s): {', '.join(map(str, bad))}")
        for key in keys:
            if key in self.listen_keys:
                keys[key] = self.listen_keys[key]
                continue
            try:
                keys[key] = await _listen_key_owner(key)
            except Exception:
                logger.warning("listen key lookup failed", exc_info=True)
                raise RequestError(2, "Invalid request: listen keys cannot be checked now; retry later") from None
            if keys[key] is None:
                raise RequestError(2, "Invalid request: invalid listen key (unknown, expired or closed)")
        new = [s for s in parsed if s.name not in self.streams]
        new_keys = [k for k in keys if k not in self.listen_keys]
        count = len(self.streams) + len(self.listen_keys) + len({s.name for s in new}) + len(new_keys)
        if count > MAX_STREAMS:
            raise RequestError(2, f"Invalid request: too many streams (at most {MAX_STREAMS} per connection)")
        for stream in new:
            if stream.name in self.streams:  # the same name twice in one request
                continue
            self.streams[stream.name] = stream
            await self._hub.join(channel_of(stream.group), stream, self._sink)
        for key in new_keys:
            self.listen_keys[key] = keys[key]
            user = UserStream(key, keys[key])
            await self._hub.join(channel_of(user.group), user, self._sink)
        if self.listen_keys and self._key_watch is None:
            self._key_watch = asyncio.create_task(self._watch_listen_keys())

    async def _leave_key(self, key: str) -> None:
        user = UserStream(key, self.listen_keys.pop(key))
        await self._hub.leave(channel_of(user.group), key, self._sink)

    async def _unsubscribe(self, params):
        symbols = await _checked_symbols()
        for name in _stream_list(params):
            if name in self.listen_keys:
                await self._leave_key(name)
                continue
            try:
                stream = parse_stream(name, symbols=symbols)
            except InvalidStream:
                continue  # unsubscribing from something never subscribed is not an error
            if self.streams.pop(stream.name, None) is None:
                continue
            await self._hub.leave(channel_of(stream.group), stream.name, self._sink)
        return None

    async def _list_subscriptions(self, params):
        return list(self.streams) + list(self.listen_keys)

    async def _set_property(self, params):
        if not isinstance(params, list) or len(params) != 2 or not isinstance(params[0], str):
            raise RequestError(2, "Invalid request: SET_PROPERTY takes [name, value]")
        if params[0] != "combined":
            raise RequestError(0, "Unknown property")
        if not isinstance(params[1], bool):
            raise RequestError(1, "Invalid value type: expected Boolean")
        self.combined = params[1]
        return None

    async def _get_property(self, params):
        if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], str):
            raise RequestError(2, "Invalid request: GET_PROPERTY takes [name]")
        if params[0] != "combined":
            raise RequestError(0, "Unknown property")
        return self.combined

    async def _error(self, exc: RequestError, request_id) -> None:
        await self.send(text_data=json.dumps({"error": {"code": exc.code, "msg": exc.msg}, "id": request_id}))

    # -- pushes from the fan-out hub ---------------------------------------------------------

    async def _write(self, frame: Frame) -> None:
        if not (self._protocol is not None and self._write_now(frame)):
            await self.send(text_data=frame.text(self.combined))

    def _write_now(self, frame: Frame) -> bool:
        """The frame's pre-encoded bytes straight to uvicorn's transport, when the connection is open,
        sends plain frames (no extension such as compression) and its transport is not backed up
        (else False: the ASGI send path, which waits for the client to drain its buffer)."""
        protocol = self._protocol
        if (not protocol.writable.is_set() or protocol.close_sent or protocol.conn.state is not _STATE.OPEN
                or protocol.conn.extensions or protocol.transport.is_closing()):
            return False
        protocol.transport.write(frame.wire(self.combined))
        return True

    async def _too_slow(self) -> None:
        logger.info("websocket dropped: %d frames waiting (streams %s)", self._sink.max_frames,
                    ", ".join(list(self.streams)[:5]))
        await self.close(code=CLOSE_SLOW, reason="too slow: frames not read")

    async def _push(self, name: str, payload) -> None:
        body = {"stream": name, "data": payload} if self.combined else payload
        await self.send(text_data=json.dumps(body, separators=(",", ":")))

    async def _watch_listen_keys(self) -> None:
        """Re-check the listen keys; an expired one gets listenKeyExpired and is dropped."""
        while self.listen_keys:
            await asyncio.sleep(LISTEN_KEY_CHECK_SECONDS)
            expired = False
            for key, user_id in list(self.listen_keys.items()):
                try:
                    owner = await _listen_key_owner(key)
                except Exception:  # Redis away: keep the stream, check again next round
                    logger.warning("listen key check failed", exc_info=True)
                    continue
                if owner == user_id or key not in self.listen_keys:
                    continue
                expired = True
                await self._leave_key(key)
                await self._push(key, listen_key_expired(listen_key=key, event_ms=time.time_ns() // 1_000_000))
            if expired and not self.listen_keys and not self.streams:
                await self.close(code=CLOSE_POLICY)
        self._key_watch = None


def _frame_protocol(send):
    """uvicorn's websocket protocol behind the ASGI `send` (its bound method), whose transport a
    frame built once for every connection can be written to (`_write_now` checks each frame).
    Else None: every frame then takes the ASGI send path (another server, or a test's communicator).

    Why: a frame sent through `send` costs the channels and uvicorn layers and the websockets
    library building the frame again for each connection; with 500 subscribers that is most
    of a burst's time (bench/ws_fanout.py).
    """
    protocol = getattr(send, "__self__", None)
    return protocol if isinstance(protocol, _SERVER_PROTOCOL) else None


try:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol as _SERVER_PROTOCOL
    from websockets.protocol import State as _STATE
except ImportError:  # not served by uvicorn
    _SERVER_PROTOCOL = ()


def _listen_key_owner_sync(key: str) -> int | None:
    # Redis and one query (is the user still active with an active API key?) in a pool
    # thread: its database connection is closed (returned to the pool) here, in the call's
    # own context, where Django's connection lives (database_sync_to_async's close, run outside
    # that context, leaves it open under asgiref 3.13).
    try:
        return listen_key_user_id(key)
    finally:
        close_old_connections()


async def _listen_key_owner(key: str) -> int | None:
    return await sync_to_async(_listen_key_owner_sync, thread_sensitive=False)(key)


def _valid_id(value) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**63
    return isinstance(value, str) and 0 < len(value) <= 64


def _stream_list(params) -> list[str]:
    if not isinstance(params, list) or not params or not all(isinstance(p, str) for p in params):
        raise RequestError(2, "Invalid request: params must be a non-empty list of stream names")
    return params
