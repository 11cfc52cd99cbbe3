"""Checks of the accounting equation (design section 2), each returning violations.

Set-based SQL over the whole ledger; `apps.ops.invariants` runs these together with
the checks of other apps, and `manage.py check_ledger` reports them.
"""
from dataclasses import dataclass

from django.db import connection

from .models import USER_ASSET_KINDS

LIMIT = 20


@dataclass(frozen=True)
class Violation:
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.check}: {self.detail}"


def _rows(sql: str, params=()) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def check_transactions_balanced() -> list[Violation]:
    rows = _rows(
        """
        SELECT e.transaction_id, a.code, SUM(e.amount)
        FROM ledger_ledgerentry e JOIN ledger_asset a ON a.id = e.asset_id
        GROUP BY e.transaction_id, a.code HAVING SUM(e.amount) <> 0
        ORDER BY e.transaction_id LIMIT %s
        """,
        [LIMIT],
    )
    return [Violation("transactions_balanced", f"transaction {t} sums to {s} {code}") for t, code, s in rows]


def check_balances_sum_to_zero() -> list[Violation]:
    rows = _rows(
        """
        SELECT a.code, SUM(b.amount) FROM ledger_balance b JOIN ledger_asset a ON a.id = b.asset_id
        GROUP BY a.code HAVING SUM(b.amount) <> 0 ORDER BY a.code
        """
    )
    return [Violation("balances_sum_to_zero", f"balances of {code} sum to {s}, not 0") for code, s in rows]


def check_balances_match_entries() -> list[Violation]:
    rows = _rows(
        """
        SELECT COALESCE(b.account_id, e.account_id), a.code, COALESCE(b.amount, 0), COALESCE(e.total, 0)
        FROM ledger_balance b
        FULL OUTER JOIN (
            SELECT account_id, asset_id, SUM(amount) AS total FROM ledger_ledgerentry GROUP BY account_id, asset_id
        ) e ON e.account_id = b.account_id AND e.asset_id = b.asset_id
        JOIN ledger_asset a ON a.id = COALESCE(b.asset_id, e.asset_id)
        WHERE COALESCE(b.amount, 0) <> COALESCE(e.total, 0)
        ORDER BY 1, 2 LIMIT %s
        """,
        [LIMIT],
    )
    return [
        Violation("balances_match_entries", f"account {acc} {code}: balance {bal} but entries sum to {tot}")
        for acc, code, bal, tot in rows
    ]


def check_user_balances_not_negative() -> list[Violation]:
    kinds = [str(kind) for kind in USER_ASSET_KINDS]
    rows = _rows(
        """
        SELECT b.account_id, ac.kind, a.code, b.amount, b.may_go_negative
        FROM ledger_balance b JOIN ledger_account ac ON ac.id = b.account_id
        JOIN ledger_asset a ON a.id = b.asset_id
        WHERE ac.kind = ANY(%s) AND (b.amount < 0 OR b.may_go_negative)
        ORDER BY 1 LIMIT %s
        """,
        [kinds, LIMIT],
    )
    return [
        Violation(
            "user_balances_not_negative",
            f"account {acc} ({kind}) {code}: {amount}" + (" (flagged may_go_negative)" if flag else ""),
        )
        for acc, kind, code, amount, flag in rows
    ]


def check_receivables_backed() -> list[Violation]:
    """What a user owes is never positive and never more than the order margin they hold:
    every return of order margin to the wallet repays it first."""
    rows = _rows(
        """
        SELECT ac.user_id, a.code, -b.amount, COALESCE(om.amount, 0)
        FROM ledger_balance b JOIN ledger_account ac ON ac.id = b.account_id
        JOIN ledger_asset a ON a.id = b.asset_id
        LEFT JOIN ledger_account oa ON oa.user_id = ac.user_id AND oa.kind = 'ORDER_MARGIN'
        LEFT JOIN ledger_balance om ON om.account_id = oa.id AND om.asset_id = b.asset_id
        WHERE ac.kind = 'RECEIVABLE' AND (b.amount > 0 OR -b.amount > COALESCE(om.amount, 0))
        ORDER BY 1 LIMIT %s
        """,
        [LIMIT],
    )
    return [Violation("receivables_backed", f"user {user} {code}: owes {owed}, holds {held} of order margin")
            for user, code, owed, held in rows]


LEDGER_CHECKS = (
    check_transactions_balanced,
    check_balances_sum_to_zero,
    check_balances_match_entries,
    check_user_balances_not_negative,
    check_receivables_backed,
)
