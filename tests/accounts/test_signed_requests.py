"""Signed requests through the real HTTP stack: where parameters travel, the exact signed
payload, timestamps and recvWindow, signatures, replays, and key refusals."""
import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest
import time_machine

from apps.accounts.models import ApiKey
from tests.accounts.conftest import now_ms, sign

T0 = datetime(2030, 1, 7, 12, 0, 5, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def alice_key(alice, make_key):
    return make_key(alice, can_trade=True)


@pytest.fixture
def signer(alice_key, signer_for):
    return signer_for(*alice_key)


def error(response) -> int:
    return response.json()["code"]


def test_signed_get_with_everything_in_the_query_string(signer):
    response = signer.query("GET", "/fapi/test/account", {"symbol": "BTCUSDT", "recvWindow": 5000})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["user"] == "alice"
    assert body["params"]["symbol"] == "BTCUSDT" and body["params"]["timestamp"] == str(T0_MS)
    assert response["X-MBX-USED-WEIGHT-1M"] == "5"
    assert "X-MBX-ORDER-COUNT-1M" not in response


def test_post_with_params_in_the_query_string_and_an_empty_json_body(signer):
    # binance-connector: POST/DELETE send the signed query string and an empty body
    # under Content-Type: application/json.
    response = signer.query(
        "POST", "/fapi/test/order", {"symbol": "BTCUSDT", "side": "BUY", "quantity": "0.001"},
        data="", content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["params"]["side"] == "BUY"
    assert response["X-MBX-ORDER-COUNT-1M"] == "1"


def test_delete_with_params_in_the_query_string(signer):
    response = signer.query("DELETE", "/fapi/test/order", {"symbol": "BTCUSDT", "orderId": "17"})
    assert response.status_code == 200, response.content
    assert response.json()["params"]["orderId"] == "17"


def test_post_with_params_form_encoded_in_the_body(signer):
    # python-binance: POST data form-encoded in the body, signature as the last field.
    response = signer.body("POST", "/fapi/test/order", {"symbol": "BTCUSDT", "side": "SELL", "quantity": "1"})
    assert response.status_code == 200, response.content
    assert response.json()["params"] == {
        "symbol": "BTCUSDT", "side": "SELL", "quantity": "1", "timestamp": str(T0_MS),
        "signature": response.json()["params"]["signature"],
    }


def test_mixed_query_string_and_body_signed_as_their_concatenation(client, alice_key):
    # The reference exchange's documented mixed example: HMAC over query string + body
    # with nothing in between; the signature is the last body parameter.
    api_key, secret = alice_key
    query = "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC"
    body = f"quantity=1&price=0.1&recvWindow=5000&timestamp={T0_MS}"
    signature = hmac.new(secret.encode(), (query + body).encode(), hashlib.sha256).hexdigest()
    response = client.post(
        f"/fapi/test/order?{query}", data=f"{body}&signature={signature}",
        content_type="application/x-www-form-urlencoded", headers={"X-MBX-APIKEY": api_key.key},
    )
    assert response.status_code == 200, response.content
    assert response.json()["params"]["timeInForce"] == "GTC"
    assert response.json()["params"]["price"] == "0.1"


def test_mixed_with_the_signature_last_in_the_query_string(client, alice_key):
    api_key, secret = alice_key
    query = f"symbol=BTCUSDT&timestamp={T0_MS}"
    body = "side=BUY&quantity=2"
    signature = sign(secret, query + body)
    response = client.post(
        f"/fapi/test/order?{query}&signature={signature}", data=body,
        content_type="application/x-www-form-urlencoded", headers={"X-MBX-APIKEY": api_key.key},
    )
    assert response.status_code == 200, response.content
    assert response.json()["params"]["quantity"] == "2"


def test_signature_of_the_client_libraries_over_urlencode(client, alice_key):
    # Exactly what binance-connector does: urlencode(params, True).replace("%40", "@"),
    # HMAC-SHA256 hex with the secret, '&signature=' appended. Values with characters
    # that need escaping prove the payload is the raw string, not a re-encoding.
    api_key, secret = alice_key
    params = {
        "symbol": "BTCUSDT", "side": "BUY", "type": "LIMIT", "quantity": "0.010", "price": "50000.0",
        "newClientOrderId": "grid:1/a.b_c-d@x", "note": "a b+c", "timestamp": T0_MS, "recvWindow": 6000,
    }
    query = urlencode(params, True).replace("%40", "@")
    signature = hmac.new(secret.encode("utf-8"), query.encode("utf-8"), hashlib.sha256).hexdigest()
    response = client.post(
        f"/fapi/test/order?{query}&signature={signature}", headers={"X-MBX-APIKEY": api_key.key}
    )
    assert response.status_code == 200, response.content
    received = response.json()["params"]
    assert received["newClientOrderId"] == "grid:1/a.b_c-d@x"
    assert received["note"] == "a b+c"


def test_a_reordered_or_re_encoded_payload_does_not_verify(client, alice_key):
    api_key, secret = alice_key
    signed_as = f"symbol=BTCUSDT&timestamp={T0_MS}"
    sent = f"timestamp={T0_MS}&symbol=BTCUSDT"
    response = client.get(
        f"/fapi/test/account?{sent}&signature={sign(secret, signed_as)}", headers={"X-MBX-APIKEY": api_key.key}
    )
    assert response.status_code == 400 and error(response) == -1022


def test_bad_signature(client, alice_key):
    api_key, _ = alice_key
    query = f"symbol=BTCUSDT&timestamp={T0_MS}"
    response = client.get(
        f"/fapi/test/account?{query}&signature={sign('not-the-secret', query)}",
        headers={"X-MBX-APIKEY": api_key.key},
    )
    assert response.status_code == 400
    assert response.json() == {"code": -1022, "msg": "Signature for this request is not valid."}
    assert response["X-MBX-USED-WEIGHT-1M"] == "5"


def test_malformed_signature(client, alice_key):
    api_key, _ = alice_key
    response = client.get(
        f"/fapi/test/account?timestamp={T0_MS}&signature=xyz", headers={"X-MBX-APIKEY": api_key.key}
    )
    assert response.status_code == 400 and error(response) == -1022


def test_missing_timestamp(client, alice_key):
    api_key, secret = alice_key
    query = "symbol=BTCUSDT"
    response = client.get(
        f"/fapi/test/account?{query}&signature={sign(secret, query)}", headers={"X-MBX-APIKEY": api_key.key}
    )
    assert response.status_code == 400 and error(response) == -1102
    assert "timestamp" in response.json()["msg"]


def test_missing_signature(client, alice_key):
    api_key, _ = alice_key
    response = client.get(f"/fapi/test/account?timestamp={T0_MS}", headers={"X-MBX-APIKEY": api_key.key})
    assert response.status_code == 400 and error(response) == -1102
    assert "signature" in response.json()["msg"]


def test_signature_that_is_not_the_last_parameter(client, alice_key):
    api_key, secret = alice_key
    query = f"timestamp={T0_MS}"
    response = client.get(
        f"/fapi/test/account?signature={sign(secret, query)}&{query}", headers={"X-MBX-APIKEY": api_key.key}
    )
    assert response.status_code == 400 and error(response) == -1102


def test_timestamp_older_than_the_default_recv_window(signer):
    assert signer.query("GET", "/fapi/test/account", {"timestamp": T0_MS - 5000}).status_code == 200
    response = signer.query("GET", "/fapi/test/account", {"timestamp": T0_MS - 5001})
    assert response.status_code == 400 and error(response) == -1021


def test_timestamp_older_than_an_explicit_recv_window(signer):
    assert signer.query("GET", "/fapi/test/account", {"timestamp": T0_MS - 60000, "recvWindow": 60000}).status_code == 200
    response = signer.query("GET", "/fapi/test/account", {"timestamp": T0_MS - 1001, "recvWindow": 1000})
    assert response.status_code == 400 and error(response) == -1021


def test_timestamp_too_far_in_the_future(signer):
    assert signer.query("GET", "/fapi/test/account", {"timestamp": T0_MS + 999}).status_code == 200
    response = signer.query("GET", "/fapi/test/account", {"timestamp": T0_MS + 1000})
    assert response.status_code == 400 and error(response) == -1021


def test_a_request_expires_as_the_clock_moves(signer, frozen_clock):
    frozen_clock.shift(6)
    response = signer.query("GET", "/fapi/test/account", {"timestamp": T0_MS})
    assert response.status_code == 400 and error(response) == -1021


@pytest.mark.parametrize("recv_window", ["60001", "0", "-5"])
def test_recv_window_out_of_range(signer, recv_window):
    response = signer.query("GET", "/fapi/test/account", {"recvWindow": recv_window})
    expected = -1131 if recv_window != "-5" else -1102
    assert response.status_code == 400 and error(response) == expected


def test_replayed_signature_is_refused(client, alice_key):
    api_key, secret = alice_key
    query = f"symbol=BTCUSDT&side=BUY&timestamp={T0_MS}"
    url = f"/fapi/test/order?{query}&signature={sign(secret, query)}"
    headers = {"X-MBX-APIKEY": api_key.key}
    assert client.post(url, headers=headers).status_code == 200
    replay = client.post(url, headers=headers)
    assert replay.status_code == 400 and error(replay) == -1099
    # Also when the replay arrives the other way (in the body).
    replay = client.post(
        "/fapi/test/order", data=f"{query}&signature={sign(secret, query)}",
        content_type="application/x-www-form-urlencoded", headers=headers,
    )
    assert error(replay) == -1099


def test_duplicate_parameter_is_refused(client, alice_key):
    api_key, secret = alice_key
    query = f"symbol=BTCUSDT&timestamp={T0_MS}"
    body = "symbol=ETHUSDT"
    response = client.post(
        f"/fapi/test/order?{query}", data=f"{body}&signature={sign(secret, query + body)}",
        content_type="application/x-www-form-urlencoded", headers={"X-MBX-APIKEY": api_key.key},
    )
    assert response.status_code == 400 and error(response) == -1101


def test_json_body_is_refused_with_a_code(client, alice_key):
    api_key, _ = alice_key
    response = client.post(
        "/fapi/test/order", data='{"symbol": "BTCUSDT"}', content_type="application/json",
        headers={"X-MBX-APIKEY": api_key.key},
    )
    assert response.status_code == 400 and error(response) == -1102


def test_unknown_key(client, signer_for, alice_key):
    _, secret = alice_key
    stranger = ApiKey(key="A" * 64)
    response = signer_for(stranger, secret).query("GET", "/fapi/test/account", {})
    assert response.status_code == 401 and error(response) == -2015
    assert response["X-MBX-USED-WEIGHT-1M"] == "5"


def test_revoked_key(client, signer, alice_key):
    from apps.accounts.services import api_key_revoke

    assert signer.query("GET", "/fapi/test/account", {}).status_code == 200
    api_key_revoke(api_key=alice_key[0])
    response = signer.query("GET", "/fapi/test/account", {"symbol": "X"})
    assert response.status_code == 401 and error(response) == -2015


def test_revocation_elsewhere_takes_effect_within_the_cache_time(settings, signer, alice_key, frozen_clock):
    # Another process revoked the key (this process's cache was not told).
    settings.API_KEY_CACHE_SECONDS = 5
    assert signer.query("GET", "/fapi/test/account", {}).status_code == 200
    ApiKey.objects.filter(pk=alice_key[0].pk).update(revoked_at=T0)
    frozen_clock.shift(5)
    response = signer.query("GET", "/fapi/test/account", {})
    assert response.status_code == 401 and error(response) == -2015


def test_revocation_in_another_web_worker_takes_effect_on_the_next_request(signer, alice_key,
                                                                            django_capture_on_commit_callbacks):
    from apps.accounts import selectors
    from apps.accounts.services import api_key_revoke

    assert signer.query("GET", "/fapi/test/account", {}).status_code == 200
    cached = dict(selectors._cache)
    # Another worker revokes it: its own cache is evicted and, after commit, the key's
    # generation is bumped in Redis; this worker's cache still holds the key.
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=ApiKey.objects.get(pk=alice_key[0].pk))
    selectors._cache.update(cached)
    response = signer.query("GET", "/fapi/test/account", {"n": 2})  # well inside API_KEY_CACHE_SECONDS
    assert response.status_code == 401 and error(response) == -2015


def test_permission_change_in_another_web_worker_takes_effect_on_the_next_request(signer, alice_key,
                                                                                 django_capture_on_commit_callbacks):
    from apps.accounts import selectors
    from apps.accounts.services import api_key_update

    assert signer.query("POST", "/fapi/test/order", {"symbol": "BTCUSDT"}).status_code == 200
    cached = dict(selectors._cache)
    with django_capture_on_commit_callbacks(execute=True):
        api_key_update(api_key=ApiKey.objects.get(pk=alice_key[0].pk), label="read only", can_trade=False,
                       ip_allowlist=[])
    selectors._cache.update(cached)
    response = signer.query("POST", "/fapi/test/order", {"symbol": "BTCUSDT", "n": 2})
    assert response.status_code == 401 and error(response) == -2015


def test_inactive_user(signer, alice):
    alice.is_active = False
    alice.save()
    response = signer.query("GET", "/fapi/test/account", {})
    assert response.status_code == 401 and error(response) == -2015


def test_ip_allow_list(alice, make_key, signer_for):
    signer = signer_for(*make_key(alice, ip_allowlist=["10.0.0.0/8", "203.0.113.7"]))
    assert signer.query("GET", "/fapi/test/account", {"n": 1}, REMOTE_ADDR="10.20.30.40").status_code == 200
    assert signer.query("GET", "/fapi/test/account", {"n": 2}, REMOTE_ADDR="203.0.113.7").status_code == 200
    response = signer.query("GET", "/fapi/test/account", {"n": 3}, REMOTE_ADDR="203.0.113.8")
    assert response.status_code == 401 and error(response) == -2015
    assert "203.0.113.8" in response.json()["msg"]


def test_ip_allow_list_also_guards_unsigned_keyed_endpoints(client, alice, make_key):
    api_key, _ = make_key(alice, ip_allowlist=["192.0.2.1"])
    headers = {"X-MBX-APIKEY": api_key.key}
    assert client.get("/fapi/test/keyed", headers=headers, REMOTE_ADDR="192.0.2.1").status_code == 200
    response = client.get("/fapi/test/keyed", headers=headers, REMOTE_ADDR="192.0.2.2")
    assert response.status_code == 401 and error(response) == -2015


def test_read_only_key_on_a_trade_endpoint(alice, make_key, signer_for):
    signer = signer_for(*make_key(alice, can_trade=False))
    assert signer.query("GET", "/fapi/test/account", {}).status_code == 200
    response = signer.query("POST", "/fapi/test/order", {"symbol": "BTCUSDT"})
    assert response.status_code == 401 and error(response) == -2015


@pytest.mark.parametrize("header", [None, "", "short", "x" * 63 + "!", "A" * 65])
def test_missing_or_malformed_key(client, header):
    headers = {} if header is None else {"X-MBX-APIKEY": header}
    response = client.get(f"/fapi/test/account?timestamp={now_ms()}&signature={'0' * 64}", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"code": -2014, "msg": "API-key format invalid."}
    assert response["X-MBX-USED-WEIGHT-1M"] == "5"


def test_keyed_endpoint_sets_user_and_auth(client, alice_key):
    api_key, _ = alice_key
    response = client.get("/fapi/test/keyed", headers={"X-MBX-APIKEY": api_key.key})
    assert response.status_code == 200
    assert response.json() == {"user": "alice", "key_id": api_key.pk}
    assert response["X-MBX-USED-WEIGHT-1M"] == "1"


def test_last_used_is_recorded_without_a_write_per_request(signer, alice_key, frozen_clock, django_assert_num_queries):
    api_key, _ = alice_key
    assert signer.query("GET", "/fapi/test/account", {}).status_code == 200
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at == T0
    # Cached key, last use recorded less than a minute ago: no query at all.
    with django_assert_num_queries(0):
        assert signer.query("GET", "/fapi/test/account", {"n": 2}).status_code == 200
    frozen_clock.shift(61)
    assert signer.query("GET", "/fapi/test/account", {}).status_code == 200
    assert ApiKey.objects.get(pk=api_key.pk).last_used_at == datetime(2030, 1, 7, 12, 1, 6, tzinfo=UTC)


def test_public_endpoint_needs_no_key(client):
    response = client.get("/fapi/test/public?symbol=BTCUSDT&symbol2=a+b")
    assert response.status_code == 200
    assert response.json() == {"params": {"symbol": "BTCUSDT", "symbol2": "a b"}}
    assert response["X-MBX-USED-WEIGHT-1M"] == "2"
