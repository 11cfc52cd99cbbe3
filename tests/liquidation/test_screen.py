"""The NumPy screen against the per-position loop and the exact Decimal judgement."""
from decimal import Decimal

import numpy as np
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.liquidation.models import MarginLevel
from apps.liquidation.screen import ScreenBook
from apps.liquidation.selectors import margin_status, margin_statuses

D = Decimal


def test_screen_flags_exactly_the_scopes_at_or_below_the_ratio(funded, trade, mark, btcusdt, usdt):
    alice = funded("alice", "3000")  # cross long 1 @ 50,000, wallet 2,990
    bob = funded("bob")  # cross short 1
    carol = funded("carol", "10000", leverage=10, isolated=True)  # isolated short 1 @ 50,000, margin 5,000
    dave = funded("dave")
    mark("50000")
    trade(alice, bob, "BUY", "1", "50000")
    trade(dave, carol, "BUY", "1", "50000")
    book = ScreenBook.load()
    assert book.positions == 4
    for price, cross, isolated in [
        ("50000", [], []),
        ("47100", [(alice.pk, usdt.pk)], []),  # alice 90 / 188.4
        ("54900", [], [(carol.pk, btcusdt.pk)]),  # carol 100 / 224.5
    ]:
        mark(price)
        marks = {btcusdt.pk: float(price)}
        fast, slow = book.screen(marks), book.screen_loop(marks)
        assert (fast.cross, fast.isolated) == (cross, isolated) == (slow.cross, slow.isolated)
        exact = [s for u in (alice, bob, carol, dave) for s in margin_statuses(user=u)
                 if s.level == MarginLevel.LIQUIDATION]
        assert len(exact) == len(cross) + len(isolated)
    # margin-call screening at 150%: alice at 47,200 is DANGER (1.006)
    mark("47200")
    assert book.screen({btcusdt.pk: 47200.0}, ratio=1.5).cross == [(alice.pk, usdt.pk)]
    assert margin_status(user=alice).level == MarginLevel.DANGER


def test_the_screen_loads_positions_wallets_and_contracts_in_two_statements(funded, trade, mark, btcusdt, usdt):
    alice, bob = funded("alice", "3000"), funded("bob")
    mark("50000")
    trade(alice, bob, "BUY", "1", "50000")
    ScreenBook.load()  # the tiers are cached per process
    with CaptureQueriesContext(connection) as queries:
        book = ScreenBook.load()
    assert len(queries) == 2
    with CaptureQueriesContext(connection) as queries:
        marks = book.marks()  # the contracts loaded with the book (the mark: Redis, else its sample)
    assert marks == {btcusdt.pk: 50000.0}
    assert not [q for q in queries.captured_queries if "contracts_contract" in q["sql"]]
    assert sorted(zip(book.group_user.tolist(), book.group_wallet.tolist())) == [(alice.pk, 2990.0), (bob.pk, 99980.0)]
    assert [c.symbol for c in book.contracts] == ["BTCUSDT"]


def test_synthetic_book_vectorized_equals_loop():
    rng = np.random.default_rng(3)
    n = 5000
    tiers = [(50_000.0, 0.004, 0.0), (250_000.0, 0.005, 50.0), (3_000_000.0, 0.01, 1300.0)]
    contracts = [(1, 1.0, tiers), (2, 1.0, tiers[:2])]
    contract_id = rng.integers(1, 3, n)
    entry = np.where(contract_id == 1, 50_000.0, 3_000.0) * rng.uniform(0.9, 1.1, n)
    size = rng.choice([-1, 1], n) * rng.uniform(0.01, 5, n) * np.where(contract_id == 1, 1, 15)
    isolated = rng.random(n) < 0.3
    user = rng.integers(1, 1500, n)
    book = ScreenBook.from_arrays(contracts=contracts, contract_id=contract_id, user_id=user, size=size, entry=entry,
                                  isolated=isolated, isolated_margin=np.abs(size * entry) / 20,
                                  asset_id=np.ones(n, np.int64),
                                  wallets={(int(u), 1): float(rng.uniform(0, 20_000)) for u in set(user.tolist())})
    marks = {1: 47_000.0, 2: 3_150.0}
    fast, slow = book.screen(marks), book.screen_loop(marks)
    assert fast.count > 0 and sorted(fast.cross) == sorted(slow.cross) and sorted(fast.isolated) == \
        sorted(slow.isolated)
