"""/readyz per-symbol matcher heartbeats and pricefeed freshness; what the check sources read."""
import json
import time
from decimal import Decimal

import pytest
import time_machine
from django.urls import reverse

from apps.contracts.models import Contract, ContractStatus, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.services import Leg, ledger_post, system_account
from apps.ops.demo import ETH_BRACKETS
from apps.ops.health import heartbeat_record
from apps.ops.models import Backup, BackupStatus
from apps.ops.sources import MISSING, metric_publish, source_read
from apps.trading import handover
from apps.trading.matcher import LEADER_KEY
from exchange.redis import get_redis

D = Decimal


@pytest.fixture
def ethusdt(usdt, btc):
    return contract_create(
        tiers=tiers_from_brackets(ETH_BRACKETS), symbol="ETHUSDT", contract_type=ContractType.PERPETUAL,
        status=ContractStatus.TRADING, base_asset=btc, quote_asset=usdt, settle_asset=usdt,
    )


def test_readyz_reports_each_matcher_and_turns_ready_when_heartbeats_arrive(client, btcusdt, ethusdt):
    heartbeat_record("beat")
    heartbeat_record("matcher:BTCUSDT")
    get_redis().set(LEADER_KEY.format(symbol="BTCUSDT"), 4242)
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and body["ready"] is False
    matchers = body["checks"]["matchers"]
    assert matchers["ok"] is False and matchers["error"] == "no fresh heartbeat for ETHUSDT"
    assert matchers["symbols"]["BTCUSDT"]["ok"] is True and matchers["symbols"]["BTCUSDT"]["leader_pid"] == 4242
    assert matchers["symbols"]["ETHUSDT"] == {
        "ok": False, "age_seconds": None, "max_age_seconds": 10, "error": "no heartbeat recorded", "leader_pid": None,
        "takes_orders": False,
    }
    heartbeat_record("matcher:ETHUSDT")
    assert client.get("/readyz").status_code == 200
    assert client.get("/readyz").json()["checks"]["matchers"]["symbols"]["BTCUSDT"]["takes_orders"] is False
    handover.announce(["BTCUSDT"])  # the lease holder takes the API's orders (apps.trading.handover)
    symbols = client.get("/readyz").json()["checks"]["matchers"]["symbols"]
    assert symbols["BTCUSDT"]["takes_orders"] is True and symbols["ETHUSDT"]["takes_orders"] is False


def test_readyz_turns_not_ready_when_a_matcher_heartbeat_goes_stale(client, btcusdt):
    heartbeat_record("beat")
    heartbeat_record("matcher:BTCUSDT")
    assert client.get("/readyz").status_code == 200
    with time_machine.travel(time.time() + 11, tick=False):  # no clock drift under load
        heartbeat_record("beat")
        body = client.get("/readyz").json()
    assert body["ready"] is False and body["checks"]["matchers"]["symbols"]["BTCUSDT"]["age_seconds"] == 11.0


def test_settled_contracts_need_no_matcher(client, btcusdt):
    heartbeat_record("beat")
    Contract.objects.filter(pk=btcusdt.pk).update(status=ContractStatus.SETTLED)
    assert client.get("/readyz").json()["checks"]["matchers"] == {"ok": True, "max_age_seconds": 10, "symbols": {}}


def test_pricefeed_freshness_is_reported_and_required_only_when_configured(client, db, settings):
    heartbeat_record("beat")
    body = client.get("/readyz").json()
    assert body["ready"] is True
    assert body["checks"]["pricefeed"] == {
        "ok": True, "fresh": False, "required": False, "age_seconds": None, "max_age_seconds": 10,
        "error": "no heartbeat recorded", "leader_pid": None,
    }
    settings.OPS_PRICEFEED_REQUIRED = True
    assert client.get("/readyz").status_code == 503
    heartbeat_record("pricefeed")
    pricefeed = client.get("/readyz").json()["checks"]["pricefeed"]
    assert pricefeed["ok"] is True and pricefeed["fresh"] is True and pricefeed["age_seconds"] < 10


def test_heartbeat_sources_read_ages_and_missing(btcusdt):
    heartbeat_record("matcher:BTCUSDT")
    reading = source_read("ops.matcher_heartbeat_age")
    assert set(reading) == {"BTCUSDT"} and reading["BTCUSDT"] < 5
    get_redis().delete("ops:heartbeat:matcher:BTCUSDT")
    assert source_read("ops.matcher_heartbeat_age") == {"BTCUSDT": MISSING}
    assert source_read("ops.pricefeed_heartbeat_age") == {"": MISSING}
    heartbeat_record("beat")
    assert source_read("ops.beat_heartbeat_age")[""] < 5


def test_insurance_fund_source_reads_the_ledger(usdt, external):
    assert source_read("risk.insurance_fund_balance") == {"": D(0)}
    ledger_post(
        kind=TransactionKind.INSURANCE,
        legs=[Leg(system_account(AccountKind.INSURANCE_FUND), usdt, D("999999.99")), Leg(external, usdt, D("-999999.99"))],
        idempotency_key="t:fund",
    )
    assert source_read("risk.insurance_fund_balance") == {"": D("999999.99")}


def test_latency_and_invariant_sources_read_published_values(db):
    assert source_read("trading.order_latency_p95_us") == {"": None}
    metric_publish("order_latency_p95_us", D("850.5"))
    assert source_read("trading.order_latency_p95_us") == {"": D("850.5")}
    with time_machine.travel(time.time() + 121):
        assert source_read("trading.order_latency_p95_us") == {"": None}  # stale: no data, not "fine"
    assert source_read("ledger.invariant_violations") == {"": None}
    get_redis().set("ops:invariants:last", json.dumps({"at": time.time(), "violations": ["a", "b"]}))
    assert source_read("ledger.invariant_violations") == {"": D(2)}
    assert source_read("trading.orders_per_second") == {"": D("0.000")}


def test_dashboard_shows_alerts_panel_and_last_backup(client, make_user, db):
    client.force_login(make_user("staff", is_staff=True))
    from django.utils import timezone

    Backup.objects.create(database="x", status=BackupStatus.SUCCEEDED, started_at=timezone.now(), size_bytes=2048,
                          verified=False, verified_at=timezone.now(), verify_error="checksum mismatch: x")
    body = client.get(reverse("ops:dashboard")).content.decode()
    assert "No alert is firing." in body and "verification FAILED" in body and "checksum mismatch" in body


def test_beat_runs_alert_evaluation_every_15_s_and_the_daily_backup(settings, db):
    from celery.schedules import crontab

    from apps.ops.tasks import alerts_evaluate

    schedule = settings.CELERY_BEAT_SCHEDULE
    assert schedule["ops-alerts-evaluate"] == {"task": "apps.ops.tasks.alerts_evaluate", "schedule": 15.0}
    assert schedule["ops-backup-daily"]["task"] == "apps.ops.tasks.backup_daily"
    assert schedule["ops-backup-daily"]["schedule"] == crontab(hour=2, minute=30)
    assert alerts_evaluate.apply().get()["errors"] == 0
