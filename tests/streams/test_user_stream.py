"""The user data stream through Channels, the fan-out hub on the real Redis and the running relay.

Listen keys are made by the accounts service; matcher payloads are either synthetic
(published on `events:<symbol>` as the matcher does) or the matcher's own, from a
real batch. Waits are bounded by receive timeouts; nothing asserts a duration.
"""
import json
from decimal import Decimal

import pytest
import redis.asyncio as redis_asyncio
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from apps.accounts.services import listen_key_close
from apps.accounts.user_stream import (
    account_update,
    is_listen_key_name,
    listen_key_expired,
    margin_call,
    order_trade_update,
    user_group,
)
from apps.marketdata import consumers
from apps.marketdata.consumers import CLOSE_POLICY
from apps.marketdata.services import price_publish
from apps.positions.selectors import account_overview
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.services import order_cancel, order_place
from exchange.redis import channel, get_redis
from tests.marketdata.test_streams import RelayRunning, connect, request, run

D = Decimal
pytestmark = pytest.mark.django_db(transaction=True)
OTU_FIELDS = {"s", "c", "S", "o", "f", "q", "p", "ap", "sp", "x", "X", "i", "l", "z", "L", "N", "n", "T", "t", "b",
              "a", "m", "R", "wt", "ot", "ps", "cp", "rp", "pP", "si", "ss", "V", "pm", "gtd"}


def report(**changes) -> dict:
    """One execution report as `apps.trading.matching._execution` makes it."""
    base = {
        "order_id": 501, "user_id": 0, "client_order_id": "my-order-1", "side": "BUY", "type": "LIMIT",
        "time_in_force": "GTC", "orig_qty": "0.25", "price": "50000.5", "stop_price": "0", "avg_price": "50000.5",
        "status": "PARTIALLY_FILLED", "exec_type": "TRADE", "executed_qty": "0.1", "reduce_only": False,
        "working_type": "CONTRACT_PRICE", "last_qty": "0.1", "last_price": "50000.5", "commission": "2.0000200",
        "commission_asset": "USDT", "realized_pnl": "0", "trade_id": 9001, "is_maker": False,
    }
    return base | changes


def event(*orders, trades=(), time_ms=1764061200123, last_seq=7) -> str:
    return json.dumps({"symbol": "BTCUSDT", "time": time_ms, "last_seq": last_seq, "trades": list(trades),
                       "orders": list(orders), "depth": {"bids": [], "asks": []}})


async def publish(channel: str, data: str) -> None:
    await sync_to_async(get_redis().publish)(channel, data)


async def frame(ws) -> dict:
    return json.loads(await ws.receive_from(timeout=10))


async def frames_until(ws, event_type: str, limit: int = 20) -> list[dict]:
    out = []
    for _ in range(limit):
        out.append(await frame(ws))
        if out[-1].get("e") == event_type:
            return out
    raise AssertionError(f"no {event_type} in {out}")


# -- names and payloads (no I/O) -----------------------------------------------------------


def test_listen_keys_are_told_apart_from_stream_names():
    key = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1"
    assert is_listen_key_name(key) and is_listen_key_name("A1" * 30)
    for name in ("btcusdt@markPrice", "!markPrice@arr", key[:59], key + "@depth", key[:-1] + "-", None, 7):
        assert not is_listen_key_name(name)
    assert user_group(42) == "user.42"


def test_order_trade_update_has_every_binance_field():
    payload = order_trade_update(symbol="BTCUSDT", report=report(user_id=3), event_ms=2, transaction_ms=1)
    assert (payload["e"], payload["E"], payload["T"]) == ("ORDER_TRADE_UPDATE", 2, 1)
    assert set(payload["o"]) == OTU_FIELDS
    assert payload["o"] | {} == {
        "s": "BTCUSDT", "c": "my-order-1", "S": "BUY", "o": "LIMIT", "f": "GTC", "q": "0.25", "p": "50000.5",
        "ap": "50000.5", "sp": "0", "x": "TRADE", "X": "PARTIALLY_FILLED", "i": 501, "l": "0.1", "z": "0.1",
        "L": "50000.5", "N": "USDT", "n": "2.00002", "T": 1, "t": 9001, "b": "0", "a": "0", "m": False, "R": False,
        "wt": "CONTRACT_PRICE", "ot": "LIMIT", "ps": "BOTH", "cp": False, "rp": "0", "pP": False, "si": 0, "ss": 0,
        "V": "EXPIRE_TAKER", "pm": "NONE", "gtd": 0,
    }
    pending = order_trade_update(symbol="BTCUSDT", report=report(status="PENDING_NEW", exec_type="NEW"),
                                 event_ms=2, transaction_ms=1)
    assert pending["o"]["X"] == "NEW"
    for bad in (report(orig_qty="lots"), report(price="NaN"), report(order_id="x"), {"user_id": 1}):
        with pytest.raises((KeyError, ValueError, TypeError)):
            order_trade_update(symbol="BTCUSDT", report=bad, event_ms=2, transaction_ms=1)


def test_listen_key_expired_payload():
    assert listen_key_expired(listen_key="k" * 64, event_ms=1736996475556) == {
        "e": "listenKeyExpired", "E": "1736996475556", "listenKey": "k" * 64,
    }


# -- joining -----------------------------------------------------------------------------------


def test_unknown_listen_key_is_refused(btcusdt, clean_redis):
    unknown = "Zz9" * 21 + "Q"

    async def body():
        ws = await connect(f"/ws/{unknown}")
        reply = await frame(ws)
        assert reply["error"]["code"] == 2 and "listen key" in reply["error"]["msg"]
        closed = await ws.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": CLOSE_POLICY}
        await ws.disconnect()

        ws = await connect("/ws")
        reply = await request(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@markPrice", unknown], "id": 4})
        assert reply["id"] == 4 and reply["error"]["code"] == 2 and "listen key" in reply["error"]["msg"]
        # All or nothing, and the connection stays usable.
        assert await request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 5}) == {"result": [], "id": 5}
        await ws.disconnect()

    run(body)


def test_listen_key_joins_by_url_subscribe_and_combined_stream(funded, listen_key):
    alice = funded("alice")
    key = listen_key(alice)

    async def body():
        async with RelayRunning():
            raw = await connect(f"/ws/{key}")
            sub = await connect("/ws")
            assert await request(sub, {"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", key], "id": 1}) == {
                "result": None, "id": 1}
            listed = await request(sub, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
            assert listed == {"result": ["btcusdt@aggTrade", key], "id": 2}
            combined = await connect(f"/stream?streams={key}/btcusdt@depth")
            sub_combined = await connect("/stream")
            assert await request(sub_combined, {"method": "SUBSCRIBE", "params": [key], "id": 3}) == {
                "result": None, "id": 3}

            await publish(channel("events:BTCUSDT"), event(report(user_id=alice.pk, trade_id=0, exec_type="NEW",
                                                         status="NEW", last_qty="0", executed_qty="0")))
            for ws in (raw, sub):
                update = await frame(ws)
                assert update["e"] == "ORDER_TRADE_UPDATE" and update["o"]["x"] == "NEW"
            for ws in (combined, sub_combined):
                wrapped = await frame(ws)
                assert wrapped["stream"] == key and wrapped["data"]["e"] == "ORDER_TRADE_UPDATE"

            # UNSUBSCRIBE leaves the user's group: the next event reaches only the others.
            assert await request(sub, {"method": "UNSUBSCRIBE", "params": [key], "id": 4}) == {"result": None, "id": 4}
            assert await request(sub, {"method": "LIST_SUBSCRIPTIONS", "id": 5}) == {"result": ["btcusdt@aggTrade"], "id": 5}
            await publish(channel("events:BTCUSDT"), event(report(user_id=alice.pk, order_id=777, exec_type="CANCELED",
                                                         status="CANCELED")))
            assert (await frame(raw))["o"]["i"] == 777
            # The aggTrade stream still works on `sub`, and no user event was queued before it.
            await publish(channel("events:BTCUSDT"), event(trades=[{"id": 1, "price": "50000", "qty": "0.01",
                                                           "taker_side": "BUY", "taker_order_id": 9, "time": 5}]))
            assert (await frame(sub))["e"] == "aggTrade"
            for ws in (raw, sub, combined, sub_combined):
                await ws.disconnect()

    run(body)


# -- events ----------------------------------------------------------------------------------------


def test_order_trade_update_reaches_its_user_only(funded, listen_key):
    alice, bob = funded("alice"), funded("bob")
    alice_key, bob_key = listen_key(alice), listen_key(bob)

    async def body():
        async with RelayRunning() as relay:
            alice_ws = await connect(f"/ws/{alice_key}")
            bob_ws = await connect(f"/ws/{bob_key}")
            fill = report(user_id=alice.pk)
            await publish(channel("events:BTCUSDT"), event(fill, report(user_id=alice.pk, order_id="garbage")))
            update = await frame(alice_ws)
            assert update["e"] == "ORDER_TRADE_UPDATE" and update["T"] == 1764061200123
            assert isinstance(update["E"], int) and update["E"] > 0
            assert update["o"] == order_trade_update(symbol="BTCUSDT", report=fill, event_ms=0,
                                                     transaction_ms=1764061200123)["o"]
            # Bob's own event comes next on his socket: had Alice's leaked, it would be first.
            await publish(channel("events:BTCUSDT"), event(report(user_id=bob.pk, order_id=600, side="SELL", is_maker=True)))
            mine = await frame(bob_ws)
            assert (mine["e"], mine["o"]["i"], mine["o"]["S"], mine["o"]["m"]) == ("ORDER_TRADE_UPDATE", 600, "SELL", True)
            # The malformed report was dropped alone; Alice's synthetic fill queued an ACCOUNT_UPDATE
            # (her real account: no position in BTCUSDT, 100,000 USDT).
            account = await frame(alice_ws)
            assert account["e"] == "ACCOUNT_UPDATE" and account["a"]["m"] == "ORDER"
            assert account["a"]["B"] == [{"a": "USDT", "wb": "100000", "cw": "100000", "bc": "0"}]
            assert account["a"]["P"] == []
            assert relay.account_updates >= 1
            # Users without a live listen key cost neither a group message nor an account read.
            client = redis_asyncio.Redis.from_url(settings.REDIS_URL)
            try:
                assert await relay.listening(client, [alice.pk, bob.pk, 424242]) == {alice.pk, bob.pk}
            finally:
                await client.aclose()
            await alice_ws.disconnect()
            await bob_ws.disconnect()

    run(body)


def test_account_update_after_a_real_batch_matches_account_overview(funded, listen_key, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    alice_key, bob_key = listen_key(alice), listen_key(bob)
    engine = SymbolEngine(btcusdt)
    price_publish(contract=btcusdt, index_price=D("50000"), mark_price=D("50000"), at=timezone.now())
    resting = order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.3"), price=D("50000"))
    batch_process(engine)  # bob's order rests before anyone listens

    async def body():
        async with RelayRunning():
            alice_ws = await connect(f"/ws/{alice_key}")
            bob_ws = await connect(f"/stream?streams={bob_key}")
            await sync_to_async(price_publish)(contract=btcusdt, index_price=D("50400"), mark_price=D("50420.5"),
                                               at=timezone.now())
            taker = await sync_to_async(order_place)(user=alice, contract=btcusdt, side="BUY", quantity=D("0.2"),
                                                     price=D("50000"), client_order_id="alice-1")
            await sync_to_async(batch_process)(engine)

            alice_frames = await frames_until(alice_ws, "ACCOUNT_UPDATE")
            (fill,) = [f for f in alice_frames if f["e"] == "ORDER_TRADE_UPDATE" and f["o"]["x"] == "TRADE"]
            o = fill["o"]
            assert (o["s"], o["c"], o["S"], o["o"], o["x"], o["X"], o["i"]) == (
                "BTCUSDT", "alice-1", "BUY", "LIMIT", "TRADE", "FILLED", taker.pk)
            assert (o["q"], o["l"], o["z"], o["L"], o["ap"], o["m"], o["N"]) == (
                "0.2", "0.2", "0.2", "50000", "50000", False, "USDT")
            assert D(o["n"]) > 0 and o["t"] > 0

            account = alice_frames[-1]
            overview = await sync_to_async(account_overview)(user=alice)
            usdt = overview.asset("USDT")
            (view,) = overview.positions
            assert account["a"]["B"] == [{"a": "USDT", "wb": f"{usdt.wallet_balance.normalize():f}",
                                          "cw": f"{usdt.cross_wallet.normalize():f}", "bc": "0"}]
            assert account["a"]["P"] == [{
                "s": "BTCUSDT", "pa": "0.2", "ep": "50000", "bep": "50000", "cr": "0",
                "up": f"{view.risk.unrealized_pnl.normalize():f}", "mt": "cross", "iw": "0", "ps": "BOTH",
            }]
            assert D(account["a"]["P"][0]["up"]) == D("0.2") * (D("50420.5") - D("50000"))
            assert account == account_update(overview=overview, assets={"USDT"}, symbols={"BTCUSDT"},
                                             event_ms=account["E"], transaction_ms=account["T"])

            # Bob (combined stream) sees his maker fill and his own ACCOUNT_UPDATE: a short position.
            bob_frames = [f["data"] for f in [await frame(bob_ws) for _ in range(2)]]
            assert [f["e"] for f in bob_frames] == ["ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"]
            assert (bob_frames[0]["o"]["i"], bob_frames[0]["o"]["X"], bob_frames[0]["o"]["m"]) == (
                resting.pk, "PARTIALLY_FILLED", True)
            assert bob_frames[1]["a"]["P"][0]["pa"] == "-0.2"

            # Cancelling the rest releases bob's order margin: ACCOUNT_UPDATE with balances only.
            await sync_to_async(order_cancel)(user=bob, order_id=resting.pk)
            await sync_to_async(batch_process)(engine)
            cancel = (await frame(bob_ws))["data"]
            assert (cancel["e"], cancel["o"]["x"], cancel["o"]["X"]) == ("ORDER_TRADE_UPDATE", "CANCELED", "CANCELED")
            released = (await frame(bob_ws))["data"]
            bob_usdt = (await sync_to_async(account_overview)(user=bob)).asset("USDT")
            assert released["e"] == "ACCOUNT_UPDATE" and released["a"]["P"] == []
            assert released["a"]["B"][0]["cw"] == f"{bob_usdt.cross_wallet.normalize():f}"
            await alice_ws.disconnect()
            await bob_ws.disconnect()

    run(body)


def test_listen_key_expiry_is_announced_then_the_stream_ends(funded, listen_key, monkeypatch):
    monkeypatch.setattr(consumers, "LISTEN_KEY_CHECK_SECONDS", 0.05)
    alice, bob = funded("alice"), funded("bob")
    alice_key, bob_key = listen_key(alice), listen_key(bob)

    async def body():
        alone = await connect(f"/ws/{alice_key}")
        mixed = await connect("/ws")
        assert await request(mixed, {"method": "SUBSCRIBE", "params": ["btcusdt@markPrice", alice_key, bob_key],
                                     "id": 1}) == {"result": None, "id": 1}
        await sync_to_async(listen_key_close)(user=alice)  # gone from Redis, as at the end of its TTL

        expired = await frame(alone)
        assert expired["e"] == "listenKeyExpired" and expired["listenKey"] == alice_key
        assert int(expired["E"]) > 0
        assert await alone.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_POLICY}
        await alone.disconnect()

        # A connection with other streams gets the event and keeps the rest.
        assert (await frame(mixed))["listenKey"] == alice_key
        listed = await request(mixed, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert listed == {"result": ["btcusdt@markPrice", bob_key], "id": 2}
        await mixed.disconnect()

    run(body)


def test_kept_alive_listen_key_is_not_expired(funded, listen_key, monkeypatch):
    """A key that is still valid survives the checks (and user events keep flowing)."""
    monkeypatch.setattr(consumers, "LISTEN_KEY_CHECK_SECONDS", 0.01)
    alice = funded("alice")
    key = listen_key(alice)

    async def body():
        async with RelayRunning():
            ws = await connect(f"/ws/{key}")
            for n in range(3):
                await publish(channel("events:BTCUSDT"), event(report(user_id=alice.pk, order_id=900 + n, exec_type="NEW",
                                                             status="NEW")))
                assert (await frame(ws))["o"]["i"] == 900 + n
            await ws.disconnect()

    run(body)


def test_margin_call_payload_is_checked_and_reshaped():
    isolated = {"e": "MARGIN_CALL", "E": "1587727187525", "extra": "dropped", "p": [
        {"s": "ETHUSDT", "ps": "BOTH", "pa": "-1.327", "mt": "ISOLATED", "iw": "31.50", "mp": "187.17127",
         "up": "-1.166074", "mm": "1.614445", "note": "dropped"}]}
    assert margin_call(isolated) == {"e": "MARGIN_CALL", "E": 1587727187525, "p": [
        {"s": "ETHUSDT", "ps": "BOTH", "pa": "-1.327", "mt": "ISOLATED", "iw": "31.5", "mp": "187.17127",
         "up": "-1.166074", "mm": "1.614445"}]}
    cross = isolated | {"cw": "3.16812045", "p": [isolated["p"][0] | {"mt": "CROSSED", "iw": "0"}]}
    assert margin_call(cross)["cw"] == "3.16812045" and list(margin_call(cross)) == ["e", "E", "cw", "p"]
    for bad in (isolated | {"e": "ACCOUNT_UPDATE"}, isolated | {"p": []}, isolated | {"E": "soon"},
                isolated | {"p": [isolated["p"][0] | {"mt": "cross"}]}, isolated | {"p": [{"s": "ETHUSDT"}]},
                isolated | {"cw": "NaN"}):
        with pytest.raises((KeyError, ValueError, TypeError)):
            margin_call(bad)
