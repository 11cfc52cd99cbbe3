"""Ledger lookups stay index probes after the tables have grown (the triggers: migration 0008; deposits).

PL/pgSQL keeps a trigger statement's plan for the connection's life until an ANALYZE or
VACUUM invalidates it; without autovacuum (the CI server's setting) a plan made while the
tables were small read all of `ledger_ledgertransaction` at every posting of a long-lived
worker. Here: a posting and an income line plan the triggers on small tables, 20,000
transactions arrive without an ANALYZE, and the next posting and income line must read
the transaction and user tables by index only (the counters of the current transaction).
"""
from decimal import Decimal

from django.db import connection
from django.utils import timezone

from apps.ledger.models import AccountKind, Income, IncomeType
from apps.ledger.services import account_get_or_create, ledger_transfer, wallet_deposit

D = Decimal
WATCHED = ("ledger_ledgertransaction", "auth_user")


def _seq_scans(tables=WATCHED) -> dict[str, int]:
    """Sequential scans of these tables in the current transaction (a table not read yet: absent)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname, seq_scan FROM pg_stat_xact_user_tables WHERE relname = ANY(%s)",
                       [list(tables)])
        return dict(cursor.fetchall())


def _post_and_record(user, usdt, wallet, margin) -> None:
    txn = ledger_transfer(source=wallet, destination=margin, asset=usdt, amount=D("1"), kind="ORDER_MARGIN")
    Income.objects.create(user=user, income_type=IncomeType.TRANSFER, amount=D("1"), asset=usdt,
                          transaction=txn, created_at=timezone.now())


def test_trigger_checks_probe_indexes_after_the_tables_grew(make_user, usdt):
    user = make_user("grower")
    wallet_deposit(user=user, asset=usdt, amount=D("100"))
    wallet = account_get_or_create(kind=AccountKind.WALLET, user=user)
    margin = account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=user)
    _post_and_record(user, usdt, wallet, margin)  # the triggers' plans are made now, on small tables

    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO ledger_ledgertransaction (kind, memo, reference, created_at)"
                       " SELECT 'TRANSFER', '', '{}', now() FROM generate_series(1, 20000)")
    before = _seq_scans()
    _post_and_record(user, usdt, wallet, margin)
    after = _seq_scans()

    assert {t: after.get(t, 0) - before.get(t, 0) for t in WATCHED} == {t: 0 for t in WATCHED}


def test_a_repeated_deposit_finds_its_income_line_by_index(make_user, usdt):
    """The idempotent deposit looks its income line up by (user, time): no scan of every line."""
    user = make_user("depositor")
    first = wallet_deposit(user=user, asset=usdt, amount=D("5"), idempotency_key="dep-1")
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO ledger_income (user_id, symbol, income_type, amount, asset_id, info, transaction_id,"
                       " created_at) SELECT %s, '', 'TRANSFER', 1, %s, '', %s, now() - interval '1 day'"
                       " FROM generate_series(1, 20000)", [user.pk, usdt.pk, first.pk])
    before = _seq_scans(("ledger_income",))
    assert "ledger_income" in before  # the rows just inserted: the counter exists
    again = wallet_deposit(user=user, asset=usdt, amount=D("5"), idempotency_key="dep-1")
    assert again.pk == first.pk
    assert _seq_scans(("ledger_income",)) == before
    assert Income.objects.filter(transaction=first, user=user, created_at=first.created_at).count() == 1



def _rows_read(table: str) -> int:
    """Rows of `table` read in the current transaction, by sequential and index scans."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables"
                       " WHERE relname = %s", [table])
        row = cursor.fetchone()
        return row[0] if row else 0


def test_income_lines_probe_their_transactions_after_the_table_grew(make_user, usdt):
    """A first statement of several income lines planned the check of their transactions as a
    hash of the whole transaction table (a NOT EXISTS under an OR becomes a hashed subplan over
    an index-only scan, which enable_seqscan = off does not price out): every later statement of
    the connection read every transaction (ledger 0013)."""
    user = make_user("lines")
    wallet_deposit(user=user, asset=usdt, amount=D("100"))
    wallet = account_get_or_create(kind=AccountKind.WALLET, user=user)
    margin = account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=user)
    txn = ledger_transfer(source=wallet, destination=margin, asset=usdt, amount=D("1"), kind="ORDER_MARGIN")

    def lines() -> None:
        Income.objects.bulk_create([Income(user=user, income_type=IncomeType.COMMISSION, amount=D("-1"), asset=usdt,
                                           transaction=txn, trade_id=n, created_at=timezone.now()) for n in range(3)])

    with connection.cursor() as cursor:
        cursor.execute("DISCARD PLANS")  # the trigger's next statement is planned now, on small tables
    lines()
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO ledger_ledgertransaction (kind, memo, reference, created_at)"
                       " SELECT 'TRANSFER', '', '{}', now() FROM generate_series(1, 20000)")
    before = _rows_read("ledger_ledgertransaction")
    lines()
    assert _rows_read("ledger_ledgertransaction") - before <= 3
