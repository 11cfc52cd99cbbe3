"""ASGI entry point: HTTP through Django's WSGI handler in a thread pool, websockets through Channels.

Why not Django's ASGI handler for HTTP: under it every sync middleware hook and the
sync DRF views each cost a hop between the event loop and a worker thread (about 40
per request here, ~10 ms), and `thread_sensitive` runs them all in one thread per
process. Every view of this project is synchronous, so one hop per request — the whole
WSGI request in a pool thread — is the faster and simpler shape (~1.5 ms for a ping),
and requests run concurrently (a `newOrderRespType=RESULT` wait does not stall others).
"""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.base")
django.setup(set_prefix=False)

from exchange.handlers import ExchangeWSGIHandler  # noqa: E402

django_wsgi_app = ExchangeWSGIHandler()

from asgiref.sync import sync_to_async  # noqa: E402
from asgiref.wsgi import WsgiToAsgi, WsgiToAsgiInstance  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from exchange.routing import websocket_urlpatterns  # noqa: E402


class _PooledInstance(WsgiToAsgiInstance):
    """One HTTP request: the WSGI app in any pool thread, its response sent from the event loop.

    asgiref runs the WSGI app thread_sensitive (one thread per process); these requests
    share no thread-bound state, so any pool thread will do. And asgiref hands each response
    message (start, body, end) back to the event loop one at a time, each a round trip
    between the threads that waits for the loop; here the thread collects them and the loop
    sends them once the thread is done: one hop per request (responses are JSON documents
    and pages, held in memory anyway).
    """

    _run = sync_to_async(WsgiToAsgiInstance.run_wsgi_app.__wrapped__, thread_sensitive=False)

    async def __call__(self, scope, receive, send):
        self._send = send
        await super().__call__(scope, receive, send)

    async def run_wsgi_app(self, body):
        messages: list[dict] = []
        self.sync_send = messages.append  # what the WSGI side sends, kept (the base class set a thread hop)
        try:
            await self._run(body)
        finally:
            for message in messages:
                await self._send(message)


class PooledWsgiToAsgi(WsgiToAsgi):
    async def __call__(self, scope, receive, send):
        await _PooledInstance(self.wsgi_application, self.duplicate_header_limit)(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": PooledWsgiToAsgi(django_wsgi_app),
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
