"""Group commit of order entry: orders arriving together in one process share one transaction.

The web process serves requests on a pool of threads. Each order request hands its
`OrderRequest` to `place`, which queues it. A thread that finds no write in progress
becomes the writer: it takes up to `GROUP_LIMIT` queued orders (its own first), places
them with `orders_place_many` (one transaction and one commit per contract, the same
rules as one order at a time), hands every waiting thread its result, and passes the
writer's role to the oldest order still queued, so that no thread keeps writing for
others after its own order is done. Alone, a request is a plain `order_place` in its own
thread. Either way a thread returns only after the transaction holding its order has
committed: the acknowledgement still follows durability.

A new-order request counts as arriving from the start of its view (`arriving`, around
OrderApi's POST) until it queues or is refused. A writer about to take its group waits up
to LINGER_SECONDS while orders are arriving, so that an order already being authenticated
or parsed joins this group rather than waiting for the next; with none arriving it starts
at once (a lone client's order never waits). bench/api_orders.py at 32 clients: 3.1 ->
3.7-4.1 orders per group; at 8 clients (~2 per group) the other requests are never
inside the process when a writer starts, and nothing changes.

A caller already inside a transaction places its order alone, in that transaction
(batching it with other threads' orders would delay their commit to the caller's).
"""
import threading
import time
from contextlib import contextmanager

from django.db import connection

from apps.ops.metrics import ORDER_ENTRY_GROUP

from .services import OrderRequest, order_outcome, orders_place_many

GROUP_LIMIT = 100
# How long a writer may wait for orders already inside the process (`arriving`) before it
# starts its group: a request being authenticated or parsed joins this group instead of
# queueing behind it for the next. A writer with nothing arriving starts at once.
LINGER_SECONDS = 0.002
_thread = threading.local()


class _Waiting:
    __slots__ = ("request", "done", "result", "lead")

    def __init__(self, request: OrderRequest):
        self.request = request
        self.done = threading.Event()
        self.result = None
        self.lead = False  # woken to write the next group rather than with a result


class GroupCommit:
    def __init__(self, limit: int = GROUP_LIMIT, linger: float = LINGER_SECONDS):
        self.limit = limit
        self.linger = linger
        self._lock = threading.Lock()
        self._more = threading.Condition(self._lock)  # an arriving order was queued or went away
        self._queue: list[_Waiting] = []
        self._writing = False
        self._arriving = 0

    @contextmanager
    def arriving(self):
        """Around an order request on its way to `place` (authenticating, parsing) in this thread."""
        with self._lock:
            self._arriving += 1
        _thread.arriving = self
        try:
            yield
        finally:
            self.leave()  # refused before it reached `place` (else `place` counted it in already)

    def leave(self) -> None:
        """This thread's order will not come to `place` (refused, or handed to the matcher): no
        writer waits for it."""
        if getattr(_thread, "arriving", None) is self:
            with self._lock:
                self._arrived()

    def _arrived(self) -> None:  # under the lock
        _thread.arriving = None
        self._arriving -= 1
        self._more.notify_all()

    def place(self, request: OrderRequest):
        """The stored order, or the exception that refused it (raised)."""
        if connection.in_atomic_block:
            [result] = orders_place_many([request])
            return order_outcome(result)
        waiting = _Waiting(request)
        with self._lock:
            self._queue.append(waiting)
            if getattr(_thread, "arriving", None) is self:
                self._arrived()
            lead = not self._writing
            self._writing = True
        if not lead:
            waiting.done.wait()
            if not waiting.lead:
                return order_outcome(waiting.result)
        self._write_group()  # the writer's own order is the oldest queued: it is in this group
        return order_outcome(waiting.result)

    def _write_group(self) -> None:
        with self._lock:
            deadline = time.monotonic() + self.linger
            while self._arriving and len(self._queue) < self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._more.wait(remaining)
            group = self._queue[:self.limit]
            del self._queue[:self.limit]
        ORDER_ENTRY_GROUP.observe(len(group))
        results: list = [RuntimeError("order entry stopped before this order was placed")] * len(group)
        try:
            results = orders_place_many([w.request for w in group])
        except Exception as exc:  # orders_place_many records each order's error: this is a bug, fail the group
            results = [exc] * len(group)
        finally:  # whatever happened, every thread of the group gets an answer and the next writer its turn
            for waiting, result in zip(group, results):
                waiting.result = result
                waiting.done.set()
            with self._lock:
                if self._queue:
                    following = self._queue[0]
                    following.lead = True
                    following.done.set()
                else:
                    self._writing = False


ORDER_ENTRY = GroupCommit()
