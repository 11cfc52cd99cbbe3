"""Accepting several orders in one transaction (`orders_place_many`): the same rules as one at a
time, each order judged after what the orders before it took, refusals leaving nothing behind."""
import random
from decimal import Decimal

import pytest
from django.db import transaction

from apps.ops.invariants import run_all_invariants
from apps.positions.models import Position
from apps.trading.models import OPEN_STATUSES, CommandKind, Order, OrderCommand, OrderStatus
from apps.trading.services import OrderRequest, order_place, orders_place_many
from exchange.errors import ExchangeError

from .test_matching import held_of, wallet_of
from .test_order_entry import mark, open_long

D = Decimal


def req(user, contract, side="BUY", quantity="0.1", price="50000", **params):
    return OrderRequest(user=user, contract=contract, params={
        "side": side, "quantity": D(quantity), **({"price": D(price)} if price is not None else {}), **params})


def codes(results):
    return [r.code if isinstance(r, ExchangeError) else "ok" for r in results]


@pytest.fixture
def groups(monkeypatch):
    """The number of orders each transaction of `orders_place_many` judged (a write that failed
    and was placed again one order at a time shows as the group, then ones)."""
    from apps.trading import services

    sizes, real = [], services._accept

    def spy(group, results):
        sizes.append(len(group))
        return real(group, results)

    monkeypatch.setattr(services, "_accept", spy)
    return sizes


def test_several_users_in_one_call_hold_margin_and_journal_in_request_order(funded, btcusdt, groups):
    alice, bob = funded("alice"), funded("bob")
    results = orders_place_many([req(alice, btcusdt), req(bob, btcusdt, "SELL", "0.2", "51000"),
                                 req(alice, btcusdt, "SELL", "0.3", "52000")])
    assert codes(results) == ["ok", "ok", "ok"]
    assert [o.pk for o in results] == sorted(o.pk for o in results)
    journal = list(OrderCommand.objects.order_by("seq").values_list("order_id", "kind"))
    assert journal == [(o.pk, CommandKind.NEW) for o in results]
    # hold = qty × price × (1/20 + 0.0004): 0.1 × 50,000 × 0.0504 = 252, 0.3 × 52,000 × 0.0504 = 786.24
    assert [o.margin_held for o in results] == [D("252"), D("0.2") * D("51000") * D("0.0504"), D("786.24")]
    assert held_of(alice) == D("1038.24") and wallet_of(alice) == D("100000") - D("1038.24")
    assert all(o.status == OrderStatus.PENDING_NEW for o in Order.objects.all())
    assert groups == [3]  # one transaction: written as a group, not placed again one by one
    assert Position.objects.filter(contract=btcusdt).count() == 2  # created with the orders, one per user
    assert not run_all_invariants()


def test_each_order_is_judged_after_what_the_ones_before_it_took(funded, btcusdt):
    alice = funded("alice", D("1000"))
    # 0.15 × 50,000 × 0.0504 = 378 each: two fit in 1,000, the third does not; a smaller fourth does.
    results = orders_place_many([req(alice, btcusdt, quantity="0.15")] * 3 + [req(alice, btcusdt, quantity="0.04")])
    assert codes(results) == ["ok", "ok", -2019, "ok"]
    assert Order.objects.count() == 3 and held_of(alice) == D("756") + D("100.8")


def test_open_order_limit_and_reduce_only_count_the_earlier_orders_of_the_call(funded, btcusdt):
    alice, bob = funded("alice"), funded("bob")
    open_long(btcusdt, alice, bob, qty="0.1")
    btcusdt.max_open_orders = 3
    btcusdt.save()
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.01"), price=D("40000"))
    results = orders_place_many([
        req(alice, btcusdt, "SELL", "0.06", "60000", reduce_only=True),
        req(alice, btcusdt, "SELL", "0.06", "60000", reduce_only=True),  # 0.06 + 0.06 > the 0.1 long
        req(alice, btcusdt, "SELL", "0.04", "60000", reduce_only=True),
        req(alice, btcusdt, "BUY", "0.01", "40000"),  # the fourth open order: over the limit of 3
    ])
    assert codes(results) == ["ok", -2022, "ok", -2025]
    assert Order.objects.filter(user=alice, reduce_only=True).count() == 2


def test_a_client_order_id_twice_in_a_call_or_already_stored(funded, btcusdt, groups):
    alice, bob = funded("alice"), funded("bob")
    order_place(user=alice, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"),
                client_order_id="taken")
    results = orders_place_many([
        req(bob, btcusdt, client_order_id="mine"),
        req(bob, btcusdt, client_order_id="mine"),  # refused before anything is written
        req(alice, btcusdt, client_order_id="taken"),  # refused by the unique key: the call retries one by one
        req(alice, btcusdt, client_order_id="free"),
    ])
    assert codes(results) == ["ok", -4116, -4116, "ok"]
    assert groups == [1, 4, 1, 1, 1, 1]  # (the first stored "taken") the group's write fails: placed again one by one
    assert sorted(Order.objects.values_list("client_order_id", flat=True)) == ["free", "mine", "taken"]
    assert not run_all_invariants()


def test_orders_of_several_contracts_and_refusals_before_the_locks(funded, btcusdt, ethusdt):
    alice = funded("alice")
    mark(btcusdt, "50000")
    results = orders_place_many([
        req(alice, ethusdt, "BUY", "1", "3000"),
        req(alice, btcusdt, "BUY", "0.1", "60000"),  # outside the band around the mark
        req(alice, btcusdt, "BUY", "0.1", "50000.05"),  # off the tick grid
        req(alice, btcusdt, "SELL", "0.1", None, order_type="STOP_MARKET", stop_price=D("49000")),
        req(alice, btcusdt, "BUY", "0.1", "50000"),
    ])
    assert codes(results) == ["ok", -4016, -1111, "ok", "ok"]
    stop, live = results[3], results[4]
    assert stop.status == OrderStatus.NEW and live.status == OrderStatus.PENDING_NEW
    assert list(OrderCommand.objects.values_list("order_id", flat=True).order_by("seq")) == [results[0].pk, live.pk]
    assert Position.objects.filter(user=alice).count() == 2  # created under the locks, one per contract


def test_a_call_decides_as_the_same_orders_placed_one_at_a_time(funded, btcusdt, groups):
    users = [funded(f"u{i}", D("1500")) for i in range(4)]
    rng = random.Random(7)
    btcusdt.max_open_orders = 6
    btcusdt.save()
    requests = []
    for _ in range(40):
        side = rng.choice(["BUY", "SELL"])
        requests.append(req(rng.choice(users), btcusdt, side, str(D(rng.randint(1, 30)) / 100),
                            str(50000 + rng.randint(-40, 40) * 10), reduce_only=rng.random() < 0.15))

    def one_at_a_time():
        out = []
        for r in requests:
            try:
                out.append(order_place(user=r.user, contract=r.contract, **r.params))
            except ExchangeError as exc:
                out.append(exc)
        return out

    with transaction.atomic():
        single = one_at_a_time()
        expected = [(c, None if c != "ok" else (o.quantity, o.margin_held)) for c, o in zip(codes(single), single)]
        transaction.set_rollback(True)
    groups.clear()
    many = orders_place_many(requests)
    assert groups == [40]
    assert [(c, None if c != "ok" else (o.quantity, o.margin_held)) for c, o in zip(codes(many), many)] == expected
    assert {"ok", -2019, -2025} <= set(codes(many))  # the run exercised margin and the open-order limit
    assert not run_all_invariants()


def test_a_refused_order_of_a_committed_group_leaves_nothing_behind(funded, make_user, btcusdt):
    from apps.ledger.models import Account

    alice, newcomer = funded("alice"), make_user("newcomer")  # no wallet, no account at all
    results = orders_place_many([req(newcomer, btcusdt), req(alice, btcusdt)])
    assert codes(results) == [-2019, "ok"]
    assert not Account.objects.filter(user=newcomer).exists()
    assert not Order.objects.filter(user=newcomer).exists()
    assert not Position.objects.filter(user=newcomer).exists()  # not even an empty position row
    assert Position.objects.filter(user=alice, contract=btcusdt, size=0).exists()  # created with its order


def test_the_entry_state_reads_what_the_exposure_query_and_the_open_orders_say(funded, btcusdt, ethusdt):
    """`_entry_states` reads the open orders once: its counts and sums on the contract are those
    of the orders, and an exposed user's exposure rows are `exposure_sql`'s own."""
    from django.db import connection

    from apps.risk.services import exposure_params, exposure_sql
    from apps.trading.services import _entry_states

    alice, bob = funded("alice"), funded("bob")
    mark(btcusdt, "50000")
    open_long(btcusdt, alice, bob, qty="0.5")  # alice long 0.5: she may place reduce-only sells
    for user, contract, side, qty, price, extra in [
        (alice, btcusdt, "BUY", "0.1", "49000", {}), (alice, btcusdt, "BUY", "0.2", "48000", {}),
        (alice, btcusdt, "SELL", "0.3", "52000", {}), (alice, btcusdt, "SELL", "0.2", "53000", {"reduce_only": True}),
        (alice, btcusdt, "SELL", "0.1", None, {"order_type": "STOP_MARKET", "stop_price": D("45000")}),
        (alice, ethusdt, "BUY", "1", "3000", {}), (bob, btcusdt, "SELL", "0.1", "51000", {}),
    ]:
        order_place(user=user, contract=contract, side=side, quantity=D(qty),
                    **({"price": D(price)} if price else {}), **extra)
    with transaction.atomic():
        states = _entry_states(users=[alice, bob], contract=btcusdt, exposure_users=[alice])
    with connection.cursor() as cursor:
        cursor.execute(exposure_sql(), exposure_params(users=[alice]))
        expected = sorted(row[:7] for row in cursor.fetchall())
    assert sorted(states[alice.pk]["exposure"]) == expected and states[bob.pk]["exposure"] is None
    for user in (alice, bob):
        open_orders = Order.objects.filter(user=user, contract=btcusdt, status__in=OPEN_STATUSES)
        state = states[user.pk]
        assert state["count"] == open_orders.count()
        for side, notional, reducing in (("BUY", "buy_notional", "reducing_buys"),
                                         ("SELL", "sell_notional", "reducing_sells")):
            mine = [o for o in open_orders if o.side == side]
            assert state[notional] == sum(
                ((o.quantity - o.executed_qty) * (o.price or o.protection_price or o.stop_price or 0)
                 for o in mine if not (o.reduce_only or o.close_position)), D(0))
            assert state[reducing] == sum(
                (o.quantity - o.executed_qty for o in mine if o.reduce_only or o.close_position), D(0))
    assert states[alice.pk]["reducing_sells"] == D("0.2") and states[alice.pk]["count"] == 5
