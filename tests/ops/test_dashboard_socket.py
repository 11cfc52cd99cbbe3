"""The ops dashboard's websocket through the project's routing (Origin check, session
auth, consumer) with Channels' WebsocketCommunicator: anonymous and non-staff users are
closed with 4003 (and so is an operator whose staff status is revoked), a foreign Origin
is refused at the handshake, staff get a snapshot and then updates carrying only what
is new (a stored price, a raised alert)."""
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from apps.marketdata.models import PriceSample
from apps.ops.alerts import alert_raise
from apps.ops.consumers import CLOSE_FORBIDDEN
from exchange.routing import websocket_urlpatterns

from tests.marketdata.test_streams import run

D = Decimal
PATH = "/ws/ops/dashboard"
pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}".encode()


def communicator(*, cookie: bytes | None = None, origin: bytes = b"http://127.0.0.1:8000") -> WebsocketCommunicator:
    headers = [(b"origin", origin)] + ([(b"cookie", cookie)] if cookie else [])
    return WebsocketCommunicator(URLRouter(websocket_urlpatterns), PATH, headers=headers)


async def closed_with(ws: WebsocketCommunicator) -> int | None:
    connected, _ = await ws.connect(timeout=10)
    assert connected  # accepted first, so that the close code reaches the page
    message = await ws.receive_output(timeout=10)
    assert message["type"] == "websocket.close"
    return message.get("code")


def test_anonymous_and_non_staff_are_closed_with_4003(make_user):
    trader = session_cookie(make_user("trader"))
    inactive = session_cookie(make_user("gone", is_staff=True, is_active=False))

    async def body():
        assert await closed_with(communicator()) == CLOSE_FORBIDDEN == 4003
        assert await closed_with(communicator(cookie=trader)) == 4003
        assert await closed_with(communicator(cookie=inactive)) == 4003

    run(body)


def test_a_foreign_origin_is_refused_at_the_handshake(make_user):
    operator = session_cookie(make_user("operator", is_staff=True))

    async def body():
        ws = communicator(cookie=operator, origin=b"https://evil.example")
        connected, _ = await ws.connect(timeout=10)
        assert not connected

    run(body)


def test_staff_get_a_snapshot_then_only_what_is_new(make_user, btcusdt):
    operator = session_cookie(make_user("operator", is_staff=True))
    now = timezone.now().replace(microsecond=0)
    for k in (3, 2, 1):
        PriceSample.objects.create(contract=btcusdt, at=now - timezone.timedelta(seconds=k), index_price=D(50000 + k),
                                   mark_price=D(50010 + k), basis=D(10), valid_venues=3)

    async def next_update(ws, predicate):
        for _ in range(30):  # one update a second; bounded
            message = await ws.receive_json_from(timeout=10)
            assert message["type"] == "update"
            if predicate(message):
                return message
        raise AssertionError("no update carried it")

    async def body():
        ws = communicator(cookie=operator)
        connected, _ = await ws.connect(timeout=10)
        assert connected
        try:
            snapshot = await ws.receive_json_from(timeout=10)
            assert snapshot["type"] == "snapshot" and snapshot["symbols"] == ["BTCUSDT"]
            assert snapshot["prices"]["BTCUSDT"]["mark"] == [50013.0, 50012.0, 50011.0]
            assert set(snapshot["latency"]) == {"order_processing", "market_data", "risk_check", "position_update"}
            assert snapshot["alerts"] == [] and snapshot["liquidations"] == []

            await sync_to_async(PriceSample.objects.create)(
                contract=btcusdt, at=now + timezone.timedelta(seconds=1), index_price=D(50100), mark_price=D(50120),
                basis=D(20), valid_venues=3)
            update = await next_update(ws, lambda m: "BTCUSDT" in m["prices"])
            assert update["prices"]["BTCUSDT"] == {"t": [(now + timezone.timedelta(seconds=1)).timestamp()],
                                                   "mark": [50120.0], "index": [50100.0]}

            await sync_to_async(alert_raise)(key="job_failure:funding:BTCUSDT", level="CRITICAL",
                                             message="funding job for BTCUSDT failed")
            update = await next_update(ws, lambda m: "alerts" in m)
            assert [(a["level"], a["status"], a["message"]) for a in update["alerts"]] == [
                ("CRITICAL", "FIRING", "funding job for BTCUSDT failed")]
            assert "BTCUSDT" not in update["prices"]  # the price went out once
        finally:
            await ws.disconnect(timeout=30)

    run(body)



def test_an_operator_whose_staff_status_is_revoked_is_closed(make_user, btcusdt, monkeypatch):
    from apps.ops import consumers

    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.0)  # re-read the user every round
    operator = make_user("operator", is_staff=True)
    cookie = session_cookie(operator)

    async def body():
        ws = communicator(cookie=cookie)
        connected, _ = await ws.connect(timeout=10)
        assert connected and (await ws.receive_json_from(timeout=10))["type"] == "snapshot"
        await sync_to_async(type(operator).objects.filter(pk=operator.pk).update)(is_staff=False)
        for _ in range(30):  # bounded: updates already on their way, then the close
            message = await ws.receive_output(timeout=10)
            if message["type"] == "websocket.close":
                assert message["code"] == 4003
                return
        raise AssertionError("still open")

    run(body)


def test_a_failed_staff_recheck_keeps_the_feed_going(make_user, btcusdt, monkeypatch):
    """The database away during the staff re-check is a failed round, as a failed read is:
    the pusher must not die and leave the page connected to a silent socket."""
    from apps.ops import consumers

    monkeypatch.setattr(consumers, "RECHECK_SECONDS", 0.0)
    calls = []

    def flaky_still_staff(user_id):
        calls.append(user_id)
        if len(calls) == 1:
            raise OperationalError("connection lost")
        return True

    monkeypatch.setattr(consumers, "_still_staff", flaky_still_staff)
    cookie = session_cookie(make_user("operator", is_staff=True))

    async def body():
        ws = communicator(cookie=cookie)
        connected, _ = await ws.connect(timeout=10)
        assert connected and (await ws.receive_json_from(timeout=10))["type"] == "snapshot"
        try:
            for _ in range(2):  # updates go on after the failed check
                assert (await ws.receive_json_from(timeout=10))["type"] == "update"
            assert len(calls) >= 2
        finally:
            await ws.disconnect(timeout=30)

    run(body)
