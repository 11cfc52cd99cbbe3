"""Logging: one line per record on stderr, level from LOG_LEVEL, format from LOG_FORMAT.

LOG_FORMAT=text (the default on a developer's terminal) or json (the default in
production: EXCHANGE_PRODUCTION=1 or the production settings module), one JSON object
per line for a log collector. Either way every line carries the process role and the
log context (request id, Celery task, fields a caller adds): see exchange/logs.py.
"""
import os

from django.core.exceptions import ImproperlyConfigured

from .env import env_bool, env_str

LOG_FORMATS = ("text", "json")


def _production() -> bool:
    return env_bool("EXCHANGE_PRODUCTION", False) or os.environ.get("DJANGO_SETTINGS_MODULE", "").endswith(
        ".production"
    )


LOG_FORMAT = env_str("LOG_FORMAT", "json" if _production() else "text").strip().lower()
if LOG_FORMAT not in LOG_FORMATS:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use one of {', '.join(LOG_FORMATS)}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "exchange.logs.ContextFilter"}},
    "formatters": {
        "text": {"()": "exchange.logs.TextFormatter"},
        "json": {"()": "exchange.logs.JsonFormatter"},
    },
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["stderr"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        # Django's default config gives "django" a console handler of its own (in DEBUG):
        # its records go through the root handler only, in the chosen format.
        "django": {"handlers": [], "level": "NOTSET"},
        "django.db.backends": {"level": "WARNING"},
    },
}
