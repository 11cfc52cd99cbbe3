"""A small asyncio websocket client for tests against a real server process.

Uses the `websockets` package when it is installed; otherwise autobahn's asyncio
client, which is always there (daphne depends on it). Both are complete RFC 6455
clients (handshake, masking, fragmentation, close handshake); this wrapper only
gives them one interface: `await connect(url)`, `send`, `recv(timeout)`, `close`.
"""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

try:  # websockets >= 13
    from websockets.asyncio.client import connect as _ws_connect
except ImportError:  # pragma: no cover - depends on the environment
    _ws_connect = None

CLIENT = "websockets" if _ws_connect is not None else "autobahn"


class Closed(Exception):
    """The server closed the connection; `code` is its close code (None if unknown)."""

    def __init__(self, code):
        super().__init__(f"closed by the server (code {code})")
        self.code = code


class _WebsocketsClient:
    def __init__(self, conn):
        self._conn = conn

    async def send(self, text: str) -> None:
        await self._conn.send(text)

    async def recv(self, timeout: float = 10.0) -> str:
        from websockets.exceptions import ConnectionClosed

        try:
            return await asyncio.wait_for(self._conn.recv(), timeout)
        except ConnectionClosed as exc:
            raise Closed(exc.rcvd.code if exc.rcvd else None) from None

    async def close(self) -> None:
        await self._conn.close()


class _AutobahnClient:
    def __init__(self, protocol, messages: asyncio.Queue, closed: asyncio.Future):
        self._protocol = protocol
        self._messages = messages
        self._closed = closed

    async def send(self, text: str) -> None:
        self._protocol.sendMessage(text.encode(), isBinary=False)

    async def recv(self, timeout: float = 10.0) -> str:
        if self._messages.empty() and self._closed.done():
            raise Closed(self._closed.result())
        getter = asyncio.ensure_future(self._messages.get())
        done, _ = await asyncio.wait({getter, self._closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self._closed in done:
            raise Closed(self._closed.result())
        raise TimeoutError(f"no message within {timeout} s")

    async def close(self) -> None:
        if not self._closed.done():
            self._protocol.sendClose(code=1000)
            try:
                await asyncio.wait_for(asyncio.shield(self._closed), 5)
            except TimeoutError:
                self._protocol.transport.close()


async def connect(url: str, timeout: float = 10.0):
    if _ws_connect is not None:
        return _WebsocketsClient(await asyncio.wait_for(_ws_connect(url, max_size=None), timeout))
    from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

    loop = asyncio.get_running_loop()
    opened, closed, messages = loop.create_future(), loop.create_future(), asyncio.Queue()

    class Protocol(WebSocketClientProtocol):
        def onOpen(self):
            if not opened.done():
                opened.set_result(self)

        def onMessage(self, payload, isBinary):
            messages.put_nowait(payload.decode() if not isBinary else payload)

        def onClose(self, wasClean, code, reason):
            if not opened.done():
                opened.set_exception(ConnectionError(f"handshake failed: {reason}"))
            if not closed.done():
                closed.set_result(code)

    factory = WebSocketClientFactory(url)
    factory.protocol = Protocol
    parts = urlsplit(url)
    await asyncio.wait_for(loop.create_connection(factory, parts.hostname, parts.port), timeout)
    protocol = await asyncio.wait_for(opened, timeout)
    return _AutobahnClient(protocol, messages, closed)
