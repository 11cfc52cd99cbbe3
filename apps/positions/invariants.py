"""Position invariants: per contract, long open interest equals short open interest."""
from django.db import connection

from apps.ledger.invariants import Violation


def check_open_interest_balanced() -> list[Violation]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.symbol,
                   SUM(CASE WHEN p.size > 0 THEN p.size ELSE 0 END),
                   SUM(CASE WHEN p.size < 0 THEN -p.size ELSE 0 END)
            FROM positions_position p JOIN contracts_contract c ON c.id = p.contract_id
            GROUP BY c.symbol HAVING SUM(p.size) <> 0 ORDER BY c.symbol
            """
        )
        rows = cursor.fetchall()
    return [
        Violation("open_interest_balanced", f"{symbol}: long OI {long_oi} != short OI {short_oi}")
        for symbol, long_oi, short_oi in rows
    ]


POSITION_CHECKS = (check_open_interest_balanced,)
