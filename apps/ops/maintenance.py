"""Keeping the hot tables fast: who vacuums them, and how an operator sees that nobody does.

Orders and journal commands are updated at nearly every event (PENDING_NEW -> NEW ->
FILLED; PENDING -> DONE), and none of those updates can be HOT: the status is in their
indexes. Every update leaves a dead row and an entry in each index until a vacuum. Without
one, a fill's foreign-key checks walk the dead versions of its orders and the batch's first
read walks the dead entries of the pending-command index: on this project's 2-core machine
a 60 s signed-order run at 8 clients fell from 275 to 163 orders/s per 10 s (PostgreSQL
1.2 -> 3.0 ms per order), and the same run with autovacuum on and the settings below held
its rate.

- Migration ops 0005 gives the large hot tables their own autovacuum trigger: a fixed
  10,000 dead rows instead of PostgreSQL's 20% of the table, which on a table of ten
  million orders would wait for two million.
- `make run`'s embedded server also checks every 10 s instead of every minute
  (`autovacuum_naptime`, scripts/services.sh); an external server needs the same (README).
- The alert sources `db.autovacuum_off` and `db.hot_table_dead_rows` (apps.ops.sources)
  fire the default rules when the server does not vacuum, or falls behind.
- `hot_tables_vacuum` does the vacuum by hand on a server without autovacuum (this
  project's CI server runs with it off): the soak calls it after each check round and
  bench/api_orders.py vacuums `HOT_TABLES` every 10 s, as a tuned autovacuum would run, so
  that what they measure is the exchange and not the bloat.
"""
from django.db import connection

# Updated at nearly every event; the first four are large and have their own autovacuum
# trigger (migration ops 0005); contracts_contract is a handful of rows, which
# PostgreSQL's default (50 dead rows) already vacuums soon.
HOT_TABLES = ("trading_order", "trading_ordercommand", "positions_position", "ledger_balance", "contracts_contract")
HOT_TABLES_VACUUM_SQL = f"VACUUM (ANALYZE) {', '.join(HOT_TABLES)}"


def autovacuum_on() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        return cursor.fetchone()[0] == "on"


def hot_tables_dead_rows() -> dict[str, int]:
    """Dead rows per hot table, as the statistics collector last counted them."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT relname, n_dead_tup FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                       [list(HOT_TABLES)])
        found = dict(cursor.fetchall())
    return {table: int(found.get(table, 0)) for table in HOT_TABLES}


def hot_tables_vacuum() -> bool:
    """VACUUM (ANALYZE) the hot tables when the server runs without autovacuum; True if it ran.

    With autovacuum on, the server does this itself; inside a transaction (a test) VACUUM cannot run."""
    if connection.in_atomic_block or autovacuum_on():
        return False
    with connection.cursor() as cursor:
        cursor.execute(HOT_TABLES_VACUUM_SQL)
    return True


def vacuum_diagnostics(table: str) -> dict:
    """What an operator looks at when a hot table's dead rows keep growing: when it was last
    vacuumed, and the session of this database whose transaction is the oldest still holding an
    id or a snapshot (a vacuum cannot remove a row that transaction might still see)."""
    with connection.cursor() as cursor:
        # Statistics are read once per transaction and kept: read them afresh.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT n_live_tup, n_dead_tup, last_autovacuum, last_vacuum, autovacuum_count"
                       " FROM pg_stat_user_tables WHERE relname = %s", [table])
        row = cursor.fetchone()
        cursor.execute("SELECT pid, extract(epoch FROM now() - xact_start)::float, state, left(query, 200)"
                       " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
                       " AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)"
                       " ORDER BY greatest(coalesce(age(backend_xid), 0), coalesce(age(backend_xmin), 0)) DESC"
                       " LIMIT 1")
        oldest = cursor.fetchone()
    table_stats = None if row is None else {
        "live_rows": row[0], "dead_rows": row[1], "autovacuum_count": row[4],
        "last_autovacuum": row[2].isoformat() if row[2] else None,
        "last_vacuum": row[3].isoformat() if row[3] else None}
    return {"table": table_stats, "autovacuum": autovacuum_on(),
            "oldest_transaction": None if oldest is None else {
                "pid": oldest[0], "age_seconds": round(oldest[1], 1), "state": oldest[2], "query": oldest[3]}}
