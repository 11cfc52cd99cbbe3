"""Group commit of order entry: threads placing orders at once share transactions, each gets
its own answer only after its order is committed, and a refusal touches only its own order."""
import contextlib
import threading
from decimal import Decimal

import pytest
from django.db import connection, connections

from apps.ops.invariants import run_all_invariants
from apps.trading import group_commit
from apps.trading.group_commit import GroupCommit
from apps.trading.models import Order, OrderCommand
from apps.trading.services import OrderRequest
from exchange.errors import ExchangeError

D = Decimal
THREADS, EACH = 8, 6


@pytest.fixture
def groups(monkeypatch):
    """The sizes of the groups written, and whether each writer saw its group committed."""
    sizes = []
    real = group_commit.orders_place_many

    def spy(requests):
        results = real(requests)
        sizes.append(len(requests))
        return results

    monkeypatch.setattr(group_commit, "orders_place_many", spy)
    return sizes


@pytest.mark.django_db(transaction=True)
def test_concurrent_orders_share_transactions_and_each_gets_its_own_answer(funded, btcusdt, groups):
    entry = GroupCommit()
    users = [funded(f"u{i}") for i in range(THREADS - 1)] + [funded("poor", D("10"))]
    start = threading.Barrier(THREADS)
    answers: dict[int, list] = {}

    def client(n: int):
        try:
            start.wait()
            answers[n] = []
            for i in range(EACH):
                request = OrderRequest(user=users[n], contract=btcusdt, params={
                    "side": "BUY" if i % 2 else "SELL", "quantity": D("0.01"),
                    "price": D(49000 if i % 2 else 51000), "client_order_id": f"c{n}-{i}"})
                try:
                    order = entry.place(request)
                except ExchangeError as exc:
                    answers[n].append(exc.code)
                    continue
                # Acknowledged only once committed: another connection sees it.
                answers[n].append(order.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)

    assert answers[THREADS - 1] == [-2019] * EACH  # 10 USDT holds no order of 0.01 × 50,000
    placed = [pk for n in range(THREADS - 1) for pk in answers[n]]
    assert len(placed) == (THREADS - 1) * EACH and all(isinstance(pk, int) for pk in placed)
    assert sorted(Order.objects.values_list("pk", flat=True)) == sorted(placed)
    assert OrderCommand.objects.count() == len(placed)
    for n in range(THREADS - 1):  # each client's orders reached the journal in the order it sent them
        assert answers[n] == sorted(answers[n])
        assert list(Order.objects.filter(user=users[n]).order_by("pk").values_list("client_order_id", flat=True)) \
            == [f"c{n}-{i}" for i in range(EACH)]
    assert sum(groups) == THREADS * EACH and max(groups) > 1  # some orders did share a transaction
    assert not run_all_invariants()
    connection.close()


def test_inside_a_transaction_an_order_is_placed_alone_in_it(funded, btcusdt, groups):
    alice, entry = funded("alice"), GroupCommit()
    order = entry.place(OrderRequest(user=alice, contract=btcusdt, params={
        "side": "BUY", "quantity": D("0.01"), "price": D("50000")}))
    with pytest.raises(ExchangeError) as refused:
        entry.place(OrderRequest(user=alice, contract=btcusdt, params={
            "side": "BUY", "quantity": D("100"), "price": D("50000")}))
    assert order.pk and refused.value.code == -2019
    # Not through the queue (no writer's role taken): the test's transaction holds them.
    assert groups == [1, 1] and not entry._writing and not entry._queue


class _Recorder:
    """Stands in for orders_place_many: records each group's requests, answers each with itself."""

    def __init__(self):
        self.groups: list[list] = []

    def __call__(self, requests):
        self.groups.append(list(requests))
        return list(requests)


@pytest.fixture
def recorder(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(group_commit, "orders_place_many", recorder)
    monkeypatch.setattr(group_commit, "order_outcome", lambda result: result)
    return recorder


def _until(predicate, what: str) -> None:
    event = threading.Event()
    for _ in range(1000):
        if predicate():
            return
        event.wait(0.01)
    raise AssertionError(f"never: {what}")


def test_a_writer_waits_for_an_order_already_on_its_way_and_takes_it_into_its_group(recorder):
    entry = GroupCommit(linger=60)  # far longer than the test: it must end by the arrival, not the clock
    inside, go, answers = threading.Event(), threading.Event(), {}

    def later_request():  # authenticating and parsing while the writer starts its group
        with entry.arriving():
            inside.set()
            go.wait(10)
            answers["later"] = entry.place("later")

    def first_request():
        with entry.arriving():
            answers["first"] = entry.place("first")

    later = threading.Thread(target=later_request)
    later.start()
    inside.wait(10)
    first = threading.Thread(target=first_request)
    first.start()
    _until(lambda: entry._writing and len(entry._queue) == 1, "the first order's writer waiting")
    go.set()
    for thread in (first, later):
        thread.join(10)
    assert answers == {"first": "first", "later": "later"}
    assert recorder.groups == [["first", "later"]]


def _placed_beside(entry: GroupCommit, other) -> dict:
    """`entry.place("mine")` while another thread is inside `entry.arriving()`; once the writer of
    "mine" waits for that thread, it runs `other(placed)` (`placed`: set when "mine" is answered)
    still inside the context. The answers, once both threads are done (a writer still waiting
    after 10 s leaves them empty)."""
    inside, go, placed, answers = threading.Event(), threading.Event(), threading.Event(), {}

    def arriving_request():
        with contextlib.suppress(ValueError), entry.arriving():
            inside.set()
            go.wait(10)
            other(placed)

    def placing():
        answers["mine"] = entry.place("mine")
        placed.set()

    threads = [threading.Thread(target=arriving_request), threading.Thread(target=placing)]
    threads[0].start()
    inside.wait(10)
    threads[1].start()
    _until(lambda: entry._writing and len(entry._queue) == 1, "the writer waiting")
    go.set()
    for thread in threads:
        thread.join(10)
    return answers


def test_a_request_refused_before_it_reaches_entry_stops_the_wait(recorder):
    entry = GroupCommit(linger=60)

    def refused(placed):
        raise ValueError("bad parameter")

    assert _placed_beside(entry, refused) == {"mine": "mine"} and recorder.groups == [["mine"]]


def test_an_order_handed_to_the_matcher_stops_the_wait(recorder):
    """`leave`: the request's order goes elsewhere (apps.trading.handover). The writer stops
    waiting for it at once, while the request is still inside its context (waiting for the
    matcher's answer), and the context's exit does not count it out a second time."""
    entry = GroupCommit(linger=60)
    answered_while_inside = []

    def handed(placed):
        entry.leave()
        answered_while_inside.append(placed.wait(10))

    assert _placed_beside(entry, handed) == {"mine": "mine"} and recorder.groups == [["mine"]]
    assert answered_while_inside == [True] and entry._arriving == 0


def test_with_nothing_on_its_way_a_writer_starts_at_once(recorder):
    entry = GroupCommit(linger=60)
    done = threading.Thread(target=lambda: entry.place("alone"))
    done.start()
    done.join(10)
    assert not done.is_alive() and recorder.groups == [["alone"]]
