from tests.accounts.conftest import now_ms


def test_signed_get(alice, make_key, signer_for):
    signer = signer_for(*make_key(alice))
    response = signer.query("GET", "/fapi/test/account", {"symbol": "BTCUSDT", "timestamp": now_ms()})
    assert response.status_code == 200, response.content
    assert response.json()["user"] == "alice"
    assert response["X-MBX-USED-WEIGHT-1M"] == "5"
