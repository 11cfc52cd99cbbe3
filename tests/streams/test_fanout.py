"""The per-process websocket fan-out (apps.marketdata.fanout) with the real Redis.

Connections are Channels test communicators in this process, so they share this
event loop's hub, as the websockets of one daphne process do. Updates are published
as the relay publishes them (`relay.stream_update`) on the database-scoped `ws:`
channels, so no other process sharing the Redis server can add to them (the
relay's own path is tested in tests/marketdata/test_streams.py and here beside).
Waits are bounded (receive timeouts, polls with a deadline); nothing asserts a
duration.
"""
import asyncio
import json
import os

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from apps.accounts.user_stream import user_events_publish
from apps.marketdata import fanout
from apps.marketdata.consumers import CLOSE_SLOW
from apps.marketdata.fanout import Frame, channel_of, get_hub
from apps.marketdata.relay import stream_update
from apps.marketdata.streams import agg_trades
from exchange.redis import get_redis
from tests.marketdata.test_streams import application, connect, request, run

pytestmark = pytest.mark.django_db(transaction=True)
TRADES = channel_of("md.trade.BTCUSDT")
DEPTH = channel_of("md.depth.BTCUSDT")


def trade(trade_id: int) -> tuple[str, str]:
    """The aggTrade update the relay publishes for a one-trade matcher event."""
    fill = {"id": trade_id, "price": "50000", "qty": "0.001", "taker_side": "BUY", "taker_order_id": trade_id,
            "time": 1764061200000}
    return stream_update("md.trade.BTCUSDT", "aggTrade", "BTCUSDT", agg_trades(symbol="BTCUSDT", trades=[fill],
                                                                               event_ms=1764061200001))


def depth(u: int) -> tuple[str, str]:
    return stream_update("md.depth.BTCUSDT", "depth", "BTCUSDT", {
        "e": "depthUpdate", "E": 1, "T": 1, "s": "BTCUSDT", "U": u, "u": u, "pu": u - 1, "b": [["49999", "1"]], "a": []})


async def publish(*updates: tuple[str, str]) -> None:
    def send():
        pipe = get_redis().pipeline(transaction=False)
        for channel, body in updates:
            pipe.publish(channel, body)
        pipe.execute()

    await sync_to_async(send)()


async def frame(ws) -> dict:
    return json.loads(await ws.receive_from(timeout=10))


async def subscribers(channel: str) -> int:
    (_, count), = await sync_to_async(get_redis().pubsub_numsub)(channel)
    return count


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    """Poll an async predicate until it holds (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_combined_frame_text_is_the_json_of_the_wrapped_payload():
    payload = {"e": "aggTrade", "p": "50000.5", "m": False}
    made = Frame("btcusdt@aggTrade", json.dumps(payload, separators=(",", ":")))
    assert json.loads(made.text(False)) == payload
    assert made.text(True) == json.dumps({"stream": "btcusdt@aggTrade", "data": payload}, separators=(",", ":"))


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_a_pre_encoded_frame_is_the_websocket_text_frame_a_server_sends(size):
    from websockets.frames import Frame as WsFrame
    from websockets.frames import Opcode

    text = "é" * (size // 2) + "x" * (size % 2)  # `size` bytes of UTF-8
    assert fanout.ws_text_frame(text) == WsFrame(Opcode.TEXT, text.encode()).serialize(mask=False)
    made = Frame("btcusdt@aggTrade", '{"e":"aggTrade"}')
    assert made.wire(True) == fanout.ws_text_frame(made.text(True)) and made.wire(True) is made.wire(True)


def test_frames_go_out_at_once_only_when_nothing_is_queued_held_or_being_written():
    """The synchronous path never overtakes a frame on the queue or in the writer's hands."""
    out: list[tuple[str, str]] = []
    gate = asyncio.Event()

    async def body():
        async def write(frame):
            if frame.raw == "3":
                await gate.wait()  # a write that suspends (a socket that is backed up)
            out.append(("task", frame.raw))

        def write_now(frame):
            out.append(("now", frame.raw))
            return True

        async def overflow():
            pass

        sink = fanout.Sink(write, overflow, write_now=write_now)
        sink.offer(Frame("s", "1"))  # nothing in the way: at once
        with sink.holding():
            sink.offer(Frame("s", "2"))  # a reply is being written: queued
        sink.offer(Frame("s", "3"))  # "2" is queued: behind it
        for _ in range(5):
            await asyncio.sleep(0)  # the writer sends "2", takes "3" and waits; the queue is empty
        sink.offer(Frame("s", "4"))  # "3" is in the writer's hands: queued
        gate.set()
        for _ in range(10):
            await asyncio.sleep(0)
        sink.offer(Frame("s", "5"))  # drained: at once again
        await sink.close()

    asyncio.run(body())
    assert out == [("now", "1"), ("task", "2"), ("task", "3"), ("task", "4"), ("now", "5")]


def test_two_connections_on_one_stream_share_one_subscription_and_get_each_update_once(btcusdt, clean_redis):
    async def body():
        raw = await connect("/ws/btcusdt@aggTrade")
        combined = await connect("/stream?streams=btcusdt@aggTrade")
        hub = get_hub()
        assert await subscribers(TRADES) == 1  # one Redis subscription for the whole process
        for trade_id in (11, 12, 13):
            await publish(trade(trade_id))
        for trade_id in (11, 12, 13):
            mine = await frame(raw)
            theirs = await frame(combined)
            assert (mine["e"], mine["a"]) == ("aggTrade", trade_id)
            assert theirs == {"stream": "btcusdt@aggTrade", "data": mine}
        # Had an update been queued twice, the duplicate would come before this one.
        await publish(trade(14))
        assert (await frame(raw))["a"] == 14 and (await frame(combined))["data"]["a"] == 14
        assert (hub.messages, hub.frames) == (4, 8)  # parsed once per update, one frame per connection
        await raw.disconnect()
        await combined.disconnect()

    run(body)


def test_unsubscribe_stops_delivery_and_the_last_connection_leaves_the_redis_channel(btcusdt, clean_redis):
    async def body():
        leaver = await connect("/ws")
        stayer = await connect("/ws/btcusdt@aggTrade")
        sub = {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@depth"], "id": 1}
        assert await request(leaver, sub) == {"result": None, "id": 1}
        assert await request(leaver, {"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 2}) == {
            "result": None, "id": 2}
        assert await subscribers(TRADES) == 1 and await subscribers(DEPTH) == 1
        for n in (21, 22):
            await publish(trade(n), depth(n))
        # Each aggTrade is published before its depth diff: a leaked aggTrade would come first.
        assert [(f["e"], f["u"]) for f in [await frame(leaver), await frame(leaver)]] == [
            ("depthUpdate", 21), ("depthUpdate", 22)]
        assert [(await frame(stayer))["a"] for _ in range(2)] == [21, 22]

        await stayer.disconnect()
        await until(lambda: _equals(subscribers(TRADES), 0), "the process to leave the aggTrade channel")
        assert await subscribers(DEPTH) == 1
        await leaver.disconnect()
        await until(lambda: _equals(subscribers(DEPTH), 0), "the process to leave the depth channel")
        assert get_hub().routes == {}

    run(body)


async def _equals(awaitable, value) -> bool:
    return await awaitable == value


def test_a_connection_that_does_not_read_is_closed_and_the_others_keep_their_stream(btcusdt, clean_redis,
                                                                                       monkeypatch):
    monkeypatch.setattr(fanout, "SINK_MAX_FRAMES", 3)
    app = application()
    gate = asyncio.Event()

    async def stalled(scope, receive, send):
        """The app behind a client that reads nothing: each websocket.send waits (as a full socket does)."""

        async def slow_send(message):
            if message["type"] == "websocket.send":
                await gate.wait()
            await send(message)

        await app(scope, receive, slow_send)

    async def body():
        slow = WebsocketCommunicator(stalled, "/ws/btcusdt@aggTrade")
        assert (await slow.connect())[0]
        fast = await connect("/ws/btcusdt@aggTrade")
        hub = get_hub()
        # One frame is stuck in the write, three wait in the queue; the fifth finds it full.
        for trade_id in range(31, 36):
            await publish(trade(trade_id))
        assert [(await frame(fast))["a"] for _ in range(5)] == [31, 32, 33, 34, 35]
        assert await slow.receive_output(timeout=10) == {
            "type": "websocket.close", "code": CLOSE_SLOW, "reason": "too slow: frames not read"}
        assert hub.dropped_sinks == 1
        assert [len(route.sinks) for route in hub.routes[TRADES].values()] == [1]
        await publish(trade(36))
        assert (await frame(fast))["a"] == 36
        await slow.disconnect()
        await fast.disconnect()

    run(body)


def test_the_hub_subscribes_again_after_its_redis_connection_is_killed(btcusdt, clean_redis):
    redis = get_redis()

    def kill_hub_connection() -> int:
        name = f"ws-fanout-{os.getpid()}"
        ids = [c["id"] for c in redis.client_list() if c.get("name") == name]
        for client_id in ids:
            redis.client_kill_filter(_id=client_id)
        return len(ids)

    async def body():
        ws = await connect("/ws/btcusdt@aggTrade")
        hub = get_hub()
        assert hub.connections == 1
        await publish(trade(41))
        assert (await frame(ws))["a"] == 41

        assert await sync_to_async(kill_hub_connection)() == 1
        await until(lambda: _true(hub.connections == 2), "the hub to reconnect")
        await until(lambda: _equals(subscribers(TRADES), 1), "the hub to subscribe again")
        await publish(trade(42))
        assert (await frame(ws))["a"] == 42
        await ws.disconnect()

    run(body)


async def _true(value: bool) -> bool:
    return value


def test_user_events_reach_every_connection_of_their_user_only(funded, listen_key):
    alice, bob = funded("alice"), funded("bob")
    alice_key, bob_key = listen_key(alice), listen_key(bob)

    async def body():
        raw = await connect(f"/ws/{alice_key}")
        combined = await connect(f"/stream?streams={alice_key}")
        other = await connect(f"/ws/{bob_key}")
        assert await subscribers(channel_of(f"user.{alice.pk}")) == 1
        notice = {"e": "DELIVERY_NOTICE", "E": 5, "s": "BTCUSDT_261225", "dt": 9, "pa": "0.5"}
        await sync_to_async(user_events_publish)(user_id=alice.pk, payloads=[notice])
        assert await frame(raw) == notice
        assert await frame(combined) == {"stream": alice_key, "data": notice}
        # Bob's own event is the first thing on his socket: alice's did not reach him.
        await sync_to_async(user_events_publish)(user_id=bob.pk, payloads=[notice | {"E": 6}])
        assert (await frame(other))["E"] == 6
        for ws in (raw, combined, other):
            await ws.disconnect()

    run(body)
