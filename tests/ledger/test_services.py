"""The ledger service: balanced postings, exact balances, clear refusals that change nothing."""
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction

from apps.ledger.errors import InsufficientBalance, InvalidAmount, PrecisionExceeded, Unbalanced, UnknownAsset
from apps.ledger.models import AccountKind, Balance, LedgerEntry, LedgerTransaction, TransactionKind
from apps.ledger.money import quantize_amount, split_exact
from apps.ledger.selectors import balance_amount
from apps.ledger.services import (
    Leg,
    Posting,
    ledger_post,
    ledger_post_many,
    ledger_transfer,
    system_account,
    wallet_deposit,
    wallet_withdraw,
)

D = Decimal


def snapshot():
    return (
        LedgerTransaction.objects.count(),
        LedgerEntry.objects.count(),
        sorted(Balance.objects.values_list("account_id", "asset_id", "amount")),
    )


def test_deposit_and_withdraw_book_balanced_entries(alice, usdt, wallet, external):
    wallet_deposit(user=alice, asset="USDT", amount=D("100.5"))
    txn = wallet_withdraw(user=alice, asset=usdt, amount=D("0.25"))
    assert balance_amount(account=wallet(alice), asset_code="USDT") == D("100.25")
    assert balance_amount(account=external, asset_code="USDT") == D("-100.25")
    legs = list(txn.entries.order_by("id").values_list("amount", "balance_after"))
    assert legs == [(D("-0.25"), D("100.25")), (D("0.25"), D("-100.25"))]
    assert txn.kind == TransactionKind.WITHDRAWAL


def test_transfer_between_user_accounts(alice, usdt, wallet):
    wallet_deposit(user=alice, asset=usdt, amount=D("10"))
    margin = system_account(AccountKind.INSURANCE_FUND)
    ledger_transfer(source=wallet(alice), destination=margin, asset=usdt, amount=D("3.00000001"))
    assert balance_amount(account=wallet(alice), asset_code="USDT") == D("6.99999999")
    assert balance_amount(account=margin, asset_code="USDT") == D("3.00000001")


@pytest.mark.parametrize(
    "amount, error",
    [
        (D("-1"), InvalidAmount),
        (D("0"), InvalidAmount),
        (D("1.000000001"), PrecisionExceeded),
        ("abc", InvalidAmount),
        (1.5, InvalidAmount),
        (D("NaN"), InvalidAmount),
    ],
)
def test_bad_deposit_amounts_are_refused_and_change_nothing(alice, usdt, wallet, amount, error):
    wallet_deposit(user=alice, asset=usdt, amount=D("5"))
    before = snapshot()
    with pytest.raises(error) as excinfo:
        wallet_deposit(user=alice, asset=usdt, amount=amount)
    assert excinfo.value.msg
    assert snapshot() == before


def test_unknown_asset_is_refused(alice, usdt):
    before = snapshot()
    with pytest.raises(UnknownAsset, match="DOGE"):
        wallet_deposit(user=alice, asset="DOGE", amount=D("1"))
    assert snapshot() == before


def test_overdraw_of_a_user_wallet_is_refused_and_changes_nothing(alice, usdt, wallet):
    wallet_deposit(user=alice, asset=usdt, amount=D("5"))
    before = snapshot()
    with pytest.raises(InsufficientBalance) as excinfo:
        wallet_withdraw(user=alice, asset=usdt, amount=D("5.00000001"))
    assert excinfo.value.code == -2018
    assert snapshot() == before


def test_service_refuses_legs_that_do_not_sum_to_zero(alice, usdt, wallet, external):
    before = snapshot()
    with pytest.raises(Unbalanced, match="sum to zero"):
        ledger_post(
            kind=TransactionKind.ADJUSTMENT,
            legs=[Leg(wallet(alice), usdt, D("10")), Leg(external, usdt, D("-9.99999999"))],
        )
    with pytest.raises(Unbalanced):
        ledger_post(kind=TransactionKind.ADJUSTMENT, legs=[Leg(wallet(alice), usdt, D("10"))])
    assert snapshot() == before


def test_database_refuses_an_unbalanced_transaction(alice, usdt, wallet):
    account = wallet(alice)
    txn = LedgerTransaction.objects.create(kind=TransactionKind.ADJUSTMENT)
    with pytest.raises(IntegrityError, match="does not balance"):
        with transaction.atomic():
            LedgerEntry.objects.bulk_create(
                [LedgerEntry(transaction=txn, account=account, asset=usdt, amount=D("1"), balance_after=D("1"))]
            )


def test_database_refuses_edits_of_ledger_entries(alice, usdt, wallet):
    txn = wallet_deposit(user=alice, asset=usdt, amount=D("1"))
    entry = txn.entries.first()
    with pytest.raises(Exception, match="append-only"):
        with transaction.atomic():
            LedgerEntry.objects.filter(pk=entry.pk).update(amount=D("2"))
    with pytest.raises(Exception, match="append-only"):
        with transaction.atomic():
            LedgerEntry.objects.filter(pk=entry.pk).delete()


def test_database_refuses_a_negative_user_balance(alice, usdt, wallet):
    wallet_deposit(user=alice, asset=usdt, amount=D("1"))
    with pytest.raises(IntegrityError, match="balance_non_negative_unless_allowed"):
        with transaction.atomic():
            Balance.objects.filter(account=wallet(alice)).update(amount=D("-1"))


def test_idempotency_key_books_once(alice, usdt, wallet):
    first = wallet_deposit(user=alice, asset=usdt, amount=D("7"), idempotency_key="dep-1")
    again = wallet_deposit(user=alice, asset=usdt, amount=D("7"), idempotency_key="dep-1")
    assert first.pk == again.pk
    assert balance_amount(account=wallet(alice), asset_code="USDT") == D("7")


def test_external_and_clearing_accounts_may_go_negative(usdt, external):
    pnl = system_account(AccountKind.PNL_CLEARING)
    ledger_transfer(source=pnl, destination=external, asset=usdt, amount=D("3"))
    assert balance_amount(account=pnl, asset_code="USDT") == D("-3")


def test_many_postings_cost_a_constant_number_of_statements(make_user, usdt, wallet, external, django_assert_max_num_queries):
    users = [make_user(f"u{i}") for i in range(40)]
    postings = [
        Posting(kind=TransactionKind.DEPOSIT, legs=[Leg(wallet(u), usdt, D("1.5")), Leg(external, usdt, D("-1.5"))])
        for u in users
    ]
    with django_assert_max_num_queries(12):
        txns = ledger_post_many(postings=postings)
    assert len(txns) == 40 and LedgerEntry.objects.count() == 80
    assert balance_amount(account=external, asset_code="USDT") == D("-60")


def test_quantize_and_split_exact():
    assert quantize_amount(D("1.000000005"), 8) == D("1.00000000")  # half-even
    assert quantize_amount(D("1.000000015"), 8) == D("1.00000002")
    parts = split_exact(D("0.00000010"), [D(1), D(1), D(1)], 8)
    assert sum(parts) == D("0.00000010") and sorted(parts) == [D("0.00000003"), D("0.00000003"), D("0.00000004")]
    negative = split_exact(D("-1"), [D(2), D(1)], 2)
    assert negative == [D("-0.67"), D("-0.33")] and sum(negative) == D("-1")


def test_a_transfer_without_savepoint_books_the_same_in_fewer_round_trips(alice, usdt, wallet):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.ledger.models import AccountKind
    from apps.ledger.services import account_get_or_create

    wallet_deposit(user=alice, asset=usdt, amount=D("10"))
    held = account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=alice)
    ledger_transfer(source=wallet(alice), destination=held, asset=usdt, amount=D("1"))  # creates the balance row
    statements = {}
    for savepoint in (True, False):
        with transaction.atomic(), CaptureQueriesContext(connection) as queries:
            ledger_transfer(source=wallet(alice), destination=held, asset=usdt, amount=D("1"), savepoint=savepoint)
        statements[savepoint] = [q["sql"].split()[0] for q in queries.captured_queries]
    assert statements[True].count("SAVEPOINT") == 1 and "SAVEPOINT" not in statements[False]
    assert len(statements[False]) == len(statements[True]) - 2
    assert balance_amount(account=held, asset_code="USDT") == D("3")

    # Refused without a savepoint: the error reaches the caller, whose transaction then rolls back.
    before = snapshot()
    with pytest.raises(InsufficientBalance), transaction.atomic():
        ledger_transfer(source=wallet(alice), destination=held, asset=usdt, amount=D("8"), savepoint=False)
    assert snapshot() == before


def test_one_keyless_posting_is_one_statement_with_the_same_entries(alice, usdt, wallet, external):
    """Lock, transaction row and write in one statement; running balances when a balance repeats."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    wallet_deposit(user=alice, asset=usdt, amount=D("10"))
    held = system_account(AccountKind.FEE_INCOME)
    ledger_transfer(source=wallet(alice), destination=held, asset=usdt, amount=D("1"))  # creates the balance row
    legs = [Leg(wallet(alice), usdt, D("-4")), Leg(held, usdt, D("4")),
            Leg(wallet(alice), usdt, D("2.5")), Leg(held, usdt, D("-2.5"))]
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        txn = ledger_post(kind=TransactionKind.TRADE, legs=legs, memo="m", reference={"order_id": 7}, savepoint=False)
    assert len(queries) == 1
    stored = LedgerTransaction.objects.get(pk=txn.pk)
    assert (stored.kind, stored.memo, stored.reference, stored.idempotency_key) == ("TRADE", "m", {"order_id": 7}, None)
    assert stored.created_at == txn.created_at and not txn._state.adding
    rows = list(stored.entries.order_by("id").values_list("account_id", "amount", "balance_after"))
    w, h = wallet(alice).pk, held.pk
    assert rows == [(w, D("-4"), D("5")), (h, D("4"), D("5")), (w, D("2.5"), D("7.5")), (h, D("-2.5"), D("2.5"))]
    assert balance_amount(account=wallet(alice), asset_code="USDT") == D("7.5")

    # A balance short after the posting's legs: refused, nothing written (with or without savepoint).
    before = snapshot()
    for savepoint in (True, False):
        with pytest.raises(InsufficientBalance, match=f"account {w} would hold -0.50000000 USDT"), \
                transaction.atomic():
            ledger_post(kind=TransactionKind.TRADE, legs=[Leg(wallet(alice), usdt, D("-9")), Leg(held, usdt, D("9")),
                                                        Leg(wallet(alice), usdt, D("1")), Leg(held, usdt, D("-1"))],
                        savepoint=savepoint)
        assert snapshot() == before


def test_one_keyless_posting_creates_missing_balance_rows(make_user, usdt, wallet, external):
    bob = make_user("bob")
    txn = ledger_transfer(source=external, destination=wallet(bob), asset=usdt, amount=D("3"))
    assert balance_amount(account=wallet(bob), asset_code="USDT") == D("3")
    assert sorted(txn.entries.values_list("amount", flat=True)) == [D("-3"), D("3")]


def test_several_postings_write_their_transaction_rows_in_one_statement_as_given(alice, usdt, wallet, external):
    """`ledger_post_many`'s transaction rows (one INSERT for all) hold each posting's fields, in call order."""
    wallet_deposit(user=alice, asset=usdt, amount=D("10"))
    held = system_account(AccountKind.FEE_INCOME)
    staff = get_user_model().objects.create_user("ops", is_staff=True)
    postings = [
        Posting(kind=TransactionKind.TRADE, legs=[Leg(wallet(alice), usdt, D("-1")), Leg(held, usdt, D("1"))],
                memo="first", reference={"order_id": 1, "nested": {"a": [1, 2]}}),
        Posting(kind=TransactionKind.ADJUSTMENT, legs=[Leg(held, usdt, D("-0.5")), Leg(wallet(alice), usdt, D("0.5"))],
                idempotency_key="fee:2", created_by_id=staff.pk),
        Posting(kind=TransactionKind.TRADE, legs=[Leg(wallet(alice), usdt, D("-2")), Leg(held, usdt, D("2"))],
                memo="x" * 300),
    ]
    txns = ledger_post_many(postings=postings)
    assert [t.pk for t in txns] == sorted(t.pk for t in txns) and not any(t._state.adding for t in txns)
    stored = {t.pk: t for t in LedgerTransaction.objects.filter(pk__in=[t.pk for t in txns])}
    assert [(stored[t.pk].kind, stored[t.pk].memo, stored[t.pk].reference, stored[t.pk].idempotency_key,
             stored[t.pk].created_by_id, stored[t.pk].created_at) for t in txns] == [
        ("TRADE", "first", {"order_id": 1, "nested": {"a": [1, 2]}}, None, None, txns[0].created_at),
        ("ADJUSTMENT", "", {}, "fee:2", staff.pk, txns[1].created_at),
        ("TRADE", "x" * 255, {}, None, None, txns[2].created_at),
    ]
    assert [list(stored[t.pk].entries.values_list("amount", flat=True).order_by("id")) for t in txns] == [
        [D("-1"), D("1")], [D("-0.5"), D("0.5")], [D("-2"), D("2")]]
