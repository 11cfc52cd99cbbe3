"""The matcher's fill read on a generic plan: the resting reduce-only orders without the book.

The matcher prepares its statements (DB_PREPARED_STATEMENTS=all, as the Procfile starts it) and
PostgreSQL may keep a generic plan for them. After fills, `FILL_ORDERS_SQL` reads the resting
reduce-only and close-position orders of every account that filled: through the partial index
`order_resting_reducing` that read stays as small as those orders are few, where a plan through
the contract's resting orders would read the whole book at every batch. The book here is deep
(3,000 resting orders, the table analyzed) and the plan may not scan a table sequentially.
"""
from decimal import Decimal

import pytest
from django.db import connection

from apps.ledger.services import wallet_deposit
from apps.trading.matching import FILL_ORDERS_SQL
from apps.trading.models import Order, OrderStatus
from apps.trading.services import order_place
from exchange.pgbulk import array_literal

from .test_entry_plans import generic_plan


@pytest.fixture
def deep_book(alice, bob, usdt, btcusdt):
    for user in (alice, bob):
        wallet_deposit(user=user, asset=usdt, amount=Decimal("1000000"))
    order_place(user=bob, contract=btcusdt, side="BUY", quantity=Decimal("0.01"), price=Decimal("40000"))
    template = Order.objects.get(user=bob)
    fields = [f.attname for f in Order._meta.concrete_fields if not f.primary_key]
    resting = {**{name: getattr(template, name) for name in fields}, "status": OrderStatus.NEW}
    Order.objects.bulk_create([Order(**{**resting, "client_order_id": f"rest{i}", "priority": i})
                               for i in range(1, 3001)])
    Order.objects.create(**{**resting, "user_id": alice.pk, "client_order_id": "alice-reduce", "priority": 3001,
                            "side": "SELL", "price": Decimal("60000"), "reduce_only": True, "margin_held": 0})
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Order._meta.db_table}")


def test_the_fill_read_finds_resting_reducing_orders_through_their_partial_index(deep_book, alice, bob, btcusdt):
    maker = Order.objects.filter(user=bob).first()
    params = [array_literal([maker.pk]), btcusdt.pk, array_literal(sorted([alice.pk, bob.pk]))]
    plan = generic_plan(FILL_ORDERS_SQL, params)
    assert "order_resting_reducing" in plan
    assert "order_contract_status" not in plan
    with connection.cursor() as cursor:  # and it reads what it should: the maker and Alice's reduce-only order
        cursor.execute(FILL_ORDERS_SQL, params)
        assert sorted(row[0] for row in cursor.fetchall()) == sorted(
            [maker.pk, Order.objects.get(client_order_id="alice-reduce").pk])
