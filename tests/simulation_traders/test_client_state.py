"""The traders' client side without a server: signing, the retry policy, the weight
budget, and how stream events and REST answers update what a participant knows.

The retry-policy tests put httpx's in-memory transport where the network would be (a
handler that answers as the web server does, or raises the transport error a stopped
server causes); the real web server, stopped and restarted under the traders, is in
test_demo_traders_process.py.
"""
import asyncio
import hashlib
import hmac
import socket
from decimal import Decimal
from urllib.parse import parse_qsl

import httpx
import pytest

from apps.simulation.traders.client import (
    KEY,
    SIGNED,
    ApiError,
    RestClient,
    ServerUnavailable,
    Stopping,
    WeightBudget,
)
from apps.simulation.traders.state import MarketState, Portfolio, tag_of

D = Decimal
SECRET = "s" * 64
API_KEY = "K" * 64


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run(coro):
    return asyncio.run(coro)


async def _call(handler, method, path, params=None, *, security=SIGNED, budget=None):
    stopping = asyncio.Event()
    async with httpx.AsyncClient(base_url="http://exchange.test", transport=httpx.MockTransport(handler)) as http:
        client = RestClient(http, budget=budget or WeightBudget(60000), stopping=stopping, api_key=API_KEY,
                            secret=SECRET, name="t")
        return await client.call(method, path, params, security=security)


def test_signed_requests_carry_key_timestamp_and_an_hmac_of_the_exact_query():
    seen = []

    def handler(request: httpx.Request):
        query = request.url.query.decode()
        payload, signature = query.rsplit("&signature=", 1)
        assert hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest() == signature
        assert request.headers["X-MBX-APIKEY"] == API_KEY and request.content == b""
        seen.append(dict(parse_qsl(payload)))
        return httpx.Response(200, json={"ok": True})

    async def two_calls():
        stopping = asyncio.Event()
        async with httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(handler)) as http:
            client = RestClient(http, budget=WeightBudget(60000), stopping=stopping, api_key=API_KEY,
                                secret=SECRET)
            for _ in range(2):
                await client.call("POST", "/fapi/v1/order", {"symbol": "BTCUSDT", "quantity": "0.001"},
                                  security=SIGNED)

    run(two_calls())
    assert [s["symbol"] for s in seen] == ["BTCUSDT", "BTCUSDT"]
    # Equal requests in one millisecond would repeat a signature (-1099): timestamps increase.
    assert int(seen[1]["timestamp"]) > int(seen[0]["timestamp"])
    assert seen[0]["recvWindow"] == "20000"


def test_keyed_requests_are_not_signed():
    def handler(request):
        assert request.headers["X-MBX-APIKEY"] == API_KEY and b"signature" not in request.url.query
        return httpx.Response(200, json={"listenKey": "L" * 64})

    assert run(_call(handler, "POST", "/fapi/v1/listenKey", security=KEY)) == {"listenKey": "L" * 64}


def test_an_unreachable_server_is_retried_until_it_answers():
    attempts = []

    def handler(request):
        attempts.append(request.method)
        if len(attempts) < 3:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"orderId": 7})

    assert run(_call(handler, "POST", "/fapi/v1/order", {"symbol": "BTCUSDT"})) == {"orderId": 7}
    assert attempts == ["POST"] * 3  # nothing was sent before: resending is safe


def test_a_lost_answer_to_an_order_is_not_resent():
    attempts = []

    def handler(request):
        attempts.append(request.method)
        raise httpx.ReadError("connection reset", request=request)

    with pytest.raises(ServerUnavailable):
        run(_call(handler, "POST", "/fapi/v1/order", {"symbol": "BTCUSDT"}))
    assert attempts == ["POST"]


def test_a_get_is_repeated_after_a_5xx_a_post_is_not():
    answers = iter([httpx.Response(503), httpx.Response(200, json=[])])
    assert run(_call(lambda request: next(answers), "GET", "/fapi/v1/openOrders")) == []
    with pytest.raises(ServerUnavailable):
        run(_call(lambda request: httpx.Response(500), "DELETE", "/fapi/v1/order"))


def test_exchange_errors_carry_code_and_message():
    def handler(request):
        return httpx.Response(400, json={"code": -2019, "msg": "Margin is insufficient."})

    with pytest.raises(ApiError) as refused:
        run(_call(handler, "POST", "/fapi/v1/order"))
    assert (refused.value.status, refused.value.code, refused.value.msg) == (400, -2019, "Margin is insufficient.")


def test_429_holds_every_participant_off_then_retries():
    clock = FakeClock()
    budget = WeightBudget(60000, clock=clock)
    answers = iter([httpx.Response(429, headers={"Retry-After": "0"}, json={"code": -1003, "msg": "Too many"}),
                    httpx.Response(200, json={"ok": 1})])
    assert run(_call(lambda request: next(answers), "GET", "/fapi/v1/time", security="NONE", budget=budget)) == {
        "ok": 1}
    budget.hold_off(30)
    assert budget.delay_for(1) == pytest.approx(30)


def test_weight_budget_refills_at_the_configured_rate():
    clock = FakeClock()
    budget = WeightBudget(600, clock=clock)  # 10 per second, 100 of burst
    assert budget.delay_for(100) == 0
    budget.spend(100)
    assert budget.delay_for(5) == pytest.approx(0.5)
    clock.now += 0.5
    assert budget.delay_for(5) == 0


def test_stopping_interrupts_a_retry_wait():
    async def body():
        stopping = asyncio.Event()

        def handler(request):
            stopping.set()  # the stop arrives while the server is down
            raise httpx.ConnectError("refused", request=request)

        async with httpx.AsyncClient(base_url="http://x", transport=httpx.MockTransport(handler)) as http:
            client = RestClient(http, budget=WeightBudget(600), stopping=stopping)
            await client.call("GET", "/fapi/v1/time")

    with pytest.raises(Stopping):
        run(body())


# -- state ----------------------------------------------------------------------------------


def test_market_state_from_streams_and_staleness():
    clock = FakeClock()
    market = MarketState(["BTCUSDT"], clock=clock)
    assert market.view("BTCUSDT", max_age=10) is None
    market.on_stream_message({"e": "markPriceUpdate", "s": "BTCUSDT", "p": "90010.30000000", "i": "90000.12"})
    market.on_stream_message({"e": "bookTicker", "s": "BTCUSDT", "b": "90000.1", "a": "0"})
    market.on_stream_message({"e": "markPriceUpdate", "s": "ETHUSDT", "p": "3000"})  # not traded: ignored
    view = market.view("BTCUSDT", max_age=10)
    assert (view.mark, view.index, view.best_bid, view.best_ask) == (D("90010.3"), D("90000.12"), D("90000.1"), None)
    clock.now += 11
    assert market.view("BTCUSDT", max_age=10) is None


def test_a_streamed_bad_tick_is_dropped_until_the_server_confirms_it():
    market = MarketState(["BTCUSDT"], clock=FakeClock())
    market.on_mark("BTCUSDT", "90000", "90000")
    market.on_stream_message({"e": "markPriceUpdate", "s": "BTCUSDT", "p": "50000", "i": "50000"})
    assert market.symbols["BTCUSDT"].mark == D("90000") and market.dropped == 1
    market.on_stream_message({"e": "markPriceUpdate", "s": "BTCUSDT", "p": "91000", "i": "90900"})
    assert market.symbols["BTCUSDT"].mark == D("91000")
    # A top of book far from the mark is no guide for post-only prices.
    market.on_book("BTCUSDT", "50000", "91010.5")
    assert (market.symbols["BTCUSDT"].best_bid, market.symbols["BTCUSDT"].best_ask) == (None, D("91010.5"))
    market.on_mark("BTCUSDT", "70000", "70000", trusted=True)  # read over REST: the server's own mark
    assert market.symbols["BTCUSDT"].mark == D("70000")


def order_answer(order_id, status="NEW", executed="0", client_id="dtm1-abcde-B0-1"):
    return {"orderId": order_id, "symbol": "BTCUSDT", "status": status, "clientOrderId": client_id,
            "side": "BUY", "price": "90000", "origQty": "0.033", "executedQty": executed}


def test_portfolio_follows_answers_events_and_snapshots():
    p = Portfolio()
    p.on_order_answer(order_answer(1))
    p.on_order_answer(order_answer(2, client_id="dtm1-abcde-A1-2"))
    assert [tag_of(o.client_id) for o in p.orders_of("BTCUSDT")] == ["B0", "A1"]
    symbols = {"BTCUSDT"}
    p.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": {"s": "BTCUSDT", "i": 1, "x": "TRADE", "X": "PARTIALLY_FILLED",
                                                      "z": "0.01", "o": "LIMIT"}}, known_symbols=symbols)
    assert p.orders[1].executed == D("0.01") and p.fills == 1
    p.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": {"s": "BTCUSDT", "i": 2, "x": "EXPIRED", "X": "EXPIRED",
                                                      "o": "LIMIT"}}, known_symbols=symbols)
    assert set(p.orders) == {1}
    for x, status in (("NEW", "NEW"), ("TRADE", "PARTIALLY_FILLED"), ("EXPIRED", "EXPIRED")):
        p.on_user_event({"e": "ORDER_TRADE_UPDATE", "o": {"s": "BTCUSDT", "i": 99, "x": x, "X": status,
                                                          "o": "LIQUIDATION"}}, known_symbols=symbols)
    assert p.liquidations == 1 and 99 not in p.orders
    p.on_user_event({"e": "ACCOUNT_UPDATE", "a": {"B": [{"a": "USDT", "wb": "99990.5"}],
                                                  "P": [{"s": "BTCUSDT", "pa": "0.01"}]}}, known_symbols=symbols)
    assert (p.wallet, p.position("BTCUSDT")) == (D("99990.5"), D("0.01"))
    p.load_open_orders("BTCUSDT", [order_answer(3)])
    assert set(p.orders) == {3}
    p.load_account({"assets": [{"asset": "USDT", "walletBalance": "5", "availableBalance": "4"}],
                    "positions": [{"symbol": "BTCUSDT", "positionAmt": "0"}, {"symbol": "ETHUSDT",
                                                                             "positionAmt": "-1.5"}]})
    assert (p.wallet, p.available, p.positions, p.loaded) == (D(5), D(4), {"ETHUSDT": D("-1.5")}, True)


def test_duration_ends_a_run_that_is_still_waiting_for_the_web_server():
    from apps.simulation.traders.runner import RunConfig, run_traders

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = RunConfig(base_url=f"http://127.0.0.1:{port}", seed=1, duration=1.0)
    summary = run(run_traders(config=config, credentials=[]))
    assert summary["participants"] == [] and summary["stopped_at"] >= summary["started_at"]


def test_market_state_follows_listings_and_keeps_what_it_knows():
    market = MarketState(["BTCUSDT", "BTCUSDT_261225"], clock=FakeClock())
    market.on_mark("BTCUSDT", "90000", "90000")
    assert market.set_symbols(["BTCUSDT", "BTCUSDT_261225"]) is False and market.version == 0
    assert market.set_symbols(["BTCUSDT", "BTCUSDT_270326"]) is True and market.version == 1
    assert list(market.symbols) == ["BTCUSDT", "BTCUSDT_270326"]
    assert market.symbols["BTCUSDT"].mark == D("90000") and market.symbols["BTCUSDT_270326"].mark is None
