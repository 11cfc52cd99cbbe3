"""The websocket streams end to end, with real processes and a real client (market, user, MARGIN_CALL).

The web process (`scripts/web.py`, uvicorn serving `exchange.asgi:application`) and the
stream relay (`manage.py run_stream_relay`) are started as OS processes on a free loopback port, against this
test's database and Redis (as `tests/trading/test_matcher_process.py` starts the
matcher); the `websockets` client subscribes over TCP (the test is skipped where that
package is missing). Every wait is bounded, and the processes are stopped (killed if
need be) in `finally`.
"""
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from apps.accounts.services import listen_key_start
from apps.liquidation.services import margin_calls_evaluate
from apps.marketdata.consumers import CLOSE_POLICY, CLOSE_SLOW
from apps.marketdata.fanout import channel_of
from apps.marketdata.relay import stream_update
from apps.marketdata.services import price_publish
from apps.positions.selectors import account_overview
from apps.trading.engine import SymbolEngine
from apps.trading.matching import EVENTS_CHANNEL, batch_process
from apps.trading.services import order_place
from exchange.redis import get_redis

from tests.marketdata.test_streams import run

websockets_client = pytest.importorskip("websockets.asyncio.client", reason="needs websockets >= 13")
from websockets.exceptions import ConnectionClosed  # noqa: E402

from tests.database import database_url  # noqa: E402
from tests.procfile import web_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
D = Decimal
RELAY_HEARTBEAT = "ops:heartbeat:stream_relay"
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url()
    env["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(command: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_for(predicate, timeout: float, what: str, processes=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{process.args} exited with {process.returncode} while waiting for {what}")
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def serving():
    """The web process and the stream relay on a free port; yields the port. Stopped on the way out."""
    redis = get_redis()
    redis.delete(RELAY_HEARTBEAT)
    port = _free_port()
    with tempfile.TemporaryFile() as web_log, tempfile.TemporaryFile() as relay_log:
        web = _start(web_command(port), web_log)
        relay = _start([sys.executable, "manage.py", "run_stream_relay"], relay_log)
        try:
            _wait_for(lambda: _accepts(port), 60, "the web process to listen", (web, relay))
            _wait_for(lambda: redis.get(RELAY_HEARTBEAT), 60, "the relay's heartbeat", (web, relay))
            yield port
        except BaseException:
            for name, log in (("web", web_log), ("relay", relay_log)):
                log.seek(0)
                sys.stderr.write(f"--- {name} output ---\n{log.read().decode(errors='replace')[-4000:]}\n")
            raise
        finally:
            _stop(web)
            _stop(relay)
        assert relay.returncode == 0  # stopped cleanly on SIGTERM


def connect(url):
    return websockets_client.connect(url, open_timeout=30, close_timeout=10)


def test_web_and_relay_processes_serve_mark_price_and_user_stream(btcusdt, funded, clean_redis):
    alice = funded("alice")
    key = listen_key_start(user=alice)
    redis = get_redis()
    with serving() as port:
        async def body():
            market = await connect(f"ws://127.0.0.1:{port}/ws")
            user = await connect(f"ws://127.0.0.1:{port}/ws/{key}")
            try:
                await market.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@markPrice"], "id": 1}))
                assert json.loads(await asyncio.wait_for(market.recv(), 30)) == {"result": None, "id": 1}

                await sync_to_async(price_publish)(contract=btcusdt, index_price=D("90000.12"),
                                                   mark_price=D("90010.3"), at=timezone.now())
                update = json.loads(await asyncio.wait_for(market.recv(), 30))
                assert {k: update[k] for k in ("e", "s", "p", "i")} == {
                    "e": "markPriceUpdate", "s": "BTCUSDT", "p": "90010.30000000", "i": "90000.12000000"}

                # The relay process routes an execution report to the listen key's connection.
                report = {"order_id": 71, "user_id": alice.pk, "client_order_id": "c-71", "side": "BUY",
                          "type": "LIMIT", "time_in_force": "GTC", "orig_qty": "0.01", "price": "89000",
                          "stop_price": "0", "avg_price": "0", "status": "NEW", "exec_type": "NEW",
                          "executed_qty": "0", "reduce_only": False, "working_type": "CONTRACT_PRICE",
                          "last_qty": "0", "last_price": "0", "commission": "0", "commission_asset": "USDT",
                          "realized_pnl": "0", "trade_id": 0, "is_maker": False}
                await sync_to_async(redis.publish)(EVENTS_CHANNEL.format(symbol="BTCUSDT"), json.dumps(
                    {"symbol": "BTCUSDT", "time": 1, "last_seq": 1, "trades": [], "orders": [report],
                     "depth": {"bids": [], "asks": []}}))
                order = json.loads(await asyncio.wait_for(user.recv(), 30))
                assert (order["e"], order["o"]["i"], order["o"]["c"], order["o"]["X"]) == (
                    "ORDER_TRADE_UPDATE", 71, "c-71", "NEW")

                # An unknown listen key: error frame, then close 4008 (1008 in the application range).
                stranger = await connect(f"ws://127.0.0.1:{port}/ws/{'Q' * 64}")
                assert json.loads(await asyncio.wait_for(stranger.recv(), 30))["error"]["code"] == 2
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(stranger.recv(), 30)
                assert closed.value.rcvd.code == CLOSE_POLICY == 4008

                # A message larger than the server takes (scripts/web.py: --ws-max-size) closes its
                # connection with 1009 "message too big".
                greedy = await connect(f"ws://127.0.0.1:{port}/ws")
                await greedy.send(json.dumps({"method": "SUBSCRIBE", "params": ["x" * 100_000], "id": 1}))
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(greedy.recv(), 30)
                assert closed.value.rcvd.code == 1009
            finally:
                await market.close()
                await user.close()

        run(body)


def test_margin_call_reaches_its_user_data_stream_only(btcusdt, funded, clean_redis):
    """apps.liquidation's margin call, published on user:margin_call, arrives as Binance's MARGIN_CALL."""
    alice, bob = funded("alice", D("3000")), funded("bob")
    alice_key, bob_key = listen_key_start(user=alice), listen_key_start(user=bob)
    engine = SymbolEngine(btcusdt)

    def mark(price: str) -> None:
        price_publish(contract=btcusdt, index_price=D(price), mark_price=D(price), at=timezone.now())

    mark("50000")
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("1"), price=D("50000"))
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("1"), price=D("50000"))
    batch_process(engine)  # alice is long 1 BTC at 50,000 on a 3,000 USDT wallet
    mark("47200")

    with serving() as port:
        async def body():
            alice_ws = await connect(f"ws://127.0.0.1:{port}/ws/{alice_key}")
            bob_ws = await connect(f"ws://127.0.0.1:{port}/stream?streams={bob_key}")
            try:
                # The streams are live once the handshake is done: the call is made only now.
                [call] = await sync_to_async(margin_calls_evaluate)(user=alice)
                event = json.loads(await asyncio.wait_for(alice_ws.recv(), 30))
                assert isinstance(event["E"], int) and event == call.payload
                # cw: alice's cross wallet (3,000 less her taker fee); up: 1 x (47,200 - 50,000); mm: 0.4% of 47,200.
                usdt = (await sync_to_async(account_overview)(user=alice)).asset("USDT")
                assert D(event["cw"]) == usdt.cross_wallet < D("3000")
                assert event == {
                    "e": "MARGIN_CALL", "E": event["E"], "cw": event["cw"],
                    "p": [{"s": "BTCUSDT", "ps": "BOTH", "pa": "1", "mt": "CROSSED", "iw": "0", "mp": "47200",
                           "up": "-2800", "mm": "188.8"}],
                }
                # Bob (short 1 BTC, in profit) gets no call; had alice's leaked to him,
                # it would come before his own order's update.
                assert await sync_to_async(margin_calls_evaluate)(user=bob) == []
                await sync_to_async(order_place)(user=bob, contract=btcusdt, side="SELL", quantity=D("0.01"),
                                                 price=D("48000"), client_order_id="bob-rest")
                await sync_to_async(batch_process)(engine)
                frame = json.loads(await asyncio.wait_for(bob_ws.recv(), 30))
                assert frame["stream"] == bob_key
                assert (frame["data"]["e"], frame["data"]["o"]["c"]) == ("ORDER_TRADE_UPDATE", "bob-rest")
            finally:
                await alice_ws.close()
                await bob_ws.close()

        run(body)


def test_web_closes_a_client_that_stops_reading_and_keeps_serving_the_others(btcusdt, clean_redis):
    """The transport's back-pressure reaches the fan-out: the frames of a client that reads nothing
    wait in its bounded queue, and when that fills the client is dropped with 4013."""
    redis = get_redis()
    depth = channel_of("md.depth.BTCUSDT")
    levels = [[f"{40000 + i}.5", "1.25"] for i in range(200)]  # a deep diff: ~4 KB a frame

    def publish_depth(first: int, count: int) -> None:
        pipe = redis.pipeline(transaction=False)
        for u in range(first, first + count):
            pipe.publish(*stream_update("md.depth.BTCUSDT", "depth", "BTCUSDT", {
                "e": "depthUpdate", "E": u, "T": u, "s": "BTCUSDT", "U": u, "u": u, "pu": u - 1, "b": levels,
                "a": []}))
        pipe.execute()

    with serving() as port:
        async def body():
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server backs up soon
            sock.connect(("127.0.0.1", port))
            # max_queue=1: the client library stops reading the socket while a frame waits unread.
            slow = await websockets_client.connect(f"ws://127.0.0.1:{port}/ws/btcusdt@depth", sock=sock,
                                                   max_queue=1, open_timeout=30, close_timeout=10)
            healthy = await connect(f"ws://127.0.0.1:{port}/ws/btcusdt@aggTrade")
            try:
                published = 0
                while await sync_to_async(redis.pubsub_numsub)(depth) == [(depth.encode(), 1)]:
                    assert published < 10_000, "the client that reads nothing was never dropped"
                    await sync_to_async(publish_depth)(published + 1, 250)
                    published += 250
                # Its last frames are what the server had written before it gave up, then the close:
                # 4013 if the client reads up to it within the server's close handshake timeout
                # (uvicorn: 1 s), otherwise the server drops the TCP connection without it.
                received = 0
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(slow.recv(), 30)
                        received += 1
                assert received < published
                assert closed.value.rcvd is None or closed.value.rcvd.code == CLOSE_SLOW == 4013
                # The other client's stream never stopped.
                await sync_to_async(redis.publish)(*stream_update("md.trade.BTCUSDT", "aggTrade", "BTCUSDT", [
                    {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 77, "p": "50000", "q": "0.001", "f": 77,
                     "l": 77, "T": 1, "m": False}]))
                # (Read up to it: the relay may have more of this test's trades queued.)
                for _ in range(1000):
                    if json.loads(await asyncio.wait_for(healthy.recv(), 30))["a"] == 77:
                        break
                else:
                    raise AssertionError("the healthy client's stream stopped")
            finally:
                await slow.close()
                await healthy.close()

        run(body)
