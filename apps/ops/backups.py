"""Verified PostgreSQL backups: dump, verify by restoring, retention, restore.

`backup_create` dumps the configured database with `pg_dump --format=custom` inside
an exported snapshot: the row counts and ledger totals recorded with the backup are
read in the same snapshot the dump is taken from, so they must match the restore
exactly. `backup_verify` checks the file's SHA-256, restores it into a scratch
database `<db>_verify_<id>`, compares the counts and totals, runs `manage.py
check_ledger` against the restored copy, and drops the scratch database; the backup
is "verified" only when every step passes. Failures raise alerts (`backup_failure`).

pg_dump / pg_restore are found like scripts/services.sh finds the server binaries
(OPS_PG_BIN_DIR, then PATH, /usr/lib/postgresql/*/bin, the pip `pgserver` build), so
`make test` on a machine with only the embedded server works too.
"""
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import psycopg
from django.conf import settings
from django.db import connection
from django.utils import timezone
from psycopg import sql

from .alerts import alert_raise, alert_resolve
from .models import AlertLevel, Backup, BackupStatus

logger = logging.getLogger(__name__)

DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
CREATE_ALERT_KEY = "backup_failure:create"
VERIFY_ALERT_KEY = "backup_failure:verify"


class BackupError(Exception):
    pass


# --- PostgreSQL binaries -----------------------------------------------------------


def _bin_dirs() -> list[Path]:
    dirs: list[Path] = []
    if settings.OPS_PG_BIN_DIR:
        dirs.append(Path(settings.OPS_PG_BIN_DIR))
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        dirs.append(Path(os.path.realpath(pg_ctl)).parent)
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _major(p.parent.name), reverse=True)
    dirs.extend(system)
    try:
        import pgserver  # the embedded build scripts/services.sh installs when nothing else exists

        dirs.append(Path(pgserver.__file__).parent / "pginstall" / "bin")
    except ImportError:
        pass
    return dirs


def _major(text: str) -> int:
    match = re.search(r"(\d+)", text)
    return int(match.group(1)) if match else 0


def pg_tool(name: str, *, server_major: int | None = None) -> str:
    """Path of a PostgreSQL client program at least as new as the server."""
    candidates = [d / name for d in _bin_dirs()]
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    seen = []
    for path in candidates:
        if not (path.is_file() and os.access(path, os.X_OK)) or path in seen:
            continue
        seen.append(path)
        if server_major is None:
            return str(path)
        version = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout
        match = re.search(r"\(PostgreSQL\)\s*(\d+)", version)
        if match and int(match.group(1)) >= server_major:
            return str(path)
    found = ", ".join(str(p) for p in seen) or "none"
    raise BackupError(
        f"no usable {name} (server major version {server_major}; found: {found}); "
        "install the PostgreSQL client or set OPS_PG_BIN_DIR"
    )


# --- connections -------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    name: str
    user: str
    password: str
    host: str
    port: str

    @classmethod
    def configured(cls) -> "Database":
        s = connection.settings_dict
        return cls(
            name=s["NAME"], user=s.get("USER") or "", password=s.get("PASSWORD") or "",
            host=s.get("HOST") or "", port=str(s.get("PORT") or ""),
        )

    def named(self, name: str) -> "Database":
        return Database(name=name, user=self.user, password=self.password, host=self.host, port=self.port)

    def connect(self, **kwargs) -> psycopg.Connection:
        params = {"dbname": self.name, "user": self.user or None, "password": self.password or None,
                  "host": self.host or None, "port": self.port or None}
        return psycopg.connect(**{k: v for k, v in params.items() if v is not None}, **kwargs)

    def env(self) -> dict:
        """Environment for pg_dump / pg_restore (the password never on a command line)."""
        env = dict(os.environ)
        for var, value in (("PGHOST", self.host), ("PGPORT", self.port), ("PGUSER", self.user),
                           ("PGPASSWORD", self.password), ("PGDATABASE", self.name)):
            if value:
                env[var] = value
            else:
                env.pop(var, None)
        return env

    def url(self) -> str:
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        host = quote(self.host, safe="") + (f":{self.port}" if self.port else "")
        return f"postgres://{auth}@{host}/{self.name}"

    def server_major(self) -> int:
        with self.connect(autocommit=True) as conn:
            return int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000


def _maintenance(db: Database) -> psycopg.Connection:
    return db.named("postgres").connect(autocommit=True)


def database_exists(db: Database, name: str) -> bool:
    with _maintenance(db) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def database_drop(db: Database, name: str) -> None:
    with _maintenance(db) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_create(db: Database, name: str) -> None:
    with _maintenance(db) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# --- what a backup records ---------------------------------------------------------


def table_counts(conn: psycopg.Connection, tables: list[str]) -> dict[str, int]:
    counts = {}
    for table in tables:
        if conn.execute("SELECT to_regclass(%s)", [table]).fetchone()[0] is None:
            continue
        counts[table] = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
    return counts


def ledger_totals(conn: psycopg.Connection) -> dict[str, str]:
    """Sum of the positive legs per asset: the money moved, a total any loss would change."""
    if conn.execute("SELECT to_regclass('ledger_ledgerentry')").fetchone()[0] is None:
        return {}
    rows = conn.execute(
        """
        SELECT a.code, COALESCE(SUM(e.amount) FILTER (WHERE e.amount > 0), 0)
        FROM ledger_ledgerentry e JOIN ledger_asset a ON a.id = e.asset_id GROUP BY a.code ORDER BY a.code
        """
    ).fetchall()
    return {code: _dec(total) for code, total in rows}


def _dec(value) -> str:
    value = Decimal(value)
    return "0" if value == 0 else f"{value.normalize():f}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run(args: list[str], *, env: dict) -> None:
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tool = Path(args[0]).name
        raise BackupError(f"{tool} exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-1500:]}")


# --- services ----------------------------------------------------------------------


def backup_create(*, directory: Path | None = None) -> Backup:
    """Dump the configured database; never raises for a failed dump (the row says why)."""
    db = Database.configured()
    now = timezone.now()
    backup = Backup.objects.create(database=db.name, started_at=now, status=BackupStatus.RUNNING)
    directory = Path(directory or settings.OPS_BACKUP_DIR)
    final = directory / f"{db.name}-{now:%Y%m%dT%H%M%SZ}-{backup.pk}.dump"
    partial = final.with_name(final.name + ".partial")
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial.touch(mode=0o600)  # a dump holds every secret in the database: owner only
        pg_dump = pg_tool("pg_dump", server_major=db.server_major())
        with db.connect(autocommit=True) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            counts = table_counts(conn, settings.OPS_BACKUP_COUNT_TABLES)
            totals = ledger_totals(conn)
            # pg_dump imports the snapshot, so it dumps exactly what was counted.
            _run([pg_dump, "--format=custom", "--no-owner", f"--snapshot={snapshot}", f"--file={partial}",
                  "--dbname", db.name], env=db.env())
            conn.execute("COMMIT")
        checksum = file_sha256(partial)
        partial.rename(final)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        backup.status = BackupStatus.FAILED
        backup.error = str(exc)[:4000]
        backup.finished_at = timezone.now()
        backup.save()
        logger.exception("backup %s failed", backup.pk)
        alert_raise(key=CREATE_ALERT_KEY, level=AlertLevel.HIGH, message=f"Backup #{backup.pk} of {db.name} failed: "
                    f"{str(exc)[:300]}", details={"backup_id": backup.pk})
        return backup
    backup.status = BackupStatus.SUCCEEDED
    backup.path = str(final)
    backup.size_bytes = final.stat().st_size
    backup.sha256 = checksum
    backup.row_counts = counts
    backup.ledger_totals = totals
    backup.finished_at = timezone.now()
    backup.save()
    alert_resolve(key=CREATE_ALERT_KEY, note=f"backup #{backup.pk} succeeded")
    return backup


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    ledger_output: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors


def check_restored(db: Database, backup: Backup | None) -> CheckReport:
    """Compare a restored database with what its backup recorded; run check_ledger there."""
    report = CheckReport()
    with db.connect(autocommit=True) as conn:
        report.counts = table_counts(conn, list(backup.row_counts) if backup else settings.OPS_BACKUP_COUNT_TABLES)
        totals = ledger_totals(conn)
    if backup is not None:
        for table, expected in backup.row_counts.items():
            got = report.counts.get(table)
            if got != expected:
                report.errors.append(f"{table}: {got} rows restored, {expected} recorded")
        for asset in sorted(set(backup.ledger_totals) | set(totals)):
            if backup.ledger_totals.get(asset) != totals.get(asset):
                report.errors.append(
                    f"ledger total {asset}: {totals.get(asset)} restored, {backup.ledger_totals.get(asset)} recorded"
                )
    env = {**os.environ, "DATABASE_URL": db.url()}
    env.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.base")
    proc = subprocess.run([sys.executable, str(settings.BASE_DIR / "manage.py"), "check_ledger"],
                          env=env, capture_output=True, text=True, cwd=settings.BASE_DIR)
    report.ledger_output = (proc.stdout + proc.stderr).strip()[-2000:]
    if proc.returncode != 0:
        report.errors.append(f"check_ledger failed on the restored copy: {report.ledger_output}")
    return report


def _verify_file(backup: Backup) -> list[str]:
    if backup.status != BackupStatus.SUCCEEDED or not backup.path:
        return [f"backup #{backup.pk} did not complete ({backup.status})"]
    path = Path(backup.path)
    if not path.is_file():
        return [f"file {path} is missing" + (" (removed by retention)" if backup.pruned_at else "")]
    checksum = file_sha256(path)
    if checksum != backup.sha256:
        return [f"checksum mismatch: file has sha256 {checksum}, recorded {backup.sha256}"]
    return []


def backup_verify(*, backup: Backup) -> Backup:
    """Restore into `<db>_verify_<id>`, compare, check the ledger, drop; record the result."""
    db = Database.configured()
    errors = _verify_file(backup)
    if not errors:
        scratch = f"{db.name}_verify_{backup.pk}"[:63]
        scratch_db = db.named(scratch)
        try:
            database_drop(db, scratch)
            database_create(db, scratch)
            pg_restore = pg_tool("pg_restore", server_major=db.server_major())
            _run([pg_restore, "--exit-on-error", "--no-owner", "--no-privileges", "--single-transaction",
                  "--dbname", scratch, backup.path], env=scratch_db.env())
            errors.extend(check_restored(scratch_db, backup).errors)
        except Exception as exc:
            errors.append(str(exc)[:2000])
        finally:
            try:
                database_drop(db, scratch)
            except Exception as exc:
                errors.append(f"scratch database {scratch} not dropped: {exc}")
    backup.verified = not errors
    backup.verified_at = timezone.now()
    backup.verify_error = "\n".join(errors)[:8000]
    backup.save(update_fields=["verified", "verified_at", "verify_error"])
    if errors:
        logger.error("backup %s failed verification: %s", backup.pk, backup.verify_error)
        alert_raise(key=VERIFY_ALERT_KEY, level=AlertLevel.HIGH,
                    message=f"Backup #{backup.pk} failed verification: {errors[0][:300]}",
                    details={"backup_id": backup.pk, "errors": errors[:20]})
    else:
        alert_resolve(key=VERIFY_ALERT_KEY, note=f"backup #{backup.pk} verified")
    return backup


def backup_retention_apply(*, now: datetime | None = None, keep_daily: int | None = None,
                           keep_weekly: int | None = None) -> list[Backup]:
    """Delete the files retention does not keep; returns the backups pruned.

    Kept: for each of the `keep_daily` most recent days with a successful backup, and
    each of the `keep_weekly` most recent ISO weeks, one backup — the newest verified
    one of that day or week, else the newest. Rows stay as history, marked pruned.
    """
    now = now or timezone.now()
    keep_daily = settings.OPS_BACKUP_KEEP_DAILY if keep_daily is None else keep_daily
    keep_weekly = settings.OPS_BACKUP_KEEP_WEEKLY if keep_weekly is None else keep_weekly
    candidates = list(
        Backup.objects.filter(pruned_at__isnull=True).exclude(path="").exclude(status=BackupStatus.RUNNING)
        .order_by("-started_at", "-pk")
    )
    good = [b for b in candidates if b.status == BackupStatus.SUCCEEDED]
    keep: set[int] = set()
    for period, limit in ((lambda b: b.started_at.date(), keep_daily),
                          (lambda b: tuple(b.started_at.isocalendar())[:2], keep_weekly)):
        groups: dict = {}
        for b in good:
            groups.setdefault(period(b), []).append(b)
        for group in list(groups.values())[:limit]:
            keep.add(next((b for b in group if b.verified), group[0]).pk)
    pruned = []
    for b in candidates:
        if b.pk in keep:
            continue
        Path(b.path).unlink(missing_ok=True)
        b.pruned_at = now
        b.save(update_fields=["pruned_at"])
        pruned.append(b)
    return pruned


@dataclass
class RestoreResult:
    target: str
    path: str
    report: CheckReport


def backup_resolve(reference: str) -> tuple[Backup | None, Path]:
    """A backup id or a dump file path → (its row if known, the file)."""
    if reference.isdigit():
        backup = Backup.objects.filter(pk=int(reference)).first()
        if backup is None:
            raise BackupError(f"no backup #{reference}")
        if not backup.path:
            raise BackupError(f"backup #{reference} has no file ({backup.status})")
        return backup, Path(backup.path)
    path = Path(reference).resolve()
    if not path.is_file():
        raise BackupError(f"{reference}: no such file")
    return Backup.objects.filter(path=str(path)).first(), path


def backup_restore(*, reference: str, target_db: str, force: bool = False) -> RestoreResult:
    """Restore a backup into `target_db`, then check it like a verification does.

    Refuses the live database, or any existing database, unless `force`.
    """
    if not DB_NAME.fullmatch(target_db):
        raise BackupError(f"{target_db!r} is not a plain database name (letters, digits, _; up to 63)")
    db = Database.configured()
    backup, path = backup_resolve(reference)
    if backup is not None:
        problems = _verify_file(backup)
        if problems:
            raise BackupError("; ".join(problems))
    live = target_db == db.name
    if live and not force:
        raise BackupError(f"{target_db} is the live database of this installation; use --force to overwrite it")
    exists = database_exists(db, target_db)
    if exists and not force:
        raise BackupError(f"database {target_db} exists; use --force to replace it")
    target = db.named(target_db)
    pg_restore = pg_tool("pg_restore", server_major=db.server_major())
    args = [pg_restore, "--exit-on-error", "--no-owner", "--no-privileges", "--single-transaction"]
    if live:
        # Cannot drop the database we are connected to: drop and recreate its objects.
        connection.close()
        args += ["--clean", "--if-exists"]
    else:
        if exists:
            database_drop(db, target_db)
        database_create(db, target_db)
    _run([*args, "--dbname", target_db, str(path)], env=target.env())
    return RestoreResult(target=target_db, path=str(path), report=check_restored(target, backup))
