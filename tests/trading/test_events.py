"""What the matcher publishes after commit: trades, per-order executions and depth changes."""
import json
import time
from decimal import Decimal

from apps.trading.engine import SymbolEngine
from apps.trading.matching import EVENTS_CHANNEL, batch_process
from apps.trading.services import order_amend, order_cancel, order_place
from exchange.redis import get_redis

D = Decimal


def published(engine, capture):
    pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(EVENTS_CHANNEL.format(symbol=engine.contract.symbol))
    with capture(execute=True):
        batch_process(engine)
    deadline = time.monotonic() + 5
    message = None
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)  # None for the (ignored) subscribe confirmation too
    pubsub.close()
    return json.loads(message["data"])


def test_batch_publishes_trades_executions_and_depth(funded, btcusdt, django_capture_on_commit_callbacks):
    alice, bob = funded("alice"), funded("bob")
    engine = SymbolEngine(btcusdt)
    resting = order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.3"), price=D("50000"))
    order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.1"), price=D("50100"))
    first = published(engine, django_capture_on_commit_callbacks)
    assert first["depth"] == {"bids": [], "asks": [["50000", "0.3"], ["50100", "0.1"]]}
    assert [o["exec_type"] for o in first["orders"]] == ["NEW", "NEW"]

    taker = order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.5"), price=D("50000"),
                        time_in_force="IOC")
    body = published(engine, django_capture_on_commit_callbacks)
    assert body["symbol"] == "BTCUSDT" and body["last_seq"] > first["last_seq"]
    (trade,) = body["trades"]
    assert (trade["price"], trade["qty"], trade["taker_side"]) == ("50000", "0.3", "BUY")
    assert (trade["taker_order_id"], trade["maker_order_id"]) == (taker.pk, resting.pk)
    kinds = [(o["order_id"], o["exec_type"], o["status"]) for o in body["orders"]]
    assert kinds == [(taker.pk, "TRADE", "PARTIALLY_FILLED"), (resting.pk, "TRADE", "FILLED"),
                     (taker.pk, "EXPIRED", "EXPIRED")]
    taker_fill = body["orders"][0]
    # Decimals as str() prints them (the relay normalizes them for the user stream).
    assert (D(taker_fill["last_qty"]), D(taker_fill["commission"]), taker_fill["is_maker"]) == (D("0.3"), 6, False)
    assert D(body["orders"][1]["commission"]) == 3 and body["orders"][1]["is_maker"] is True
    assert body["depth"] == {"bids": [], "asks": [["50000", "0"]]}

    other = order_place(user=bob, contract=btcusdt, side="SELL", quantity=D("0.2"), price=D("50200"))
    batch_process(engine)
    order_amend(user=bob, contract=btcusdt, order_id=other.pk, quantity=D("0.2"), price=D("50300"))
    amended = published(engine, django_capture_on_commit_callbacks)
    assert amended["orders"][0]["exec_type"] == "AMENDMENT"
    assert amended["depth"]["asks"] == [["50200", "0"], ["50300", "0.2"]]
    order_cancel(user=bob, order_id=other.pk)
    cancelled = published(engine, django_capture_on_commit_callbacks)
    assert cancelled["orders"][0]["status"] == "CANCELED" and cancelled["depth"]["asks"] == [["50300", "0"]]
