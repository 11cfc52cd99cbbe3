"""The hot tables' vacuuming: their autovacuum settings, the sources and rules that say when
the server does not vacuum, and the by-hand vacuum for a server without autovacuum."""
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.ops import sources
from apps.ops.alerts import rules_evaluate
from apps.ops.maintenance import HOT_TABLES, autovacuum_on, hot_tables_vacuum, vacuum_diagnostics
from apps.ops.models import Alert, AlertRule, AlertStatus
from apps.ops.sources import source_read

D = Decimal


def _reloptions(table: str) -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = %s", [table])
        return set(cursor.fetchone()[0] or [])


def test_large_hot_tables_vacuum_at_a_fixed_number_of_dead_rows(db):
    for table in ("trading_order", "trading_ordercommand", "positions_position", "ledger_balance"):
        assert {"autovacuum_vacuum_scale_factor=0", "autovacuum_vacuum_threshold=10000"} <= _reloptions(table), table
    # Earlier storage settings of the same tables are kept (HOT updates: ledger 0005, positions 0002).
    assert "fillfactor=45" in _reloptions("positions_position")
    assert not any(o.startswith("autovacuum") for o in _reloptions("contracts_contract"))


def test_autovacuum_source_reads_the_server_setting(db):
    assert source_read("db.autovacuum_off") == {"": D(0) if autovacuum_on() else D(1)}


@pytest.mark.django_db(transaction=True)
def test_dead_rows_source_counts_rows_left_by_updates(btcusdt):
    def dead() -> D:
        with connection.cursor() as cursor:  # the statistics are flushed at the end of a transaction
            cursor.execute("SELECT pg_stat_force_next_flush()")
        with transaction.atomic():
            pass
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
        return source_read("db.hot_table_dead_rows")["contracts_contract"]

    reading = source_read("db.hot_table_dead_rows")
    assert set(reading) == set(HOT_TABLES) and all(v >= 0 for v in reading.values())
    before = dead()
    for _ in range(3):
        with connection.cursor() as cursor:
            cursor.execute("UPDATE contracts_contract SET book_version = book_version + 1 WHERE id = %s", [btcusdt.pk])
    assert dead() >= before + 3


def test_autovacuum_rule_fires_exactly_where_the_server_runs_without_it(db, django_capture_on_commit_callbacks):
    AlertRule.objects.exclude(key="db.autovacuum_off").update(enabled=False)
    rule = AlertRule.objects.get(key="db.autovacuum_off")
    assert (rule.comparison, rule.threshold, rule.level) == ("gt", D(0), "WARNING")
    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate()
    alerts = list(Alert.objects.filter(rule=rule))
    if autovacuum_on():
        assert alerts == []
    else:
        assert [a.status for a in alerts] == [AlertStatus.FIRING]
        assert "server's setting" in alerts[0].details["auto_action"]["note"]


def test_dead_rows_rule_fires_after_ten_minutes_with_the_oldest_transaction(db, monkeypatch,
                                                                            django_capture_on_commit_callbacks):
    monkeypatch.setitem(sources.SOURCES, "db.hot_table_dead_rows", sources.Source(
        key="db.hot_table_dead_rows", description="dead rows", unit="rows",
        read=lambda: {"trading_order": D(250_000), "ledger_balance": D(10)}))
    AlertRule.objects.exclude(key="db.hot_table_dead_rows").update(enabled=False)
    rule = AlertRule.objects.get(key="db.hot_table_dead_rows")
    assert (rule.threshold, rule.for_seconds) == (D(100_000), 600)
    t0 = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate(now=t0)
    alert = Alert.objects.get(rule=rule)
    assert (alert.label, alert.status) == ("trading_order", AlertStatus.PENDING)
    with django_capture_on_commit_callbacks(execute=True):
        rules_evaluate(now=t0 + timedelta(seconds=601))
    alert.refresh_from_db()
    assert alert.status == AlertStatus.FIRING and alert.value == 250_000
    action = alert.details["auto_action"]
    assert action["action"] == "hot_table_vacuum_diagnostics"
    assert action["table"]["dead_rows"] >= 0 and action["autovacuum"] is autovacuum_on()
    assert not Alert.objects.filter(label="ledger_balance").exists()


def test_vacuum_diagnostics_name_the_session_holding_back_the_cleanup(db):
    """Another session of this database holding a snapshot open is named, with its age and
    query; this session's own transaction (the test's) is left out."""
    with psycopg.connect(**connection.get_connection_params()) as other:
        assert vacuum_diagnostics("trading_order")["oldest_transaction"] is None
        other.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        other.execute("SELECT count(*) FROM trading_order")  # the snapshot now holds back the horizon
        oldest = vacuum_diagnostics("trading_order")["oldest_transaction"]
        assert oldest["pid"] == other.info.backend_pid and oldest["age_seconds"] >= 0
        assert oldest["state"] == "idle in transaction" and "trading_order" in oldest["query"]
        other.rollback()
        assert vacuum_diagnostics("trading_order")["oldest_transaction"] is None


def test_readiness_says_whether_the_server_vacuums(client, db):
    body = client.get("/readyz").json()
    assert body["checks"]["database"] == {"ok": True, "autovacuum": autovacuum_on()}


@pytest.mark.django_db(transaction=True)
def test_hot_tables_are_vacuumed_by_hand_only_where_autovacuum_is_off():
    assert hot_tables_vacuum() is (not autovacuum_on())
    with transaction.atomic():  # VACUUM cannot run in a transaction: left to the next round
        assert hot_tables_vacuum() is False
