"""Order entry's reads on the generic plans the web runs them on.

The web (DB_SERVER_SIDE_BINDING, as the Procfile starts it) prepares order entry's raw
statements and runs them with plan_cache_mode=force_generic_plan: planned once, without the
parameters' values. A generic plan can use a partial index only when the query states the
index's predicate itself, so the open-orders reads spell the open statuses as literals. With
sequential scans ruled out, the plan shows which index the statement can use.
"""
import re

from django.db import connection

from apps.risk.services import exposure_params, exposure_sql
from apps.trading.models import OPEN_STATUSES
from apps.trading.services import _entry_state_sql

PARTIAL_INDEX = "order_user_contract_open"


def generic_plan(sql: str, params: dict) -> str:
    """EXPLAIN of `sql` (psycopg's %(name)s placeholders) prepared and run on its generic plan."""
    names: list[str] = []

    def number(match):
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("PREPARE entry_plan_probe AS " + re.sub(r"%\((\w+)\)s", number, sql))
        cursor.execute(f"EXPLAIN EXECUTE entry_plan_probe({', '.join(['%s'] * len(names))})",
                       [params[name] for name in names])
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE entry_plan_probe")
    return plan


def test_entry_state_reads_open_orders_through_the_partial_index(alice, btcusdt):
    params = {**exposure_params(users=[alice]), "contract": btcusdt.pk, "exposed": [alice.pk]}
    assert PARTIAL_INDEX in generic_plan(_entry_state_sql(), params)


def test_exposure_reads_open_orders_through_the_partial_index(alice, btcusdt):
    assert PARTIAL_INDEX in generic_plan(exposure_sql(), exposure_params(users=[alice]))


def test_a_status_parameter_would_lose_the_partial_index(alice, btcusdt):
    # Why the literals: the same read with the statuses as a parameter cannot use the index.
    literal = exposure_sql()
    parameter = re.sub(r"o\.status IN \([^)]*\)", "o.status = ANY(%(statuses)s::text[])", literal)
    assert parameter != literal
    params = {**exposure_params(users=[alice]), "statuses": [str(s) for s in OPEN_STATUSES]}
    assert PARTIAL_INDEX not in generic_plan(parameter, params)
