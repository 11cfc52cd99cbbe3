"""WSGI entry point (the exchange is served over ASGI; this exists for tooling)."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.base")
application = get_wsgi_application()
