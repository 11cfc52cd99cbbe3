"""Refuse to start in production mode with settings that are only safe for development.

Called at import time by the settings modules, so every process (web, matcher,
workers, beat) refuses, not only `manage.py check`.
"""
from django.core.exceptions import ImproperlyConfigured

MIN_SECRET_LENGTH = 32


def refuse_insecure_production(*, secret_key: str, default_secret_key: str, debug: bool) -> None:
    if secret_key == default_secret_key:
        raise ImproperlyConfigured(
            "Production mode with the default SECRET_KEY: set SECRET_KEY to a long random value."
        )
    if len(secret_key) < MIN_SECRET_LENGTH:
        raise ImproperlyConfigured(
            f"Production mode with a SECRET_KEY shorter than {MIN_SECRET_LENGTH} characters."
        )
    if debug:
        raise ImproperlyConfigured("Production mode with DEBUG on: set DEBUG=0.")
