"""Websocket URL routes, collected from the apps that own streams."""
websocket_urlpatterns: list = []
