"""Base settings, read from the environment through `env.py`.

Defaults point at the project-local PostgreSQL and Redis that `make run` / `make test`
start under `var/` (scripts/services.sh), so a fresh checkout works without
configuration. Integration settings live in their own modules (celery, channels,
logging) and are star-imported at the end.
"""
from pathlib import Path

import dj_database_url

from .env import env_bool, env_float, env_int, env_list, env_str
from .process import process_name
from .safety import refuse_insecure_production

BASE_DIR = Path(__file__).resolve().parent.parent.parent

# A default secret is fine for development; exchange.checks refuses it in production.
DEFAULT_SECRET_KEY = "dev-insecure-secret-key-change-me"
SECRET_KEY = env_str("SECRET_KEY", DEFAULT_SECRET_KEY)
DEBUG = env_bool("DEBUG", True)
# Production mode is explicit, not inferred from DEBUG, so the secret check cannot be
# skipped by forgetting one flag.
EXCHANGE_PRODUCTION = env_bool("EXCHANGE_PRODUCTION", False)
if EXCHANGE_PRODUCTION:
    refuse_insecure_production(secret_key=SECRET_KEY, default_secret_key=DEFAULT_SECRET_KEY, debug=DEBUG)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

LOCAL_PG_PORT = env_int("LOCAL_PG_PORT", 54329)
LOCAL_REDIS_PORT = env_int("LOCAL_REDIS_PORT", 63799)
DATABASE_URL = env_str("DATABASE_URL", f"postgres://postgres@127.0.0.1:{LOCAL_PG_PORT}/exchange")
REDIS_URL = env_str("REDIS_URL", f"redis://127.0.0.1:{LOCAL_REDIS_PORT}/0")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_prometheus",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "apps.ledger",
    "apps.accounts",
    "apps.contracts",
    "apps.positions",
    "apps.liquidation",
    "apps.trading",
    "apps.marketdata",
    "apps.risk",
    "apps.settlement",
    "apps.ops",
    "apps.simulation",
]

MIDDLEWARE = [
    "exchange.logs.RequestIdMiddleware",  # first: the request id is in every log line of the request
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]
# The client API (paths under API_PATH_PREFIX) is served without the browser's middleware:
# it authenticates each request by its API key and signature, and sets no cookie, session or
# message, so sessions, CSRF, the logged-in user, messages, clickjacking headers and static
# files would be work for nothing on every order (exchange.handlers).
API_PATH_PREFIX = "/fapi/"
_BROWSER_ONLY = {
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
}
API_MIDDLEWARE = [m for m in MIDDLEWARE if m not in _BROWSER_ONLY]

ROOT_URLCONF = "exchange.urls"
WSGI_APPLICATION = "exchange.wsgi.application"
ASGI_APPLICATION = "exchange.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0))
if _db["ENGINE"] not in ("django.db.backends.postgresql",):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "DATABASE_URL must point at PostgreSQL: the exchange relies on advisory locks, "
        "row locks and NUMERIC; got " + _db["ENGINE"]
    )
_db["ENGINE"] = "django_prometheus.db.backends.postgresql"
# pg_stat_activity says which process each connection serves (exchange/settings/process.py).
_db.setdefault("OPTIONS", {})["application_name"] = env_str("DB_APPLICATION_NAME", process_name())
# A psycopg connection pool per process (Django 5.1+) for the web process (the Procfile
# sets DB_POOL=1): otherwise every request opens a PostgreSQL connection (~5 ms). Off
# elsewhere: the matcher's leases are session advisory locks that must die with its
# connection, not live on in a pool. Needs CONN_MAX_AGE 0.
if env_bool("DB_POOL", False) and not _db.get("CONN_MAX_AGE"):
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN", 2), "max_size": env_int("DB_POOL_MAX", 20), "timeout": 10,
    }
# Server-side parameter binding with prepared statements for order entry's and the ledger's
# raw statements (`apps.ledger.services.bound_cursor`): prepared at their first run in a
# connection, on generic plans, PostgreSQL parses and plans each of them once per connection
# instead of at every run (custom planning was ~1 ms of backend CPU per group of orders). The
# ORM's statements are never prepared (a threshold no count reaches): on a generic plan a
# `status IN (%s, ...)` filter could not use the open-orders partial index, and they are
# few on the hot path. Opt-in per process: the Procfile sets it for `web`, whose pooled
# connections live long. Not for connections through a transaction-mode pooler.
#
# DB_PREPARED_STATEMENTS=all (the Procfile's `matcher`) prepares every statement at its fifth
# run in the connection, the ORM's too, and leaves custom or generic plans to PostgreSQL
# (plan_cache_mode=auto: after five custom plans a statement keeps the generic one only where
# it is estimated no dearer), which is how most PostgreSQL drivers run. The matcher's batch
# reads are planned for each run's arrays where that pays (its fill read's generic plan would
# scan the contract's book) and no longer parsed and planned at every batch (~0.5 ms of
# PostgreSQL CPU per order at 8 API clients).
_prepared = env_str("DB_PREPARED_STATEMENTS", "raw")
_binding = env_bool("DB_SERVER_SIDE_BINDING", False)
if _prepared not in ("raw", "all") or (_prepared == "all" and not _binding):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"DB_PREPARED_STATEMENTS={_prepared!r}: 'raw', or 'all' with DB_SERVER_SIDE_BINDING=1")
if _binding:
    _options = _db.setdefault("OPTIONS", {})
    _plans = "auto" if _prepared == "all" else "force_generic_plan"
    _options.update(server_side_binding=True, prepare_threshold=5 if _prepared == "all" else 2**62,
                    options=f"{_options.get('options', '')} -c plan_cache_mode={_plans}".strip())
_db.setdefault("TEST", {})["NAME"] = env_str("TEST_DATABASE_NAME", "test_exchange")
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
# Serve straight from the app folders outside production, so `make run` needs no
# collectstatic; production collects into STATIC_ROOT.
WHITENOISE_USE_FINDERS = not EXCHANGE_PRODUCTION
WHITENOISE_AUTOREFRESH = DEBUG and not EXCHANGE_PRODUCTION

LOGIN_URL = "admin:login"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "exchange.api.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Futures exchange API",
    "DESCRIPTION": "Binance USDⓈ-M Futures compatible client API and staff ops API.",
    "VERSION": "0.1.0",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "exchange.schema.add_error_responses",
    ],
}

# Money: NUMERIC(38, 18) columns — 20 integer and 18 fractional digits.
MONEY_MAX_DIGITS = 38
MONEY_DECIMAL_PLACES = 18

# Where `seed_demo` leaves the generated ops credentials (gitignored).
OPS_CREDENTIALS_FILE = BASE_DIR / "var" / "ops-credentials.txt"

from .celery import *  # noqa: E402,F401,F403
from .channels import *  # noqa: E402,F401,F403
from .logging import *  # noqa: E402,F401,F403
from .ops import *  # noqa: E402,F401,F403
from .access import *  # noqa: E402,F401,F403

# Matcher: the CPU to pin the (single-threaded) matcher process to; -1 leaves it free.
MATCHER_CPU = env_int("MATCHER_CPU", -1)
# Order entry: how long `newOrderRespType=RESULT` waits for the matcher before answering
# with the accepted (NEW) state.
ORDER_RESULT_WAIT_SECONDS = env_float("ORDER_RESULT_WAIT_SECONDS", 2.0)
# Order entry handed to the contract's matcher (apps.trading.handover): how long a new-order
# request waits for its answer before -1007 (status unknown): below the Redis client's
# socket timeout (5 s); 0 places every order in the web process.
ORDER_HANDOVER_WAIT_SECONDS = env_float("ORDER_HANDOVER_WAIT_SECONDS", 3.0)
if not 0 <= ORDER_HANDOVER_WAIT_SECONDS < 5:  # the wait reads Redis: past its socket timeout it would fail, not wait
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"ORDER_HANDOVER_WAIT_SECONDS={ORDER_HANDOVER_WAIT_SECONDS}: from 0 to below 5 seconds")
