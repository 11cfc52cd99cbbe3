"""Alert services: rule evaluation, events raised by code, resolve and acknowledge.

`rules_evaluate` reads each enabled rule's source and moves that rule's alerts
between pending, firing and resolved. Each rule is evaluated in its own transaction
holding the rule's row lock, so two evaluators running at once (two beat instances)
take turns per rule and the second sees what the first wrote; the partial unique
index on open alerts per dedup key backs that up. Notifications are rows created in
the same transaction (unique per alert, channel, event and round) and handed to the
delivery task only after commit, so a rolled-back evaluation notifies nobody.

`alert_raise` is the entry point for other code (job failures, backup failures):
`alert_raise(key="job_failure:funding:BTCUSDT", level=..., message=..., details=...)`.
An enabled event rule whose key is the first part of the event key (`job_failure`)
sets the level floor and the repeat interval; a disabled one silences the event.
"""
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from .actions import action_run_for
from .models import (
    LEVEL_RANK,
    OPEN_STATUSES,
    Alert,
    AlertLevel,
    AlertRule,
    AlertStatus,
    Comparison,
    Notification,
    NotificationChannel,
    NotificationEvent,
)
from .sources import SOURCES, source_read

logger = logging.getLogger(__name__)


@dataclass
class EvaluationResult:
    rules: int = 0
    fired: int = 0
    resolved: int = 0
    errors: int = 0


def _enqueue(notification_ids: list[int]) -> None:
    from .tasks import notification_deliver

    for notification_id in notification_ids:
        notification_deliver.delay(notification_id)


def _notify(alert: Alert, event: str, *, now: datetime) -> list[int]:
    """Create this alert's notifications for `event`; delivery starts after commit."""
    if event == NotificationEvent.TRIGGER:
        alert.notify_round += 1
        alert.last_notified_at = now
        channels = [c for c in NotificationChannel.objects.filter(enabled=True) if c.accepts(alert.level)]
        round_ = alert.notify_round
    else:  # a resolve goes where a trigger went
        channels = list(
            NotificationChannel.objects.filter(
                enabled=True, notifications__alert=alert, notifications__event=NotificationEvent.TRIGGER
            ).distinct()
        )
        round_ = max(alert.notify_round, 1)
    ids = []
    for channel in channels:
        notification, created = Notification.objects.get_or_create(
            alert=alert, channel=channel, event=event, round=round_
        )
        if created:
            ids.append(notification.pk)
    if ids:
        transaction.on_commit(lambda: _enqueue(ids))
    return ids


def _fire(alert: Alert, *, now: datetime) -> None:
    alert.status = AlertStatus.FIRING
    alert.fired_at = now
    _notify(alert, NotificationEvent.TRIGGER, now=now)
    alert_id = alert.pk
    transaction.on_commit(lambda: action_run_for(alert_id=alert_id))


def _resolve(alert: Alert, *, now: datetime, note: str = "") -> None:
    was_firing = alert.status == AlertStatus.FIRING
    alert.status = AlertStatus.RESOLVED
    alert.resolved_at = now
    if note:
        alert.details = {**alert.details, "resolved_because": note}
    alert.save()
    if was_firing:
        _notify(alert, NotificationEvent.RESOLVE, now=now)


SYMBOL = {"gt": ">", "gte": "≥", "lt": "<", "lte": "≤", "eq": "=", "ne": "≠"}


def _message(rule: AlertRule, label: str, value: Decimal) -> str:
    source = SOURCES.get(rule.key)
    unit = f" {source.unit}" if source and source.unit else ""
    subject = f"{rule.name} [{label}]" if label else rule.name
    shown = "never recorded" if not value.is_finite() else f"{value.normalize():f}{unit}"
    what = source.description if source else rule.key
    return f"{subject}: {what} is {shown} (alert when {SYMBOL[rule.comparison]} {rule.threshold.normalize():f}{unit})"


def _evaluate_reading(rule: AlertRule, label: str, value: Decimal | None, *, now: datetime, result) -> None:
    dedup_key = f"rule:{rule.pk}" + (f":{label}" if label else "")
    alert = Alert.objects.filter(dedup_key=dedup_key, status__in=OPEN_STATUSES).first()
    if value is None:  # no data: neither fire nor resolve on a missing reading
        return
    if not rule.breached(value):
        if alert is None:
            return
        if alert.status == AlertStatus.PENDING:  # never fired, never notified: forget it
            alert.delete()
            return
        _resolve(alert, now=now)
        result.resolved += 1
        return
    stored = value if value.is_finite() else None
    message = _message(rule, label, value)
    if alert is None:
        alert = Alert(
            rule=rule, key=rule.key, label=label, dedup_key=dedup_key, level=rule.level,
            status=AlertStatus.PENDING, message=message, value=stored, first_seen=now, last_seen=now,
            details={"threshold": str(rule.threshold), "comparison": rule.comparison},
        )
    else:
        alert.count += 1
        alert.last_seen, alert.message, alert.value = now, message, stored
    if alert.status == AlertStatus.PENDING and now - alert.first_seen >= timedelta(seconds=rule.for_seconds):
        alert.save()  # the notifications need its primary key
        _fire(alert, now=now)
        result.fired += 1
    elif (
        alert.status == AlertStatus.FIRING
        and rule.cooldown_seconds
        and now - alert.last_notified_at >= timedelta(seconds=rule.cooldown_seconds)
    ):
        _notify(alert, NotificationEvent.TRIGGER, now=now)
    alert.save()


def rule_evaluate(*, rule_id: int, now: datetime | None = None, result: EvaluationResult | None = None):
    """Evaluate one rule under its row lock; the outermost transaction is this one."""
    result = result or EvaluationResult()
    now = now or timezone.now()
    with transaction.atomic():
        rule = AlertRule.objects.select_for_update().filter(pk=rule_id, enabled=True).first()
        if rule is None or rule.comparison == Comparison.EVENT:
            return result
        # Read inside the lock: the later of two evaluators reads the later value.
        readings = source_read(rule.key)
        for label, value in readings.items():
            _evaluate_reading(rule, label, value, now=now, result=result)
        # Parts no longer reported (a settled contract's matcher) resolve.
        gone = Alert.objects.filter(rule=rule, status__in=OPEN_STATUSES).exclude(label__in=list(readings))
        for alert in gone:
            if alert.status == AlertStatus.PENDING:
                alert.delete()
            else:
                _resolve(alert, now=now, note="no longer reported by the source")
                result.resolved += 1
    result.rules += 1
    return result


def rules_evaluate(*, now: datetime | None = None) -> EvaluationResult:
    """Evaluate every enabled comparison rule; one failing source does not stop the others."""
    result = EvaluationResult()
    rule_ids = AlertRule.objects.filter(enabled=True).exclude(comparison=Comparison.EVENT).values_list("pk", flat=True)
    for rule_id in rule_ids:
        try:
            rule_evaluate(rule_id=rule_id, now=now, result=result)
        except Exception:
            result.errors += 1
            logger.exception("alert rule %s could not be evaluated", rule_id)
    return result


def _event_rule(key: str) -> AlertRule | None:
    kind = key.split(":", 1)[0]
    return AlertRule.objects.filter(comparison=Comparison.EVENT, key=kind).first()


def alert_raise(*, key: str, level: str, message: str, details: dict | None = None) -> Alert | None:
    """Record a problem found by code (a failed job, a failed backup) and notify.

    The same key raised again while its alert is firing counts up and re-notifies
    only after the repeat interval. Returns None when an event rule silences it.
    """
    level = AlertLevel(level)
    now = timezone.now()
    rule = _event_rule(key)
    if rule is not None and not rule.enabled:
        logger.warning("alert %s silenced by disabled rule %s: %s", key, rule.name, message)
        return None
    if rule is not None and LEVEL_RANK[AlertLevel(rule.level)] > LEVEL_RANK[level]:
        level = AlertLevel(rule.level)
    repeat = rule.cooldown_seconds if rule is not None else settings.OPS_ALERT_EVENT_REPEAT_SECONDS
    logger.error("alert %s [%s]: %s", key, level, message)
    for attempt in range(2):  # a concurrent raiser may create the row first: then count up
        try:
            with transaction.atomic():
                alert = Alert.objects.select_for_update().filter(dedup_key=key, status__in=OPEN_STATUSES).first()
                if alert is None:
                    alert = Alert.objects.create(
                        rule=rule, key=key, dedup_key=key, level=level, status=AlertStatus.PENDING,
                        message=message, details=details or {}, first_seen=now, last_seen=now,
                    )
                    _fire(alert, now=now)
                else:
                    alert.count += 1
                    alert.last_seen, alert.message = now, message
                    alert.details = details or alert.details
                    if LEVEL_RANK[level] > LEVEL_RANK[AlertLevel(alert.level)]:
                        alert.level = level
                    if repeat and now - alert.last_notified_at >= timedelta(seconds=repeat):
                        _notify(alert, NotificationEvent.TRIGGER, now=now)
                alert.save()
                return alert
        except IntegrityError:
            if attempt:
                raise
    return None


def alert_resolve(*, key: str, note: str = "") -> Alert | None:
    """Resolve the open alert under `key` (e.g. the job succeeded on its next run)."""
    with transaction.atomic():
        alert = Alert.objects.select_for_update().filter(dedup_key=key, status__in=OPEN_STATUSES).first()
        if alert is not None:
            _resolve(alert, now=timezone.now(), note=note)
        return alert


def alert_acknowledge(*, alert: Alert, user) -> bool:
    """Mark an alert as seen by `user`; acknowledging twice keeps the first."""
    updated = Alert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True).update(
        acknowledged_by=user, acknowledged_at=timezone.now()
    )
    return bool(updated)
