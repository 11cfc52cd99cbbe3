"""WSGI entry point (the exchange is served over ASGI; this exists for tooling)."""
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.base")
django.setup(set_prefix=False)

from exchange.handlers import ExchangeWSGIHandler  # noqa: E402

application = ExchangeWSGIHandler()
