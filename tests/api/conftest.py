"""Fixtures for the signed client API tests: funded users with API keys and a signing client."""
import hashlib
import hmac
import time
import uuid
from decimal import Decimal
from urllib.parse import urlencode

import pytest

from apps.accounts.selectors import api_key_cache_clear
from apps.accounts.services import api_key_create
from apps.ledger.services import wallet_deposit
from exchange.redis import get_redis


@pytest.fixture(autouse=True)
def api_isolation(settings):
    """Own Redis key prefix for rate limits and replay markers; empty per-process caches."""
    prefix = f"apitest:{uuid.uuid4().hex}:"
    settings.API_REDIS_PREFIX = prefix
    api_key_cache_clear()
    yield
    api_key_cache_clear()
    redis = get_redis()
    keys = list(redis.scan_iter(match=prefix + "*", count=1000))
    if keys:
        redis.delete(*keys)


class Client:
    """Signs requests the way Binance client libraries do (python-binance, binance-connector)."""

    def __init__(self, django_client, api_key, secret):
        self.http = django_client
        self.api_key = api_key
        self.secret = secret

    def _signed(self, params: dict) -> str:
        params = {k: v for k, v in params.items() if v is not None}
        params.setdefault("timestamp", int(time.time() * 1000))
        query = urlencode(params)
        return query + "&signature=" + hmac.new(self.secret.encode(), query.encode(), hashlib.sha256).hexdigest()

    def call(self, method: str, path: str, **params):
        """Everything in the query string with an empty body (binance-connector style)."""
        return getattr(self.http, method.lower())(f"{path}?{self._signed(params)}",
                                                  headers={"X-MBX-APIKEY": self.api_key.key})

    def form(self, method: str, path: str, **params):
        """Form-encoded body (python-binance style for POST/PUT/DELETE)."""
        return getattr(self.http, method.lower())(path, data=self._signed(params),
                                                  content_type="application/x-www-form-urlencoded",
                                                  headers={"X-MBX-APIKEY": self.api_key.key})


@pytest.fixture
def api_user(make_user, usdt, btcusdt, client):
    """A user with a wallet of `amount` USDT and an API key; returns (user, Client)."""

    def make(name: str, amount: Decimal = Decimal("100000"), *, can_trade: bool = True):
        user = make_user(name)
        if amount:
            wallet_deposit(user=user, asset=usdt, amount=amount)
        api_key, secret = api_key_create(user=user, label="test", can_trade=can_trade, ip_allowlist=())
        return user, Client(client, api_key, secret)

    return make
