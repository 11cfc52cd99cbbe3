"""Fixtures for the Django side of market data (the engine tests need none of these)."""
from decimal import Decimal

import pytest

from apps.contracts.models import ContractStatus, ContractType
from apps.contracts.services import contract_create, tiers_from_brackets
from apps.ledger.models import Asset
from apps.ops.demo import ETH_BRACKETS
from exchange.redis import get_redis


@pytest.fixture
def clean_redis():
    """The test Redis without market-data keys, before and after the test."""

    def wipe():
        redis = get_redis()
        keys = [k for pattern in ("md:*", "ops:heartbeat:pricefeed*") for k in redis.scan_iter(match=pattern)]
        if keys:
            redis.delete(*keys)

    wipe()
    yield get_redis()
    wipe()


@pytest.fixture
def ethusdt(usdt):
    eth = Asset.objects.create(code="ETH", name="Ether", precision=8)
    return contract_create(
        tiers=tiers_from_brackets(ETH_BRACKETS),
        symbol="ETHUSDT",
        contract_type=ContractType.PERPETUAL,
        status=ContractStatus.TRADING,
        base_asset=eth,
        quote_asset=usdt,
        settle_asset=usdt,
        tick_size=Decimal("0.01"),
        price_precision=2,
    )
