"""Fixtures for the websocket stream tests: funded users, listen keys, a clean test Redis."""
from decimal import Decimal

import pytest

from apps.accounts.services import api_key_create, listen_key_start
from apps.marketdata import consumers
from apps.ledger.services import wallet_deposit
from exchange.redis import get_redis


@pytest.fixture(autouse=True)
def _fresh_symbol_cache():
    """The consumers' per-process cache of streamable symbols starts and ends empty."""
    consumers._symbols_cache = (0.0, frozenset())
    yield
    consumers._symbols_cache = (0.0, frozenset())


@pytest.fixture
def clean_redis():
    """The test Redis without market-data, listen-key and relay keys, before and after the test."""

    def wipe():
        redis = get_redis()
        patterns = ("md:*", "acc:lk*", "ops:heartbeat:stream_relay")
        keys = [k for pattern in patterns for k in redis.scan_iter(match=pattern)]
        if keys:
            redis.delete(*keys)

    wipe()
    yield get_redis()
    wipe()


@pytest.fixture
def funded(make_user, usdt, btcusdt):
    """Users with 100,000 USDT each and an API key (a listen key is only valid while its user
    is active and holds an active API key, as a client that made it through the API does)."""

    def make(name: str, amount: Decimal = Decimal("100000")):
        user = make_user(name)
        wallet_deposit(user=user, asset=usdt, amount=amount)
        api_key_create(user=user, label="streams")
        return user

    return make


@pytest.fixture
def listen_key(clean_redis):
    """A real listen key of a user, made by the accounts service."""

    def make(user) -> str:
        return listen_key_start(user=user)

    return make
