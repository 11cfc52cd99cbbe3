"""The WSGI application: the client API through its own middleware stack, the rest through Django's.

Requests under `settings.API_PATH_PREFIX` go to a handler built from `settings.API_MIDDLEWARE`
(the full stack without the browser's middleware: see the settings); everything else (the
admin, the ops pages, health, metrics, the schema) to Django's handler with `settings.MIDDLEWARE`.
Both resolve the same URL map.
"""
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler


class _ApiHandler(WSGIHandler):
    def load_middleware(self, is_async=False):
        # Django builds the chain from settings.MIDDLEWARE; this handler's is API_MIDDLEWARE.
        # Swapped only while it is built, once, at start (before any request is served).
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = settings.API_MIDDLEWARE
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = full


class ExchangeWSGIHandler:
    def __init__(self):
        self.site = WSGIHandler()
        self.api = _ApiHandler()
        self.prefix = settings.API_PATH_PREFIX

    def __call__(self, environ, start_response):
        handler = self.api if environ.get("PATH_INFO", "").startswith(self.prefix) else self.site
        return handler(environ, start_response)
