"""Websocket URL routes, collected from the apps that own streams.

Market streams (apps.marketdata.consumers): `/ws`, `/ws/<streamName>` (raw) and
`/stream?streams=a/b/c` (combined), Binance USDⓈ-M conventions.
"""
from django.urls import path, re_path

from apps.marketdata.consumers import MarketStreamConsumer

websocket_urlpatterns: list = [
    re_path(r"^ws/?$", MarketStreamConsumer.as_asgi(), kwargs={"combined": False}),
    re_path(r"^ws/(?P<streams>[^?]+)$", MarketStreamConsumer.as_asgi(), kwargs={"combined": False}),
    path("stream", MarketStreamConsumer.as_asgi(), kwargs={"combined": True}),
]
