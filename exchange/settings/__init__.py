"""Settings package: `base` (everything), `test` and `production` (overrides).

`DJANGO_SETTINGS_MODULE` defaults to `exchange.settings.base` in manage.py, ASGI and
Celery; production deployments set it to `exchange.settings.production`.
"""
