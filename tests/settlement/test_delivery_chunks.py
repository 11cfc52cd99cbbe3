"""Deliveries larger than DELIVERY_CHUNK_POSITIONS, booked chunk by chunk.

(Every test of test_delivery.py also runs with chunks of one position: the same money as one
posting.) Here: the plan and its chunks as stored, threads on their own connections sharing
the chunks out, and an isolated margin that cannot change once the delivery has begun.
"""
import threading
from datetime import timedelta
from decimal import Decimal

import pytest

from apps.ledger.models import AccountKind, Income, IncomeType, LedgerTransaction, TransactionKind
from apps.ops.invariants import run_all_invariants
from apps.positions.models import Position
from apps.positions.services import margin_type_change, position_margin_adjust
from apps.settlement import delivery
from apps.settlement.delivery import delivery_advance
from apps.settlement.invariants import check_delivery_clearing_is_unbooked_chunks
from apps.settlement.models import DeliveryChunk, DeliverySettlement, DeliveryStatus
from exchange.errors import ErrorCode, ExchangeError

from .test_delivery import DT, ONBOARD, _no_roll, flat_hour, funded, open_interest, quarterly, system, trade  # noqa: F401

D = Decimal


def _three_pairs(contract, funded):
    users = [funded(name) for name in ("ann", "ben", "cat", "dan", "eve", "fay")]
    delivery_advance(now=ONBOARD)
    contract.refresh_from_db()
    margin_type_change(user=users[4], contract=contract, margin_type="ISOLATED")
    trade(contract, users[0], users[1], "1", "50000")
    trade(contract, users[2], users[3], "0.5", "50500")
    trade(contract, users[4], users[5], "0.2", "49000")  # eve long, isolated
    flat_hour(contract, "51000")
    return users


def _results(contract) -> dict[int, tuple[Decimal, Decimal]]:
    """user id -> (delivery PnL line, delivery fee line)."""
    lines = Income.objects.filter(symbol=contract.symbol, trade_id__isnull=True)
    pnl = dict(lines.filter(income_type=IncomeType.DELIVERED_SETTELMENT).values_list("user_id", "amount"))
    fee = dict(lines.filter(income_type=IncomeType.COMMISSION).values_list("user_id", "amount"))
    return {user: (pnl[user], fee[user]) for user in pnl}


def _planned_in_two_chunks(contract, funded, settings, monkeypatch) -> list:
    """Three pairs delivered in chunks of four positions: the plan alone (no chunk booked)."""
    settings.DELIVERY_CHUNK_POSITIONS = 4
    users = _three_pairs(contract, funded)
    with monkeypatch.context() as patched:
        patched.setattr(delivery, "delivery_chunks_book", lambda **kwargs: 0)
        delivery_advance(now=DT)
    return users


@pytest.mark.django_db
@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
def test_the_plan_stores_the_chunks_and_each_books_its_own_results(quarterly, funded, settings, monkeypatch, dense):
    """Dense chunks read their users' wallets and positions by range, sparse ones (few holders
    among many users: forced here) probe them one by one; the same money either way."""
    if not dense:
        monkeypatch.setattr(delivery, "CHUNK_DENSE_SPAN", 0)
    users = _planned_in_two_chunks(quarterly, funded, settings, monkeypatch)
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert run.status == DeliveryStatus.FAILED and "2 of 2 chunks" in run.error  # and ops are alerted
    assert run.chunks == 2 and run.positions == 6
    chunks = list(DeliveryChunk.objects.filter(run=run).order_by("number"))
    assert [c.positions for c in chunks] == [4, 2] and not any(c.booked_at for c in chunks)
    ids = sorted(u.pk for u in users)  # the users in order, cut in two ranges
    assert [(c.user_from, c.user_to) for c in chunks] == [(ids[0], ids[3]), (ids[4], ids[5])]
    assert all(c.cover_positions == [] for c in chunks)  # no isolated loss beyond its margin
    assert [c.quantity for c in chunks] == [D("3"), D("0.4")]  # what each chunk's positions must add up to
    # The plan moves no PnL or fee (each chunk books its own): only isolated covers, none here.
    assert system(AccountKind.DELIVERY_CLEARING) == sum(c.clearing for c in chunks) == 0
    assert open_interest(quarterly) == (D("1.7"), D("1.7"))  # the chunks close the positions
    assert run_all_invariants() == []
    # A chunk recorded as booked (with its results) without its posting: caught.
    DeliveryChunk.objects.filter(pk=chunks[0].pk).update(booked_at=DT, realized_pnl=D("1000"))
    assert [v.check for v in check_delivery_clearing_is_unbooked_chunks()] == ["delivery_clearing_is_unbooked_chunks"]
    DeliveryChunk.objects.filter(pk=chunks[0].pk).update(booked_at=None, realized_pnl=0)

    fee_income, pnl_clearing = system(AccountKind.FEE_INCOME), system(AccountKind.PNL_CLEARING)
    delivery_advance(now=DT + timedelta(minutes=1))
    run.refresh_from_db()
    assert run.status == DeliveryStatus.DONE and quarterly.__class__.objects.get(pk=quarterly.pk).status == "SETTLED"
    assert system(AccountKind.DELIVERY_CLEARING) == 0 and open_interest(quarterly) == (0, 0)
    booked = list(DeliveryChunk.objects.filter(run=run).order_by("number"))
    assert all(c.booked_at and c.ledger_transaction_id for c in booked)
    # Chunk 0: ann +1000, ben -1000, cat +250, dan -250; chunk 1: eve +400, fay -400.
    assert [c.realized_pnl for c in booked] == [0, 0] and run.realized_pnl == 0
    fees = D("1.7") * 2 * D(51000) * quarterly.delivery_fee_rate
    assert sum(c.fees for c in booked) == run.fees == fees
    # The run's last posting returns the chunks' PnL and fees from PNL_CLEARING and to FEE_INCOME.
    assert system(AccountKind.FEE_INCOME) - fee_income == fees and system(AccountKind.PNL_CLEARING) == pnl_clearing
    assert LedgerTransaction.objects.filter(idempotency_key=f"delivery:{quarterly.symbol}:results").exists()
    # PnL at 51,000 (contract size 1); fee: the contract's delivery fee rate × notional.
    results = _results(quarterly)
    assert results[users[0].pk][0] == D(1000) and results[users[1].pk][0] == D(-1000)
    assert results[users[4].pk][0] == D(400) and results[users[5].pk][0] == D(-400)
    assert results[users[2].pk][1] == -D("0.5") * D(51000) * quarterly.delivery_fee_rate
    assert run_all_invariants() == []


@pytest.mark.django_db(transaction=True)
def test_parallel_threads_book_every_chunk_once(quarterly, funded, settings, monkeypatch):
    """Outside a transaction, DELIVERY_SETTLE_WORKERS threads book the chunks on their own connections."""
    settings.DELIVERY_CHUNK_POSITIONS = 1
    settings.DELIVERY_SETTLE_WORKERS = 3
    users = _three_pairs(quarterly, funded)
    threads, original = set(), delivery._chunk_book

    def note_thread(**kwargs):
        threads.add(threading.current_thread().name)
        return original(**kwargs)

    monkeypatch.setattr(delivery, "_chunk_book", note_thread)
    delivery_advance(now=DT)
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert run.status == DeliveryStatus.DONE and run.chunks == 6
    assert all(name.startswith("delivery") for name in threads) and len(threads) > 1
    keys = set(LedgerTransaction.objects.filter(kind=TransactionKind.DELIVERY).values_list("idempotency_key", flat=True))
    # The plan moved nothing (no isolated covers, no order margin): the chunks and the results.
    assert keys == {f"delivery:{quarterly.symbol}:results"} | {f"delivery:{quarterly.symbol}:{n}" for n in range(6)}
    results = _results(quarterly)
    assert len(results) == 6 and results[users[4].pk][0] == D(400)
    assert open_interest(quarterly) == (0, 0)
    assert Position.objects.filter(contract=quarterly, user=users[4]).get().realized_pnl > 0
    assert run_all_invariants() == []


@pytest.mark.django_db
def test_an_isolated_margin_cannot_change_once_the_delivery_has_begun(quarterly, funded):
    users = _three_pairs(quarterly, funded)
    eve = users[4]
    assert position_margin_adjust(user=eve, contract=quarterly, amount=D("10"), direction=1) == D("10")
    delivery_advance(now=DT - timedelta(minutes=1))  # close-only: still allowed
    assert position_margin_adjust(user=eve, contract=quarterly, amount=D("5"), direction=2) == D("5")
    delivery._price(DeliverySettlement.objects.create(contract=quarterly, delivery_time=DT), quarterly, DT)
    quarterly.__class__.objects.filter(pk=quarterly.pk).update(status="SETTLING")  # its plan is under way
    before = Income.objects.count(), LedgerTransaction.objects.count()
    with pytest.raises(ExchangeError, match="being delivered") as refused:
        position_margin_adjust(user=eve, contract=quarterly, amount=D("5"), direction=1)
    assert refused.value.code == ErrorCode.INVALID_SYMBOL_STATUS
    assert (Income.objects.count(), LedgerTransaction.objects.count()) == before


@pytest.mark.django_db
def test_a_chunk_whose_positions_changed_since_the_plan_books_nothing(quarterly, funded, settings, monkeypatch):
    users = _planned_in_two_chunks(quarterly, funded, settings, monkeypatch)
    # Nothing writes a position of a SETTLING contract; were one to change, its chunk must not book.
    Position.objects.filter(contract=quarterly, user=users[0]).update(size=D("0.9"))
    delivery_advance(now=DT + timedelta(minutes=1))
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert run.status == DeliveryStatus.FAILED and "changed since its plan" in run.error
    assert not run.chunk_set.filter(number=0, booked_at__isnull=False).exists()
    assert check_delivery_clearing_is_unbooked_chunks() == []
    assert Position.objects.get(contract=quarterly, user=users[1]).size == -1  # chunk 0's: untouched


@pytest.mark.django_db
def test_chunks_are_runs_of_buckets_within_the_size(quarterly, funded, make_user, settings, monkeypatch):
    """The plan sums the positions per bucket of user ids (here id // 2, chunks of at most four):
    a chunk is a run of whole buckets, cut where the next bucket would not fit. The holders' ids
    start odd, so the buckets hold 1, 2, 2 and 1 positions and the chunks 3 and 3, where cutting
    the positions by count would give 4 and 2."""
    monkeypatch.setattr(delivery, "BUCKETS_PER_CHUNK", 2)
    if make_user("probe").pk % 2 == 1:  # the next user, the first holder, gets an odd id
        make_user("probe2")
    users = _planned_in_two_chunks(quarterly, funded, settings, monkeypatch)
    run = DeliverySettlement.objects.get(contract=quarterly)
    chunks = list(DeliveryChunk.objects.filter(run=run).order_by("number"))
    ids = sorted(u.pk for u in users)
    assert ids == list(range(ids[0], ids[0] + 6)) and ids[0] % 2 == 1
    assert [(c.user_from, c.user_to, c.positions) for c in chunks] == [(ids[0], ids[2], 3), (ids[3], ids[5], 3)]
    assert system(AccountKind.DELIVERY_CLEARING) == sum(c.clearing for c in chunks)

    delivery_advance(now=DT + timedelta(minutes=1))
    run.refresh_from_db()
    assert run.status == DeliveryStatus.DONE and open_interest(quarterly) == (0, 0)
    assert _results(quarterly)[users[0].pk][0] == D(1000)
    assert run_all_invariants() == []


@pytest.mark.django_db
@pytest.mark.parametrize("chunk", [1, 50_000])
def test_a_holder_without_a_wallet_gets_one_and_is_paid(quarterly, funded, make_user, position, settings, chunk):
    """Wallets come with deposits: a position held without one (never in practice) still
    settles, the wallet opened by the plan, in chunks as in one transaction."""
    settings.DELIVERY_CHUNK_POSITIONS = chunk
    delivery_advance(now=ONBOARD)
    quarterly.refresh_from_db()
    walletless, payer = make_user("gil"), funded("hal")
    position(walletless, quarterly, "1", entry="50000")
    position(payer, quarterly, "-1", entry="50000")
    assert not walletless.ledger_accounts.filter(kind=AccountKind.WALLET).exists()
    flat_hour(quarterly, "51000")
    delivery_advance(now=DT)
    run = DeliverySettlement.objects.get(contract=quarterly)
    assert (run.status, run.chunks) == (DeliveryStatus.DONE, 2 if chunk == 1 else 0)
    fee = D(51000) * quarterly.delivery_fee_rate
    assert _results(quarterly)[walletless.pk] == (D(1000), -fee)
    wallet = walletless.ledger_accounts.get(kind=AccountKind.WALLET)
    assert wallet.balances.get().amount == D(1000) - fee
