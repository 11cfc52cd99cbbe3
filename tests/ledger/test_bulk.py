"""Set-based posting: both ways legs reach PostgreSQL (arrays, COPY) book exactly what the rules say.

Every test runs twice: with the legs as array parameters and with the COPY path forced
(`COPY_FROM_LEGS` lowered), so the large-posting code is proven on small, hand-checked
cases. A property test compares random multi-posting calls to a plain Python model
of the ledger (running balances, refusal when a posting ends a balance below zero).
"""
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.ledger import services as ledger_services
from apps.ledger import staging
from apps.ledger.errors import (
    InsufficientBalance,
    InvalidAmount,
    LedgerError,
    PrecisionExceeded,
    Unbalanced,
    UnknownAsset,
)
from apps.ledger.invariants import LEDGER_CHECKS
from apps.ledger.models import AccountKind, Balance, Income, IncomeType, LedgerEntry, LedgerTransaction, TransactionKind
from apps.ledger.services import (
    Leg,
    Posting,
    accounts_for_users,
    ledger_post_many,
    ledger_post_staged,
    system_account,
    wallet_deposit,
)

D = Decimal


@pytest.fixture(params=["arrays", "copy"])
def path(request, monkeypatch):
    if request.param == "copy":
        monkeypatch.setattr(staging, "COPY_FROM_LEGS", 0)
    return request.param


@pytest.fixture
def wallets(db, usdt):
    """n user wallets (users created in one statement): wallets(n) -> [account id]."""
    def make(n: int) -> list[int]:
        User = get_user_model()
        start = User.objects.count()
        users = User.objects.bulk_create([User(username=f"bulk{start + i}") for i in range(n)])
        by_user = accounts_for_users(kind=AccountKind.WALLET, user_ids=[u.pk for u in users])
        return [by_user[u.pk] for u in users]

    return make


def balances(accounts) -> list[Decimal]:
    found = dict(Balance.objects.filter(account_id__in=accounts).values_list("account_id", "amount"))
    return [found.get(a, D(0)) for a in accounts]


def clean() -> list[str]:
    return [str(v) for check in LEDGER_CHECKS for v in check()]


def test_one_posting_of_many_legs_books_each_leg_with_its_balance_after(path, wallets, usdt, external):
    accounts = wallets(2_100)  # above the default COPY threshold: the real large path in both runs
    amounts = [D(i % 97 + 1) / 100 for i in range(len(accounts))]
    legs = [Leg(a, usdt, x) for a, x in zip(accounts, amounts)] + [Leg(external, "USDT", -sum(amounts))]
    (txn,) = ledger_post_many(postings=[Posting(kind=TransactionKind.DEPOSIT, legs=legs)])
    entries = list(LedgerEntry.objects.filter(transaction=txn).order_by("id").values_list("account_id", "amount",
                                                                                         "balance_after"))
    assert entries[:-1] == [(a, x, x) for a, x in zip(accounts, amounts)]  # in leg order
    assert entries[-1] == (external.pk, -sum(amounts), -sum(amounts))
    assert balances(accounts) == amounts
    assert clean() == []


def test_a_balance_repeated_across_postings_runs_in_order(path, wallets, usdt, external):
    a, b = wallets(2)
    wallet_deposit(user=get_user_model().objects.get(ledger_accounts=a), asset=usdt, amount=D("3"))
    first, second = ledger_post_many(postings=[
        Posting(kind=TransactionKind.TRANSFER, legs=[Leg(a, usdt, D("5")), Leg(external, usdt, D("-5"))]),
        Posting(kind=TransactionKind.TRANSFER, legs=[Leg(a, usdt, D("-7")), Leg(b, usdt, D("4")),
                                                     Leg(a, usdt, D("-1")), Leg(b, usdt, D("4"))]),
    ])
    assert list(second.entries.order_by("id").values_list("account_id", "balance_after")) == [
        (a, D("1")), (b, D("4")), (a, D("0")), (b, D("8"))]
    assert first.entries.get(account_id=a).balance_after == D("8")
    assert balances([a, b]) == [D("0"), D("8")]
    assert clean() == []


def test_a_balance_may_dip_inside_a_posting_but_not_end_it_below_zero(path, wallets, usdt, external):
    a, b = wallets(2)
    # a goes to -2 after the first leg and back to 0: a transaction is atomic.
    ledger_post_many(postings=[Posting(kind=TransactionKind.TRANSFER, legs=[
        Leg(a, usdt, D("-2")), Leg(b, usdt, D("2")), Leg(external, usdt, D("-2")), Leg(a, usdt, D("2"))])])
    assert balances([a, b]) == [D("0"), D("2")]


def test_a_refused_posting_of_many_legs_writes_nothing(path, wallets, usdt, external):
    accounts = wallets(2_100)
    ledger_post_many(postings=[Posting(kind=TransactionKind.DEPOSIT, legs=[Leg(a, usdt, D("1")) for a in accounts]
                                       + [Leg(external, usdt, D(-len(accounts)))])])
    before = (LedgerTransaction.objects.count(), LedgerEntry.objects.count(), balances(accounts))
    legs = [Leg(a, usdt, D("-1")) for a in accounts]
    legs[1234] = Leg(accounts[1234], usdt, D("-1.00000001"))
    legs.append(Leg(external, usdt, D(len(accounts)) + D("0.00000001")))
    with transaction.atomic():  # the caller's transaction stays usable
        with pytest.raises(InsufficientBalance, match=f"account {accounts[1234]} would hold -0.00000001 USDT"):
            ledger_post_many(postings=[Posting(kind=TransactionKind.WITHDRAWAL, legs=legs)])
        assert (LedgerTransaction.objects.count(), LedgerEntry.objects.count(), balances(accounts)) == before
    assert clean() == []


def test_a_repeated_key_books_once_on_both_paths(path, wallets, usdt, external):
    (a,) = wallets(1)
    posting = Posting(kind=TransactionKind.DEPOSIT, legs=[Leg(a, usdt, D("2")), Leg(external, usdt, D("-2"))],
                      idempotency_key="bulk-once")
    first = ledger_post_many(postings=[posting])[0]
    again = ledger_post_many(postings=[posting, Posting(kind=TransactionKind.DEPOSIT, legs=[
        Leg(a, usdt, D("1")), Leg(external, usdt, D("-1"))])])
    assert again[0].pk == first.pk and again[1].pk != first.pk
    assert balances([a]) == [D("3")]
    assert clean() == []


def test_missing_balance_rows_are_created_with_the_account_kind_rule(path, wallets, usdt):
    (a,) = wallets(1)
    pnl = system_account(AccountKind.PNL_CLEARING)
    ledger_post_many(postings=[Posting(kind=TransactionKind.TRADE, legs=[Leg(a, usdt, D("1")),
                                                                        Leg(pnl, usdt, D("-1"))])])
    rows = dict(Balance.objects.filter(account_id__in=[a, pnl.pk]).values_list("account_id", "may_go_negative"))
    assert rows == {a: False, pnl.pk: True}


# -- property: random calls against a Python model -------------------------------------------------

ACCOUNTS = 4
leg = st.tuples(st.integers(0, ACCOUNTS - 1), st.integers(-300, 300).filter(bool))
posting_legs = st.lists(leg, min_size=1, max_size=6)


class Rollback(Exception):
    pass


def _posting(accounts, external, usdt, legs) -> Posting:
    """Legs in cents on the accounts, balanced by an external leg when they do not sum to zero."""
    xs = [Leg(accounts[i], usdt, D(cents) / 100) for i, cents in legs]
    total = sum((x.amount for x in xs), D(0))
    if total:
        xs.append(Leg(external, usdt, -total))
    return Posting(kind=TransactionKind.TRANSFER, legs=xs)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.lists(posting_legs, min_size=1, max_size=4), min_size=1, max_size=4),
       copy=st.booleans())
def test_random_calls_match_a_python_model(calls, copy, wallets, usdt, external, monkeypatch):
    monkeypatch.setattr(staging, "COPY_FROM_LEGS", 0 if copy else 10**9)
    try:
        with transaction.atomic():
            accounts = wallets(ACCOUNTS)
            ledger_post_many(postings=[Posting(kind=TransactionKind.DEPOSIT, legs=[
                *(Leg(a, usdt, D("2")) for a in accounts), Leg(external, usdt, D(-2 * ACCOUNTS))])])
            model = [D("2")] * ACCOUNTS
            for call in calls:
                postings = [_posting(accounts, external, usdt, legs) for legs in call]
                expected = list(model)
                afters = []
                refused = False
                for p in postings:
                    for x in p.legs:
                        if x.account is not external:
                            i = accounts.index(x.account)
                            expected[i] += x.amount
                            afters.append(expected[i])
                    if any(v < 0 for v in expected):
                        refused = True
                        break
                entries_before = LedgerEntry.objects.count()
                if refused:
                    with pytest.raises(InsufficientBalance):
                        ledger_post_many(postings=postings)
                    assert LedgerEntry.objects.count() == entries_before
                else:
                    txns = ledger_post_many(postings=postings)
                    got = [e.balance_after for t in txns for e in t.entries.order_by("id")
                           if e.account_id != external.pk]
                    assert got == afters
                    model = expected
                assert balances(accounts) == model
                assert clean() == []
            raise Rollback
    except Rollback:
        pass


# -- database guards of the bulk tables ------------------------------------------------------------

def test_database_refuses_entries_of_an_unknown_transaction_or_without_a_balance_row(alice, usdt, wallet, external):
    wallet_deposit(user=alice, asset=usdt, amount=D("1"))
    txn = LedgerTransaction.objects.create(kind=TransactionKind.ADJUSTMENT)
    with pytest.raises(IntegrityError, match="unknown transaction"):
        with transaction.atomic():
            LedgerEntry.objects.bulk_create([
                LedgerEntry(transaction_id=txn.pk + 1000, account=wallet(alice), asset=usdt, amount=D("1"),
                            balance_after=D("2")),
                LedgerEntry(transaction_id=txn.pk + 1000, account=external, asset=usdt, amount=D("-1"),
                            balance_after=D("-2")),
            ])
    btc_less = system_account(AccountKind.FEE_INCOME)  # no balance row in USDT
    with pytest.raises(IntegrityError, match="has no balance row"):
        with transaction.atomic():
            LedgerEntry.objects.bulk_create([
                LedgerEntry(transaction=txn, account=btc_less, asset=usdt, amount=D("1"), balance_after=D("1")),
                LedgerEntry(transaction=txn, account=external, asset=usdt, amount=D("-1"), balance_after=D("-2")),
            ])


def test_database_refuses_income_of_an_unknown_user(alice, usdt):
    txn = wallet_deposit(user=alice, asset=usdt, amount=D("1"))
    with pytest.raises(IntegrityError, match="unknown user"):
        with transaction.atomic():
            Income.objects.create(user_id=alice.pk + 1000, income_type=IncomeType.TRANSFER, amount=D("1"),
                                  asset=usdt, transaction=txn, created_at=txn.created_at)


def test_database_refuses_income_of_an_unknown_transaction_or_asset_among_good_lines(alice, usdt):
    txn = wallet_deposit(user=alice, asset=usdt, amount=D("1"))

    def lines(**bad) -> list[Income]:
        good = dict(user=alice, income_type=IncomeType.TRANSFER, amount=D("1"), asset_id=usdt.pk,
                    transaction_id=txn.pk, created_at=txn.created_at)
        return [Income(**good), Income(**{**good, **bad}), Income(**good)]

    for bad, message in (({"transaction_id": txn.pk + 1000}, f"unknown transaction {txn.pk + 1000} or asset {usdt.pk}"),
                         ({"asset_id": usdt.pk + 1000}, f"unknown transaction {txn.pk} or asset {usdt.pk + 1000}")):
        with pytest.raises(IntegrityError, match=message):
            with transaction.atomic():
                Income.objects.bulk_create(lines(**bad))
    Income.objects.bulk_create(lines())
    assert Income.objects.filter(transaction=txn, income_type=IncomeType.TRANSFER).count() >= 3


def test_database_keeps_what_entries_reference(alice, usdt, wallet):
    txn = wallet_deposit(user=alice, asset=usdt, amount=D("1"))
    for sql, args in (("DELETE FROM ledger_ledgertransaction WHERE id = %s", [txn.pk]),
                      ("DELETE FROM ledger_balance WHERE account_id = %s", [wallet(alice).pk])):
        with pytest.raises(IntegrityError, match="DELETE refused"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(sql, args)


# -- postings whose legs PostgreSQL computes (ledger_post_staged) ------------------------------------

@pytest.fixture(params=["row locks", "table lock", "concurrent"])
def lock_path(request, monkeypatch):
    """The three ways a staged posting locks balances: each row first (a small posting), the whole
    table (a large one: `TABLE_LOCK_FROM` lowered to 0), or each row as it moves (`concurrent`)."""
    if request.param == "table lock":
        monkeypatch.setattr(ledger_services, "TABLE_LOCK_FROM", 0)
    CONCURRENT[0] = request.param == "concurrent"
    yield request.param
    CONCURRENT[0] = False


CONCURRENT = [False]
LEGS_SQL = "SELECT account_id, asset_id, amount FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[]) AS l(account_id, asset_id, amount)"


def post_staged(legs, key=None):
    """legs: [(account id, asset id, amount)] handed to PostgreSQL as the SELECT's rows."""
    return ledger_post_staged(
        posting=Posting(kind=TransactionKind.FUNDING, legs=(), idempotency_key=key, memo="staged"),
        legs_sql=LEGS_SQL, params=[[a for a, _, _ in legs], [s for _, s, _ in legs], [x for _, _, x in legs]],
        concurrent=CONCURRENT[0],
    )


def test_a_staged_posting_books_each_leg_with_its_balance_after(lock_path, wallets, usdt, external):
    a, b = wallets(2)
    ledger_post_many(postings=[Posting(kind=TransactionKind.DEPOSIT, legs=[
        Leg(a, usdt, D("5")), Leg(external, usdt, D("-5"))])])
    clearing = system_account(AccountKind.FUNDING_CLEARING).pk  # no balance row yet: created
    txn = post_staged([(a, usdt.pk, D("-1.5")), (b, usdt.pk, D("1.25")), (clearing, usdt.pk, D("0.25"))])
    assert sorted(txn.entries.values_list("account_id", "amount", "balance_after")) == sorted([
        (a, D("-1.5"), D("3.5")), (b, D("1.25"), D("1.25")), (clearing, D("0.25"), D("0.25"))])
    assert balances([a, b, clearing]) == [D("3.5"), D("1.25"), D("0.25")]
    assert clean() == []


def test_the_trigger_trusts_only_the_staged_move_itself(lock_path, wallets, usdt, external):
    """A staged move's entries come from the balances it updates, so the entries' trigger skips
    the balance-row probe for that one statement (ledger migration 0011). The next direct
    insert in the same transaction is checked again."""
    a, b = wallets(2)
    ledger_post_many(postings=[Posting(kind=TransactionKind.DEPOSIT, legs=[
        Leg(a, usdt, D("5")), Leg(external, usdt, D("-5"))])])
    txn = post_staged([(a, usdt.pk, D("-1")), (b, usdt.pk, D("1"))])
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('ledger.entries_from_balances', true)")
        assert cursor.fetchone()[0] in ("", None)
    no_row = system_account(AccountKind.FEE_INCOME)  # no balance row in USDT
    with pytest.raises(IntegrityError, match="has no balance row"):
        with transaction.atomic():
            LedgerEntry.objects.bulk_create([
                LedgerEntry(transaction=txn, account=no_row, asset=usdt, amount=D("1"), balance_after=D("1")),
                LedgerEntry(transaction=txn, account=external, asset=usdt, amount=D("-1"), balance_after=D("-6")),
            ])
    assert clean() == []


@pytest.mark.parametrize("legs, error, match", [
    ([(0, 0, "1"), (1, 0, "-1")], UnknownAsset, "Unknown asset id"),
    ([(0, 1, "0"), (1, 1, "0")], InvalidAmount, "must not be zero"),
    ([(0, 1, "0.000000001"), (1, 1, "-0.000000001")], PrecisionExceeded, "more decimal places"),
    ([(0, 1, "1"), (1, 1, "-0.5")], Unbalanced, "do not sum to zero"),
    ([(0, 1, "1"), (0, 1, "-2"), (1, 1, "1")], LedgerError, "two legs on account"),
])
def test_a_staged_posting_breaking_a_rule_is_refused_and_writes_nothing(lock_path, wallets, usdt, legs, error,
                                                                      match):
    accounts = wallets(2)
    asset_ids = {0: usdt.pk + 1000, 1: usdt.pk}
    rows = [(accounts[i], asset_ids[s], D(x)) for i, s, x in legs]
    before = (LedgerTransaction.objects.count(), LedgerEntry.objects.count())
    with transaction.atomic():
        with pytest.raises(error, match=match):
            post_staged(rows)
        assert (LedgerTransaction.objects.count(), LedgerEntry.objects.count()) == before
    assert balances(accounts) == [D(0), D(0)]


def test_a_staged_posting_that_would_take_a_balance_below_zero_writes_nothing(lock_path, wallets, usdt, external):
    a, b = wallets(2)
    ledger_post_many(postings=[Posting(kind=TransactionKind.DEPOSIT, legs=[
        Leg(a, usdt, D("1")), Leg(external, usdt, D("-1"))])])
    before = (LedgerTransaction.objects.count(), LedgerEntry.objects.count())
    with transaction.atomic():  # the caller's transaction stays usable
        with pytest.raises(InsufficientBalance, match=f"account {a} would hold -0.00000001 USDT"):
            post_staged([(a, usdt.pk, D("-1.00000001")), (b, usdt.pk, D("1.00000001"))])
        assert (LedgerTransaction.objects.count(), LedgerEntry.objects.count()) == before
    assert balances([a, b]) == [D("1"), D("0")]


def test_a_staged_posting_with_a_booked_key_returns_the_earlier_transaction(lock_path, wallets, usdt, external):
    a, b = wallets(2)
    first = post_staged([(a, usdt.pk, D("2")), (external.pk, usdt.pk, D("-2"))], key="staged-once")
    again = post_staged([(a, usdt.pk, D("2")), (external.pk, usdt.pk, D("-2"))], key="staged-once")
    assert again.pk == first.pk
    assert balances([a]) == [D("2")]
    assert clean() == []


def test_a_staged_posting_without_legs_books_nothing(lock_path, wallets):
    assert post_staged([]) is None
    assert not LedgerTransaction.objects.exists()


def test_a_staged_posting_on_an_unknown_account_is_refused(lock_path, wallets, usdt, external):
    (a,) = wallets(1)
    with transaction.atomic():
        with pytest.raises(LedgerError, match="Unknown ledger account"):
            post_staged([(a + 10_000, usdt.pk, D("2")), (external.pk, usdt.pk, D("-2"))])
