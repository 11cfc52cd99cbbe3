"""Fixtures shared by every app's tests: assets, users, system accounts, a contract."""
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model

from apps.contracts.models import ContractStatus, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ledger.models import AccountKind, Asset
from apps.ledger.services import account_get_or_create, accounts_forget, system_account
from apps.marketdata.services import price_cache_clear
from apps.ops.demo import BTC_BRACKETS, ETH_BRACKETS
from apps.positions.tiers import tiers_forget
from apps.trading.handover import handover_forget
from exchange.params import contracts_forget


@pytest.fixture(autouse=True)
def _process_caches():
    """Per-process caches (contracts by symbol, margin tiers) start empty in every test, and so do
    the prices cached in Redis: a mark left by an earlier test, session or benchmark on the test
    Redis database would price a new contract that reuses the id's symbol; and so do the order
    handover's queues and live marks (a matcher killed by an earlier test leaves its mark for
    a few seconds: orders for a contract with that id would wait for it)."""
    price_cache_clear()
    handover_forget()
    contracts_forget()
    tiers_forget()
    accounts_forget()
    yield
    contracts_forget()
    tiers_forget()
    accounts_forget()


@pytest.fixture
def usdt(db):
    return Asset.objects.create(code="USDT", name="Tether USD", precision=8)


@pytest.fixture
def btc(db):
    return Asset.objects.create(code="BTC", name="Bitcoin", precision=8)


@pytest.fixture
def make_user(db):
    def make(username: str, **extra):
        return get_user_model().objects.create_user(username=username, password="pw-" + username, **extra)

    return make


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def wallet(db):
    def get(user):
        return account_get_or_create(kind=AccountKind.WALLET, user=user)

    return get


@pytest.fixture
def external(db):
    return system_account(AccountKind.EXTERNAL)


@pytest.fixture
def btcusdt(usdt, btc):
    return contract_create(
        tiers=tiers_from_brackets(BTC_BRACKETS),
        symbol="BTCUSDT",
        contract_type=ContractType.PERPETUAL,
        status=ContractStatus.TRADING,
        base_asset=btc,
        quote_asset=usdt,
        settle_asset=usdt,
    )


@pytest.fixture
def eth(db):
    return Asset.objects.create(code="ETH", name="Ether", precision=8)


@pytest.fixture
def ethusdt(usdt, eth):
    return contract_create(tiers=tiers_from_brackets(ETH_BRACKETS), symbol="ETHUSDT",
                           contract_type=ContractType.PERPETUAL, status=ContractStatus.TRADING,
                           base_asset=eth, quote_asset=usdt, settle_asset=usdt)


@pytest.fixture
def D():
    return Decimal
