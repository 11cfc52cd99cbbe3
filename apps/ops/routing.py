"""Websocket routes of the ops app, included by exchange/routing.py ahead of the market
streams' `/ws/<streams>` catch-all.

The dashboard socket is authenticated by the Django session cookie, so the Origin is
checked against ALLOWED_HOSTS first: another site's page cannot open it with an
operator's cookies.
"""
from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from .consumers import OpsDashboardConsumer

DASHBOARD_WS_PATH = "ws/ops/dashboard"  # the page reads it from its data-ws-path

websocket_urlpatterns = [
    path(DASHBOARD_WS_PATH, AllowedHostsOriginValidator(AuthMiddlewareStack(OpsDashboardConsumer.as_asgi()))),
]
