"""Fixtures of the access tests: isolated Redis keys, API keys, a signing client."""
import hashlib
import hmac
import time
import uuid
from urllib.parse import urlencode

import pytest

from apps.accounts.selectors import api_key_cache_clear
from apps.accounts.services import api_key_create
from exchange.redis import get_redis


@pytest.fixture(autouse=True)
def access_isolation(settings):
    """Each test gets its own Redis key prefix and an empty in-process key cache."""
    settings.ROOT_URLCONF = "tests.accounts.urls"
    prefix = f"acctest:{uuid.uuid4().hex}:"
    settings.API_REDIS_PREFIX = prefix
    api_key_cache_clear()
    yield
    api_key_cache_clear()
    redis = get_redis()
    keys = list(redis.scan_iter(match=prefix + "*", count=1000))
    if keys:
        redis.delete(*keys)


@pytest.fixture
def make_key(db):
    def make(user, *, can_trade=True, ip_allowlist=(), label="test"):
        api_key, secret = api_key_create(user=user, label=label, can_trade=can_trade, ip_allowlist=ip_allowlist)
        return api_key, secret

    return make


def sign(secret: str, payload: str) -> str:
    """The way python-binance / binance-connector sign: HMAC-SHA256 hex over the sent string."""
    return hmac.new(secret.encode("utf-8"), payload.encode("utf-8"), hashlib.sha256).hexdigest()


def now_ms() -> int:
    return int(time.time() * 1000)


class Signer:
    """Builds signed requests the way Binance client libraries do."""

    def __init__(self, client, api_key, secret):
        self.client = client
        self.api_key = api_key
        self.secret = secret

    @property
    def headers(self):
        return {"X-MBX-APIKEY": self.api_key.key}

    def query(self, method: str, path: str, params: dict, **extra):
        """binance-connector style: everything in the query string, empty body."""
        params = {**params}
        params.setdefault("timestamp", now_ms())
        query = urlencode(params)
        query += "&signature=" + sign(self.secret, query)
        call = getattr(self.client, method.lower())
        return call(f"{path}?{query}", headers=self.headers, **extra)

    def body(self, method: str, path: str, params: dict, **extra):
        """python-binance style for POST: everything form-encoded in the body, signature last."""
        params = {**params}
        params.setdefault("timestamp", now_ms())
        body = urlencode(params)
        body += "&signature=" + sign(self.secret, body)
        call = getattr(self.client, method.lower())
        return call(path, data=body, content_type="application/x-www-form-urlencoded", headers=self.headers, **extra)


@pytest.fixture
def signer_for(client):
    def make(api_key, secret):
        return Signer(client, api_key, secret)

    return make
