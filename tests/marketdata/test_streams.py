"""Websocket market streams through Channels, the fan-out hub on the real Redis, and the relay."""
import asyncio
import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from apps.marketdata.relay import LAST_TRADE_KEY, StreamRelay
from apps.marketdata.services import price_publish
from apps.marketdata.streams import InvalidStream, LocalBook, agg_trades, parse_stream
from exchange.redis import channel
from exchange.routing import websocket_urlpatterns

D = Decimal
SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT", "BTCUSDT_261225"})


def application():
    from channels.routing import URLRouter

    return URLRouter(websocket_urlpatterns)


def run(coro_fn):
    """Run an async test body, then close the channel layer's pools of that loop."""

    async def body():
        try:
            await coro_fn()
        finally:
            layer = get_channel_layer()
            if hasattr(layer, "close_pools"):
                await layer.close_pools()

    async_to_sync(body)()


async def connect(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application(), path)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def request(ws: WebsocketCommunicator, body) -> dict:
    await ws.send_to(text_data=body if isinstance(body, str) else json.dumps(body))
    return json.loads(await ws.receive_from(timeout=5))


class RelayRunning:
    def __init__(self):
        self.relay = StreamRelay()
        self.stop = asyncio.Event()

    async def __aenter__(self):
        self.task = asyncio.create_task(self.relay.run(self.stop))
        await asyncio.wait_for(self.relay.ready.wait(), timeout=10)
        return self.relay

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=10)


# -- stream names and payload builders (no I/O) -----------------------------------------


@pytest.mark.parametrize(
    "name, kind, symbol, levels, interval",
    [
        ("btcusdt@markPrice", "mark", "BTCUSDT", None, 3.0),
        ("BTCUSDT@markPrice@1s", "mark", "BTCUSDT", None, 1.0),
        ("!markPrice@arr", "markarr", None, None, 3.0),
        ("!markPrice@arr@1s", "markarr", None, None, 1.0),
        ("ethusdt@aggTrade", "aggTrade", "ETHUSDT", None, 0.0),
        ("btcusdt@depth", "depth", "BTCUSDT", None, 0.0),
        ("btcusdt@depth@100ms", "depth", "BTCUSDT", None, 0.0),
        ("btcusdt@depth10@500ms", "depth", "BTCUSDT", 10, 0.0),
        ("btcusdt_261225@bookTicker", "bookTicker", "BTCUSDT_261225", None, 0.0),
    ],
)
def test_stream_names_parse(name, kind, symbol, levels, interval):
    stream = parse_stream(name, symbols=SYMBOLS)
    assert (stream.kind, stream.symbol, stream.levels, stream.min_interval) == (kind, symbol, levels, interval)


@pytest.mark.parametrize(
    "name",
    ["", "btcusdt", "btcusdt@trade", "xrpusdt@markPrice", "btcusdt@depth7", "btcusdt@markprice",
     "btcusdt@depth@300ms", "@markPrice", "btcusdt@kline_1x", None, 5, "a" * 80, "!markPrice@arr@3s"],
)
def test_bad_stream_names_are_refused(name):
    with pytest.raises(InvalidStream):
        parse_stream(name, symbols=SYMBOLS)


def test_agg_trades_group_fills_of_one_taker_at_one_price():
    trades = [
        {"id": 11, "price": "90000.1", "qty": "0.010", "taker_side": "SELL", "taker_order_id": 7, "time": 5},
        {"id": 12, "price": "90000.1", "qty": "0.005", "taker_side": "SELL", "taker_order_id": 7, "time": 5},
        {"id": 13, "price": "90000.0", "qty": "0.001", "taker_side": "SELL", "taker_order_id": 7, "time": 5},
        {"id": 14, "price": "90000.0", "qty": "0.002", "taker_side": "BUY", "taker_order_id": 8},
        {"id": "bad"},
    ]
    aggs = agg_trades(symbol="BTCUSDT", trades=trades, event_ms=99)
    assert aggs == [
        {"e": "aggTrade", "E": 99, "s": "BTCUSDT", "a": 11, "p": "90000.1", "q": "0.015", "f": 11, "l": 12,
         "T": 5, "m": True},
        {"e": "aggTrade", "E": 99, "s": "BTCUSDT", "a": 13, "p": "90000.0", "q": "0.001", "f": 13, "l": 13,
         "T": 5, "m": True},
        {"e": "aggTrade", "E": 99, "s": "BTCUSDT", "a": 14, "p": "90000.0", "q": "0.002", "f": 14, "l": 14,
         "T": 99, "m": False},
    ]


def test_local_book_applies_new_totals_and_ignores_garbage():
    book = LocalBook()
    book.load([(D("100"), D("1"))], [(D("101"), D("2"))])
    assert book.apply("bids", [["100", "0"], ["99.5", "3"], ["x", "1"], ["98", "-1"]]) == [["100", "0"], ["99.5", "3"]]
    assert book.apply("asks", [["101", "2.5"]]) == [["101", "2.5"]]
    assert book.top(5) == ([["99.5", "3"]], [["101", "2.5"]])


# -- websocket requests --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_subscribe_list_unsubscribe(btcusdt, ethusdt):
    async def body():
        ws = await connect("/ws")
        sub = {"method": "SUBSCRIBE", "params": ["btcusdt@markPrice", "ETHUSDT@aggTrade"], "id": 1}
        assert await request(ws, sub) == {"result": None, "id": 1}
        listed = await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert listed == {"result": ["btcusdt@markPrice", "ethusdt@aggTrade"], "id": 2}
        unsub = {"method": "UNSUBSCRIBE", "params": ["btcusdt@markPrice"], "id": 3}
        assert await request(ws, unsub) == {"result": None, "id": 3}
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 4}) == {"result": ["ethusdt@aggTrade"], "id": 4}
        assert await request(ws, {"method": "GET_PROPERTY", "params": ["combined"], "id": 5}) == {"result": False, "id": 5}
        assert await request(ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 6}) == {"result": None, "id": 6}
        await ws.disconnect()

    run(body)


@pytest.mark.django_db(transaction=True)
def test_malformed_requests_get_error_frames_and_the_connection_stays(btcusdt):
    async def body():
        ws = await connect("/ws")
        cases = [
            ("{not json", 3, None),
            ("[1, 2]", 2, None),
            ({"method": "SUBSCRIBE", "params": ["btcusdt@markPrice"], "id": -1}, 2, None),
            ({"method": "SUBSCRIBE", "params": ["btcusdt@markPrice"], "id": True}, 2, None),
            ({"method": "PUBLISH", "params": [], "id": 7}, 2, 7),
            ({"params": ["btcusdt@markPrice"], "id": 8}, 2, 8),
            ({"method": "SUBSCRIBE", "params": "btcusdt@markPrice", "id": 9}, 2, 9),
            ({"method": "SUBSCRIBE", "params": [], "id": 10}, 2, 10),
            ({"method": "SUBSCRIBE", "params": [1], "id": 11}, 2, 11),
            ({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 12}, 2, 12),
            ({"method": "SUBSCRIBE", "params": ["btcusdt@markPrice", "dogeusdt@markPrice"], "id": 13}, 2, 13),
            ({"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 14}, 1, 14),
            ({"method": "SET_PROPERTY", "params": ["colour", True], "id": 15}, 0, 15),
        ]
        for frame, code, request_id in cases:
            reply = await request(ws, frame)
            assert reply["error"]["code"] == code, (frame, reply)
            assert reply["error"]["msg"] and reply["id"] == request_id
        # Nothing was subscribed by the refused requests (13 is all or nothing) and the socket works.
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 99}) == {"result": [], "id": 99}
        await ws.disconnect()

    run(body)


@pytest.mark.django_db(transaction=True)
def test_bad_stream_in_the_url_gets_an_error_frame_then_close(btcusdt):
    async def body():
        for path in ("/ws/btcusdt@nonsense", "/stream?streams=btcusdt@markPrice/xrpusdt@depth"):
            ws = await connect(path)
            reply = json.loads(await ws.receive_from(timeout=5))
            assert reply["error"]["code"] == 2 and "invalid stream name" in reply["error"]["msg"]
            assert (await ws.receive_output(timeout=5))["type"] == "websocket.close"
            await ws.disconnect()

    run(body)


@pytest.mark.django_db(transaction=True)
def test_streams_that_cannot_be_checked_now_get_an_error_frame_not_a_dropped_socket(btcusdt, monkeypatch):
    """The contracts table out of reach (database away): an error frame saying so, as for a listen
    key that cannot be checked, and nothing left registered with the fan-out hub."""
    from django.db import OperationalError

    from apps.marketdata import consumers
    from apps.marketdata.fanout import get_hub

    def unreachable():
        raise OperationalError("the database is away")

    monkeypatch.setattr(consumers, "_symbols_cache", (0.0, frozenset()))
    monkeypatch.setattr(consumers, "_load_symbols", unreachable)

    async def body():
        ws = await connect("/ws")
        for method, request_id in (("SUBSCRIBE", 1), ("UNSUBSCRIBE", 2)):
            reply = await request(ws, {"method": method, "params": ["btcusdt@aggTrade"], "id": request_id})
            assert reply["error"]["code"] == 2 and "retry later" in reply["error"]["msg"], reply
            assert reply["id"] == request_id
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {"result": [], "id": 3}
        await ws.disconnect()

        ws = await connect("/ws/btcusdt@aggTrade")
        reply = json.loads(await ws.receive_from(timeout=5))
        assert reply["error"]["code"] == 2 and "retry later" in reply["error"]["msg"]
        assert await ws.receive_output(timeout=5) == {"type": "websocket.close", "code": 4008}
        await ws.disconnect()
        assert get_hub().routes == {}

    run(body)


# -- pushes through the relay -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_mark_price_push_for_the_subscribed_symbol_only(btcusdt, ethusdt, clean_redis):
    at = datetime(2026, 11, 25, 9, 0, 0, tzinfo=timezone.utc)

    async def body():
        async with RelayRunning():
            raw = await connect("/ws/btcusdt@markPrice@1s")
            combined = await connect("/stream?streams=!markPrice@arr/btcusdt@markPrice")
            await sync_to_async(price_publish)(contract=ethusdt, index_price=D("3000.5"), mark_price=D("3001.25"), at=at)
            await sync_to_async(price_publish)(contract=btcusdt, index_price=D("90000.12"), mark_price=D("90010.3"), at=at)
            # The ETH price was published first: had it leaked, it would be the first frame.
            update = json.loads(await raw.receive_from(timeout=10))
            assert {k: update[k] for k in ("e", "s", "p", "i", "P", "r")} == {
                "e": "markPriceUpdate", "s": "BTCUSDT", "p": "90010.30000000", "i": "90000.12000000",
                "P": "90000.12000000", "r": "0.00000000",
            }
            assert isinstance(update["E"], int) and update["T"] % (8 * 3600 * 1000) == 0 and update["T"] > 0
            frames = [json.loads(await combined.receive_from(timeout=10)) for _ in range(2)]
            assert [f["stream"] for f in frames] == ["!markPrice@arr", "btcusdt@markPrice"]
            assert [u["s"] for u in frames[0]["data"]] == ["ETHUSDT"] and frames[1]["data"]["s"] == "BTCUSDT"
            # Both streams are throttled to one push per 3 s per connection: the array of the
            # BTC publish (sent right after) was dropped, as were further BTC pushes.
            await sync_to_async(price_publish)(contract=btcusdt, index_price=D("90001"), mark_price=D("90011"), at=at)
            assert await combined.receive_nothing(timeout=0.3)
            await raw.disconnect()
            await combined.disconnect()

    run(body)


@pytest.mark.django_db(transaction=True)
def test_depth_agg_trade_and_book_ticker_from_matcher_events(btcusdt, clean_redis):
    async def body():
        async with RelayRunning():
            streams = "btcusdt@aggTrade/btcusdt@depth/btcusdt@depth5/btcusdt@bookTicker"
            ws = await connect(f"/stream?streams={streams}")
            event = {
                "symbol": "BTCUSDT", "time": 1764061200000, "last_seq": 42,
                "trades": [
                    {"id": 1, "price": "90000.5", "qty": "0.002", "taker_side": "BUY", "taker_order_id": 9,
                     "maker_order_id": 3, "time": 1764061200000},
                    {"id": 2, "price": "90000.5", "qty": "0.001", "taker_side": "BUY", "taker_order_id": 9,
                     "maker_order_id": 4, "time": 1764061200000},
                ],
                "orders": [],
                "depth": {"bids": [["89999.0", "1.5"], ["89998.5", "0.2"]], "asks": [["90000.5", "0"], ["90001", "0.7"]]},
            }
            await clean_redis_publish(channel("events:BTCUSDT"), json.dumps(event))
            frames = {}
            for _ in range(4):
                frame = json.loads(await ws.receive_from(timeout=10))
                frames[frame["stream"]] = frame["data"]
            assert frames["btcusdt@aggTrade"] | {"E": 0} == {
                "e": "aggTrade", "E": 0, "s": "BTCUSDT", "a": 1, "p": "90000.5", "q": "0.003", "f": 1, "l": 2,
                "T": 1764061200000, "m": False,
            }
            diff = frames["btcusdt@depth"]
            assert (diff["e"], diff["s"], diff["u"], diff["pu"], diff["T"]) == ("depthUpdate", "BTCUSDT", 42, 0, 1764061200000)
            assert diff["b"] == [["89999.0", "1.5"], ["89998.5", "0.2"]]
            assert diff["a"] == [["90000.5", "0"], ["90001", "0.7"]]
            partial = frames["btcusdt@depth5"]
            assert partial["b"] == [["89999", "1.5"], ["89998.5", "0.2"]] and partial["a"] == [["90001", "0.7"]]
            assert frames["btcusdt@bookTicker"] | {"E": 0} == {
                "e": "bookTicker", "u": 42, "s": "BTCUSDT", "b": "89999", "B": "1.5", "a": "90001", "A": "0.7",
                "T": 1764061200000, "E": 0,
            }
            # The last trade price is kept for the pricefeed's basis.
            last = json.loads(await sync_to_async(get_redis_value)(LAST_TRADE_KEY.format(symbol="BTCUSDT")))
            assert last == {"p": "90000.5", "t": 1764061200000}
            # A malformed event and an event for an unknown symbol are dropped; the relay carries on.
            await clean_redis_publish(channel("events:BTCUSDT"), "{oops")
            await clean_redis_publish(channel("events:NOPE"), json.dumps(event))
            await clean_redis_publish(channel("events:BTCUSDT"), json.dumps({"symbol": "BTCUSDT", "last_seq": 43,
                                                                    "depth": {"asks": [["90001", "0"]]}}))
            frame = json.loads(await ws.receive_from(timeout=10))
            assert frame["stream"] == "btcusdt@depth" and frame["data"]["a"] == [["90001", "0"]]
            assert (frame["data"]["U"], frame["data"]["u"], frame["data"]["pu"]) == (43, 43, 42)
            await ws.disconnect()

    run(body)


async def clean_redis_publish(channel: str, data: str) -> None:
    from exchange.redis import get_redis

    await sync_to_async(get_redis().publish)(channel, data)


def get_redis_value(key: str):
    from exchange.redis import get_redis

    return get_redis().get(key)
