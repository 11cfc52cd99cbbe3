"""Test settings: fast hashing, and a Redis database of its own so tests never touch
the data of a running exchange on the same server."""
from .base import *  # noqa: F401,F403
from .base import REDIS_URL
from .env import env_str

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
WHITENOISE_AUTOREFRESH = True
LOGGING["root"]["level"] = "WARNING"  # noqa: F405

REDIS_URL = env_str("TEST_REDIS_URL", REDIS_URL.rsplit("/", 1)[0] + "/15")
CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [REDIS_URL]  # noqa: F405
CELERY_BROKER_URL = REDIS_URL
