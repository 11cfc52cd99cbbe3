"""Position invariants: per contract, long open interest equals short open interest.

Except for a contract whose delivery is booking in chunks (a run with chunks, not DONE):
each chunk closes the positions of its users, longs and shorts alike, so until the last one
the positions left open need not balance. Its money is checked meanwhile by
`apps.settlement.invariants.check_delivery_clearing_is_unbooked_chunks`.
"""
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
            WHERE NOT EXISTS (SELECT FROM settlement_deliverysettlement r
                              WHERE r.contract_id = c.id AND r.chunks > 0 AND r.status <> 'DONE')
            GROUP BY c.symbol HAVING SUM(p.size) <> 0 ORDER BY c.symbol
            """
        )
        rows = cursor.fetchall()
    return [
        Violation("open_interest_balanced", f"{symbol}: long OI {long_oi} != short OI {short_oi}")
        for symbol, long_oi, short_oi in rows
    ]


POSITION_CHECKS = (check_open_interest_balanced,)
