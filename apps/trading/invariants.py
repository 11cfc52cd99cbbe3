"""Order invariants: what the ledger holds for orders is exactly what the orders say they hold.

Per user and asset, the ORDER_MARGIN balance equals the `margin_held` of their orders
plus the extra margin of amendments still waiting in the journal; and a closed order
holds nothing. Every writer (entry, amend, cancel, the matcher, the trigger) moves the
ledger and the order rows in one transaction, so this holds at every commit.
"""
from django.db import connection

from apps.ledger.invariants import Violation

from .models import OPEN_STATUSES


def check_order_margin_matches_holds() -> list[Violation]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH held AS (
                SELECT o.user_id, c.settle_asset_id AS asset_id, o.margin_held AS amount
                FROM trading_order o JOIN contracts_contract c ON c.id = o.contract_id
                WHERE o.margin_held <> 0
                UNION ALL
                SELECT o.user_id, c.settle_asset_id, cmd.margin_added
                FROM trading_ordercommand cmd
                JOIN trading_order o ON o.id = cmd.order_id
                JOIN contracts_contract c ON c.id = cmd.contract_id
                WHERE cmd.status = 'PENDING' AND cmd.margin_added <> 0
            ), expected AS (
                SELECT user_id, asset_id, SUM(amount) AS amount FROM held GROUP BY user_id, asset_id
            ), actual AS (
                SELECT a.user_id, b.asset_id, b.amount
                FROM ledger_balance b JOIN ledger_account a ON a.id = b.account_id
                WHERE a.kind = 'ORDER_MARGIN' AND b.amount <> 0
            )
            SELECT COALESCE(e.user_id, a.user_id), COALESCE(e.asset_id, a.asset_id),
                   COALESCE(e.amount, 0), COALESCE(a.amount, 0)
            FROM expected e FULL JOIN actual a ON a.user_id = e.user_id AND a.asset_id = e.asset_id
            WHERE COALESCE(e.amount, 0) <> COALESCE(a.amount, 0)
            ORDER BY 1, 2
            """
        )
        rows = cursor.fetchall()
    return [
        Violation("order_margin_matches_holds",
                  f"user {user_id} asset {asset_id}: orders hold {expected}, ORDER_MARGIN holds {actual}")
        for user_id, asset_id, expected, actual in rows
    ]


def check_closed_orders_hold_nothing() -> list[Violation]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, status, margin_held FROM trading_order WHERE margin_held <> 0 AND NOT status = ANY(%s) "
            "ORDER BY id LIMIT 100",
            [list(OPEN_STATUSES)],
        )
        rows = cursor.fetchall()
    return [Violation("closed_orders_hold_nothing", f"order {pk} is {status} but holds {held}")
            for pk, status, held in rows]


ORDER_CHECKS = (check_order_margin_matches_holds, check_closed_orders_hold_nothing)
