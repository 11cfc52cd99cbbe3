"""A user data stream ends with its user's access: deactivation, or the last API key revoked.

Through the real ASGI application (`exchange.asgi.application`, as daphne serves it): a
listen key of such a user is refused like an unknown one (error frame, close 4008), and
an open connection gets `listenKeyExpired` and is closed at the consumer's next re-check
(`LISTEN_KEY_CHECK_SECONDS`, shortened here).
"""
import json

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction

from apps.accounts.models import ApiKey
from apps.accounts.selectors import listen_key_redis_key, listen_key_user_id
from apps.accounts.services import api_key_create, api_key_revoke, listen_key_start
from apps.marketdata import consumers
from apps.marketdata.consumers import CLOSE_POLICY
from exchange.asgi import application
from exchange.redis import get_redis
from tests.marketdata.test_streams import run
from tests.streams.conftest import _fresh_symbol_cache  # noqa: F401 (autouse there, used here)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def streamer(make_user, make_key):
    """A user with one API key and a listen key; returns (user, api key, listen key)."""

    def make(name: str):
        user = make_user(name)
        api_key, _ = make_key(user, can_trade=False)
        return user, api_key, listen_key_start(user=user)

    return make


def deactivate(user) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


async def open_stream(listen_key: str) -> WebsocketCommunicator:
    ws = WebsocketCommunicator(application, f"/ws/{listen_key}")
    connected, _ = await ws.connect(timeout=10)
    assert connected
    return ws


async def assert_refused(listen_key: str) -> None:
    """The consumer's answer to an invalid listen key in the URL: an error frame, then close 4008."""
    ws = await open_stream(listen_key)
    body = json.loads(await ws.receive_from(timeout=10))
    assert body["error"]["code"] == 2 and "listen key" in body["error"]["msg"], body
    assert await ws.receive_output(timeout=10) == {"type": "websocket.close", "code": CLOSE_POLICY}
    await ws.disconnect()


async def assert_streaming(listen_key: str) -> None:
    ws = await open_stream(listen_key)
    reply = await _request(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 1})
    assert reply == {"result": [listen_key], "id": 1}
    await ws.disconnect()


async def _request(ws, body) -> dict:
    await ws.send_to(text_data=json.dumps(body))
    return json.loads(await ws.receive_from(timeout=10))


async def assert_dropped(ws, listen_key: str) -> None:
    """At the next re-check: listenKeyExpired, then close 4008 (nothing else was subscribed)."""
    expired = json.loads(await ws.receive_from(timeout=10))
    assert expired["e"] == "listenKeyExpired" and expired["listenKey"] == listen_key, expired
    assert await ws.receive_output(timeout=10) == {"type": "websocket.close", "code": CLOSE_POLICY}
    await ws.disconnect()


# -- the check itself -----------------------------------------------------------------------------


def test_listen_key_user_id_needs_an_active_user_with_an_active_key(streamer, make_key,
                                                                    django_assert_num_queries):
    alice, alice_key, listen_key = streamer("alice")
    with django_assert_num_queries(1):  # one query on top of the Redis read
        assert listen_key_user_id(listen_key) == alice.pk
    deactivate(alice)
    assert listen_key_user_id(listen_key) is None
    alice.is_active = True
    alice.save(update_fields=["is_active"])
    assert listen_key_user_id(listen_key) == alice.pk
    # Every key revoked behind the service's back (no listen-key close): refused all the same.
    ApiKey.objects.filter(pk=alice_key.pk).update(revoked_at=alice_key.created_at)
    assert get_redis().exists(listen_key_redis_key(listen_key))
    assert listen_key_user_id(listen_key) is None
    make_key(alice)
    assert listen_key_user_id(listen_key) == alice.pk


def test_revoking_the_last_active_key_closes_the_listen_key(streamer, make_key):
    alice, first, listen_key = streamer("alice")
    second, _ = make_key(alice)
    api_key_revoke(api_key=first)
    assert listen_key_user_id(listen_key) == alice.pk  # another key is still active: the stream stays
    api_key_revoke(api_key=second)
    assert listen_key_user_id(listen_key) is None
    assert not get_redis().exists(listen_key_redis_key(listen_key))  # closed, not merely refused
    api_key_revoke(api_key=second)  # idempotent


def test_a_key_rotated_in_one_transaction_keeps_the_stream(streamer):
    alice, old, listen_key = streamer("alice")
    with transaction.atomic():
        api_key_revoke(api_key=old)
        api_key_create(user=alice, label="rotated")
    assert listen_key_user_id(listen_key) == alice.pk
    assert get_redis().exists(listen_key_redis_key(listen_key))


# -- through the ASGI application ----------------------------------------------------------------


def test_stream_of_a_deactivated_user_is_refused(streamer):
    alice, _, listen_key = streamer("alice")
    _, _, bobs = streamer("bob")

    async def body():
        await assert_streaming(listen_key)
        await sync_to_async(deactivate)(alice)
        await assert_refused(listen_key)
        await assert_streaming(bobs)  # other users are not affected

    run(body)


def test_stream_after_the_last_key_is_revoked_is_refused(streamer):
    _, api_key, listen_key = streamer("alice")

    async def body():
        await assert_streaming(listen_key)
        await sync_to_async(api_key_revoke)(api_key=api_key)
        await assert_refused(listen_key)

    run(body)


@pytest.mark.parametrize("how", ["deactivate", "revoke", "revoke_in_database_only"])
def test_open_stream_is_dropped_at_the_next_check(streamer, monkeypatch, how):
    monkeypatch.setattr(consumers, "LISTEN_KEY_CHECK_SECONDS", 0.05)
    alice, api_key, listen_key = streamer("alice")
    _, _, bobs = streamer("bob")
    cut = {
        "deactivate": lambda: deactivate(alice),
        "revoke": lambda: api_key_revoke(api_key=api_key),
        "revoke_in_database_only": lambda: ApiKey.objects.filter(pk=api_key.pk).update(
            revoked_at=api_key.created_at),
    }[how]

    async def body():
        ws = await open_stream(listen_key)
        other = await open_stream(bobs)
        # Several checks pass while access lasts.
        assert await ws.receive_nothing(timeout=0.3)
        await sync_to_async(cut)()
        await assert_dropped(ws, listen_key)
        # Bob's stream outlives many more checks.
        assert await other.receive_nothing(timeout=0.3)
        assert await _request(other, {"method": "LIST_SUBSCRIPTIONS", "id": 7}) == {"result": [bobs], "id": 7}
        await other.disconnect()

    run(body)
