"""Market-data websocket endpoint, Binance USDⓈ-M style.

Routes (see `exchange/routing.py`): `/ws/<streamName>` (raw payloads), `/stream?
streams=a/b/c` (combined payloads `{"stream": name, "data": payload}`) and `/ws`
with live `SUBSCRIBE` / `UNSUBSCRIBE` / `LIST_SUBSCRIPTIONS` / `SET_PROPERTY` /
`GET_PROPERTY` requests, answered `{"result": ..., "id": ...}`. A malformed request
gets an error frame `{"error": {"code": n, "msg": ...}, "id": ...}` and the
connection stays open (codes as Binance: 0 unknown property, 1 invalid value
type, 2 invalid request, 3 invalid JSON); an invalid stream in the URL gets the
error frame and the connection is then closed (code 1008). Each stream joins the
Channels group that carries it (the relay fills the groups); markPrice streams
are throttled per connection to 3 s (or 1 s for `@1s`).
"""
from __future__ import annotations

import json
import time
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from apps.contracts.models import Contract, ContractStatus

from .streams import InvalidStream, Stream, parse_stream

MAX_STREAMS = 200
SYMBOL_CACHE_SECONDS = 5.0
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")

_symbols_cache: tuple[float, frozenset[str]] = (0.0, frozenset())


def _load_symbols() -> frozenset[str]:
    return frozenset(
        Contract.objects.exclude(status__in=(ContractStatus.SETTLED,)).values_list("symbol", flat=True)
    )


async def streamable_symbols() -> frozenset[str]:
    global _symbols_cache
    loaded_at, symbols = _symbols_cache
    if time.monotonic() - loaded_at > SYMBOL_CACHE_SECONDS or not symbols:
        symbols = await database_sync_to_async(_load_symbols)()
        _symbols_cache = (time.monotonic(), symbols)
    return symbols


class RequestError(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code
        self.msg = msg


class MarketStreamConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.streams: dict[str, Stream] = {}
        self.groups_joined: dict[str, int] = {}
        self.last_push: dict[str, float] = {}
        kwargs = self.scope["url_route"]["kwargs"]
        self.combined = bool(kwargs.get("combined"))
        names: list[str] = []
        if self.combined:
            query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
            for value in query.get("streams", []):
                names.extend(n for n in value.split("/") if n)
        elif kwargs.get("streams"):
            names.extend(n for n in kwargs["streams"].split("/") if n)
        await self.accept()
        if names:
            try:
                await self._subscribe(names)
            except RequestError as exc:
                await self._error(exc, None)
                await self.close(code=1008)

    async def disconnect(self, code):
        for group in list(getattr(self, "groups_joined", {})):
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups_joined = {}

    # -- requests -----------------------------------------------------------------------

    async def receive(self, text_data=None, bytes_data=None):
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
        symbols = await streamable_symbols()
        parsed, bad = [], []
        for name in names:
            try:
                parsed.append(parse_stream(name, symbols=symbols))
            except InvalidStream:
                bad.append(name)
        if bad:
            raise RequestError(2, f"Invalid request: invalid stream name(s): {', '.join(map(str, bad))}")
        new = [s for s in parsed if s.name not in self.streams]
        if len(self.streams) + len({s.name for s in new}) > MAX_STREAMS:
            raise RequestError(2, f"Invalid request: too many streams (at most {MAX_STREAMS} per connection)")
        for stream in new:
            if stream.name in self.streams:  # the same name twice in one request
                continue
            self.streams[stream.name] = stream
            count = self.groups_joined.get(stream.group, 0)
            if count == 0:
                await self.channel_layer.group_add(stream.group, self.channel_name)
            self.groups_joined[stream.group] = count + 1

    async def _unsubscribe(self, params):
        symbols = await streamable_symbols()
        for name in _stream_list(params):
            try:
                stream = parse_stream(name, symbols=symbols)
            except InvalidStream:
                continue  # unsubscribing from something never subscribed is not an error
            if self.streams.pop(stream.name, None) is None:
                continue
            self.last_push.pop(stream.name, None)
            count = self.groups_joined.get(stream.group, 0) - 1
            if count <= 0:
                self.groups_joined.pop(stream.group, None)
                await self.channel_layer.group_discard(stream.group, self.channel_name)
            else:
                self.groups_joined[stream.group] = count
        return None

    async def _list_subscriptions(self, params):
        return list(self.streams)

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

    # -- pushes from the relay ----------------------------------------------------------

    async def md_push(self, message):
        now = time.monotonic()
        for name, stream in list(self.streams.items()):
            if not stream.accepts(message):
                continue
            if stream.min_interval:
                last = self.last_push.get(name)
                if last is not None and now - last < stream.min_interval:
                    continue
                self.last_push[name] = now
            for payload in stream.render(message):
                body = {"stream": name, "data": payload} if self.combined else payload
                await self.send(text_data=json.dumps(body, separators=(",", ":")))


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
