"""The websocket streams end to end, with real processes and a real client.

daphne (`exchange.asgi:application`) and the stream relay (`manage.py
run_stream_relay`) are started as OS processes on a free loopback port, against this
test's database and Redis (as `tests/trading/test_matcher_process.py` starts the
matcher); the `websockets` client subscribes over TCP (the test is skipped where that
package is missing). Every wait is bounded, and the processes are stopped (killed if
need be) in `finally`.
"""
import asyncio
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
from django.db import connection
from django.utils import timezone

from apps.accounts.services import listen_key_start
from apps.marketdata.consumers import CLOSE_POLICY
from apps.marketdata.services import price_publish
from exchange.redis import get_redis

from tests.marketdata.test_streams import run

websockets_client = pytest.importorskip("websockets.asyncio.client", reason="needs websockets >= 13")
from websockets.exceptions import ConnectionClosed  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
D = Decimal
RELAY_HEARTBEAT = "ops:heartbeat:stream_relay"
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ)
    env["DATABASE_URL"] = _database_url()
    env["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)


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


def test_daphne_and_relay_processes_serve_mark_price_and_user_stream(btcusdt, funded, clean_redis):
    alice = funded("alice")
    key = listen_key_start(user=alice)
    redis = get_redis()
    redis.delete(RELAY_HEARTBEAT)
    port = _free_port()
    with tempfile.TemporaryFile() as web_log, tempfile.TemporaryFile() as relay_log:
        web = _start(["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "exchange.asgi:application"], web_log)
        relay = _start(["manage.py", "run_stream_relay"], relay_log)
        try:
            _wait_for(lambda: _accepts(port), 60, "daphne to listen", (web, relay))
            _wait_for(lambda: redis.get(RELAY_HEARTBEAT), 60, "the relay's heartbeat", (web, relay))

            def connect(url):
                return websockets_client.connect(url, open_timeout=30, close_timeout=10)

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
                    await sync_to_async(redis.publish)("events:BTCUSDT", json.dumps(
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
                finally:
                    await market.close()
                    await user.close()

            run(body)
        except BaseException:
            for name, log in (("daphne", web_log), ("relay", relay_log)):
                log.seek(0)
                sys.stderr.write(f"--- {name} output ---\n{log.read().decode(errors='replace')[-4000:]}\n")
            raise
        finally:
            _stop(web)
            _stop(relay)
        assert relay.returncode == 0  # stopped cleanly on SIGTERM
