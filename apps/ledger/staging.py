"""Handing a `ledger_post_many` call's legs to PostgreSQL once, as the relation `legs` the posting statements read.

A few legs (a matcher batch, an order hold) go as array parameters of each statement.
Many legs built in Python (a deposit to every wallet, say) are copied once into a
temporary table with COPY, formatted in chunks so PostgreSQL parses one chunk while
Python formats the next, and the statements read that table; the table lives until
the call ends (dropped, or rolled back with its savepoint). Legs that PostgreSQL
computes itself (funding, delivery: one per position) never come here: they are read
where they are by `ledger_post_staged`.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterator

from django.db import connection, transaction

from exchange.pgbulk import array_literal

# From this many legs in one call the legs travel by COPY (below it a temporary table
# costs more than it saves).
COPY_FROM_LEGS = 2_000
CHUNK = 50_000
# The window sort and the materialised legs of a large posting stay in memory.
LARGE_WORK_MEM = "512MB"


@dataclass
class LegRows:
    """A call's legs as columns: posting index (0-based), account id, asset id, amount; in call order."""

    posting: list[int] = field(default_factory=list)
    account_id: list[int] = field(default_factory=list)
    asset_id: list[int] = field(default_factory=list)
    amount: list[Decimal] = field(default_factory=list)

    def literals(self) -> list[str]:
        """The four columns as the parameters of `ARRAYS` (array literals: cheaper to pass than lists)."""
        return [array_literal(self.posting), array_literal(self.account_id), array_literal(self.asset_id),
                array_literal(self.amount)]


@dataclass(frozen=True)
class Stage:
    """`cte` opens a WITH clause defining legs(p, account_id, asset_id, amount, ord); `params` are its parameters."""

    cte: str
    params: list
    copied: bool = False  # the legs are in the temporary table (a large call)


ARRAYS = """WITH legs AS (
    SELECT l.p, l.account_id, l.asset_id, l.amount, l.ord
    FROM unnest(%s::int[], %s::bigint[], %s::bigint[], %s::numeric[])
         WITH ORDINALITY AS l(p, account_id, asset_id, amount, ord)
)"""
TABLE = "WITH legs AS NOT MATERIALIZED (SELECT p, account_id, asset_id, amount, ord FROM pg_temp.ledger_legs)"


@contextmanager
def legs_stage(rows: LegRows) -> Iterator[Stage]:
    """The legs as a `Stage` for the statements of one call."""
    count = len(rows.amount)
    if count < COPY_FROM_LEGS:
        yield Stage(ARRAYS, rows.literals())
        return
    with transaction.atomic():  # an error rolls the table back with this savepoint
        yield from _copied(rows, count)


def _copied(rows: LegRows, count: int) -> Iterator[Stage]:
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE ledger_legs (ord bigint NOT NULL, p int NOT NULL, account_id bigint NOT NULL,"
            " asset_id bigint NOT NULL, amount numeric NOT NULL) ON COMMIT DROP"
        )
        with cursor.cursor.copy("COPY pg_temp.ledger_legs (ord, p, account_id, asset_id, amount) FROM STDIN") as copy:
            for start in range(0, count, CHUNK):
                end = min(start + CHUNK, count)
                copy.write("".join([
                    f"{o}\t{p}\t{a}\t{s}\t{m}\n"
                    for o, p, a, s, m in zip(range(start + 1, end + 1), rows.posting[start:end],
                                             rows.account_id[start:end], rows.asset_id[start:end],
                                             rows.amount[start:end])
                ]))
        cursor.execute("ANALYZE pg_temp.ledger_legs")
        cursor.execute("SELECT current_setting('work_mem'), set_config('work_mem', %s, true)", [LARGE_WORK_MEM])
        work_mem = cursor.fetchone()[0]
    yield Stage(TABLE, [], copied=True)
    # Reached only when the call went through (an error rolls the savepoint back, table and setting with it).
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE pg_temp.ledger_legs")
        cursor.execute("SELECT set_config('work_mem', %s, true)", [work_mem])
