"""A worker process killed inside an ADL step, then restarted: the step is booked once.

The liquidation is advanced by a real `manage.py shell` process against the test
database. While it deleverages, the test holds one counterparty's balance row (as a
matcher batch would), so the worker is stopped inside its step's transaction, after it
locked the liquidation and before anything is booked; it is then SIGKILLed and its
database session ends. The restarted work (this process, then a fresh worker) must
deleverage exactly once and finish the liquidation.
"""
import signal
import sys
from decimal import Decimal

import pytest
from django.db import connection, transaction

from apps.contracts.lifecycle import status_share_lock
from apps.ledger.models import AccountKind, Balance, LedgerTransaction, TransactionKind
from apps.ledger.services import account_get_or_create
from apps.liquidation.models import Liquidation, LiquidationStatus, RecordKind
from apps.liquidation.services import liquidation_advance, liquidation_sweep
from apps.ops.invariants import run_all_invariants
from apps.trading.matching import batch_process
from tests.ops.processes import spawn, wait_for  # noqa: F401 (spawn: a fixture)

from .helpers import records, size_of, wallet_of

D = Decimal
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
WORKER = [sys.executable, "manage.py", "shell", "-c",
          "from apps.liquidation.services import liquidations_advance; print(liquidations_advance(), flush=True)"]


def blocked_backend() -> int | None:
    """The pid of another session of this database waiting for a row lock."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else the same snapshot all transaction long
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'")
        row = cursor.fetchone()
    return row[0] if row else None


def backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone()[0] > 0


def test_a_worker_killed_inside_an_adl_step_is_resumed_once(gapped_long, engine, spawn):
    alice, sam, tom, uma, bob = gapped_long
    liquidation_sweep()
    batch_process(engine)  # the bankruptcy-price order finds no bid; the fund is empty: ADL is next
    liquidation = Liquidation.objects.get(user=alice)

    uma_wallet = account_get_or_create(kind=AccountKind.WALLET, user=uma)
    with transaction.atomic():
        Balance.objects.select_for_update().get(account=uma_wallet)  # as a matcher batch on uma would
        worker = spawn("worker", WORKER)
        backend = wait_for(blocked_backend, "the worker to wait inside its ADL step", worker, timeout=120)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        with connection.cursor() as cursor:  # what the server does when the dead client's socket closes
            cursor.execute("SELECT pg_terminate_backend(%s)", [backend])
        wait_for(lambda: not backend_alive(backend), "the killed worker's session to end")

    # Nothing of the interrupted step was committed.
    assert not LedgerTransaction.objects.filter(kind=TransactionKind.ADL).exists()
    assert records(liquidation, RecordKind.DELEVERAGE) == [] and size_of(alice) == 2

    assert liquidation_advance(liquidation=liquidation) == "deleveraged"
    restarted = spawn("restarted", WORKER)  # a restarted worker finishes it
    assert restarted.wait(timeout=120) == 0, restarted.log_path.read_text(errors="replace")[-2000:]
    liquidation.refresh_from_db()
    assert liquidation.status == LiquidationStatus.DONE
    assert LedgerTransaction.objects.filter(kind=TransactionKind.ADL).count() == 1
    assert len(records(liquidation, RecordKind.DELEVERAGE)) == 1 and len(records(liquidation, RecordKind.ADL)) == 3
    assert [size_of(u) for u in (alice, sam, tom, uma, bob)] == [0, 0, 0, D("-1"), D("1")]
    assert (wallet_of(sam), wallet_of(tom), wallet_of(uma)) == (D("3795"), D("8495"), D("104980"))
    assert liquidation_sweep()["started"] == 0
    assert run_all_invariants() == []


def test_an_adl_step_waits_for_the_matcher_batch_in_flight_before_taking_any_balance(
        gapped_long, btcusdt, engine, spawn):
    """A batch reads the contract FOR SHARE first and books its fills last; the step takes the
    contract (`book_exclusive_lock`) before any balance. So a batch that matched against
    orders the step would expire has booked them when the step looks at the positions."""
    alice, sam, tom, uma, bob = gapped_long
    liquidation_sweep()
    batch_process(engine)
    uma_wallet = account_get_or_create(kind=AccountKind.WALLET, user=uma)
    with transaction.atomic():
        status_share_lock(btcusdt.pk)  # as a batch in flight holds it until its commit
        worker = spawn("worker", WORKER)
        wait_for(blocked_backend, "the worker to wait for the batch", worker, timeout=120)
        # Waiting, it holds no balance (this would raise LockNotAvailable).
        Balance.objects.select_for_update(nowait=True).get(account=uma_wallet)
    assert worker.wait(timeout=120) == 0, worker.log_path.read_text(errors="replace")[-2000:]
    assert "'deleveraged': 1" in worker.log_path.read_text()
    assert [size_of(u) for u in (alice, sam, tom, uma, bob)] == [0, 0, 0, D("-1"), D("1")]
    assert run_all_invariants() == []
