"""Order entry handed to the contract's matcher: a new order from the API is placed by the
process that holds the contract's lease, when one is serving, instead of in the web process.

Why: a web worker places the orders that reach it together in one transaction
(`group_commit`), but with several workers and clients that wait for each answer those groups
stay small (about 2 orders at 8 clients), and a group's fixed cost - a dozen round trips,
each ~0.1 ms of client CPU on this machine - is most of what an order costs the web. The
matcher takes every worker's orders for its contracts at once, places them with the same
`orders_place_many` (same rules, same transaction per contract, same answers) and matches
them straight after, with no wait for the doorbell and no lock contention between order entry
and the booking of its fills.

The protocol, in this environment's Redis database:
- `matcher:entry:live:<symbol>`: the lease holder's pid, with a TTL of LIVE_SECONDS,
  refreshed at every heartbeat (`announce`) and deleted when it stops serving (`retract`).
- `matcher:entry:queue:<symbol>`: requests (JSON), pushed by one script that first checks
  the live key and then rings the doorbell: nothing is queued for a matcher that is not there.
  Without one (or without Redis) the web places the order itself, as before.
- `matcher:entry:reply:<token>`: the answer, which the request waits for (BLPOP). The
  matcher answers after the order's transaction has committed: an acknowledgement still
  follows durability.

A request carries a deadline (its wait). The matcher drops one it takes too late: the
client has been told -1007 (status unknown) and its order is never placed afterwards. A
request the matcher took and did not commit before dying (SIGKILL) gets the same -1007, and
its order does not exist: exactly Binance's "execution status unknown".
"""
import json
import logging
import os
import time
import uuid
from datetime import datetime
from decimal import Decimal
from functools import lru_cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from redis.exceptions import RedisError

from apps.ops.metrics import ORDER_ENTRY_GROUP, ORDER_ENTRY_ROUTE
from exchange.errors import ErrorCode, ExchangeError
from exchange.pgbulk import instances_saved
from exchange.redis import get_redis

from .doorbell import CHANNEL as DOORBELL_CHANNEL
from .models import Order
from .services import OrderRequest, orders_place_many

logger = logging.getLogger(__name__)
LIVE_KEY = "matcher:entry:live:{symbol}"  # /readyz and the ops dashboard show it (apps.ops.health)
QUEUE_KEY = "matcher:entry:queue:{symbol}"
REPLY_KEY = "matcher:entry:reply:{token}"
LIVE_SECONDS = 5  # > the heartbeat (1 s): a busy batch does not make the web fall back
REPLY_SECONDS = 60  # an answer nobody took (the request timed out) disappears

# KEYS: live, queue. ARGV: request, doorbell channel, the contract's id (the doorbell's message). 1 if queued.
_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


class HandoverTimeout(ExchangeError):
    code = ErrorCode.TIMEOUT
    http_status = 503  # Binance: the message was sent, no answer came; the status is unknown


# -- the web's side --------------------------------------------------------------------------

def submit(request: OrderRequest) -> "Handed | None":
    """Queue the order for the contract's matcher; None when no matcher takes the contract's
    orders (or Redis is unavailable), or the caller is inside a transaction (the order must
    be part of it, as `group_commit` places it): the caller places it itself."""
    wait = settings.ORDER_HANDOVER_WAIT_SECONDS
    if wait > 0 and not connection.in_atomic_block:
        token = uuid.uuid4().hex
        message = json.dumps({"user": request.user.pk, "params": request.params, "reply": token,
                              "deadline": time.time() + wait}, default=str)
        if _queued(request.contract, message):
            return Handed(request, token, wait)
    ORDER_ENTRY_ROUTE.labels("web").inc()
    return None


@lru_cache(maxsize=1)
def _submit_script():
    return get_redis().register_script(_SUBMIT)


def _queued(contract, message: str) -> bool:
    symbol = contract.symbol
    try:
        return bool(_submit_script()(keys=[LIVE_KEY.format(symbol=symbol), QUEUE_KEY.format(symbol=symbol)],
                                     args=[message, DOORBELL_CHANNEL, contract.pk]))
    except RedisError:
        logger.warning("order handover unavailable; placing the order here", exc_info=True)
        return False


class Handed:
    """An order queued for its contract's matcher."""

    def __init__(self, request: OrderRequest, token: str, wait: float):
        self.request, self.token, self.wait = request, token, wait

    def result(self) -> Order:
        """The order as the matcher accepted it; raises what refused it, or HandoverTimeout
        when no answer came within the wait."""
        try:
            answer = get_redis().blpop([REPLY_KEY.format(token=self.token)], timeout=self.wait)
        except RedisError:
            logger.warning("order handover: no answer read", exc_info=True)
            answer = None
        if answer is None:
            ORDER_ENTRY_ROUTE.labels("timeout").inc()
            raise HandoverTimeout("Timeout waiting for response from backend server. Send status unknown; "
                                  "execution status unknown.")
        ORDER_ENTRY_ROUTE.labels("matcher").inc()
        return _decode(json.loads(answer[1]), self.request)


def _decode(answer: dict, request: OrderRequest) -> Order:
    if "error" in answer:
        code, msg, status = answer["error"]
        raise ExchangeError(msg, code=ErrorCode(code), http_status=status)
    if "failed" in answer:  # the API's handler answers it as any unexpected error (a 500)
        raise RuntimeError(f"order entry failed in the matcher: {answer['failed']} (its log has the traceback)")
    order = Order(**{name: None if value is None else Order._meta.get_field(name).to_python(value)
                     for name, value in answer["order"].items()})
    order.user, order.contract = request.user, request.contract
    instances_saved([order], [order.pk])  # as the row the matcher stored
    return order


# -- the matcher's side ----------------------------------------------------------------------

def announce(symbols) -> None:
    """This process takes these contracts' orders (at every heartbeat, and on taking a lease)."""
    pipe = get_redis().pipeline(transaction=False)
    for symbol in symbols:
        pipe.set(LIVE_KEY.format(symbol=symbol), os.getpid(), ex=LIVE_SECONDS)
    pipe.execute()


def retract(symbols) -> None:
    """This process no longer takes these contracts' orders (stopping, lease lost, settled)."""
    keys = [LIVE_KEY.format(symbol=symbol) for symbol in symbols]
    if keys:
        get_redis().delete(*keys)


def take(symbols, limit: int) -> dict[str, list[dict]]:
    """Up to `limit` queued requests per contract, oldest first, in one round trip."""
    symbols = list(symbols)
    pipe = get_redis().pipeline(transaction=False)
    for symbol in symbols:
        pipe.lpop(QUEUE_KEY.format(symbol=symbol), limit)
    taken = {}
    for symbol, raw in zip(symbols, pipe.execute()):
        if raw:
            taken[symbol] = [json.loads(item) for item in raw]
    return taken


def serve(contract, messages: list[dict]) -> int:
    """Place the requests taken for `contract` and answer each; returns how many were placed
    or refused (late ones are dropped unanswered: their client has been answered -1007)."""
    now = time.time()
    live = [m for m in messages if m["deadline"] > now]
    if len(live) < len(messages):
        logger.warning("order handover: %d request(s) for %s dropped after their deadline",
                       len(messages) - len(live), contract.symbol)
    if not live:
        return 0
    users = get_user_model().objects.in_bulk({m["user"] for m in live})
    results: list = [None] * len(live)
    requests, positions = [], []
    for index, message in enumerate(live):
        user = users.get(message["user"])
        if user is None:  # deleted since the web authenticated the request
            results[index] = ExchangeError("Invalid API-key, IP, or permissions for action.",
                                           code=ErrorCode.REJECTED_MBX_KEY, http_status=401)
            continue
        requests.append(OrderRequest(user=user, contract=contract, params=message["params"]))
        positions.append(index)
    if requests:
        ORDER_ENTRY_GROUP.observe(len(requests))
        for index, result in zip(positions, orders_place_many(requests)):
            results[index] = result
    pipe = get_redis().pipeline(transaction=False)
    for message, result in zip(live, results):
        key = REPLY_KEY.format(token=message["reply"])
        pipe.rpush(key, json.dumps(_encode(result)))
        pipe.expire(key, REPLY_SECONDS)
    pipe.execute()
    return len(live)


def handover_forget() -> None:
    """Every queue, live mark and unread answer of this environment (tests)."""
    redis = get_redis()
    keys = list(redis.scan_iter(match="matcher:entry:*", count=1000))
    if keys:
        redis.delete(*keys)


def _encode(result) -> dict:
    if isinstance(result, ExchangeError):
        return {"error": [int(result.code), result.msg, result.http_status]}
    if isinstance(result, Exception):  # orders_place_many logged it
        return {"failed": type(result).__name__}
    return {"order": {field.attname: _plain(getattr(result, field.attname))
                      for field in Order._meta.concrete_fields}}


def _plain(value):
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value
