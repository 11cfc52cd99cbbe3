"""Order entry's reads on the generic plans the web runs them on.

The web (DB_SERVER_SIDE_BINDING, as the Procfile starts it) prepares order entry's raw
statements and runs them with plan_cache_mode=force_generic_plan: planned once, without the
parameters' values. A generic plan can use a partial index only when the query states the
index's predicate itself, so the open-orders reads spell the open statuses as literals. The
account has a history (two thousand filled orders, the table analyzed) and two open orders:
reading the open ones through the partial index is then by far the cheapest plan, when the
plan can use it at all (sequential scans ruled out).
"""
import re

from decimal import Decimal

import pytest
from django.db import connection

from apps.ledger.services import wallet_deposit
from apps.risk.services import exposure_params, exposure_sql
from apps.trading.models import OPEN_STATUSES, Order, OrderStatus
from apps.trading.services import _entry_state_sql, order_place

PARTIAL_INDEX = "order_user_contract_open"


def generic_plan(sql: str, params: dict | list) -> str:
    """EXPLAIN of `sql` (psycopg's %(name)s placeholders with a dict, %s with a list) prepared and
    run on its generic plan."""
    if isinstance(params, dict):
        names: list[str] = []

        def number(match):
            if match.group(1) not in names:
                names.append(match.group(1))
            return f"${names.index(match.group(1)) + 1}"

        sql, params = re.sub(r"%\((\w+)\)s", number, sql), [params[name] for name in names]
    else:
        counter = iter(range(1, len(params) + 1))
        sql = re.sub(r"%s", lambda _: f"${next(counter)}", sql)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("PREPARE entry_plan_probe AS " + sql)
        cursor.execute(f"EXPLAIN EXECUTE entry_plan_probe({', '.join(['%s'] * len(params))})", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE entry_plan_probe")
    return plan


@pytest.fixture
def history(alice, usdt, btcusdt):
    """Alice: two open orders and two thousand filled ones on BTCUSDT, the orders table analyzed."""
    wallet_deposit(user=alice, asset=usdt, amount=Decimal("1000000"))
    for price in ("40000", "41000"):
        order_place(user=alice, contract=btcusdt, side="BUY", quantity=Decimal("0.01"), price=Decimal(price))
    template = Order.objects.filter(user=alice).first()
    fields = [f.attname for f in Order._meta.concrete_fields if not f.primary_key]
    Order.objects.bulk_create([
        Order(**{**{name: getattr(template, name) for name in fields}, "client_order_id": f"filled{i}",
                 "status": OrderStatus.FILLED, "executed_qty": template.quantity, "margin_held": 0})
        for i in range(2000)])
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Order._meta.db_table}")


def test_entry_state_reads_open_orders_through_the_partial_index(history, alice, btcusdt):
    params = {**exposure_params(users=[alice]), "contract": btcusdt.pk, "exposed": [alice.pk]}
    assert PARTIAL_INDEX in generic_plan(_entry_state_sql(), params)


def test_exposure_reads_open_orders_through_the_partial_index(history, alice):
    assert PARTIAL_INDEX in generic_plan(exposure_sql(), exposure_params(users=[alice]))


def test_a_status_parameter_would_lose_the_partial_index(history, alice):
    # Why the literals: the same read with the statuses as a parameter cannot use the index.
    literal = exposure_sql()
    parameter = re.sub(r"o\.status IN \([^)]*\)", "o.status = ANY(%(statuses)s::text[])", literal)
    assert parameter != literal
    params = {**exposure_params(users=[alice]), "statuses": [str(s) for s in OPEN_STATUSES]}
    assert PARTIAL_INDEX not in generic_plan(parameter, params)
