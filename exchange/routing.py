"""Websocket URL routes, collected from the apps that own streams.

Market streams and the user data stream (apps.marketdata.consumers): `/ws`,
`/ws/<streamName>` or `/ws/<listenKey>` (raw) and `/stream?streams=a/b/c` (combined),
Binance USDⓈ-M conventions. One consumer serves both so a connection can mix them; a
path segment that is a listen key (60+ letters and digits) is taken as one before any
market stream name is parsed.
"""
from django.urls import path, re_path

from apps.marketdata.consumers import MarketStreamConsumer
from apps.ops.routing import websocket_urlpatterns as ops_websocket_urlpatterns

websocket_urlpatterns: list = [
    *ops_websocket_urlpatterns,  # staff-only /ws/ops/...: before /ws/<streams> would take them as stream names
    re_path(r"^ws/?$", MarketStreamConsumer.as_asgi(), kwargs={"combined": False}),
    re_path(r"^ws/(?P<streams>[^?]+)$", MarketStreamConsumer.as_asgi(), kwargs={"combined": False}),
    path("stream", MarketStreamConsumer.as_asgi(), kwargs={"combined": True}),
]
