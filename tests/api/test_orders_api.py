"""Order endpoints through the real HTTP stack: signing, parameters, errors, isolation between users."""
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.ledger.models import Balance, LedgerTransaction
from apps.marketdata.services import price_publish
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.models import Order, OrderCommand

D = Decimal
ORDER = "/fapi/v1/order"


def db_state():
    return (Order.objects.count(), OrderCommand.objects.count(), LedgerTransaction.objects.count(),
            sorted(Balance.objects.values_list("account_id", "amount")))


def error(response, status, code):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code and body["msg"], body
    return body


def test_new_order_query_and_cancel(api_user, btcusdt):
    _, alice = api_user("alice")
    response = alice.form("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                          quantity="0.010", price="50000.0", newClientOrderId="my-order_1")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "NEW" and body["clientOrderId"] == "my-order_1" and body["type"] == "LIMIT"
    assert (body["price"], body["origQty"], body["executedQty"], body["positionSide"]) == ("50000", "0.01", "0", "BOTH")
    assert isinstance(body["orderId"], int) and isinstance(body["updateTime"], int) and body["updateTime"] > 0
    assert "X-MBX-ORDER-COUNT-1M" in response.headers and "X-MBX-USED-WEIGHT-1M" in response.headers

    got = alice.call("GET", ORDER, symbol="BTCUSDT", origClientOrderId="my-order_1").json()
    assert got["orderId"] == body["orderId"]
    open_orders = alice.call("GET", "/fapi/v1/openOrders", symbol="BTCUSDT").json()
    assert [o["orderId"] for o in open_orders] == [body["orderId"]]
    assert alice.call("GET", "/fapi/v1/openOrders").json() == open_orders  # all symbols

    cancelled = alice.call("DELETE", ORDER, symbol="BTCUSDT", orderId=body["orderId"])
    assert cancelled.status_code == 200
    batch_process(SymbolEngine(btcusdt))
    assert alice.call("GET", ORDER, symbol="BTCUSDT", orderId=body["orderId"]).json()["status"] == "CANCELED"
    assert alice.call("GET", "/fapi/v1/openOrders", symbol="BTCUSDT").json() == []
    error(alice.call("DELETE", ORDER, symbol="BTCUSDT", orderId=body["orderId"]), 400, -2011)
    error(alice.call("GET", "/fapi/v1/openOrder", symbol="BTCUSDT", orderId=body["orderId"]), 400, -2013)
    history = alice.call("GET", "/fapi/v1/allOrders", symbol="BTCUSDT").json()
    assert [o["status"] for o in history] == ["CANCELED"]


def test_refusals_change_nothing(api_user, btcusdt):
    _, alice = api_user("alice")
    _, poor = api_user("poor", D("10"))
    before = db_state()
    error(alice.call("POST", ORDER, symbol="NOPE", side="BUY", type="LIMIT", quantity="1", price="1"), 400, -1121)
    error(alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.0101",
                     price="50000"), 400, -1111)
    error(alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                     price="50000.01"), 400, -1111)
    error(alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01"), 400, -1102)
    error(alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="50000",
                     reduceOnly="maybe"), 400, -1130)
    error(alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="50000",
                     reduceOnly="true"), 400, -2022)
    error(alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="50000",
                     positionSide="LONG"), 400, -1130)
    error(alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="50000",
                     newOrderRespType="FULL"), 400, -1130)
    error(poor.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="50000"),
          400, -2019)
    assert db_state() == before


def test_users_see_and_touch_only_their_own_orders(api_user, btcusdt):
    _, alice = api_user("alice")
    _, bob = api_user("bob")
    order_id = alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                          price="50000").json()["orderId"]
    error(bob.call("GET", ORDER, symbol="BTCUSDT", orderId=order_id), 400, -2013)
    error(bob.call("DELETE", ORDER, symbol="BTCUSDT", orderId=order_id), 400, -2013)
    error(bob.call("PUT", ORDER, symbol="BTCUSDT", orderId=order_id, quantity="0.02", price="50000"), 400, -2013)
    assert bob.call("GET", "/fapi/v1/openOrders").json() == []
    assert bob.call("GET", "/fapi/v1/allOrders", symbol="BTCUSDT").json() == []
    bob.call("DELETE", "/fapi/v1/allOpenOrders", symbol="BTCUSDT")
    assert not OrderCommand.objects.filter(kind="CANCEL").exists()


def test_read_only_key_can_query_but_not_trade(api_user, btcusdt):
    _, reader = api_user("reader", can_trade=False)
    error(reader.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="50000"),
          401, -2015)
    error(reader.call("DELETE", "/fapi/v1/allOpenOrders", symbol="BTCUSDT"), 401, -2015)
    error(reader.call("POST", "/fapi/v1/leverage", symbol="BTCUSDT", leverage=10), 401, -2015)
    assert reader.call("GET", "/fapi/v1/openOrders").status_code == 200
    error(reader.call("GET", ORDER, symbol="BTCUSDT", orderId=1), 400, -2013)


def test_batch_orders_accept_and_refuse_each_item(api_user, btcusdt):
    _, alice = api_user("alice")
    batch = ('[{"symbol":"BTCUSDT","side":"BUY","type":"LIMIT","quantity":"0.01","price":"50000",'
             '"timeInForce":"GTC"},{"symbol":"BTCUSDT","side":"BUY","type":"LIMIT","quantity":"0.01",'
             '"price":"1.05"},{"symbol":"XXX","side":"BUY","type":"LIMIT","quantity":"1","price":"1"}]')
    results = alice.form("POST", "/fapi/v1/batchOrders", batchOrders=batch).json()
    assert results[0]["status"] == "NEW"
    assert results[1]["code"] == -1111 and results[2]["code"] == -1121
    assert Order.objects.count() == 1
    error(alice.form("POST", "/fapi/v1/batchOrders", batchOrders="[" + ",".join(["{}"] * 6) + "]"), 400, -1130)
    error(alice.form("POST", "/fapi/v1/batchOrders", batchOrders="not json"), 400, -1102)
    cancelled = alice.call("DELETE", "/fapi/v1/batchOrders", symbol="BTCUSDT",
                           orderIdList=f"[{results[0]['orderId']}, 999999]").json()
    assert cancelled[0]["orderId"] == results[0]["orderId"] and cancelled[1]["code"] == -2013


def test_amend_keeps_the_hold_in_step(api_user, btcusdt):
    _, alice = api_user("alice")
    engine = SymbolEngine(btcusdt)
    order = alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.1",
                       price="50000").json()
    batch_process(engine)
    amended = alice.call("PUT", ORDER, symbol="BTCUSDT", orderId=order["orderId"], side="BUY", quantity="0.2",
                         price="49000")
    assert amended.status_code == 200, amended.content
    batch_process(engine)
    row = Order.objects.get(pk=order["orderId"])
    assert (row.quantity, row.price) == (D("0.2"), D("49000"))
    assert row.margin_held == D("0.2") * D("49000") * (D("0.05") + D("0.0004"))
    error(alice.call("PUT", ORDER, symbol="BTCUSDT", orderId=order["orderId"], side="SELL", quantity="0.2",
                     price="49000"), 400, -1117)


def test_result_response_waits_for_the_matcher_then_answers(api_user, btcusdt, settings):
    settings.ORDER_RESULT_WAIT_SECONDS = 0.05
    _, alice = api_user("alice")
    body = alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01", price="50000",
                      newOrderRespType="RESULT").json()
    assert body["status"] == "NEW"  # no matcher running: the accepted state after the bounded wait


def test_market_order_and_user_trades(api_user, btcusdt):
    _, alice = api_user("alice")
    _, bob = api_user("bob")
    price_publish(contract=btcusdt, index_price=D("50000"), mark_price=D("50000"), at=timezone.now())
    engine = SymbolEngine(btcusdt)
    bob.call("POST", ORDER, symbol="BTCUSDT", side="SELL", type="LIMIT", quantity="0.05", price="50100")
    batch_process(engine)
    error(alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.05", price="1"),
          400, -1106)
    market = alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="MARKET", quantity="0.05").json()
    batch_process(engine)
    trades = alice.call("GET", "/fapi/v1/userTrades", symbol="BTCUSDT").json()
    assert len(trades) == 1
    trade = trades[0]
    assert (trade["orderId"], trade["price"], trade["qty"], trade["buyer"], trade["maker"]) == (
        market["orderId"], "50100", "0.05", True, False)
    assert trade["commission"] == "1.002" and trade["quoteQty"] == "2505" and trade["commissionAsset"] == "USDT"
    bob_trades = bob.call("GET", "/fapi/v1/userTrades", symbol="BTCUSDT").json()
    assert bob_trades[0]["maker"] is True and bob_trades[0]["buyer"] is False
    filled = alice.call("GET", ORDER, symbol="BTCUSDT", orderId=market["orderId"]).json()
    assert filled["status"] == "FILLED" and filled["avgPrice"] == "50100"


@pytest.mark.parametrize("path", ["/fapi/v1/openOrders", "/fapi/v1/allOrders", "/fapi/v1/userTrades"])
def test_unsigned_requests_are_refused(client, path, btcusdt):
    response = client.get(path, {"symbol": "BTCUSDT"})
    assert response.status_code in (400, 401)
    assert response.json()["code"] in (-2014, -2015, -1102)
