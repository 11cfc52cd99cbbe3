"""Websocket readers: the market streams for every symbol, and one user data stream per participant.

`market_stream` holds one combined-stream connection
(`/stream?streams=<s>@markPrice@1s/<s>@bookTicker/...`) and writes what arrives into
a `MarketState`; `market_rest_fallback` polls `premiumIndex` and `ticker/bookTicker`
whenever the stream is not delivering (web server restarting, no `streams` process),
so the traders keep working without websockets. `user_stream` gets a listen key
(`POST /fapi/v1/listenKey`), reads `/ws/<listenKey>` into the participant's
`Portfolio`, keeps the key alive, and starts over with a fresh key after
`listenKeyExpired` or a lost connection. Every reconnect waits with backoff.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from .client import KEY, ApiError, Backoff, RestClient, ServerUnavailable, pause
from .state import MarketState, Portfolio

logger = logging.getLogger(__name__)

STALE_MARK_SECONDS = 4.0  # no mark for this long: read it over REST
KEEPALIVE_SECONDS = 20 * 60  # listen keys live 60 minutes
_WS_ERRORS = (OSError, TimeoutError, WebSocketException)


def ws_base(base_url: str) -> str:
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://"):].rstrip("/")
    return "ws://" + base_url.removeprefix("http://").rstrip("/")


def market_stream_names(symbols) -> list[str]:
    names = []
    for symbol in symbols:
        s = symbol.lower()
        names += [f"{s}@markPrice@1s", f"{s}@bookTicker"]
    return names


async def market_stream(*, base_url: str, market: MarketState, stopping: asyncio.Event) -> None:
    backoff = Backoff()
    while not stopping.is_set():
        version = market.version
        url = f"{ws_base(base_url)}/stream?streams={'/'.join(market_stream_names(market.symbols))}"
        try:
            async with connect(url, open_timeout=10, close_timeout=2, ping_interval=20) as ws:
                backoff.reset()
                market.connected = True
                async for raw in ws:
                    message = json.loads(raw)
                    data = message.get("data") if isinstance(message, dict) else None
                    if isinstance(data, dict):
                        market.on_stream_message(data)
                    if market.version != version:
                        break  # the symbols changed: subscribe to the new set
        except _WS_ERRORS + (ValueError,) as exc:
            logger.debug("market stream: %r", exc)
        finally:
            market.connected = False
        if market.version == version:
            await pause(stopping, backoff.next_delay())


async def market_rest_fallback(*, client: RestClient, market: MarketState, stopping: asyncio.Event,
                               every: float = 2.0) -> None:
    """Prices over REST for the symbols whose stream is silent, and the top of book while the
    stream is down; per symbol (weight 1 and 2) rather than all at once (10 and 5)."""
    while True:
        await pause(stopping, every)
        stale = [s for s in market.symbols if market.mark_age(s) > STALE_MARK_SECONDS]
        books = [] if market.connected else list(market.symbols)
        try:
            for symbol in stale:
                entry = await client.call("GET", "/fapi/v1/premiumIndex", {"symbol": symbol})
                if entry.get("time"):  # 0: no price published yet
                    market.on_mark(symbol, entry.get("markPrice"), entry.get("indexPrice"), trusted=True)
            for symbol in books:
                entry = await client.call("GET", "/fapi/v1/ticker/bookTicker", {"symbol": symbol}, weight=2)
                market.on_book(symbol, entry.get("bidPrice"), entry.get("askPrice"))
        except (ApiError, ServerUnavailable) as exc:
            logger.warning("market data over REST failed: %s", exc)
        if stale or books:
            market.rest_refreshes += 1


async def user_stream(*, base_url: str, client: RestClient, portfolio: Portfolio, known_symbols,
                      stopping: asyncio.Event, on_reconnect) -> None:
    """The participant's user data stream, for as long as the process runs.

    `on_reconnect()` is called after every (re)connection: events sent while the
    participant was not listening are lost, so it re-reads its state over REST.
    """
    backoff = Backoff()
    while not stopping.is_set():
        try:
            answer = await client.call("POST", "/fapi/v1/listenKey", weight=1, security=KEY)
            listen_key = answer["listenKey"]
            async with connect(f"{ws_base(base_url)}/ws/{listen_key}", open_timeout=10, close_timeout=2,
                               ping_interval=20) as ws:
                backoff.reset()
                on_reconnect()
                renewed = time.monotonic()
                while True:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), timeout=30)
                    except TimeoutError:
                        raw = None
                    if time.monotonic() - renewed > KEEPALIVE_SECONDS:
                        await client.call("PUT", "/fapi/v1/listenKey", weight=1, security=KEY)
                        renewed = time.monotonic()
                    if raw is None:
                        continue
                    event = json.loads(raw)
                    if not isinstance(event, dict):
                        continue
                    if event.get("e") == "listenKeyExpired" or "error" in event:
                        break
                    portfolio.on_user_event(event, known_symbols=known_symbols)
        except (ApiError, ServerUnavailable) as exc:
            logger.warning("%s: user data stream: %s", client.name, exc)
        except _WS_ERRORS + (ValueError, KeyError, TypeError) as exc:
            logger.debug("%s: user data stream: %r", client.name, exc)
        await pause(stopping, backoff.next_delay())
