"""Delivery idempotency across real processes: a settler killed half-way, then two settlers at once.

Children write to files, die with the test (PR_SET_PDEATHSIG) and are stopped in `finally`.
"""
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from apps.ledger.invariants import LEDGER_CHECKS
from apps.ledger.models import Income, IncomeType, LedgerTransaction, TransactionKind
from apps.ops.invariants import run_all_invariants
from apps.settlement.invariants import SETTLEMENT_CHECKS
from apps.settlement.models import DeliverySettlement, DeliveryStatus
from tests.database import database_url
from tests.procfile import die_with_parent

from .test_delivery import _no_roll, flat_hour, funded, open_interest, quarterly, trade, wallet_of  # noqa: F401 (fixtures)
from .test_processes import _lock_path, _stop  # noqa: F401 (_lock_path: a fixture)

ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("delivery_child.py")
D = Decimal
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _spawn(tmp_path, name: str, mode: str, symbol: str, **env) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings.test", "DATABASE_URL": database_url(),
           "DELIVERY_ROLL_ENABLED": "0", **env}
    with open(tmp_path / f"{name}.out", "wb") as stdout, open(tmp_path / f"{name}.err", "wb") as stderr:
        return subprocess.Popen([sys.executable, str(CHILD), mode, symbol], cwd=ROOT, env=env, stdout=stdout,
                                stderr=stderr, preexec_fn=die_with_parent)


@pytest.fixture
def due(quarterly, funded):
    """Three holders with positions from real trades, an hour of prices, the contract at delivery."""
    from datetime import timedelta

    from apps.settlement.delivery import delivery_advance

    from .test_delivery import DT, ONBOARD

    users = [funded(name) for name in ("ann", "ben", "cat", "dan")]
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    trade(quarterly, users[0], users[1], "1", "50000")
    trade(quarterly, users[2], users[3], "0.3", "50500")
    flat_hour(quarterly, "51000")
    delivery_advance(now=DT - timedelta(minutes=1))  # close-only; the children move it on
    return users


def _settled_once(users, chunks: int = 0) -> None:
    """One posting, or the plan's and one per chunk; each position's lines once; the ledger clean."""
    assert LedgerTransaction.objects.filter(kind=TransactionKind.DELIVERY).count() == 1 + chunks
    assert Income.objects.filter(income_type=IncomeType.DELIVERED_SETTELMENT).count() == 4
    run = DeliverySettlement.objects.get()
    assert run.status == DeliveryStatus.DONE and run.chunks == chunks
    assert [str(v) for check in (*LEDGER_CHECKS, *SETTLEMENT_CHECKS) for v in check()] == []


def test_a_settler_killed_half_way_leaves_nothing_and_the_next_settles_once(quarterly, due, tmp_path):
    wallets = [wallet_of(u) for u in due]
    dying = _spawn(tmp_path, "dying", "die-half-way", quarterly.symbol)
    try:
        assert dying.wait(timeout=120) == -9
    finally:
        _stop(dying)
    assert (tmp_path / "dying.out").read_text() == "booked\n"
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.DELIVERY).exists()
    assert not Income.objects.filter(income_type=IncomeType.DELIVERED_SETTELMENT).exists()
    assert [wallet_of(u) for u in due] == wallets and open_interest(quarterly) == (D("1.3"), D("1.3"))
    # The price was fixed (and audited) in its own transaction before the money moved.
    assert DeliverySettlement.objects.get().settlement_price == D("51000")

    settler = _spawn(tmp_path, "settler", "settle", quarterly.symbol)
    try:
        assert settler.wait(timeout=120) == 0, (tmp_path / "settler.err").read_text()
    finally:
        _stop(settler)
    _settled_once(due)
    assert open_interest(quarterly) == (0, 0)


def test_two_settlers_at_once_settle_once(quarterly, due, tmp_path):
    first = _spawn(tmp_path, "first", "settle", quarterly.symbol)
    second = _spawn(tmp_path, "second", "settle", quarterly.symbol)
    try:
        for name, proc in (("first", first), ("second", second)):
            assert proc.wait(timeout=120) == 0, (tmp_path / f"{name}.err").read_text()
    finally:
        _stop(first, second)
    _settled_once(due)
    outputs = (tmp_path / "first.out").read_text() + (tmp_path / "second.out").read_text()
    assert "settlement DONE" in outputs


# -- a delivery booked in chunks (DELIVERY_CHUNK_POSITIONS=1: four chunks of the four positions) --------


def test_a_settler_killed_in_the_second_chunk_keeps_the_first_and_the_next_books_the_rest(quarterly, due,
                                                                                          tmp_path):
    dying = _spawn(tmp_path, "dying", "die-in-second-chunk", quarterly.symbol, DELIVERY_CHUNK_POSITIONS="1",
                   DELIVERY_SETTLE_WORKERS="1")
    try:
        assert dying.wait(timeout=120) == -9, (tmp_path / "dying.err").read_text()
    finally:
        _stop(dying)
    assert (tmp_path / "dying.out").read_text() == "first chunk booked\n"
    run = DeliverySettlement.objects.get()
    assert run.chunks == 4 and run.chunk_set.filter(booked_at__isnull=False).count() == 1
    assert Income.objects.filter(income_type=IncomeType.DELIVERED_SETTELMENT).count() == 1
    assert open_interest(quarterly) != (0, 0)
    # DELIVERY_CLEARING holds exactly what the three chunks left will book; the positions left
    # open need not balance meanwhile (the open-interest check leaves the contract out).
    assert run_all_invariants() == []

    settler = _spawn(tmp_path, "settler", "settle", quarterly.symbol, DELIVERY_CHUNK_POSITIONS="1")
    try:
        assert settler.wait(timeout=120) == 0, (tmp_path / "settler.err").read_text()
    finally:
        _stop(settler)
    _settled_once(due, chunks=4)
    assert open_interest(quarterly) == (0, 0)


def test_two_settlers_at_once_book_each_chunk_once(quarterly, due, tmp_path):
    first = _spawn(tmp_path, "first", "settle", quarterly.symbol, DELIVERY_CHUNK_POSITIONS="1")
    second = _spawn(tmp_path, "second", "settle", quarterly.symbol, DELIVERY_CHUNK_POSITIONS="1")
    try:
        for name, proc in (("first", first), ("second", second)):
            assert proc.wait(timeout=120) == 0, (tmp_path / f"{name}.err").read_text()
    finally:
        _stop(first, second)
    _settled_once(due, chunks=4)
    assert open_interest(quarterly) == (0, 0)
