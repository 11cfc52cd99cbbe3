"""Request weight and order-count limits: headers, 429 with Retry-After, escalating 418
bans, and that a refused request does no other work."""
from datetime import UTC, datetime

import pytest
import time_machine

from apps.accounts.selectors import api_key_cache_clear
from tests.accounts.conftest import now_ms

# Five seconds into a minute window: the window ends in 55 s.
T0 = datetime(2030, 1, 7, 12, 0, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def frozen_clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def low_limits(settings):
    settings.API_IP_WEIGHT_LIMIT_1M = 10
    settings.API_KEY_WEIGHT_LIMIT_1M = 1000
    settings.API_BAN_AFTER_REFUSALS = 2
    settings.API_BAN_BASE_SECONDS = 120
    settings.API_BAN_MAX_SECONDS = 3 * 24 * 3600
    return settings


def test_weight_header_accumulates_per_ip_and_resets_with_the_minute(client, frozen_clock):
    assert client.get("/fapi/test/public")["X-MBX-USED-WEIGHT-1M"] == "2"
    assert client.get("/fapi/test/public")["X-MBX-USED-WEIGHT-1M"] == "4"
    # Another address has its own count.
    assert client.get("/fapi/test/public", REMOTE_ADDR="198.51.100.1")["X-MBX-USED-WEIGHT-1M"] == "2"
    frozen_clock.move_to(datetime(2030, 1, 7, 12, 1, 0, tzinfo=UTC))
    assert client.get("/fapi/test/public")["X-MBX-USED-WEIGHT-1M"] == "2"


def test_weight_by_parameter(client):
    assert client.get("/fapi/test/depth?limit=50")["X-MBX-USED-WEIGHT-1M"] == "2"
    assert client.get("/fapi/test/depth?limit=500")["X-MBX-USED-WEIGHT-1M"] == "12"


def test_429_with_retry_after_then_418_ban_that_escalates(client, low_limits, frozen_clock):
    for expected in ("2", "4", "6", "8", "10"):
        response = client.get("/fapi/test/public")
        assert response.status_code == 200 and response["X-MBX-USED-WEIGHT-1M"] == expected
        assert "Retry-After" not in response

    for expected_weight in ("12", "14"):  # two refusals tolerated
        limited = client.get("/fapi/test/public")
        assert limited.status_code == 429
        assert limited.json()["code"] == -1003
        assert limited["Retry-After"] == "55"
        assert limited["X-MBX-USED-WEIGHT-1M"] == expected_weight

    banned = client.get("/fapi/test/public")
    assert banned.status_code == 418 and banned.json()["code"] == -1003
    assert banned["Retry-After"] == "120"
    assert "X-MBX-USED-WEIGHT-1M" in banned

    # During the ban nothing is counted, and the next minute does not lift it.
    frozen_clock.shift(60)
    still = client.get("/fapi/test/public")
    assert still.status_code == 418 and still["Retry-After"] == "60"
    # Other addresses are not affected.
    assert client.get("/fapi/test/public", REMOTE_ADDR="198.51.100.1").status_code == 200

    frozen_clock.shift(60)  # ban over (12:02:05)
    assert client.get("/fapi/test/public").status_code == 200

    # Offend again: the next ban is twice as long.
    for _ in range(4):
        client.get("/fapi/test/public")
    assert client.get("/fapi/test/public").status_code == 429
    assert client.get("/fapi/test/public").status_code == 429
    second_ban = client.get("/fapi/test/public")
    assert second_ban.status_code == 418 and second_ban["Retry-After"] == "240"


def test_ban_is_capped(client, low_limits, frozen_clock):
    low_limits.API_BAN_AFTER_REFUSALS = 0
    low_limits.API_BAN_MAX_SECONDS = 300
    retry_afters = []
    for _ in range(4):
        for _ in range(5):
            client.get("/fapi/test/public")
        banned = client.get("/fapi/test/public")
        assert banned.status_code == 418
        retry_afters.append(int(banned["Retry-After"]))
        frozen_clock.shift(retry_afters[-1] + 60)
    assert retry_afters == [120, 240, 300, 300]


def test_limited_requests_are_still_counted_on_errors_and_carry_the_header(db, client, low_limits):
    for _ in range(5):
        # 401 responses count and carry the header too.
        response = client.get("/fapi/test/keyed", headers={"X-MBX-APIKEY": "B" * 64})
        assert response.status_code == 401 and "X-MBX-USED-WEIGHT-1M" in response
    for _ in range(2):
        client.get("/fapi/test/public")
    response = client.get("/fapi/test/keyed", headers={"X-MBX-APIKEY": "B" * 64})
    assert response.status_code == 401 and response["X-MBX-USED-WEIGHT-1M"] == "10"
    response = client.get("/fapi/test/keyed", headers={"X-MBX-APIKEY": "B" * 64})
    assert response.status_code == 429 and response["X-MBX-USED-WEIGHT-1M"] == "11"


def test_refused_requests_do_no_other_work(client, alice, make_key, low_limits, django_assert_num_queries):
    api_key, _ = make_key(alice)
    for _ in range(5):
        client.get("/fapi/test/public")
    api_key_cache_clear()
    headers = {"X-MBX-APIKEY": api_key.key}
    # Over the limit with a bad signature: refused by the limiter, before any key lookup
    # (no query) or signature check (429, not -1022).
    with django_assert_num_queries(0):
        response = client.get(f"/fapi/test/account?timestamp={now_ms()}&signature={'0' * 64}", headers=headers)
    assert response.status_code == 429 and response.json()["code"] == -1003


def test_refused_request_does_not_burn_its_signature(client, alice, make_key, signer_for, low_limits):
    # A signed request refused by the limiter may be retried unchanged once the window allows.
    api_key, secret = make_key(alice)
    signer = signer_for(api_key, secret)
    for _ in range(5):
        client.get("/fapi/test/public")
    query_params = {"symbol": "BTCUSDT", "timestamp": now_ms(), "recvWindow": 60000}
    assert signer.query("GET", "/fapi/test/account", query_params).status_code == 429
    low_limits.API_IP_WEIGHT_LIMIT_1M = 100
    assert signer.query("GET", "/fapi/test/account", query_params).status_code == 200


def test_weight_limit_per_key_across_addresses(client, alice, make_key, settings):
    settings.API_KEY_WEIGHT_LIMIT_1M = 3
    api_key, _ = make_key(alice)
    headers = {"X-MBX-APIKEY": api_key.key}
    for n, ip in enumerate(["192.0.2.1", "192.0.2.2", "192.0.2.3"], start=1):
        response = client.get("/fapi/test/keyed", headers=headers, REMOTE_ADDR=ip)
        assert response.status_code == 200 and response["X-MBX-USED-WEIGHT-1M"] == str(n)
    response = client.get("/fapi/test/keyed", headers=headers, REMOTE_ADDR="192.0.2.4")
    assert response.status_code == 429 and response.json()["code"] == -1003


def test_order_count_limit_per_account_across_keys(alice, bob, make_key, signer_for, settings):
    settings.API_ACCOUNT_ORDER_LIMIT_1M = 3
    first = signer_for(*make_key(alice, label="one"))
    second = signer_for(*make_key(alice, label="two"))
    other = signer_for(*make_key(bob))
    counts = [first.query("POST", "/fapi/test/order", {"n": n})["X-MBX-ORDER-COUNT-1M"] for n in range(2)]
    counts.append(second.query("POST", "/fapi/test/order", {"n": 2})["X-MBX-ORDER-COUNT-1M"])
    assert counts == ["1", "2", "3"]
    refused = second.query("POST", "/fapi/test/order", {"n": 3})
    assert refused.status_code == 429
    assert refused.json()["code"] == -1015
    assert refused["Retry-After"] == "55"
    assert refused["X-MBX-ORDER-COUNT-1M"] == "4"
    # Another account is not affected; reads are not orders.
    assert other.query("POST", "/fapi/test/order", {"n": 4})["X-MBX-ORDER-COUNT-1M"] == "1"
    assert first.query("GET", "/fapi/test/account", {"n": 5}).status_code == 200


def test_client_address_from_a_trusted_proxy_header(client, settings, low_limits):
    settings.API_CLIENT_IP_META = "HTTP_X_REAL_IP"
    for _ in range(5):
        client.get("/fapi/test/public", headers={"X-Real-IP": "198.51.100.7"})
    assert client.get("/fapi/test/public", headers={"X-Real-IP": "198.51.100.7"}).status_code == 429
    assert client.get("/fapi/test/public", headers={"X-Real-IP": "198.51.100.8"}).status_code == 200
