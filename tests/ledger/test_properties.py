"""Random sequences of deposits, withdrawals and transfers keep every invariant after each step."""
from decimal import Decimal

from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.ledger.errors import InsufficientBalance
from apps.ledger.models import AccountKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create, ledger_transfer, system_account, wallet_deposit, wallet_withdraw
from apps.ops.invariants import run_all_invariants

D = Decimal
USERS = 3
amounts = st.integers(min_value=1, max_value=10**12).map(lambda units: D(units).scaleb(-8))
operation = st.one_of(
    st.tuples(st.just("deposit"), st.integers(0, USERS - 1), st.integers(0, USERS - 1), amounts),
    st.tuples(st.just("withdraw"), st.integers(0, USERS - 1), st.integers(0, USERS - 1), amounts),
    st.tuples(st.just("transfer"), st.integers(0, USERS - 1), st.integers(0, USERS - 1), amounts),
    st.tuples(st.just("to_fund"), st.integers(0, USERS - 1), st.integers(0, USERS - 1), amounts),
)


class Rollback(Exception):
    pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=25))
def test_random_transfer_sequences_keep_invariants(ops, make_user, usdt):
    try:
        with transaction.atomic():  # each example starts from the same empty ledger
            users = [make_user(f"p{i}") for i in range(USERS)]
            wallets = [account_get_or_create(kind=AccountKind.WALLET, user=u) for u in users]
            fund = system_account(AccountKind.INSURANCE_FUND)
            expected = [D(0)] * USERS
            for kind, a, b, amount in ops:
                try:
                    if kind == "deposit":
                        wallet_deposit(user=users[a], asset=usdt, amount=amount)
                        expected[a] += amount
                    elif kind == "withdraw":
                        wallet_withdraw(user=users[a], asset=usdt, amount=amount)
                        expected[a] -= amount
                    elif kind == "transfer" and a != b:
                        ledger_transfer(source=wallets[a], destination=wallets[b], asset=usdt, amount=amount)
                        expected[a] -= amount
                        expected[b] += amount
                    elif kind == "to_fund":
                        ledger_transfer(source=wallets[a], destination=fund, asset=usdt, amount=amount)
                        expected[a] -= amount
                except InsufficientBalance:
                    assert expected[a] < amount  # refused exactly when it would overdraw
                assert run_all_invariants() == []
                for wallet, value in zip(wallets, expected):
                    assert balance_amount(account=wallet, asset_code="USDT") == value
                    assert value >= 0
            raise Rollback
    except Rollback:
        pass
