"""Idempotency across real processes: two settlers at once, and a settler killed half-way;
the same for a run booked in chunks (settlers share the chunks; a kill keeps the booked ones).

Children write stdout/stderr to files, die with the test (PR_SET_PDEATHSIG) and are
stopped in `finally`. The only waits are for process exit and for PostgreSQL to show
both children blocked on the run's row lock (bounded, no timed assertions).
"""
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from apps.ledger.invariants import LEDGER_CHECKS
from apps.ledger.models import Income, IncomeType, LedgerTransaction, TransactionKind
from apps.marketdata.engine.quotes import to_ms
from apps.settlement.invariants import check_funding_clearing_is_dust
from apps.settlement.models import FundingSettlement, SettlementStatus
from apps.settlement.services import funding_settle_due
from tests.database import database_url
from tests.procfile import die_with_parent

from .conftest import T8

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("settle_child.py")
D = Decimal
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True, params=["row locks", "table lock"])
def _lock_path(request, monkeypatch):
    """The children settle on both ways a settlement locks balances (the table from 0 legs)."""
    if request.param == "table lock":
        monkeypatch.setenv("SETTLE_TABLE_LOCK_FROM", "0")
    else:
        monkeypatch.delenv("SETTLE_TABLE_LOCK_FROM", raising=False)


def _spawn(tmp_path, name: str, mode: str, symbol: str, funding_ms: int, **extra_env) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings.test", "DATABASE_URL": database_url(), "DB_POOL": "1",
           **extra_env}
    out = tmp_path / f"{name}.out"
    # Files, not pipes (nobody reads while the child runs); the child keeps its own descriptors.
    with open(out, "wb") as stdout, open(tmp_path / f"{name}.err", "wb") as stderr:
        proc = subprocess.Popen([sys.executable, str(CHILD), mode, symbol, str(funding_ms)], cwd=ROOT, env=env,
                                stdout=stdout, stderr=stderr, preexec_fn=die_with_parent)
    return proc, out


def _stop(*procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _blocked_on_the_run(procs) -> int:
    """Wait (bounded) until every child waits for the run's row lock; returns how many do."""
    deadline = time.monotonic() + 60
    waiting = 0
    while time.monotonic() < deadline and all(p.poll() is None for p, _ in procs):
        with psycopg.connect(database_url(), autocommit=True) as probe:
            waiting = probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE '%%settlement_fundingsettlement%%'"
            ).fetchone()[0]
        if waiting >= len(procs):
            break
        time.sleep(0.05)
    return waiting


@pytest.fixture
def book(btcusdt, funded, position, mark, samples):
    users = [funded(f"u{i}", "1000") for i in range(6)]
    for user, size in zip(users, ("0.003", "0.007", "0.011", "-0.004", "-0.009", "-0.008")):
        position(user, btcusdt, size)
    samples(btcusdt, T8, ["0.0002", "0.0001"])
    mark(btcusdt, "50123.7", T8 - timedelta(seconds=1))
    return users


def _charged_once(users, balance, wallet_of, postings: int = 1) -> None:
    lines = Income.objects.filter(income_type=IncomeType.FUNDING_FEE)
    assert lines.count() == len(users)
    assert sorted(lines.values_list("user_id", flat=True)) == sorted(u.pk for u in users)
    assert LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).count() == postings
    for user in users:
        fee = lines.get(user=user).amount
        assert balance(wallet_of(user)) == D("1000") + fee
    assert [str(v) for check in (*LEDGER_CHECKS, check_funding_clearing_is_dust) for v in check()] == []


def _two_settlers_at_once(run, tmp_path, **env) -> list[list[str]]:
    """Two children settling the run, released together once both wait for its row lock;
    returns each one's printed run (id, status, transaction, attempts)."""
    blocker = psycopg.connect(database_url())
    procs = []
    try:
        # Hold the run's row lock so both children reach it and queue behind it.
        blocker.execute("SELECT id FROM settlement_fundingsettlement WHERE id = %s FOR UPDATE", [run.pk])
        procs = [_spawn(tmp_path, f"settler{i}", "settle", "BTCUSDT", to_ms(T8), **env) for i in (1, 2)]
        assert _blocked_on_the_run(procs) >= 2, [p.poll() for p, _ in procs]
        blocker.rollback()
        codes = [p.wait(timeout=120) for p, _ in procs]
        assert codes == [0, 0], [(tmp_path / f"settler{i}.err").read_text() for i in (1, 2)]
    finally:
        blocker.close()
        _stop(*(p for p, _ in procs))
    return [out.read_text().split() for _, out in procs]


def test_two_settlers_at_once_charge_each_position_once(btcusdt, book, tmp_path, balance, wallet_of):
    run = FundingSettlement.objects.create(contract=btcusdt, funding_time=T8)
    outputs = _two_settlers_at_once(run, tmp_path)  # one settles, the other waits for it, then sees DONE
    assert {o[1] for o in outputs} == {"DONE"} and len({o[2] for o in outputs}) == 1  # the same transaction
    run.refresh_from_db()
    assert (run.status, run.attempts, run.positions) == (SettlementStatus.DONE, 1, 6)
    _charged_once(book, balance, wallet_of)


def test_a_settler_killed_half_way_leaves_nothing_and_the_rerun_charges_once(btcusdt, book, tmp_path, balance,
                                                                               wallet_of):
    proc, out = _spawn(tmp_path, "killed", "die-half-way", "BTCUSDT", to_ms(T8))
    try:
        code = proc.wait(timeout=120)
    finally:
        _stop(proc)
    assert code == -signal.SIGKILL, (tmp_path / "killed.err").read_text()
    assert out.read_text() == "booked\n"  # it had booked the posting and the lines when it died
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).exists()
    assert not Income.objects.filter(income_type=IncomeType.FUNDING_FEE).exists()
    assert [balance(wallet_of(u)) for u in book] == [D("1000")] * len(book)
    assert FundingSettlement.objects.get().status == SettlementStatus.PENDING  # died before recording anything

    (run,) = funding_settle_due(now=T8 + timedelta(minutes=1))
    assert (run.status, run.positions) == (SettlementStatus.DONE, 6)
    _charged_once(book, balance, wallet_of)


# -- a run booked in chunks (FUNDING_CHUNK_POSITIONS=2: three chunks of the six positions) --------


def test_two_settlers_share_the_chunks_and_charge_each_position_once(btcusdt, book, tmp_path, balance, wallet_of):
    run = FundingSettlement.objects.create(contract=btcusdt, funding_time=T8)
    # One plans; both then book chunks (each takes the free ones) and finish.
    outputs = _two_settlers_at_once(run, tmp_path, FUNDING_CHUNK_POSITIONS="2")
    assert {o[1] for o in outputs} == {"DONE"}
    run.refresh_from_db()
    assert (run.status, run.chunks, run.attempts, run.positions) == (SettlementStatus.DONE, 3, 1, 6)
    assert not run.chunk_set.filter(booked_at__isnull=True).exists()
    _charged_once(book, balance, wallet_of, postings=3)


def test_a_settler_killed_between_chunks_keeps_the_booked_ones_and_the_rerun_books_the_rest(
        btcusdt, book, tmp_path, balance, wallet_of):
    proc, out = _spawn(tmp_path, "killed", "die-in-second-chunk", "BTCUSDT", to_ms(T8),
                       FUNDING_CHUNK_POSITIONS="2", FUNDING_SETTLE_WORKERS="1")
    try:
        code = proc.wait(timeout=120)
    finally:
        _stop(proc)
    assert code == -signal.SIGKILL, (tmp_path / "killed.err").read_text()
    assert out.read_text() == "chunk 1 booked\n"
    run = FundingSettlement.objects.get()
    assert (run.status, run.chunks) == (SettlementStatus.SETTLING, 3)  # planned, then killed: no error recorded
    assert list(run.chunk_set.filter(booked_at__isnull=False).values_list("number", flat=True)) == [0]
    assert Income.objects.filter(income_type=IncomeType.FUNDING_FEE).count() == 2  # the first chunk's
    assert [str(v) for check in (*LEDGER_CHECKS, check_funding_clearing_is_dust) for v in check()] == []

    (again,) = funding_settle_due(now=T8 + timedelta(minutes=1))
    assert (again.pk, again.status, again.attempts) == (run.pk, SettlementStatus.DONE, 1)
    _charged_once(book, balance, wallet_of, postings=3)
