"""Funding settlements larger than FUNDING_CHUNK_POSITIONS, booked chunk by chunk: the same
money as one posting, each chunk once, a failure half-way resumed from the stored plan, and
chunks booked by parallel threads on their own connections. (The covers inside a chunk:
tests/settlement/test_settle.py.)"""
from datetime import timedelta
from decimal import Decimal

import psycopg
import pytest
from django.db import OperationalError
from django.urls import reverse

from apps.ledger.invariants import LEDGER_CHECKS
from apps.ledger.models import Account, AccountKind, Income, IncomeType, LedgerTransaction, TransactionKind
from apps.ledger.services import system_account
from apps.marketdata.engine.quotes import to_ms
from apps.settlement import formulas, services
from apps.settlement.invariants import check_funding_clearing_is_dust
from apps.settlement.models import FundingChunk, FundingRate, FundingSettlement, SettlementStatus
from apps.settlement.services import funding_settle, funding_settle_due

from .conftest import T8

D = Decimal
SIZES = ("0.003", "0.007", "0.011", "-0.004", "-0.009", "-0.008", "0.0005")


def violations():
    return [str(v) for check in (*LEDGER_CHECKS, check_funding_clearing_is_dust) for v in check()]


@pytest.fixture
def book(btcusdt, funded, position, mark, samples):
    """Seven positions of seven users, a rate of 0.00026667 and a mark of 50123.7."""
    users = [funded(f"u{i}", "1000") for i in range(len(SIZES))]
    for user, size in zip(users, SIZES):
        position(user, btcusdt, size)
    samples(btcusdt, T8, ["0.0002", "0.0001"])
    mark(btcusdt, "50123.7", T8 - timedelta(seconds=1))
    return users


def fees(users):
    lines = {i.user_id: i.amount for i in Income.objects.filter(income_type=IncomeType.FUNDING_FEE)}
    assert len(lines) == Income.objects.filter(income_type=IncomeType.FUNDING_FEE).count()  # one line per user
    return [lines.get(u.pk) for u in users]


@pytest.mark.django_db
def test_chunks_book_the_same_money_as_one_posting(btcusdt, book, balance, wallet_of, settings):
    settings.FUNDING_CHUNK_POSITIONS = 3
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    # Every position pays what one posting would charge it (the one rule, `formulas.payment`).
    whole = [formulas.payment(size=D(size), mark_price=D("50123.7"), rate=run.funding_rate, contract_size=btcusdt.contract_size,
                              precision=8) for size in SIZES]
    assert (run.status, run.chunks, run.positions, run.ledger_transaction_id) == (SettlementStatus.DONE, 3, 7, None)
    assert fees(book) == whole
    for user, fee in zip(book, whole):
        assert balance(wallet_of(user)) == D("1000") + fee
    assert run.paid == -sum(f for f in whole if f < 0) and run.received == sum(f for f in whole if f > 0)
    assert run.dust == run.paid - run.received
    assert balance(system_account(AccountKind.FUNDING_CLEARING)) == run.dust

    chunks = list(FundingChunk.objects.filter(run=run))
    assert [(c.number, c.positions) for c in chunks] == [(0, 3), (1, 3), (2, 1)]
    assert all(c.booked_at and c.user_ids == [] and c.amounts == [] for c in chunks)  # emptied once booked
    assert sum(c.dust for c in chunks) == run.dust
    txns = LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).order_by("id")
    key = f"funding:BTCUSDT:{to_ms(T8)}"
    assert [t.idempotency_key for t in txns] == [f"{key}:0", f"{key}:1", f"{key}:2"]
    assert [t.pk for t in txns] == [c.ledger_transaction_id for c in chunks]
    # Each chunk's lines name its posting: the users of a chunk pay or receive in that posting only.
    for chunk in chunks:
        lines = Income.objects.filter(income_type=IncomeType.FUNDING_FEE, transaction_id=chunk.ledger_transaction_id)
        assert lines.count() == chunk.positions
        assert chunk.ledger_transaction.entries.count() == chunk.positions + 1  # + FUNDING_CLEARING
    assert FundingRate.objects.get().funding_rate == run.funding_rate
    assert violations() == []

    # Settled: a second run (the beat, a "settle now") changes nothing.
    assert funding_settle(contract=btcusdt, funding_time=T8, now=T8).pk == run.pk
    assert funding_settle_due(now=T8 + timedelta(minutes=1)) == []
    assert LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).count() == 3


@pytest.mark.django_db
def test_a_failure_after_a_chunk_keeps_it_and_the_rerun_books_the_rest_once(btcusdt, book, balance, wallet_of,
                                                                             settings, monkeypatch):
    settings.FUNDING_CHUNK_POSITIONS = 3
    original = services._chunk_book

    def fail_on_the_second(*, chunk, **kwargs):
        if chunk.number == 1:
            raise RuntimeError("worker lost")
        original(chunk=chunk, **kwargs)

    monkeypatch.setattr(services, "_chunk_book", fail_on_the_second)
    with pytest.raises(RuntimeError):
        funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    run = FundingSettlement.objects.get()
    assert (run.status, run.chunks, run.attempts, "worker lost" in run.error) == (SettlementStatus.FAILED, 3, 1, True)
    booked = list(FundingChunk.objects.filter(run=run, booked_at__isnull=False).values_list("number", flat=True))
    assert booked == [0]  # chunks are taken in order: the first was committed, the others wait
    charged = fees(book)
    assert sum(f is not None for f in charged) == 3
    # The books balance half-way: the clearing account holds the booked chunk's dust.
    assert violations() == []

    # The rerun books the rest at the planned rate and mark, without planning again.
    FundingRate.objects.filter(contract=btcusdt).update(funding_rate=D("0.5"))  # would show if the rate were re-read
    monkeypatch.setattr(services, "_chunk_book", original)
    (again,) = funding_settle_due(now=T8 + timedelta(minutes=1))
    assert (again.pk, again.status, again.attempts, again.error) == (run.pk, SettlementStatus.DONE, 2, "")
    assert again.funding_rate == run.funding_rate
    after = fees(book)
    assert all(f is not None for f in after)
    assert [a for a, c in zip(after, charged) if c is not None] == [c for c in charged if c is not None]
    for user, fee in zip(book, after):
        assert balance(wallet_of(user)) == D("1000") + fee
    assert LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).count() == 3
    FundingRate.objects.filter(contract=btcusdt).update(funding_rate=run.funding_rate)
    assert violations() == []


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_parallel_threads_book_every_chunk_once(btcusdt, book, balance, wallet_of, settings, monkeypatch):
    """Outside a transaction, FUNDING_SETTLE_WORKERS threads book the chunks on their own connections."""
    settings.FUNDING_CHUNK_POSITIONS = 1
    settings.FUNDING_SETTLE_WORKERS = 3
    threads = set()
    original = services._chunk_book

    def note_thread(**kwargs):
        threads.add(services.connection.connection.info.backend_pid)
        original(**kwargs)

    monkeypatch.setattr(services, "_chunk_book", note_thread)
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    assert (run.status, run.chunks) == (SettlementStatus.DONE, 7)
    assert len(threads) > 1  # more than one connection booked chunks
    assert FundingChunk.objects.filter(run=run, booked_at__isnull=True).count() == 0
    for user, fee in zip(book, fees(book)):
        assert balance(wallet_of(user)) == D("1000") + fee
    assert LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).count() == 7
    assert violations() == []


@pytest.mark.django_db
def test_the_admin_shows_a_chunked_run_with_its_chunks(btcusdt, book, settings, admin_client):
    settings.FUNDING_CHUNK_POSITIONS = 3
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    listing = admin_client.get(reverse("admin:settlement_fundingsettlement_changelist"))
    assert listing.status_code == 200 and b"Settled" in listing.content
    page = admin_client.get(reverse("admin:settlement_fundingsettlement_change", args=[run.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Funding chunks" in html
    for chunk in run.chunk_set.all():
        assert str(chunk.ledger_transaction) in html


@pytest.mark.django_db
@pytest.mark.parametrize("chunk", [1, 50_000])
def test_a_margin_account_missing_at_planning_is_created_and_paid(btcusdt, funded, position, mark, balance,
                                                                  wallet_of, settings, chunk):
    settings.FUNDING_CHUNK_POSITIONS = chunk
    alice, bob = funded("alice", "1000"), funded("bob", "1000")
    position(alice, btcusdt, "1")
    position(bob, btcusdt, "-1", isolated=True)  # its ISOLATED_MARGIN account was never opened
    assert not Account.objects.filter(user=bob, kind=AccountKind.ISOLATED_MARGIN).exists()
    mark(btcusdt, "50000", T8 - timedelta(seconds=1))
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)  # interest only: 0.0001 -> 5 USDT
    iso = Account.objects.get(user=bob, kind=AccountKind.ISOLATED_MARGIN, contract=btcusdt)
    assert (run.status, balance(iso), balance(wallet_of(alice))) == (SettlementStatus.DONE, D("5"), D("995"))
    assert violations() == []


@pytest.mark.django_db
def test_a_chunk_that_deadlocks_is_tried_again_and_booked_once(btcusdt, book, settings, monkeypatch):
    """PostgreSQL cancels one side of a deadlock (a chunk against a writer that locks out of
    order): the chunk's transaction rolls back and the same call books it again."""
    settings.FUNDING_CHUNK_POSITIONS = 3
    original, failures = services._chunk_book, []

    def deadlock_once(*, chunk, **kwargs):
        original(chunk=chunk, **kwargs)  # booked, then cancelled before its commit
        if chunk.number == 1 and not failures:
            failures.append(chunk.number)
            try:
                raise psycopg.errors.DeadlockDetected("deadlock detected")
            except psycopg.errors.DeadlockDetected as exc:
                raise OperationalError("deadlock detected") from exc

    monkeypatch.setattr(services, "_chunk_book", deadlock_once)
    run = funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    assert failures == [1]
    assert (run.status, run.chunks, run.attempts) == (SettlementStatus.DONE, 3, 1)
    assert LedgerTransaction.objects.filter(kind=TransactionKind.FUNDING).count() == 3
    assert len(fees(book)) == len(SIZES) and None not in fees(book)
    assert violations() == []


@pytest.mark.django_db
def test_any_other_database_error_in_a_chunk_fails_the_run(btcusdt, book, settings, monkeypatch):
    settings.FUNDING_CHUNK_POSITIONS = 3

    def fail(**kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "_chunk_book", fail)
    with pytest.raises(OperationalError):
        funding_settle(contract=btcusdt, funding_time=T8, now=T8)
    run = FundingSettlement.objects.get()
    assert (run.status, run.chunks) == (SettlementStatus.FAILED, 3)
    assert not run.chunk_set.filter(booked_at__isnull=False).exists()
