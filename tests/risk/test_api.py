"""Risk endpoints through the HTTP stack: the signed account risk, the options
calculator (Hull's textbook numbers), the staff overview, the OpenAPI schema."""
import pytest

from apps.risk.services import risk_assess_all
from tests.api.conftest import api_isolation, api_user  # noqa: F401  (signing client fixtures)

from .conftest import NOW, hold, set_mark

RISK = "/fapi/v1/risk/account"
OPTIONS = "/fapi/v1/risk/options"


def test_account_risk_signed(api_user, btcusdt):  # noqa: F811
    user, client = api_user("alice")
    set_mark(btcusdt, "50000")
    hold(user, btcusdt, "1", "50000")
    fresh = client.call("GET", RISK)  # no snapshot yet: assessed on request
    assert fresh.status_code == 200, fresh.content
    body = fresh.json()
    assert body["riskLevel"] == "LOW" and body["paths"] == 10_000
    assert body["equity"] == "100000" and body["grossNotional"] == "50000"
    assert float(body["var99"]) > float(body["var95"]) > 0
    assert {s["name"] for s in body["stress"]} >= {"market_down_30", "volatility_spike_3x", "correlation_one"}
    assert body["recommendations"][0]["code"] == "DIVERSIFY"

    hold(user, btcusdt, "60", "50000")  # 30×
    run = risk_assess_all()
    later = client.call("GET", RISK).json()
    assert later["time"] == int(run.snapshots.get().computed_at.timestamp() * 1000)
    assert later["riskLevel"] == "HIGH" and later["grossNotional"] == "3000000"


def test_account_risk_needs_a_signature(api_user, client):  # noqa: F811
    _, signer = api_user("bob")
    response = client.get(RISK)
    assert response.status_code == 401 and response.json()["code"] == -2014
    unsigned = client.get(RISK + "?timestamp=1", headers={"X-MBX-APIKEY": signer.api_key.key})
    assert unsigned.status_code == 400 and unsigned.json()["code"] == -1102


def test_options_textbook_values(client, db):
    # Hull: S = K = 100, T = 1, r = 5%, σ = 20%: call 10.4506, put 5.5735.
    r = client.get(OPTIONS, {"spot": "100", "strike": "100", "expiry": "1", "rate": "0.05", "volatility": "0.2",
                             "type": "CALL,PUT"})
    assert r.status_code == 200, r.content
    call, put = r.json()
    assert call["price"] == pytest.approx(10.4506, abs=1e-4) and put["price"] == pytest.approx(5.5735, abs=1e-4)
    assert call["delta"] == pytest.approx(0.6368, abs=1e-4) and put["delta"] == pytest.approx(-0.3632, abs=1e-4)
    assert call["gamma"] == pytest.approx(0.018762, abs=1e-5)
    assert call["vega"] == pytest.approx(0.37524, abs=1e-4)  # per 1 volatility point
    assert call["theta"] == pytest.approx(-6.414 / 365, abs=1e-4)  # per day
    # Put–call parity: C − P = S − K e^(−rT)
    assert call["price"] - put["price"] == pytest.approx(100 - 100 * 0.951229424500714, abs=1e-9)
    # Implied volatility round trip, and a chain in one call.
    iv = client.get(OPTIONS, {"spot": "100", "strike": "90,100,110", "expiry": "0.5", "rate": "0.05",
                              "price": "14.0,7.0,2.5,"[:-1]}).json()
    assert [q["impliedVolatilityStatus"] for q in iv] == ["OK", "OK", "OK"]
    back = client.get(OPTIONS, {"spot": "100", "strike": "90,100,110", "expiry": "0.5", "rate": "0.05",
                                "volatility": ",".join(str(q["impliedVolatility"]) for q in iv)}).json()
    assert [q["price"] for q in back] == pytest.approx([14.0, 7.0, 2.5], abs=1e-8)
    above = client.get(OPTIONS, {"spot": "100", "strike": "100", "expiry": "1", "price": "150"}).json()[0]
    assert above["impliedVolatility"] is None and above["impliedVolatilityStatus"] == "ABOVE_UPPER_BOUND"


@pytest.mark.parametrize("query, code", [
    ({"spot": "100", "expiry": "1", "volatility": "0.2"}, -1102),  # no strike
    ({"spot": "100", "strike": "100", "expiry": "1"}, -1102),  # neither volatility nor price
    ({"strike": "100", "expiry": "1", "volatility": "0.2"}, -1102),  # neither spot nor symbol
    ({"spot": "100", "strike": "-5", "expiry": "1", "volatility": "0.2"}, -1130),
    ({"spot": "0", "strike": "100", "expiry": "1", "volatility": "0.2"}, -1130),
    ({"spot": "100", "strike": "100", "expiry": "abc", "volatility": "0.2"}, -1130),
    ({"spot": "100", "strike": "100", "expiry": "1", "volatility": "nan"}, -1130),
    ({"spot": "100", "strike": "100", "expiry": "1", "volatility": "9"}, -1130),
    ({"spot": "100", "strike": "90,100", "expiry": "1,2,3", "volatility": "0.2"}, -1130),
    ({"spot": "100", "strike": "100", "expiry": "1", "volatility": "0.2", "type": "STRADDLE"}, -1130),
    ({"spot": "100", "strike": ",".join(["100"] * 101), "expiry": "1", "volatility": "0.2"}, -1130),
    ({"symbol": "NOPE", "strike": "100", "expiry": "1", "volatility": "0.2"}, -1121),
])
def test_options_bad_inputs(client, db, query, code):
    r = client.get(OPTIONS, query)
    assert r.status_code == 400 and r.json()["code"] == code, r.content


def test_options_spot_from_a_symbol(client, btcusdt):
    set_mark(btcusdt, "50000")
    q = client.get(OPTIONS, {"symbol": "BTCUSDT", "strike": "50000", "expiry": "0.25", "volatility": "0.6"}).json()[0]
    assert q["spot"] == 50000 and q["price"] > 0


def test_staff_overview(client, make_user, btcusdt):
    set_mark(btcusdt, "50000")
    trader = make_user("trader")
    hold(trader, btcusdt, "2", "50000")
    risk_assess_all(now=NOW)
    client.force_login(make_user("nobody"))
    assert client.get("/admin/risk/risksnapshot/overview.json").status_code == 302  # not staff: to login
    client.force_login(make_user("ops", is_staff=True, is_superuser=True))
    data = client.get("/admin/risk/risksnapshot/overview.json").json()
    assert data["accounts"] == 1 and data["top"][0]["username"] == "trader"
    assert data["byLevel"]["CRITICAL"] == 1  # 2 BTC on no equity
    page = client.get("/admin/risk/risksnapshot/overview/")
    assert page.status_code == 200 and b"trader" in page.content
    listing = client.get("/admin/risk/risksnapshot/?level__exact=3")
    assert listing.status_code == 200 and b"trader" in listing.content
    snap_id = data and trader.risk_snapshots.get().pk
    detail = client.get(f"/admin/risk/risksnapshot/{snap_id}/change/")
    assert detail.status_code == 200 and b"volatility_spike_3x" in detail.content
    assert client.get("/admin/risk/volatilityestimate/").status_code == 200
    assert client.get("/admin/risk/riskrun/").status_code == 200


def test_schema_documents_the_endpoints(client, db):
    schema = client.get("/api/schema/?format=json").json()
    assert "get" in schema["paths"]["/fapi/v1/risk/account"]
    assert "get" in schema["paths"]["/fapi/v1/risk/options"]
    assert "400" in schema["paths"]["/fapi/v1/risk/options"]["get"]["responses"]


def test_a_flat_account_reports_zero_not_minus_zero(api_user, btcusdt):  # noqa: F811
    _, client = api_user("flat")
    body = client.call("GET", RISK).json()
    for name in ("var95", "var99", "expectedShortfall95", "expectedShortfall99"):
        assert body[name] == "0", (name, body[name])
