"""A concurrent staged posting (`ledger_post_staged(concurrent=True)`, the chunks of a funding
settlement) against a real second transaction: it locks each balance as it moves it, in the
order of its legs, so it waits at its last leg (the shared system account) with the others
already locked, and once that account's holder commits, it books every leg, the last one
included, at the first try."""
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from django.db import connections, transaction

from apps.ledger import services as ledger_services
from apps.ledger.invariants import LEDGER_CHECKS
from apps.ledger.models import AccountKind, Balance, TransactionKind
from apps.ledger.services import (
    Leg,
    Posting,
    account_get_or_create,
    ledger_post,
    ledger_post_staged,
    system_account,
    wallet_deposit,
)
from tests.database import database_url

D = Decimal
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
# The users' legs in account order, then the shared account's: the order a funding chunk gives.
LEGS_SQL = """
(SELECT l.account_id, %s::bigint AS asset_id, l.amount
 FROM unnest(%s::bigint[], %s::numeric[]) AS l(account_id, amount) ORDER BY l.account_id)
UNION ALL
SELECT %s::bigint, %s::bigint, %s::numeric
"""


@pytest.mark.parametrize("named, span", [(False, None), (True, None), (True, 0)],
                         ids=["in-order", "shared-named-merge", "shared-named-probes"])
def test_it_waits_at_the_shared_account_last_and_then_books_every_leg(make_user, usdt, monkeypatch, named, span):
    """Every way the users' legs are moved first: one probe per leg in the legs' order, or (the
    shared account named) one merge over their dense range of accounts, or one probe each when
    that range is sparse (here: forced), the shared leg after them."""
    if span is not None:
        monkeypatch.setattr(ledger_services, "STAGED_MERGE_SPAN", span)
    users = [make_user(f"c{i}") for i in range(3)]
    for user in users:
        wallet_deposit(user=user, asset="USDT", amount=D("10"))
    wallets = sorted(account_get_or_create(kind=AccountKind.WALLET, user=u).pk for u in users)
    clearing = system_account(AccountKind.FUNDING_CLEARING).pk
    ledger_post(kind=TransactionKind.FUNDING, legs=[Leg(wallets[0], "USDT", D("-1")), Leg(clearing, "USDT", D("1"))])
    ensured = []
    monkeypatch.setattr(ledger_services, "_ensure", lambda stage: ensured.append(stage))  # a retry would show here

    holder = psycopg.connect(database_url())  # another funding posting, holding the clearing balance
    # A new version of the row, under lock until it commits (the amount as it was: the books stay whole).
    holder.execute("UPDATE ledger_balance SET updated_at = now() WHERE account_id = %s", [clearing])
    result = {}

    def post():
        try:
            with transaction.atomic():
                result["txn"] = ledger_post_staged(
                    posting=Posting(kind=TransactionKind.FUNDING, legs=(), memo="chunk"), concurrent=True,
                    shared=[clearing] if named else (),
                    legs_sql=LEGS_SQL, params=[usdt.pk, wallets, [D("-2"), D("3"), D("1")], clearing, usdt.pk, D("-2")])
        except Exception as exc:  # handed to the test's thread
            result["error"] = exc
        finally:
            connections.close_all()

    poster = threading.Thread(target=post)
    poster.start()
    try:
        deadline = time.monotonic() + 30
        waiting = False
        with psycopg.connect(database_url(), autocommit=True) as probe:
            while time.monotonic() < deadline and not waiting:
                waiting = probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE '%%UPDATE ledger_balance b%%'").fetchone()[0] == 1
                time.sleep(0.02)
            assert waiting, result
            # Waiting at the clearing account, it already holds every user's balance.
            for wallet in wallets:
                with pytest.raises(psycopg.errors.LockNotAvailable):
                    with probe.transaction():
                        probe.execute("SELECT 1 FROM ledger_balance WHERE account_id = %s FOR UPDATE NOWAIT", [wallet])
        holder.commit()
    finally:
        holder.close()
        poster.join(timeout=30)
    assert "error" not in result, result.get("error")
    assert ensured == []  # booked at the first try: the clearing account was not skipped
    assert result["txn"].entries.count() == 4
    amounts = dict(Balance.objects.filter(account_id__in=[*wallets, clearing]).values_list("account_id", "amount"))
    assert [amounts[w] for w in wallets] == [D("7"), D("13"), D("11")]
    assert amounts[clearing] == D("1") - D("2")
    assert [str(v) for check in LEDGER_CHECKS for v in check()] == []
