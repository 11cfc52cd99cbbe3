"""Fixtures for funding: users with funded wallets, open positions written directly
(the settlement reads positions, it does not trade), marks and premium samples."""
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from apps.contracts.models import ContractStatus, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ledger import services as ledger_services
from apps.ledger.models import AccountKind, Balance
from apps.ledger.services import account_get_or_create, wallet_deposit
from apps.marketdata.models import PriceSample
from apps.ops.demo import BTC_BRACKETS
from apps.positions.models import MarginType, Position
from apps.settlement.models import PremiumSample
from exchange.redis import get_redis

D = Decimal
T8 = datetime(2026, 11, 25, 8, 0, tzinfo=timezone.utc)  # a funding time (8 h grid)


@pytest.fixture(autouse=True)
def _no_cached_rates():
    """Predicted rates cached by another test or process must not leak in."""
    def wipe():
        redis = get_redis()
        keys = list(redis.scan_iter(match="funding:*")) + list(redis.scan_iter(match="md:*"))
        if keys:
            redis.delete(*keys)

    wipe()
    yield
    wipe()


@pytest.fixture(params=["row locks", "table lock"])
def lock_path(request, monkeypatch):
    """Both ways a settlement locks balances: each row (a small posting), and the whole table
    (a large one: `TABLE_LOCK_FROM` lowered to 0)."""
    if request.param == "table lock":
        monkeypatch.setattr(ledger_services, "TABLE_LOCK_FROM", 0)
    return request.param


@pytest.fixture
def funded(make_user):
    """A user with a funded wallet: funded("carol", "1000")."""
    def make(name: str, amount: str = "100000"):
        user = make_user(name)
        wallet_deposit(user=user, asset="USDT", amount=D(amount))
        return user

    return make


@pytest.fixture
def position():
    def make(user, contract, size: str, *, entry: str = "50000", isolated: bool = False):
        return Position.objects.create(
            user=user, contract=contract, size=D(size), entry_price=D(entry) if D(size) else D(0),
            margin_type=MarginType.ISOLATED if isolated else MarginType.CROSS,
        )

    return make


@pytest.fixture
def mark():
    def put(contract, price: str, at: datetime, index: str | None = None):
        index = D(index) if index is not None else D(price)
        PriceSample.objects.create(contract=contract, at=at, index_price=index, mark_price=D(price),
                                   basis=D(price) - index)

    return put


@pytest.fixture
def samples():
    """samples(contract, funding_time, [premium of slot 1, of slot 2, ...]) (None skips a slot)."""
    def put(contract, funding_time: datetime, premiums):
        start = funding_time - timedelta(hours=contract.funding_interval_hours)
        PremiumSample.objects.bulk_create([
            PremiumSample(contract=contract, funding_time=funding_time, slot=i, at=start + timedelta(seconds=5 * (i - 1)),
                          policy=contract.funding_policy, premium=D(p))
            for i, p in enumerate(premiums, start=1) if p is not None
        ])

    return put


@pytest.fixture
def balance():
    def get(account) -> Decimal:
        row = Balance.objects.filter(account=account).first()
        return row.amount if row else D(0)

    return get


@pytest.fixture
def wallet_of():
    def get(user):
        return account_get_or_create(kind=AccountKind.WALLET, user=user)

    return get


@pytest.fixture
def quarterly(btcusdt):
    return contract_create(
        tiers=tiers_from_brackets(BTC_BRACKETS), symbol="BTCUSDT_261225", contract_type=ContractType.DELIVERY,
        status=ContractStatus.TRADING, base_asset=btcusdt.base_asset, quote_asset=btcusdt.quote_asset,
        settle_asset=btcusdt.settle_asset, delivery_time=datetime(2026, 12, 25, 8, tzinfo=timezone.utc),
    )
