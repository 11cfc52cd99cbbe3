"""User data stream listen keys through the real /fapi/v1/listenKey endpoints."""
import pytest

from apps.accounts.selectors import listen_key_of_user_redis_key, listen_key_redis_key, listen_key_user_id
from exchange.redis import get_redis

URL = "/fapi/v1/listenKey"


@pytest.fixture
def alice_headers(alice, make_key):
    api_key, _ = make_key(alice, can_trade=False)
    return {"X-MBX-APIKEY": api_key.key}


@pytest.fixture
def bob_headers(bob, make_key):
    api_key, _ = make_key(bob)
    return {"X-MBX-APIKEY": api_key.key}


def test_listen_key_lifecycle(client, alice, alice_headers, settings):
    created = client.post(URL, headers=alice_headers)
    assert created.status_code == 200 and created["X-MBX-USED-WEIGHT-1M"] == "1"
    listen_key = created.json()["listenKey"]
    assert len(listen_key) == 64 and listen_key.isalnum()
    assert listen_key_user_id(listen_key) == alice.pk
    redis = get_redis()
    ttl_ms = settings.LISTEN_KEY_TTL_SECONDS * 1000
    assert ttl_ms - 5000 < redis.pttl(listen_key_redis_key(listen_key)) <= ttl_ms

    # POST again: the same key, extended.
    redis.pexpire(listen_key_redis_key(listen_key), 10_000)
    assert client.post(URL, headers=alice_headers).json() == {"listenKey": listen_key}
    assert redis.pttl(listen_key_redis_key(listen_key)) > ttl_ms - 5000

    # PUT extends to 60 minutes, with or without the key as a parameter (clients differ).
    redis.pexpire(listen_key_redis_key(listen_key), 10_000)
    kept = client.put(URL, headers=alice_headers)
    assert kept.status_code == 200 and kept.json() == {"listenKey": listen_key}
    assert redis.pttl(listen_key_redis_key(listen_key)) > ttl_ms - 5000
    assert client.put(f"{URL}?listenKey={listen_key}", headers=alice_headers).status_code == 200

    # DELETE closes it; keepalive then fails with -1125 and POST makes a new one.
    closed = client.delete(URL, headers=alice_headers)
    assert closed.status_code == 200 and closed.json() == {}
    assert listen_key_user_id(listen_key) is None
    refused = client.put(URL, headers=alice_headers)
    assert refused.status_code == 400 and refused.json()["code"] == -1125
    fresh = client.post(URL, headers=alice_headers).json()["listenKey"]
    assert fresh != listen_key and listen_key_user_id(fresh) == alice.pk


def test_keepalive_of_an_expired_key(client, alice, alice_headers):
    listen_key = client.post(URL, headers=alice_headers).json()["listenKey"]
    redis = get_redis()
    redis.delete(listen_key_redis_key(listen_key), listen_key_of_user_redis_key(alice.pk))  # expired
    response = client.put(URL, headers=alice_headers)
    assert response.status_code == 400 and response.json()["code"] == -1125
    assert listen_key_user_id(listen_key) is None


def test_keepalive_of_an_unknown_key(client, alice_headers):
    client.post(URL, headers=alice_headers)
    response = client.put(f"{URL}?listenKey={'z' * 64}", headers=alice_headers)
    assert response.status_code == 400 and response.json()["code"] == -1125


def test_users_have_their_own_keys_and_cannot_touch_others(client, alice, bob, alice_headers, bob_headers):
    alices = client.post(URL, headers=alice_headers).json()["listenKey"]
    bobs = client.post(URL, headers=bob_headers).json()["listenKey"]
    assert alices != bobs and listen_key_user_id(bobs) == bob.pk
    response = client.delete(f"{URL}?listenKey={alices}", headers=bob_headers)
    assert response.status_code == 400 and response.json()["code"] == -1125
    assert listen_key_user_id(alices) == alice.pk


def test_listen_key_needs_an_api_key(client, db):
    response = client.post(URL)
    assert response.status_code == 401 and response.json()["code"] == -2014
    response = client.post(URL, headers={"X-MBX-APIKEY": "C" * 64})
    assert response.status_code == 401 and response.json()["code"] == -2015


def test_listen_key_user_id_of_garbage():
    assert listen_key_user_id("") is None
    assert listen_key_user_id("nope") is None
    assert listen_key_user_id("x" * 1000) is None


def test_schema_documents_the_listen_key_endpoints(client, db):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    assert "/fapi/v1/listenKey" in response.content.decode()
