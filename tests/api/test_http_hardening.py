"""Parameters no request should turn into a 500, and staff pages that need their model permission.

- Times past year 9999 (up to int64) in startTime / endTime: -1130, as any out-of-range
  parameter (a datetime cannot hold them; the last millisecond of year 9999 still works).
- Symbols and client order ids with a NUL byte (PostgreSQL refuses NUL in text): -1121
  for the symbol, -2013 for the order id (nothing can have an id order entry refuses).
- The risk overview (HTML and JSON): staff without the risk permission get 403.
"""
import pytest
from django.contrib.auth.models import Permission

from apps.trading.public_selectors import MAX_TIME_MS

from .test_orders_api import error

AFTER_9999 = [MAX_TIME_MS + 1, 2**62, 2**63 - 1]
SIGNED_TIMED = [
    ("/fapi/v1/income", {}),
    ("/fapi/v1/allOrders", {"symbol": "BTCUSDT"}),
    ("/fapi/v1/userTrades", {"symbol": "BTCUSDT"}),
]
ORDER = "/fapi/v1/order"
NUL = "\x00"


# -- times after year 9999 ----------------------------------------------------------------------


@pytest.mark.parametrize("value", AFTER_9999)
@pytest.mark.parametrize("name", ["startTime", "endTime"])
def test_funding_rate_time_after_year_9999_is_minus_1130(client, btcusdt, name, value):
    error(client.get("/fapi/v1/fundingRate", {name: str(value)}), 400, -1130)
    error(client.get("/fapi/v1/fundingRate", {"symbol": "BTCUSDT", name: str(value)}), 400, -1130)


@pytest.mark.parametrize("value", AFTER_9999)
@pytest.mark.parametrize("name", ["startTime", "endTime"])
@pytest.mark.parametrize("path, extra", SIGNED_TIMED)
def test_signed_history_time_after_year_9999_is_minus_1130(api_user, path, extra, name, value):
    _, alice = api_user("alice")
    error(alice.call("GET", path, **extra, **{name: value}), 400, -1130)


def test_the_last_millisecond_of_year_9999_is_still_a_time(client, api_user):
    _, alice = api_user("alice")
    for params in ({"startTime": MAX_TIME_MS}, {"endTime": MAX_TIME_MS}, {"startTime": 0, "endTime": MAX_TIME_MS}):
        response = client.get("/fapi/v1/fundingRate", params)
        assert response.status_code == 200 and response.json() == [], response.content
        for path, extra in SIGNED_TIMED:
            response = alice.call("GET", path, **extra, **params)
            assert response.status_code == 200, (path, params, response.content)


# -- NUL bytes in a symbol or a client order id ---------------------------------------------------


def test_premium_index_of_a_symbol_with_a_nul_byte_is_minus_1121(client, btcusdt):
    for symbol in (NUL, "BTC\x00USDT", "btcusdt"):
        body = error(client.get("/fapi/v1/premiumIndex", {"symbol": symbol}), 400, -1121)
        # The same answer as for an unknown (well-formed) symbol, and as other endpoints give.
        assert body == client.get("/fapi/v1/premiumIndex", {"symbol": "NOPEUSDT"}).json()
        assert body == client.get("/fapi/v1/ticker/price", {"symbol": "NOPEUSDT"}).json()
    assert client.get("/fapi/v1/premiumIndex", {"symbol": "BTCUSDT"}).json()["symbol"] == "BTCUSDT"


@pytest.mark.parametrize("path", [ORDER, "/fapi/v1/openOrder"])
@pytest.mark.parametrize("client_id", [NUL, "my\x00id", "x" * 37, "bad id"])
def test_query_by_a_client_order_id_order_entry_refuses_is_minus_2013(api_user, path, client_id):
    _, alice = api_user("alice")
    body = error(alice.call("GET", path, symbol="BTCUSDT", origClientOrderId=client_id), 400, -2013)
    assert body["msg"] == "Order does not exist."


def test_query_by_client_order_id_still_finds_the_order(api_user):
    _, alice = api_user("alice")
    placed = alice.call("POST", ORDER, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity="0.01",
                        price="40000", timeInForce="GTC", newClientOrderId="a.Z:/_-9")
    assert placed.status_code == 200, placed.content
    for path in (ORDER, "/fapi/v1/openOrder"):
        found = alice.call("GET", path, symbol="BTCUSDT", origClientOrderId="a.Z:/_-9")
        assert found.status_code == 200 and found.json()["orderId"] == placed.json()["orderId"]
    # orderId, when sent, is what is looked up.
    found = alice.call("GET", ORDER, symbol="BTCUSDT", orderId=placed.json()["orderId"], origClientOrderId=NUL)
    assert found.status_code == 200 and found.json()["clientOrderId"] == "a.Z:/_-9"


def test_cancel_and_amend_by_a_nul_client_order_id_are_not_500(api_user):
    _, alice = api_user("alice")
    for send in (alice.call, alice.form):
        error(send("DELETE", ORDER, symbol="BTCUSDT", origClientOrderId=NUL), 400, -2013)
        error(send("PUT", ORDER, symbol="BTCUSDT", origClientOrderId=NUL, side="BUY", quantity="0.01",
                   price="40000"), 400, -2013)
    response = alice.call("DELETE", "/fapi/v1/batchOrders", symbol="BTCUSDT",
                          origClientOrderIdList='["\\u0000", "ok-id", "a\\u0000b"]')
    assert response.status_code == 200, response.content
    assert [item["code"] for item in response.json()] == [-2013, -2013, -2013]


# -- the risk overview needs the risk permission --------------------------------------------------

OVERVIEW_URLS = ["/admin/risk/risksnapshot/overview/", "/admin/risk/risksnapshot/overview.json"]


@pytest.mark.parametrize("url", OVERVIEW_URLS)
def test_risk_overview_is_403_for_staff_without_risk_permission(client, make_user, url):
    client.force_login(make_user("clerk", is_staff=True))
    assert client.get(url).status_code == 403


@pytest.mark.parametrize("url", OVERVIEW_URLS)
def test_risk_overview_is_served_to_staff_with_the_view_permission(client, make_user, url):
    analyst = make_user("analyst", is_staff=True)
    analyst.user_permissions.add(Permission.objects.get(codename="view_risksnapshot",
                                                        content_type__app_label="risk"))
    client.force_login(analyst)
    assert client.get(url).status_code == 200
    client.force_login(make_user("root", is_staff=True, is_superuser=True))
    assert client.get(url).status_code == 200
