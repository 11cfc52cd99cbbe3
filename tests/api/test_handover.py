"""Order entry handed to the contract's matcher (apps.trading.handover).

In process: this test plays the matcher (`announce`, `take`, `serve`) while a thread plays the
web request (`submit`, `result`), so every answer - the order, each refusal, the timeout - is
checked against what the web would have said placing the order itself. Then through the real
stack: the signed API in this process, a real matcher process serving the contract, stopped
gracefully and killed.
"""
import random
import signal
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client as DjangoClient

from apps.ledger.models import AccountKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create
from apps.ops.metrics import ORDER_ENTRY_ROUTE
from apps.trading import handover
from apps.trading.models import CommandStatus, Order, OrderCommand, OrderStatus
from apps.trading.services import OrderRequest, order_place
from exchange.errors import ErrorCode, ExchangeError
from exchange.redis import get_redis
from apps.trading.matcher import LEADER_KEY
from tests.api.conftest import Client
from tests.trading.test_matcher_process import assert_everything_exactly_once, start_matcher, stop, wait_for

D = Decimal


@pytest.fixture
def funded(api_user):
    """Users with a wallet (100,000 USDT unless given)."""
    return lambda name, amount=D("100000"): api_user(name, amount)[0]


def route_count(route: str) -> float:
    return ORDER_ENTRY_ROUTE.labels(route)._value.get()


def limit(user, contract, **params) -> OrderRequest:
    params = {"side": "BUY", "order_type": "LIMIT", "quantity": "0.010", "price": "50000",
              "time_in_force": "GTC", **params}
    return OrderRequest(user=user, contract=contract, params=params)


class WebRequest(threading.Thread):
    """The web's half in a thread: submit, then wait for the answer (no database needed)."""

    def __init__(self, request: OrderRequest):
        super().__init__(daemon=True)
        self.request, self.handed, self.result, self.error = request, None, None, None

    def run(self):
        try:
            self.handed = handover.submit(self.request)
            self.result = self.handed.result() if self.handed is not None else None
        except Exception as exc:  # what the API's exception handler would get
            self.error = exc


def served(contract, *requests: OrderRequest, limit_: int = 100) -> list[WebRequest]:
    """Submit each request from its own thread, then serve the queue as the matcher would."""
    handover.announce([contract.symbol])
    threads = [WebRequest(r) for r in requests]
    for thread in threads:
        thread.start()
    queue = handover.QUEUE_KEY.format(symbol=contract.symbol)
    wait_for(lambda: get_redis().llen(queue) == len(threads), 5, "the requests to be queued")
    taken = handover.take([contract.symbol], limit_)
    assert handover.serve(contract, taken[contract.symbol]) == len(threads)
    for thread in threads:
        thread.join(5)
    return threads


def test_without_a_serving_matcher_the_web_places_the_order(api_user, btcusdt):
    user, api = api_user("alice")
    before = route_count("web")
    response = api.call("POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                        quantity="0.010", price="50000")
    assert response.status_code == 200, response.content
    assert Order.objects.get(pk=response.json()["orderId"]).status == OrderStatus.PENDING_NEW
    assert route_count("web") == before + 1


def test_a_served_order_is_the_stored_order(funded, btcusdt):
    alice = funded("alice")
    before = route_count("matcher")
    [web] = served(btcusdt, limit(alice, btcusdt, client_order_id="handed-1"))
    order, stored = web.result, Order.objects.get(client_order_id="handed-1")
    assert web.error is None and order.pk == stored.pk
    for field in Order._meta.concrete_fields:  # every column, as the web would have it from the row
        assert getattr(order, field.attname) == getattr(stored, field.attname), field.name
    assert order.user == alice and order.contract == btcusdt and not order._state.adding
    assert stored.status == OrderStatus.PENDING_NEW and stored.margin_held > 0
    held = account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=alice)
    assert balance_amount(account=held, asset_code="USDT") == stored.margin_held
    assert route_count("matcher") == before + 1


def test_the_matcher_times_its_order_entry_per_contract(funded, btcusdt):
    """matcher_entry_seconds: with matcher_batch_seconds, where the matcher's loop spends its time."""
    from apps.trading.engine import SymbolEngine
    from apps.trading.matcher import ENTRY_SECONDS, Matcher

    def observed() -> tuple[float, float]:
        samples = {s.name: s.value for s in ENTRY_SECONDS.collect()[0].samples if s.labels.get("symbol") == "BTCUSDT"}
        return samples.get("matcher_entry_seconds_count", 0.0), samples.get("matcher_entry_seconds_sum", 0.0)

    matcher = Matcher(["BTCUSDT"])
    matcher.engines = {"BTCUSDT": SymbolEngine(btcusdt)}
    handover.announce(["BTCUSDT"])
    web = WebRequest(limit(funded("alice"), btcusdt, client_order_id="timed-1"))
    web.start()
    queue = handover.QUEUE_KEY.format(symbol="BTCUSDT")
    wait_for(lambda: get_redis().llen(queue) == 1, 5, "the request to be queued")
    count, total = observed()
    assert matcher._serve_handed() == 1
    web.join(5)
    assert web.error is None and web.result.client_order_id == "timed-1"
    assert observed()[0] == count + 1 and observed()[1] > total
    assert matcher._serve_handed() == 0 and observed()[0] == count + 1  # nothing queued: nothing timed


def test_refusals_come_back_with_the_web_placements_code_message_and_status(funded, btcusdt):
    alice, poor = funded("alice"), funded("poor", amount=D("1"))
    requests = [limit(poor, btcusdt), limit(alice, btcusdt, price="50000.05"),
                limit(alice, btcusdt, client_order_id="dup"), limit(alice, btcusdt, client_order_id="dup")]
    expected = []
    for request in requests[:2]:  # what placing them in the web says (in a transaction rolled back)
        with pytest.raises(ExchangeError) as refused:
            order_place(user=request.user, contract=btcusdt, **request.params)
        expected.append((refused.value.code, refused.value.msg, refused.value.http_status))
    threads = served(btcusdt, *requests)
    got = [(t.error.code, t.error.msg, t.error.http_status) if t.error else t.result for t in threads]
    assert got[0] == expected[0] and got[0][0] == ErrorCode.MARGIN_NOT_SUFFICIENT
    assert got[1] == expected[1] and got[1][0] == ErrorCode.BAD_PRECISION
    # Two orders of one group with one client order id: the first placed, the second refused.
    placed = [g for g in got[2:] if isinstance(g, Order)]
    refused = [g for g in got[2:] if not isinstance(g, Order)]
    assert len(placed) == 1 and refused == [(ErrorCode.CLIENT_ORDER_ID_DUPLICATED, "ClientOrderId is duplicated.", 400)]
    assert list(Order.objects.filter(user=alice).values_list("client_order_id", flat=True)) == ["dup"]
    assert not Order.objects.filter(user=poor).exists()


def test_an_unexpected_error_in_the_matcher_reaches_the_web_as_one(funded, btcusdt, monkeypatch):
    """Not an ExchangeError with a made-up code: the web raises, and the API's exception handler
    logs it and answers the 500 it answers for any unexpected error."""
    monkeypatch.setattr(handover, "orders_place_many", lambda requests: [KeyError("boom")] * len(requests))
    [web] = served(btcusdt, limit(funded("alice"), btcusdt))
    assert type(web.error) is RuntimeError and "KeyError" in str(web.error) and web.result is None


def test_no_answer_in_time_is_1007_and_a_late_request_is_never_placed(funded, btcusdt, settings):
    settings.ORDER_HANDOVER_WAIT_SECONDS = 0.3
    alice = funded("alice")
    handover.announce([btcusdt.symbol])  # live, but nobody serves the queue
    web = WebRequest(limit(alice, btcusdt))
    web.start()
    web.join(5)
    assert web.error is not None and web.result is None
    assert (web.error.code, web.error.http_status) == (ErrorCode.TIMEOUT, 503)
    assert "status unknown" in web.error.msg
    taken = handover.take([btcusdt.symbol], 100)  # the matcher comes back after the deadline
    assert len(taken[btcusdt.symbol]) == 1
    assert handover.serve(btcusdt, taken[btcusdt.symbol]) == 0
    assert not Order.objects.filter(user=alice).exists()


def test_zero_wait_never_hands_over(funded, btcusdt, settings):
    settings.ORDER_HANDOVER_WAIT_SECONDS = 0
    handover.announce([btcusdt.symbol])
    assert handover.submit(limit(funded("alice"), btcusdt)) is None
    assert get_redis().llen(handover.QUEUE_KEY.format(symbol=btcusdt.symbol)) == 0


def test_inside_a_transaction_the_order_stays_in_it(funded, btcusdt):
    """A caller in a transaction (this test's) places the order itself: a matcher's commit would
    not roll back with the caller's."""
    handover.announce([btcusdt.symbol])
    assert handover.submit(limit(funded("alice"), btcusdt)) is None
    assert get_redis().llen(handover.QUEUE_KEY.format(symbol=btcusdt.symbol)) == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_when_the_leader_dies_the_standby_answers_the_waiting_orders(api_user, btcusdt):
    """Orders queued while the leader is dead wait for the standby (the mark outlives the leader
    by up to LIVE_SECONDS), which takes the lease and answers them within their wait."""
    buyer, buyer_api = api_user("buyer")
    live = handover.LIVE_KEY.format(symbol=btcusdt.symbol)
    first, second = start_matcher(), start_matcher()
    processes = {p.pid: p for p in (first, second)}
    try:
        leader = int(wait_for(lambda: get_redis().get(live), 60, "a leader to serve BTCUSDT"))
        assert leader in processes and get_redis().get(LEADER_KEY.format(symbol="BTCUSDT")) == str(leader).encode()
        processes[leader].send_signal(signal.SIGKILL)
        processes[leader].wait(10)
        response = buyer_api.call("POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                                  timeInForce="GTC", quantity="0.010", price="49000", newClientOrderId="during")
        assert response.status_code == 200, response.content
        standby = next(pid for pid in processes if pid != leader)
        assert get_redis().get(live) == str(standby).encode()
        assert wait_for(lambda: Order.objects.get(client_order_id="during").status == OrderStatus.NEW, 10,
                        "the standby to book the order")
    finally:
        for process in processes.values():
            stop(process)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_matcher_places_and_matches_api_orders_then_hands_back(api_user, btcusdt):
    """Signed API orders while a matcher process serves BTCUSDT: placed by it (and matched, the
    RESULT answer says so); after SIGTERM it retracts and the web places them itself; after
    SIGKILL its mark lapses, in-between orders are -1007 and none of them is placed."""
    buyer, buyer_api = api_user("buyer")
    seller, seller_api = api_user("seller")
    live = handover.LIVE_KEY.format(symbol=btcusdt.symbol)
    matcher = start_matcher()
    try:
        wait_for(lambda: get_redis().exists(live), 60, "the matcher to serve BTCUSDT")
        before = route_count("matcher")
        ask = seller_api.call("POST", "/fapi/v1/order", symbol="BTCUSDT", side="SELL", type="LIMIT",
                              timeInForce="GTC", quantity="0.010", price="50000")
        assert ask.status_code == 200, ask.content
        bid = buyer_api.call("POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                             timeInForce="GTC", quantity="0.010", price="50000", newOrderRespType="RESULT")
        assert bid.status_code == 200, bid.content
        assert bid.json()["status"] == "FILLED" and bid.json()["executedQty"] == "0.01"
        assert route_count("matcher") == before + 2
        assert wait_for(lambda: Order.objects.get(pk=ask.json()["orderId"]).status == OrderStatus.FILLED, 10,
                        "the maker to be filled")
    finally:
        stop(matcher)  # SIGTERM: it retracts before exiting
    assert not get_redis().exists(live)
    before = route_count("web")
    after = buyer_api.call("POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                           quantity="0.010", price="49000")
    assert after.status_code == 200 and route_count("web") == before + 1

    matcher = start_matcher()
    try:
        wait_for(lambda: get_redis().exists(live), 60, "the new matcher to serve BTCUSDT")
        matcher.send_signal(signal.SIGKILL)
        matcher.wait(10)
        orders = Order.objects.count()
        unknown = buyer_api.call("POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                                 timeInForce="GTC", quantity="0.010", price="48000", newClientOrderId="unknown-1")
        assert unknown.status_code == 503 and unknown.json()["code"] == ErrorCode.TIMEOUT
        wait_for(lambda: not get_redis().exists(live), handover.LIVE_SECONDS + 2, "the dead matcher's mark to lapse")
        time.sleep(0.1)
        assert Order.objects.count() == orders and not Order.objects.filter(client_order_id="unknown-1").exists()
        again = buyer_api.call("POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT",
                               timeInForce="GTC", quantity="0.010", price="48000", newClientOrderId="unknown-1")
        assert again.status_code == 200, again.content  # the client's retry, placed by the web
    finally:
        stop(matcher)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_sigkill_under_load_loses_and_doubles_nothing(api_user, btcusdt, settings):
    """Four signed clients send orders while the matcher that serves them is SIGKILLed, and then
    restarted. Every order answered 200 exists exactly once, with the id it was answered with. An
    order answered -1007 (status unknown) exists at most once. Nothing else is answered. After the
    restart every journal command is processed once, the trades equal a replay of the journal
    through a fresh book, and every invariant holds."""
    settings.API_IP_WEIGHT_LIMIT_1M = settings.API_KEY_WEIGHT_LIMIT_1M = 1_000_000
    settings.API_ACCOUNT_ORDER_LIMIT_1M = 1_000_000
    btcusdt.max_open_orders = 1_000_000
    btcusdt.save(update_fields=["max_open_orders"])
    apis = [api_user(f"trader{i}")[1] for i in range(4)]
    live = handover.LIVE_KEY.format(symbol=btcusdt.symbol)
    answers: dict[str, tuple[int, dict]] = {}
    stopping = threading.Event()

    def trade(index: int, api) -> None:
        own = Client(DjangoClient(), api.api_key, api.secret)  # a test client per thread
        rng, n = random.Random(index), 0
        try:
            while not stopping.is_set():
                n += 1
                side = rng.choice(("BUY", "SELL"))
                offset = rng.randint(-20, 20)  # around 50,000: about half of them cross
                price = D(50000) + (offset if side == "BUY" else -offset) * D("0.5")
                client_id = f"k{index}-{n}"
                response = own.call("POST", "/fapi/v1/order", symbol="BTCUSDT", side=side, type="LIMIT",
                                    timeInForce="GTC", quantity=f"{rng.randint(1, 20) / 1000:.3f}", price=str(price),
                                    newClientOrderId=client_id)
                answers[client_id] = (response.status_code, response.json())
        finally:
            connection.close()

    matcher = start_matcher()
    threads = [threading.Thread(target=trade, args=(i, api), daemon=True) for i, api in enumerate(apis)]
    try:
        wait_for(lambda: get_redis().exists(live), 60, "the matcher to serve BTCUSDT")
        for thread in threads:
            thread.start()
        wait_for(lambda: len(answers) >= 150, 120, "150 answers")
        matcher.send_signal(signal.SIGKILL)
        matcher.wait(10)
        at_kill = len(answers)
        wait_for(lambda: not get_redis().exists(live), handover.LIVE_SECONDS + 2, "the dead matcher's mark to lapse")
        wait_for(lambda: len(answers) >= at_kill + 40, 120, "orders placed by the web while no matcher serves")
        matcher = start_matcher()
        wait_for(lambda: get_redis().exists(live), 60, "the restarted matcher to serve BTCUSDT")
        served = len(answers)
        wait_for(lambda: len(answers) >= served + 150, 120, "150 answers from the restarted matcher")
    finally:
        stopping.set()
        for thread in threads:
            thread.join(30)
    try:
        wait_for(lambda: not OrderCommand.objects.exclude(status=CommandStatus.DONE).exists(), 120,
                 "every command processed")
    finally:
        stop(matcher)

    statuses = {status for status, _ in answers.values()}
    assert statuses <= {200, 503}, statuses
    unknown = [cid for cid, (status, body) in answers.items() if status == 503]
    assert unknown and all(answers[cid][1]["code"] == ErrorCode.TIMEOUT for cid in unknown)
    stored = {}
    for client_id, pk in Order.objects.values_list("client_order_id", "pk"):
        assert client_id not in stored, f"{client_id} stored twice"
        stored[client_id] = pk
    for client_id, (status, body) in answers.items():
        if status == 200:
            assert stored.get(client_id) == body["orderId"], client_id
    assert set(stored) <= set(answers)  # nothing placed that was never sent
    assert_everything_exactly_once(btcusdt)
