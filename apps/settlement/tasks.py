"""Settlement jobs from beat: premium sampling (every 5 s), settlement of due funding
times (every minute, catching up missed ones), pruning old samples (hourly), and the
delivery lifecycle (every minute).

Tasks only parse and call one service; the services hold the rules.
"""
from datetime import timedelta

from celery import shared_task
from django.conf import settings

from .delivery import delivery_advance
from .services import funding_settle_due, premium_samples_prune, premium_samples_take


@shared_task(ignore_result=True, expires=5)
def premium_sample_task() -> int:
    """Every FUNDING_SAMPLE_SECONDS: one premium sample per funding perpetual (late ones expire)."""
    return premium_samples_take()


@shared_task(ignore_result=True, expires=50)
def funding_settle_due_task() -> int:
    """Every minute at :00: settle each funding time that has passed and is not settled yet."""
    return len(funding_settle_due())


@shared_task(ignore_result=True, expires=3000)
def premium_samples_prune_task() -> int:
    days = float(getattr(settings, "FUNDING_SAMPLE_RETENTION_DAYS", 30))
    return premium_samples_prune(older_than=timedelta(days=days))


@shared_task(ignore_result=True, expires=50)
def delivery_advance_task() -> int:
    """Every minute: roll, notices, close-only, settling and settlement of delivery contracts."""
    return len(delivery_advance())
