"""Market-data jobs: retention of the per-second price samples.

Tasks only parse and call one service; the services hold the rules.
"""
from datetime import timedelta

from celery import shared_task
from django.conf import settings

from .services import price_samples_prune


@shared_task(ignore_result=True, expires=3000)
def price_samples_prune_task() -> int:
    """Hourly from beat: drop per-second samples older than the retention (minute rows stay)."""
    days = float(getattr(settings, "MARKETDATA_SAMPLE_RETENTION_DAYS", 7))
    return price_samples_prune(older_than=timedelta(days=days))
