from decimal import Decimal

import pytest

from apps.ledger.services import wallet_deposit


@pytest.fixture
def funded(make_user, usdt, btcusdt):
    """Users with 100,000 USDT each."""

    def make(name: str, amount: Decimal = Decimal("100000")):
        user = make_user(name)
        wallet_deposit(user=user, asset=usdt, amount=amount)
        return user

    return make
