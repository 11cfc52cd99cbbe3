"""Schemathesis over the published OpenAPI schema, against a live web process.

The web process (scripts/web.py, as the Procfile starts it) serves the test database, which
holds a contract, a funded user with an API key, resting orders and trades. For every
operation in `/api/schema/`, hypothesis generates requests from the schema; requests to
signed endpoints are signed the way client libraries sign them (so they get past
authentication and exercise the endpoint). Every response must not be a 5xx, must use
a documented status code and content type, and must match its documented schema.
"""
import hashlib
import hmac
import os
import socket
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from apps.accounts.services import api_key_create
from apps.ledger.services import wallet_deposit
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.services import order_place
from tests.database import database_url
from tests.procfile import die_with_parent, procfile_env, web_command

ROOT = Path(__file__).resolve().parents[2]
D = Decimal
EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server_process(btcusdt, tmp_path):
    env = {**os.environ, **procfile_env("web"),  # as the Procfile runs `web`: order entry on prepared generic plans
           "DJANGO_SETTINGS_MODULE": "exchange.settings.test",
           "DATABASE_URL": database_url(),
           "API_IP_WEIGHT_LIMIT_1M": "100000000", "API_KEY_WEIGHT_LIMIT_1M": "100000000",
           "API_ACCOUNT_ORDER_LIMIT_1M": "100000000"}
    port = free_port()
    # A file, not a pipe: nobody reads while the test runs, and a full pipe would block the
    # server on its next log line.
    log = open(tmp_path / "web.log", "wb")
    server = subprocess.Popen(web_command(port), cwd=ROOT, env=env, preexec_fn=die_with_parent,
                              stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            raise AssertionError("web process did not start: " + (tmp_path / "web.log").read_text()[-2000:])
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_every_operation_answers_as_documented(live_server_process, make_user, usdt, btcusdt):
    base = live_server_process
    trader, other = make_user("fuzz"), make_user("other")
    for user in (trader, other):
        wallet_deposit(user=user, asset=usdt, amount=D("1000000"))
    engine = SymbolEngine(btcusdt)
    order_place(user=other, contract=btcusdt, side="SELL", quantity=D("0.5"), price=D("50000"))
    order_place(user=trader, contract=btcusdt, side="BUY", quantity=D("0.2"), price=D("50000"))
    order_place(user=trader, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("49000"))
    batch_process(engine)
    api_key, secret = api_key_create(user=trader, label="fuzz", can_trade=True)

    schema = schemathesis.openapi.from_url(base + "/api/schema/")
    session = requests.Session()
    failures = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith("/fapi/"):
            continue
        operations += 1
        signed = any(p.name == "signature" for p in operation.query)
        keyed = any(p.name == "X-MBX-APIKEY" for p in operation.headers)

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            kwargs = case.as_transport_kwargs(base_url=base)
            params = {k: v for k, v in (kwargs.pop("params", None) or {}).items()
                      if k not in ("timestamp", "signature", "recvWindow")}
            headers = kwargs.pop("headers", None) or {}
            if keyed:  # a client sends its real key; fuzzed header bytes only test the server's HTTP parser
                headers["X-MBX-APIKEY"] = api_key.key
            if signed:
                params["timestamp"] = int(time.time() * 1000)
                query = urlencode(params, doseq=True)
                query += "&signature=" + hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
            else:
                query = urlencode(params, doseq=True)
            url = kwargs.pop("url") + ("?" + query if query else "")
            response = session.request(kwargs.pop("method"), url, headers=headers, timeout=30,
                                       **{k: v for k, v in kwargs.items() if k in ("data", "json")})
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as exc:  # collect: one run reports every broken operation
                failures.append(f"{case.method} {case.path} -> {response.status_code}: {str(exc)[:300]}")
                raise

        try:
            run()
        except (Exception, BaseExceptionGroup):
            pass  # recorded in `failures`
    session.close()
    assert operations >= 30
    assert failures == [], "\n".join(failures[:20])


def test_orders_after_a_refusal_that_rolls_back_the_prepared_statements(live_server_process, make_user, usdt,
                                                                       btcusdt):
    # The web runs order entry on prepared statements (DB_SERVER_SIDE_BINDING, as here). A
    # client order id already stored is refused by the unique key: its transaction rolls back,
    # and psycopg drops the connection's prepared statements with it; the orders after it
    # prepare them again, on the same pooled connection.
    base = live_server_process
    trader = make_user("prepared")
    wallet_deposit(user=trader, asset=usdt, amount=D("1000000"))
    api_key, secret = api_key_create(user=trader, label="prepared", can_trade=True)
    session = requests.Session()

    def signed(method: str, path: str, **params):
        query = urlencode({**params, "timestamp": int(time.time() * 1000)})
        query += "&signature=" + hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
        response = session.request(method, f"{base}{path}?{query}", headers={"X-MBX-APIKEY": api_key.key}, timeout=30)
        return response.status_code, response.json()

    def order(client_id: str):
        return signed("POST", "/fapi/v1/order", symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
                      quantity="0.001", price="40000", newClientOrderId=client_id)

    for i in range(6):  # past any prepare threshold
        assert order(f"before{i}")[0] == 200
    status, body = order("before0")
    assert status == 400 and body["code"] == -4116
    for i in range(3):
        assert order(f"after{i}")[0] == 200
    status, body = signed("GET", "/fapi/v1/openOrders", symbol="BTCUSDT")
    assert status == 200
    assert sorted(o["clientOrderId"] for o in body) == sorted([f"before{i}" for i in range(6)]
                                                             + [f"after{i}" for i in range(3)])
    session.close()
