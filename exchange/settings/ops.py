"""Operations settings: alerting, notification delivery, readiness limits and backups.

Secrets (webhook URLs, PagerDuty routing keys) are never set here: they live on the
notification channel rows in the admin, or in environment variables that a channel
names (its "URL from env" / "secret from env" fields).
"""
import socket
from pathlib import Path

from celery.schedules import crontab

from .env import env_int, env_str

# How often beat evaluates the alert rules (seconds).
OPS_ALERT_EVALUATE_SECONDS = float(env_int("OPS_ALERT_EVALUATE_SECONDS", 15))
# The "source" PagerDuty and the other channels show for this installation.
OPS_ALERT_SOURCE = env_str("OPS_ALERT_SOURCE", socket.gethostname())
# Re-notify an event alert (alert_raise) raised again while still firing after this long.
OPS_ALERT_EVENT_REPEAT_SECONDS = env_int("OPS_ALERT_EVENT_REPEAT_SECONDS", 3600)
# Link to the admin in notifications, e.g. https://ops.example.com (empty: no link).
OPS_ALERT_BASE_URL = env_str("OPS_ALERT_BASE_URL", "")

# Delivery of one notification: attempts = 1 + retries, backoff base * 2**n capped.
OPS_NOTIFY_MAX_RETRIES = env_int("OPS_NOTIFY_MAX_RETRIES", 5)
OPS_NOTIFY_BACKOFF_SECONDS = env_int("OPS_NOTIFY_BACKOFF_SECONDS", 10)
OPS_NOTIFY_BACKOFF_MAX_SECONDS = env_int("OPS_NOTIFY_BACKOFF_MAX_SECONDS", 600)
OPS_NOTIFY_TIMEOUT_SECONDS = env_int("OPS_NOTIFY_TIMEOUT_SECONDS", 10)

# Mail for the EMAIL channel kind (Django's mail framework).
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_str("EMAIL_USE_TLS", "0") in ("1", "true", "yes", "on")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "exchange-ops@localhost")

# The asset the insurance fund alert reads.
OPS_INSURANCE_FUND_ASSET = env_str("OPS_INSURANCE_FUND_ASSET", "USDT")

# /readyz: the oldest heartbeat that still counts as alive.
OPS_MATCHER_MAX_AGE_SECONDS = env_int("OPS_MATCHER_MAX_AGE_SECONDS", 10)
OPS_PRICEFEED_MAX_AGE_SECONDS = env_int("OPS_PRICEFEED_MAX_AGE_SECONDS", 10)
# Until the price service runs in every deployment, its freshness is reported but only
# makes /readyz fail when this is on.
OPS_PRICEFEED_REQUIRED = env_str("OPS_PRICEFEED_REQUIRED", "0") in ("1", "true", "yes", "on")

# Backups: where dumps go, when the daily one runs (UTC), and what retention keeps.
OPS_BACKUP_DIR = Path(env_str("OPS_BACKUP_DIR", str(Path(__file__).resolve().parents[2] / "var" / "backups")))
OPS_BACKUP_HOUR = env_int("OPS_BACKUP_HOUR", 2)
OPS_BACKUP_MINUTE = env_int("OPS_BACKUP_MINUTE", 30)
OPS_BACKUP_SCHEDULE = crontab(hour=OPS_BACKUP_HOUR, minute=OPS_BACKUP_MINUTE)
OPS_BACKUP_KEEP_DAILY = env_int("OPS_BACKUP_KEEP_DAILY", 7)
OPS_BACKUP_KEEP_WEEKLY = env_int("OPS_BACKUP_KEEP_WEEKLY", 4)
# Directory holding pg_dump / pg_restore; empty: found like scripts/services.sh finds
# the server binaries (PATH, /usr/lib/postgresql/*/bin, the pip pgserver build).
OPS_PG_BIN_DIR = env_str("OPS_PG_BIN_DIR", "")
# Tables whose row counts are recorded with each backup and compared on verification.
OPS_BACKUP_COUNT_TABLES = [
    "auth_user",
    "contracts_contract",
    "ledger_account",
    "ledger_balance",
    "ledger_ledgertransaction",
    "ledger_ledgerentry",
    "positions_position",
    "trading_order",
    "trading_ordercommand",
    "trading_trade",
    "ops_alert",
]
