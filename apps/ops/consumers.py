"""The ops dashboard's websocket (`/ws/ops/dashboard`): staff only, a snapshot then updates.

The route (apps.ops.routing) checks the Origin against ALLOWED_HOSTS and reads the
Django session, so the page's own login carries over. Anyone who is not an active staff
user is accepted and then closed with CLOSE_FORBIDDEN (4003): a close code the page can
read (a refused handshake tells it nothing), in the application range 3000–4999.
Staff get `{"type": "snapshot", ...}` (apps.ops.dashboard.dashboard_feed) and then every
PUSH_SECONDS an `{"type": "update", ...}` with what changed; the user's staff status is
re-read every RECHECK_SECONDS so a revoked operator is closed too.
"""
import asyncio
import logging
import time

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import get_user_model

from .dashboard import dashboard_message

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4003  # HTTP 403 in the application range
PUSH_SECONDS = 1.0
RECHECK_SECONDS = 30.0


# Thread-sensitive (the default): a round runs in the thread such calls share, about
# six round trips a second per open dashboard (bench/ops_dashboard.py). Off that thread
# (thread_sensitive=False) a pool thread was seen keeping a database session open after
# the consumer ended.
_dashboard_message = database_sync_to_async(dashboard_message)


def _is_staff(user) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active and user.is_staff)


def _still_staff(user_id: int) -> bool:
    return get_user_model().objects.filter(pk=user_id, is_active=True, is_staff=True).exists()


class OpsDashboardConsumer(AsyncJsonWebsocketConsumer):
    channel_layer_alias = None  # it pushes what it reads itself: no layer channel per connection

    async def connect(self):
        self._pusher = None
        self._stop = asyncio.Event()
        await self.accept()
        user = self.scope.get("user")
        if not _is_staff(user):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self._user_id = user.pk
        self._pusher = asyncio.create_task(self._push())

    async def disconnect(self, code):
        # Stop between rounds rather than cancel one: a cancelled round would leave its
        # thread running queries on a connection nobody closes.
        pusher, self._pusher = getattr(self, "_pusher", None), None
        if pusher is not None:
            self._stop.set()
            await pusher

    async def receive(self, text_data=None, bytes_data=None):
        pass  # nothing to ask: the feed is pushed (and nothing a client sends is parsed)

    async def _push(self):
        cursor, checked = None, time.monotonic()
        while not self._stop.is_set():
            try:
                if time.monotonic() - checked >= RECHECK_SECONDS:
                    if not await database_sync_to_async(_still_staff)(self._user_id):
                        await self.close(code=CLOSE_FORBIDDEN)
                        return
                    checked = time.monotonic()  # (a failed check is tried again next round)
                message, cursor = await _dashboard_message(cursor=cursor)
            except Exception:  # the database or Redis is down: say so in the log, try again
                logger.warning("ops dashboard update failed", exc_info=True)
            else:
                if not self._stop.is_set():
                    await self.send_json(message)
            try:
                await asyncio.wait_for(self._stop.wait(), PUSH_SECONDS)
            except TimeoutError:
                pass
