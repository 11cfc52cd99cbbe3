"""Production settings: DEBUG off, secure cookies, collected static files.

`settings.safety` refuses to start with the default secret.
"""
from .base import *  # noqa: F401,F403
from .env import env_bool
from .safety import refuse_insecure_production

DEBUG = env_bool("DEBUG", False)
refuse_insecure_production(secret_key=SECRET_KEY, default_secret_key=DEFAULT_SECRET_KEY, debug=DEBUG)  # noqa: F405

EXCHANGE_PRODUCTION = True
WHITENOISE_USE_FINDERS = False
WHITENOISE_AUTOREFRESH = False
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True
