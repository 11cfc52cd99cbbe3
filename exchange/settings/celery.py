"""Celery settings and the beat schedule, declared in code."""
from .env import env_bool, env_str
from .ops import OPS_ALERT_EVALUATE_SECONDS as _OPS_ALERT_EVALUATE_SECONDS
from .ops import OPS_BACKUP_SCHEDULE as _OPS_BACKUP_SCHEDULE

_redis = env_str("REDIS_URL", "")

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", _redis or "redis://127.0.0.1:63799/0")
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TIMEZONE = "UTC"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

CELERY_BEAT_SCHEDULE = {
    "ops-beat-heartbeat": {"task": "apps.ops.tasks.beat_heartbeat", "schedule": 10.0},
    "ledger-invariants": {"task": "apps.ledger.tasks.ledger_check_invariants", "schedule": 300.0},
    "ops-alerts-evaluate": {"task": "apps.ops.tasks.alerts_evaluate", "schedule": _OPS_ALERT_EVALUATE_SECONDS},
    "ops-backup-daily": {"task": "apps.ops.tasks.backup_daily", "schedule": _OPS_BACKUP_SCHEDULE},
    "marketdata-samples-prune": {"task": "apps.marketdata.tasks.price_samples_prune_task", "schedule": 3600.0},
}
