"""Many values into PostgreSQL cheaply, for the hot paths that write thousands of rows per transaction.

Django's `bulk_create` prepares every field of every object and psycopg then adapts
every parameter, and psycopg adapts a list parameter element by element; for a
matcher batch (thousands of trades, income lines and order updates) that Python work
costs more than PostgreSQL's. Here the values are formatted as PostgreSQL's own text
input instead: COPY's text format for new rows (`rows_copy`), array literals for
array parameters (`array_literal`, 3-5x cheaper than a list for thousands of values).
"""
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
CHUNK = 20_000


def copy_value(value) -> str:
    """One field in COPY's text format: NULL as \\N; numbers and timestamps as PostgreSQL reads them."""
    kind = type(value)
    if kind is Decimal or kind is int:  # most fields: first (an exponent form such as 1E+2 is valid numeric input)
        return str(value)
    if value is None:
        return "\\N"
    if value is True or value is False:
        return "t" if value else "f"
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def rows_copy(cursor, table: str, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """COPY `rows` (tuples in `columns` order) into `table` on a Django cursor; returns the row count."""
    count = 0
    lines: list[str] = []
    with cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            lines.append("\t".join([copy_value(v) for v in row]))
            if len(lines) == CHUNK:
                copy.write("\n".join(lines) + "\n")
                count += len(lines)
                lines.clear()
        if lines:
            copy.write("\n".join(lines) + "\n")
            count += len(lines)
    return count


def ids_reserve(cursor, table: str, count: int) -> list[int]:
    """`count` new ids from the serial sequence of `table`.id, ascending: rows copied with them
    keep the order they are given in (ids follow execution order, as the trade history reads them)."""
    if count <= 0:
        return []
    cursor.execute(
        "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, count]
    )
    return sorted(r[0] for r in cursor.fetchall())


def numbered_unnest(table: str, casts: Sequence[str], names: Sequence[str], where: str = "") -> str:
    """A SELECT of the rows that array parameters (`%s::<cast>[]` each, `array_literal`) hold, as
    columns `names` plus their position `n` (from 1), with `id` a new id of `table` drawn in
    that order (nextval over the rows sorted by position), so that rows inserted with them and
    the ids returned follow the arrays. `where` filters the rows before any id is drawn."""
    arrays = ", ".join(f"%s::{cast}[]" for cast in casts)
    return (f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) AS id, u.* "
            f"FROM (SELECT * FROM unnest({arrays}) WITH ORDINALITY AS u({', '.join(names)}, n) ORDER BY n) AS u"
            + (f" WHERE {where}" if where else ""))


def instances_saved(instances: Iterable, ids: Iterable[int]) -> None:
    """Model instances inserted by raw SQL, given their new ids: as `save()` leaves them."""
    from django.db import connection

    for instance, pk in zip(instances, ids):
        instance.pk = pk
        instance._state.adding, instance._state.db = False, connection.alias


def array_literal(values: Iterable) -> str:
    """An array parameter as PostgreSQL's array input text (cast it in SQL: `%s::numeric[]`).

    Numbers go as they print, None as NULL, strings quoted."""
    return "{" + ",".join([_element(v) for v in values]) + "}"


def text_literals(values: Iterable) -> str:
    """Constant strings (statuses, kinds: never user input) as a SQL list of literals, for
    `status IN (...)`: a predicate the planner can match against a partial index's, which it
    cannot with a parameter once a prepared statement runs on its generic plan."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def _element(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


# For a CREATE TABLE AS that reads a million rows and writes them all (a settlement's rows):
# the planner's default costs of handing rows from parallel workers to the leader
# (parallel_tuple_cost) would keep a query returning every row serial; made free.
PARALLEL_CTAS = {"parallel_setup_cost": "0", "parallel_tuple_cost": "0"}


@contextmanager
def settings_local(cursor, **settings: str):
    """These settings (the planner's, mostly, or a custom `ledger.*` flag a trigger reads) for the
    statements run inside, then back to what they were (a custom one never set: ''); this
    transaction only (an error rolls them back with the rest). No settings: the planner's own."""
    if not settings:
        yield
        return
    pairs = ", ".join("COALESCE(current_setting(%s, true), ''), set_config(%s, %s, true)" for _ in settings)
    cursor.execute(f"SELECT {pairs}", [v for name, value in settings.items() for v in (name, name, value)])
    before = cursor.fetchone()[::2]
    yield
    pairs = ", ".join("set_config(%s, %s, true)" for _ in settings)
    cursor.execute(f"SELECT {pairs}", [v for name, value in zip(settings, before) for v in (name, value)])
