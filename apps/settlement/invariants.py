"""Settlement invariants: funding paid equals funding received up to the documented dust account.

Every funding settlement books its rounding dust (what payers paid minus what receivers
got) into FUNDING_CLEARING and nothing else ever moves that account, so at any time,
per asset, the FUNDING_CLEARING balance equals the dust recorded on the settled runs (and
on the chunks booked so far of a run still settling in chunks), and equals minus the sum of
all FUNDING_FEE income lines plus what the insurance fund and bad debt covered. And the
delivery clearing account holds only what the chunks of a delivery under way have still to
book. Both are registered in `apps.ops.invariants` (`SETTLEMENT_CHECKS`).
"""
from django.db import connection

from apps.ledger.invariants import Violation


def check_funding_clearing_is_dust() -> list[Violation]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH clearing AS (
                SELECT b.asset_id, b.amount FROM ledger_balance b
                JOIN ledger_account a ON a.id = b.account_id WHERE a.kind = 'FUNDING_CLEARING'
            ), booked AS (
                SELECT r.contract_id, r.dust, r.covered FROM settlement_fundingsettlement r WHERE r.status = 'DONE'
                UNION ALL  -- the chunks booked so far of a run still settling
                SELECT r.contract_id, k.paid - k.received, k.covered
                FROM settlement_fundingchunk k JOIN settlement_fundingsettlement r ON r.id = k.run_id
                WHERE r.status <> 'DONE' AND k.booked_at IS NOT NULL
            ), runs AS (
                SELECT c.settle_asset_id AS asset_id, SUM(x.dust) AS dust, SUM(x.covered) AS covered
                FROM booked x JOIN contracts_contract c ON c.id = x.contract_id
                GROUP BY c.settle_asset_id
            ), incomes AS (
                SELECT asset_id, SUM(amount) AS total FROM ledger_income
                WHERE income_type = 'FUNDING_FEE' GROUP BY asset_id
            )
            SELECT x.code, COALESCE(clearing.amount, 0), COALESCE(runs.dust, 0),
                   COALESCE(incomes.total, 0), COALESCE(runs.covered, 0)
            FROM ledger_asset x
            LEFT JOIN clearing ON clearing.asset_id = x.id
            LEFT JOIN runs ON runs.asset_id = x.id
            LEFT JOIN incomes ON incomes.asset_id = x.id
            WHERE COALESCE(clearing.amount, 0) <> COALESCE(runs.dust, 0)
               OR COALESCE(clearing.amount, 0) <> -COALESCE(incomes.total, 0)
            ORDER BY x.code
            """
        )
        rows = cursor.fetchall()
    return [
        Violation("funding_clearing_is_dust",
                  f"{code}: FUNDING_CLEARING holds {balance}, settled runs recorded dust {dust}, "
                  f"funding income lines sum to {incomes} (covered {covered})")
        for code, balance, dust, incomes, covered in rows
    ]


def check_delivery_clearing_is_unbooked_chunks() -> list[Violation]:
    """DELIVERY_CLEARING holds, per asset, exactly the isolated covers of the chunks not booked
    yet of deliveries booking in chunks (a plan puts them there, each chunk's posting takes its
    `clearing` share out), less the results (PnL − fees) the booked chunks of those deliveries
    paid out (returned from PNL_CLEARING and FEE_INCOME when the delivery is done): zero
    whenever no delivery is under way."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH clearing AS (
                SELECT b.asset_id, b.amount FROM ledger_balance b
                JOIN ledger_account a ON a.id = b.account_id WHERE a.kind = 'DELIVERY_CLEARING'
            ), pending AS (
                SELECT c.settle_asset_id AS asset_id,
                       SUM(CASE WHEN k.booked_at IS NULL THEN k.clearing ELSE k.fees - k.realized_pnl END) AS amount
                FROM settlement_deliverychunk k
                JOIN settlement_deliverysettlement r ON r.id = k.run_id
                JOIN contracts_contract c ON c.id = r.contract_id
                WHERE r.status <> 'DONE' GROUP BY c.settle_asset_id
            )
            SELECT x.code, COALESCE(clearing.amount, 0), COALESCE(pending.amount, 0)
            FROM ledger_asset x
            LEFT JOIN clearing ON clearing.asset_id = x.id
            LEFT JOIN pending ON pending.asset_id = x.id
            WHERE COALESCE(clearing.amount, 0) <> COALESCE(pending.amount, 0)
            ORDER BY x.code
            """
        )
        rows = cursor.fetchall()
    return [
        Violation("delivery_clearing_is_unbooked_chunks",
                  f"{code}: DELIVERY_CLEARING holds {balance}, the deliveries under way account for {pending}")
        for code, balance, pending in rows
    ]


SETTLEMENT_CHECKS = (check_funding_clearing_is_dust, check_delivery_clearing_is_unbooked_chunks)
