"""Concurrent transfers on the same accounts from several threads: exact and deadlock-free."""
import random
import threading
from decimal import Decimal

import pytest
from django.db import connection

from apps.ledger.errors import InsufficientBalance
from apps.ledger.selectors import balance_amount
from apps.ledger.services import ledger_transfer, wallet_deposit
from apps.ops.invariants import run_all_invariants

D = Decimal
THREADS = 6
TRANSFERS_PER_THREAD = 40


@pytest.mark.django_db(transaction=True)
def test_concurrent_transfers_are_exact_and_deadlock_free(make_user, usdt, wallet):
    users = [make_user(f"user{i}") for i in range(4)]
    accounts = [wallet(user) for user in users]
    for user in users:
        wallet_deposit(user=user, asset=usdt, amount=D("50"))
    expected = {account.pk: D("50") for account in accounts}
    lock = threading.Lock()
    errors: list[BaseException] = []
    refused = [0]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(TRANSFERS_PER_THREAD):
                source, destination = rng.sample(accounts, 2)  # both orders, so lock order matters
                amount = D(rng.randint(1, 2000)) / 100
                try:
                    ledger_transfer(source=source, destination=destination, asset=usdt, amount=amount)
                except InsufficientBalance:
                    with lock:
                        refused[0] += 1
                    continue
                with lock:
                    expected[source.pk] -= amount
                    expected[destination.pk] += amount
        except BaseException as exc:  # surfaced below; a deadlock would land here
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a transfer thread hung"
    assert errors == []
    for account in accounts:
        assert balance_amount(account=account, asset_code="USDT") == expected[account.pk]
    assert sum(expected.values()) == D("200")
    assert run_all_invariants() == []
