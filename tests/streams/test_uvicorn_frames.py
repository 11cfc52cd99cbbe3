"""Stream frames under uvicorn, the web process's server: written straight to the connection's transport.

A uvicorn server runs in this test's event loop with the options of `scripts/web.py`
that concern websockets (the websockets sans-I/O protocol, no per-message compression)
and a real websockets client connects over loopback. The frames a client receives must
be the stream's payloads in order, whichever path wrote them: the pre-encoded frame
written to the transport (`MarketStreamConsumer._write_now`), or, where a frame cannot
be written as it is (a connection that negotiated compression), the ASGI send path.
"""
import asyncio
import json
import socket

import pytest

from apps.marketdata.consumers import MarketStreamConsumer
from tests.streams.test_fanout import TRADES, publish, subscribers, trade, until

uvicorn = pytest.importorskip("uvicorn")
websockets_client = pytest.importorskip("websockets.asyncio.client", reason="needs websockets >= 13")

from tests.marketdata.test_streams import run  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("deflate", [False, True], ids=["as served", "compression negotiated"])
def test_frames_reach_the_client_in_order_and_plain_ones_skip_the_send_path(btcusdt, clean_redis, monkeypatch,
                                                                              deflate):
    direct = []
    write_now = MarketStreamConsumer._write_now

    def counting(self, frame):
        written = write_now(self, frame)
        direct.append(written)
        return written

    monkeypatch.setattr(MarketStreamConsumer, "_write_now", counting)

    async def body():
        from exchange.asgi import application

        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(
            application, host="127.0.0.1", port=port, http="httptools", ws="websockets-sansio", lifespan="off",
            ws_per_message_deflate=deflate, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        try:
            await until(lambda: _holds(server.started), "uvicorn to start")
            async with websockets_client.connect(f"ws://127.0.0.1:{port}/ws/btcusdt@aggTrade",
                                                 open_timeout=10) as ws:
                await until(lambda: _one(subscribers(TRADES)), "the stream's subscription")
                await publish(*(trade(trade_id) for trade_id in range(21, 31)))
                received = [json.loads(await asyncio.wait_for(ws.recv(), 10))["a"] for _ in range(10)]
                assert received == list(range(21, 31))
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 15)
        if deflate:  # a compressed connection's frames are the websockets library's to build
            assert direct and not any(direct)
        else:
            assert direct and all(direct)

    run(body)


async def _one(count) -> bool:
    return await count == 1


async def _holds(value: bool) -> bool:
    return value
