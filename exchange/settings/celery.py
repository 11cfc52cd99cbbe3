"""Celery settings and the beat schedule, declared in code."""
from celery.schedules import crontab as _crontab

from .env import env_bool, env_int, env_str
from .ops import OPS_ALERT_EVALUATE_SECONDS as _OPS_ALERT_EVALUATE_SECONDS
from .ops import OPS_BACKUP_SCHEDULE as _OPS_BACKUP_SCHEDULE

# Premium sampling cadence of the funding engine (apps.settlement), seconds.
FUNDING_SAMPLE_SECONDS = env_int("FUNDING_SAMPLE_SECONDS", 5)
# A funding settlement of more positions than this is booked in chunks of this many, each in its
# own transaction, FUNDING_SETTLE_WORKERS of them at a time (connections of the settling process).
FUNDING_CHUNK_POSITIONS = env_int("FUNDING_CHUNK_POSITIONS", 50_000)
FUNDING_SETTLE_WORKERS = env_int("FUNDING_SETTLE_WORKERS", 2)

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
    # Volatility estimates and margin adjustments (the one-hour cache order entry reads).
    "risk-volatility-hourly": {"task": "apps.risk.tasks.risk_volatility_update_task", "schedule": 3600.0},
    # Every account with open positions; keep equal to RISK_ASSESS_INTERVAL_SECONDS (the run's bucket).
    "risk-assess-accounts": {"task": "apps.risk.tasks.risk_assess_task", "schedule": 900.0},
    # Funding (apps.settlement): a premium sample per perpetual every FUNDING_SAMPLE_SECONDS,
    # settlement of due (and missed) funding times every minute at :00, sample retention.
    "settlement-premium-sample": {"task": "apps.settlement.tasks.premium_sample_task",
                                  "schedule": float(FUNDING_SAMPLE_SECONDS)},
    "settlement-funding-due": {"task": "apps.settlement.tasks.funding_settle_due_task",
                               "schedule": _crontab(minute="*")},
    "settlement-samples-prune": {"task": "apps.settlement.tasks.premium_samples_prune_task", "schedule": 3600.0},
    # Delivery (apps.settlement.delivery): list missing quarterlies, advance lifecycles
    # (notices, close-only, settling) and settle due contracts; idempotent, every minute.
    "settlement-delivery-advance": {"task": "apps.settlement.tasks.delivery_advance_task",
                                    "schedule": _crontab(minute="*")},
    # Liquidation (apps.liquidation): screen every open position at the latest marks, margin
    # calls, start and advance liquidations. The pricefeed can also screen after each mark
    # (LIQUIDATION_SCREEN_ON_MARK=1).
    "liquidation-sweep": {"task": "apps.liquidation.tasks.liquidation_sweep_task", "schedule": 2.0},
}
# Delivery: keep the current and next quarterly listed for every base with delivery contracts,
# and email holders their 24-hour delivery notice (with Django's mail settings).
DELIVERY_ROLL_ENABLED = env_bool("DELIVERY_ROLL_ENABLED", True)
DELIVERY_NOTICE_EMAIL = env_bool("DELIVERY_NOTICE_EMAIL", False)
# A delivery of more positions than this is closed in chunks of this many, each in its own
# transaction, DELIVERY_SETTLE_WORKERS of them at a time (as funding's, above).
DELIVERY_CHUNK_POSITIONS = env_int("DELIVERY_CHUNK_POSITIONS", 50_000)
DELIVERY_SETTLE_WORKERS = env_int("DELIVERY_SETTLE_WORKERS", 2)
# Screen for liquidations in the pricefeed process after each published mark (apps.liquidation).
LIQUIDATION_SCREEN_ON_MARK = env_bool("LIQUIDATION_SCREEN_ON_MARK", False)

# Prometheus exporters of the Celery processes (apps/ops/celery_metrics.py); 0 turns one
# off. Prefork children of a worker serve on OPS_METRICS_PORT_WORKER + 1 + child index.
from .env import env_int as _env_int  # noqa: E402

OPS_METRICS_ADDR = env_str("OPS_METRICS_ADDR", "127.0.0.1")
OPS_METRICS_PORT_BEAT = _env_int("OPS_METRICS_PORT_BEAT", 9103)
OPS_METRICS_PORT_WORKER = _env_int("OPS_METRICS_PORT_WORKER", 9110)
# How often each process writes its latency p95 per operation to Redis (0: never).
OPS_LATENCY_PUBLISH_SECONDS = float(_env_int("OPS_LATENCY_PUBLISH_SECONDS", 5))
# One active beat: a beat waits for a PostgreSQL advisory lease before it schedules
# (apps/ops/leases.py), so a second one started for failover stands by.
OPS_BEAT_LEASE = env_bool("OPS_BEAT_LEASE", True)
