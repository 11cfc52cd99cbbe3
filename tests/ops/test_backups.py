"""Backups with the real pg_dump / pg_restore against the test database: verify, a
corrupted dump failing verification with an alert, retention, restore into a new DB."""
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from apps.ledger.services import wallet_deposit
from apps.ops.backups import (
    VERIFY_ALERT_KEY,
    Database,
    backup_create,
    backup_retention_apply,
    backup_verify,
    database_drop,
    database_exists,
    pg_tool,
)
from apps.ops.models import Alert, AlertStatus, Backup, BackupStatus
from apps.ops.tasks import backup_daily

D = Decimal
pytestmark = pytest.mark.django_db(transaction=True)  # pg_dump sees committed rows only


@pytest.fixture
def ledger_data(alice, bob, usdt, wallet):
    wallet_deposit(user=alice, asset=usdt, amount=D("1234.5"), idempotency_key="t:alice")
    wallet_deposit(user=bob, asset=usdt, amount=D("10"), idempotency_key="t:bob")


@pytest.fixture
def scratch_names():
    """Database names a test creates; dropped afterwards whatever happens."""
    names: list[str] = []
    yield names
    db = Database.configured()
    for name in names:
        database_drop(db, name)


def test_daily_backup_records_checksum_and_counts_then_verifies(ledger_data, tmp_path, settings):
    settings.OPS_BACKUP_DIR = tmp_path
    backup = Backup.objects.get(pk=backup_daily.apply().get())  # what beat runs: dump, verify, retention
    assert backup.status == BackupStatus.SUCCEEDED, backup.error
    path = Path(backup.path)
    assert path.parent == tmp_path and path.suffix == ".dump" and path.stat().st_size == backup.size_bytes
    assert path.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    assert len(backup.sha256) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert backup.row_counts["auth_user"] == 2 and backup.row_counts["ledger_ledgertransaction"] == 2
    assert backup.ledger_totals == {"USDT": "1244.5"}
    assert not list(tmp_path.glob("*.partial"))

    assert backup.verified, backup.verify_error
    assert backup.verified_at is not None and backup.verify_error == ""
    assert not database_exists(Database.configured(), f"{backup.database}_verify_{backup.pk}")
    assert not Alert.objects.filter(status=AlertStatus.FIRING).exists()


def test_corrupted_backup_fails_verification_and_raises_an_alert(ledger_data, tmp_path, client, make_user):
    backup = backup_create(directory=tmp_path)
    path = Path(backup.path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)  # damage on purpose
    path.write_bytes(bytes(data))

    client.force_login(make_user("ops", is_staff=True, is_superuser=True))
    response = client.post(reverse("admin:ops_backup_changelist"), {"action": "verify_now", "_selected_action": [backup.pk]})
    assert response.status_code == 302  # "verify now" queues the task (run at once here: eager Celery)
    backup.refresh_from_db()
    assert not backup.verified and "checksum mismatch" in backup.verify_error
    alert = Alert.objects.get(dedup_key=VERIFY_ALERT_KEY)
    assert alert.status == AlertStatus.FIRING and alert.level == "HIGH"
    assert alert.details["backup_id"] == backup.pk and f"Backup #{backup.pk} failed verification" in alert.message

    # The next good backup's verification resolves the alert.
    good = backup_create(directory=tmp_path)
    backup_verify(backup=good)
    assert good.verified
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED


def test_verification_compares_the_restored_rows_with_the_recorded_ones(ledger_data, tmp_path):
    """A dump that restores but lacks rows (here: the record says one more) is not verified."""
    backup = backup_create(directory=tmp_path)
    backup.row_counts["ledger_ledgerentry"] += 1
    backup.ledger_totals["USDT"] = "1244.6"
    backup.save()
    backup_verify(backup=backup)
    assert not backup.verified
    assert "ledger_ledgerentry: 4 rows restored, 5 recorded" in backup.verify_error
    assert "ledger total USDT: 1244.5 restored, 1244.6 recorded" in backup.verify_error
    assert not database_exists(Database.configured(), f"{backup.database}_verify_{backup.pk}")


def test_failed_dump_is_recorded_and_alerts(db, tmp_path, settings):
    settings.OPS_PG_BIN_DIR = str(tmp_path)
    fake = tmp_path / "pg_dump"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'pg_dump (PostgreSQL) 99.0' && exit 0\n"
                    "echo 'pg_dump: error: disk full' >&2; exit 1\n")
    fake.chmod(0o755)
    backup = backup_create(directory=tmp_path / "out")
    assert backup.status == BackupStatus.FAILED and "disk full" in backup.error
    assert not list((tmp_path / "out").iterdir())
    assert Alert.objects.get(dedup_key="backup_failure:create").status == AlertStatus.FIRING
    with pytest.raises(CommandError, match="failed"):
        call_command("backup", "--dir", str(tmp_path / "out"), stdout=StringIO())


def test_restore_into_a_new_database_and_check_a_row(ledger_data, tmp_path, scratch_names, alice):
    backup = backup_create(directory=tmp_path)
    target = f"{backup.database}_restored"
    scratch_names.append(target)
    out = StringIO()
    call_command("restore", str(backup.pk), "--target-db", target, stdout=out)
    assert "restore checked" in out.getvalue() and "invariant checks passed" in out.getvalue()
    with Database.configured().named(target).connect() as conn:
        row = conn.execute(
            "SELECT b.amount FROM ledger_balance b JOIN ledger_account a ON a.id = b.account_id "
            "JOIN auth_user u ON u.id = a.user_id WHERE u.username = 'alice'"
        ).fetchone()
    assert row == (D("1234.5"),)

    with pytest.raises(CommandError, match="exists; use --force"):
        call_command("restore", backup.path, "--target-db", target, stdout=StringIO())
    call_command("restore", backup.path, "--target-db", target, "--force", stdout=StringIO())  # by path, replaced


def test_restore_refuses_the_live_database_and_bad_names(ledger_data, tmp_path):
    backup = backup_create(directory=tmp_path)
    live = Database.configured().name
    with pytest.raises(CommandError, match="live database"):
        call_command("restore", str(backup.pk), "--target-db", live, stdout=StringIO())
    with pytest.raises(CommandError, match="not a plain database name"):
        call_command("restore", str(backup.pk), "--target-db", "x; DROP DATABASE y", stdout=StringIO())
    with pytest.raises(CommandError, match="no backup #999999"):
        call_command("restore_backup", "999999", "--target-db", "whatever", stdout=StringIO())


def _backup_at(when: datetime, directory: Path, *, verified=True, status=BackupStatus.SUCCEEDED) -> Backup:
    path = directory / f"b-{when:%Y%m%d%H%M}.dump"
    path.write_bytes(b"PGDMP")
    return Backup.objects.create(database="x", status=status, started_at=when, finished_at=when, path=str(path),
                                 verified=verified)


def test_retention_keeps_daily_and_weekly_and_removes_the_rest(db, tmp_path):
    now = datetime(2025, 3, 20, 3, 0, tzinfo=UTC)  # a Thursday
    made = {}
    for days_ago in range(0, 30):
        made[days_ago] = _backup_at(now - timedelta(days=days_ago), tmp_path)
    extra_today = _backup_at(now - timedelta(hours=1), tmp_path)  # two today: the newer one is kept
    unverified_yesterday = _backup_at(now - timedelta(days=1, hours=-1), tmp_path, verified=False)
    failed = _backup_at(now - timedelta(days=2, hours=1), tmp_path, status=BackupStatus.FAILED)

    pruned = backup_retention_apply(now=now, keep_daily=3, keep_weekly=3)

    kept = set(Backup.objects.filter(pruned_at__isnull=True).values_list("pk", flat=True))
    # Daily: today, yesterday (the verified one, not the newer unverified), the day before.
    # Weekly: the newest of this ISO week (today) and of the two weeks before (their Sundays).
    sundays = {made[days].pk for days in (4, 11)}
    assert kept == {made[0].pk, made[1].pk, made[2].pk} | sundays
    assert extra_today.pk not in kept and unverified_yesterday.pk not in kept and failed.pk not in kept
    assert {b.pk for b in pruned} == set(Backup.objects.filter(pruned_at=now).values_list("pk", flat=True))
    for backup in Backup.objects.all():
        assert Path(backup.path).exists() == (backup.pk in kept)
    assert backup_retention_apply(now=now, keep_daily=3, keep_weekly=3) == []  # idempotent


def test_pg_tools_are_found_and_match_the_server():
    db = Database.configured()
    path = pg_tool("pg_restore", server_major=db.server_major())
    assert Path(path).name == "pg_restore"
