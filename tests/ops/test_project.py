"""Project plumbing: health endpoints, the demo seed, production settings refusal, client API basics."""
import base64
import os
from io import StringIO
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import call_command

from apps.contracts.models import Contract, ContractType
from apps.ledger.models import AccountKind, Balance
from apps.ops.demo import DEMO_DEPOSIT, DEMO_USERS, INSURANCE_SEED
from apps.ops.health import heartbeat_record
from apps.ops.tasks import beat_heartbeat

ROOT = Path(__file__).resolve().parents[2]


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_each_dependency(client):
    heartbeat_record("beat")
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["ready"] is True and set(body["checks"]) == {"database", "redis", "beat", "matchers", "pricefeed"}


@pytest.mark.django_db
def test_beat_heartbeat_task_feeds_readiness(client):
    beat_heartbeat.apply()
    assert client.get("/readyz").json()["checks"]["beat"]["ok"] is True


def test_client_api_time_and_errors(client):
    assert client.get("/fapi/v1/ping").json() == {}
    assert isinstance(client.get("/fapi/v1/time").json()["serverTime"], int)


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_balanced(tmp_path, settings):
    settings.OPS_CREDENTIALS_FILE = tmp_path / "ops.txt"
    call_command("seed_demo", "--if-empty", stdout=StringIO())
    call_command("seed_demo", stdout=StringIO())
    assert set(Contract.objects.values_list("contract_type", flat=True)) == {ContractType.PERPETUAL, ContractType.DELIVERY}
    assert Contract.objects.count() == 3
    wallets = Balance.objects.filter(account__kind=AccountKind.WALLET)
    assert sorted(wallets.values_list("amount", flat=True)) == [DEMO_DEPOSIT] * len(DEMO_USERS)
    fund = Balance.objects.get(account__kind=AccountKind.INSURANCE_FUND)
    assert fund.amount == INSURANCE_SEED
    assert "password:" in settings.OPS_CREDENTIALS_FILE.read_text()
    assert sum(Balance.objects.values_list("amount", flat=True)) == Decimal(0)
    call_command("check_ledger", stdout=StringIO())


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "default SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "shorter than 32"),
        ({"SECRET_KEY": "x" * 40, "DEBUG": "1"}, "DEBUG on"),
    ],
)
def test_production_settings_refuse_unsafe_values(env, message):
    clean = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    clean.update(env, DJANGO_SETTINGS_MODULE="exchange.settings.production")
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=clean, capture_output=True, text=True
    )
    assert result.returncode != 0 and message in result.stderr


def test_production_settings_start_with_a_real_secret():
    fernet_key = base64.urlsafe_b64encode(os.urandom(32)).decode()  # production also needs the API key cipher
    clean = dict(os.environ, DJANGO_SETTINGS_MODULE="exchange.settings.production", SECRET_KEY="k" * 50, DEBUG="0",
                 API_KEY_ENCRYPTION_KEY=fernet_key)
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('ok')"],
        cwd=ROOT, env=clean, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("env, refused", [
    ({"DB_PREPARED_STATEMENTS": "some"}, True),
    ({"DB_PREPARED_STATEMENTS": "all"}, True),  # without server-side binding it could not prepare anything
    ({"DB_PREPARED_STATEMENTS": "all", "DB_SERVER_SIDE_BINDING": "1"}, False),
    ({"DB_PREPARED_STATEMENTS": "raw"}, False),
])
def test_prepared_statements_setting_is_refused_where_it_cannot_apply(env, refused):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    clean.update(env, DJANGO_SETTINGS_MODULE="exchange.settings.test")
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=clean,
                            capture_output=True, text=True)
    assert (result.returncode != 0) == refused, result.stderr[-2000:]
    assert ("DB_PREPARED_STATEMENTS" in result.stderr) == refused


@pytest.mark.parametrize("wait, refused", [("3", False), ("0", False), ("5", True), ("-1", True)])
def test_handover_wait_is_refused_outside_what_redis_can_wait(wait, refused):
    clean = {**os.environ, "ORDER_HANDOVER_WAIT_SECONDS": wait, "DJANGO_SETTINGS_MODULE": "exchange.settings.test"}
    result = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=clean,
                            capture_output=True, text=True)
    assert (result.returncode != 0) == refused, result.stderr[-2000:]
    assert ("ORDER_HANDOVER_WAIT_SECONDS" in result.stderr) == refused
