"""One Redis client per process (the doorbell and fan-out; never the only copy of data),
and the names of the pub/sub channels.

Pub/sub ignores the database number: every environment sharing one Redis server (a
running exchange, a test run, a benchmark) would receive the others' messages. So every
channel name carries this environment's database (`channel`), and publishers and
subscribers build their names through it.
"""
from functools import lru_cache

import redis
from django.conf import settings
from redis.connection import parse_url


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=5)


@lru_cache(maxsize=1)
def database() -> int:
    return int(parse_url(settings.REDIS_URL).get("db") or 0)


def channel(name: str) -> str:
    """The pub/sub channel (or pattern) `name` of this environment: `db<N>:<name>`."""
    return f"db{database()}:{name}"
