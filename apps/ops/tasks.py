"""Ops jobs: the scheduler heartbeat, alert evaluation, notification delivery, backups.

Tasks only parse and call one service; the services hold the rules.
"""
import logging

from celery import shared_task
from django.conf import settings

from .health import heartbeat_record

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def beat_heartbeat() -> None:
    # Fired by beat and run by a worker: a fresh value proves both are alive.
    heartbeat_record("beat")


@shared_task(ignore_result=True, expires=30)
def alerts_evaluate() -> dict:
    """Every 15 s from beat; safe to run twice at once (per-rule row locks)."""
    from .alerts import rules_evaluate

    result = rules_evaluate()
    return {"rules": result.rules, "fired": result.fired, "resolved": result.resolved, "errors": result.errors}


@shared_task(bind=True, ignore_result=True, max_retries=None, acks_late=True)
def notification_deliver(self, notification_id: int) -> str:
    """Deliver one notification; temporary failures retry with exponential backoff."""
    from .notify import backoff_seconds, notification_attempt

    retries = self.request.retries
    attempt = notification_attempt(
        notification_id=notification_id, final=retries >= settings.OPS_NOTIFY_MAX_RETRIES
    )
    if attempt.retry:
        raise self.retry(countdown=backoff_seconds(retries))
    return attempt.status


@shared_task(ignore_result=True)
def backup_daily() -> int | None:
    """The daily dump, its verification, then retention; failures raise alerts."""
    from .backups import backup_create, backup_retention_apply, backup_verify

    backup = backup_create()
    if backup.status == "SUCCEEDED":
        backup_verify(backup=backup)
    backup_retention_apply()
    return backup.pk


@shared_task(ignore_result=True)
def backup_verify_task(backup_id: int) -> bool:
    from .backups import backup_verify
    from .models import Backup

    return backup_verify(backup=Backup.objects.get(pk=backup_id)).verified
