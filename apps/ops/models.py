"""Alerting and backup records.

`AlertRule` says when a reading of a check source is a problem; `Alert` is one
occurrence (pending → firing → resolved) under a dedup key, at most one open per key
(a partial unique index, so two evaluators cannot open two); `NotificationChannel`
is a destination chosen by level; `Notification` is one delivery to one channel, with
its tries and the last error. `Backup` is one pg_dump file with its checksum, row
counts and verification result.
"""
import re
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_email
from django.db import models
from django.db.models import Q


class AlertLevel(models.TextChoices):
    INFO = "INFO"
    WARNING = "WARNING"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


LEVEL_RANK = {AlertLevel.INFO: 0, AlertLevel.WARNING: 1, AlertLevel.HIGH: 2, AlertLevel.CRITICAL: 3}


class Comparison(models.TextChoices):
    GT = "gt", "value > threshold"
    GTE = "gte", "value ≥ threshold"
    LT = "lt", "value < threshold"
    LTE = "lte", "value ≤ threshold"
    EQ = "eq", "value = threshold"
    NE = "ne", "value ≠ threshold"
    EVENT = "event", "on event (raised by code through alert_raise)"


COMPARE = {
    Comparison.GT: lambda v, t: v > t,
    Comparison.GTE: lambda v, t: v >= t,
    Comparison.LT: lambda v, t: v < t,
    Comparison.LTE: lambda v, t: v <= t,
    Comparison.EQ: lambda v, t: v == t,
    Comparison.NE: lambda v, t: v != t,
}


class AlertRule(models.Model):
    name = models.CharField(max_length=100, unique=True)
    key = models.CharField(
        max_length=100,
        help_text="Check source key (see apps.ops.sources), or for event rules the event kind "
        "that alert_raise keys start with (e.g. job_failure).",
    )
    comparison = models.CharField(max_length=8, choices=Comparison.choices, default=Comparison.GT)
    threshold = models.DecimalField(max_digits=38, decimal_places=18, null=True, blank=True)
    level = models.CharField(max_length=8, choices=AlertLevel.choices, default=AlertLevel.WARNING)
    for_seconds = models.PositiveIntegerField(
        default=0, help_text="The condition must hold this long before the alert fires (0: at once)."
    )
    cooldown_seconds = models.PositiveIntegerField(
        default=0,
        help_text="While firing, notify again after this long (0: once per firing, plus the resolve).",
    )
    enabled = models.BooleanField(default=True)
    description = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(comparison="event") | Q(threshold__isnull=False), name="alertrule_threshold_required"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        from .sources import SOURCES

        errors = {}
        if self.comparison == Comparison.EVENT:
            if not re.fullmatch(r"[a-z0-9_.]+", self.key or ""):
                errors["key"] = "An event kind is lowercase letters, digits, '_' and '.'."
        else:
            if self.key not in SOURCES:
                errors["key"] = f"Unknown check source {self.key!r}; known: {', '.join(sorted(SOURCES))}."
            if self.threshold is None:
                errors["threshold"] = "A threshold is required for a comparison rule."
            elif not self.threshold.is_finite():
                errors["threshold"] = "The threshold must be a finite number."
        if errors:
            raise ValidationError(errors)

    def breached(self, value: Decimal) -> bool:
        return COMPARE[self.comparison](value, self.threshold)


class AlertStatus(models.TextChoices):
    PENDING = "PENDING"  # condition holds, for-duration not reached; nobody notified
    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


OPEN_STATUSES = (AlertStatus.PENDING, AlertStatus.FIRING)


class Alert(models.Model):
    rule = models.ForeignKey(AlertRule, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    key = models.CharField(max_length=200, help_text="Source key or event key.")
    label = models.CharField(max_length=100, blank=True, help_text="Part of a source reading, e.g. a symbol.")
    dedup_key = models.CharField(max_length=255)
    level = models.CharField(max_length=8, choices=AlertLevel.choices)
    status = models.CharField(max_length=8, choices=AlertStatus.choices)
    message = models.TextField()
    value = models.DecimalField(max_digits=38, decimal_places=18, null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    first_seen = models.DateTimeField()
    last_seen = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    count = models.PositiveIntegerField(default=1, help_text="Evaluations or events that saw the problem.")
    notify_round = models.PositiveIntegerField(default=0, help_text="Trigger notifications sent so far.")
    last_notified_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen"]
        # Alerts are read-only in the admin; acknowledge/resolve need this permission.
        permissions = [("manage_alert", "Can acknowledge and resolve alerts")]
        constraints = [
            models.UniqueConstraint(
                fields=["dedup_key"], condition=Q(status__in=["PENDING", "FIRING"]), name="alert_one_open_per_dedup_key"
            )
        ]
        indexes = [models.Index(fields=["status", "-last_seen"], name="alert_status_recent")]

    def __str__(self) -> str:
        return f"[{self.level}] {self.status} {self.dedup_key}"


class ChannelKind(models.TextChoices):
    EMAIL = "EMAIL", "Email (Django mail)"
    SLACK = "SLACK", "Slack incoming webhook"
    PAGERDUTY = "PAGERDUTY", "PagerDuty Events API v2"
    WEBHOOK = "WEBHOOK", "Generic JSON webhook"


PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


def _validate_env_name(value: str) -> None:
    if value and not ENV_NAME.fullmatch(value):
        raise ValidationError("An environment variable name is upper case letters, digits and '_'.")


class NotificationChannel(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=ChannelKind.choices)
    min_level = models.CharField(
        max_length=8, choices=AlertLevel.choices, default=AlertLevel.HIGH,
        help_text="Alerts of this level and above go to this channel.",
    )
    enabled = models.BooleanField(default=True)
    target = models.CharField(
        max_length=500, blank=True,
        help_text="EMAIL: comma-separated addresses. SLACK/WEBHOOK: the URL. PAGERDUTY: the events URL "
        f"(blank: {PAGERDUTY_EVENTS_URL}).",
    )
    target_env = models.CharField(
        max_length=100, blank=True, validators=[_validate_env_name],
        help_text="Read the target from this environment variable instead (keeps webhook URLs out of the DB).",
    )
    secret = models.CharField(
        max_length=200, blank=True,
        help_text="PAGERDUTY: the routing (integration) key. WEBHOOK: optional HMAC-SHA256 signing key.",
    )
    secret_env = models.CharField(
        max_length=100, blank=True, validators=[_validate_env_name],
        help_text="Read the secret from this environment variable instead.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind} ≥ {self.min_level})"

    def clean(self):
        errors = {}
        if self.target and self.target_env:
            errors["target_env"] = "Give the target or the environment variable holding it, not both."
        if self.secret and self.secret_env:
            errors["secret_env"] = "Give the secret or the environment variable holding it, not both."
        if self.kind == ChannelKind.EMAIL:
            if not (self.target or self.target_env):
                errors["target"] = "Give at least one email address."
            for address in _addresses(self.target):
                try:
                    validate_email(address)
                except ValidationError:
                    errors["target"] = f"{address!r} is not an email address."
        elif self.kind in (ChannelKind.SLACK, ChannelKind.WEBHOOK, ChannelKind.PAGERDUTY):
            if self.kind != ChannelKind.PAGERDUTY and not (self.target or self.target_env):
                errors["target"] = "Give the URL (or the environment variable holding it)."
            if self.target:
                try:
                    URLValidator(schemes=["http", "https"])(self.target)
                except ValidationError:
                    errors["target"] = "Enter a valid http(s) URL."
            if self.kind == ChannelKind.PAGERDUTY and not (self.secret or self.secret_env):
                errors["secret"] = "PagerDuty needs the integration's routing key (or the variable holding it)."
        if errors:
            raise ValidationError(errors)

    def accepts(self, level: str) -> bool:
        return LEVEL_RANK[AlertLevel(level)] >= LEVEL_RANK[AlertLevel(self.min_level)]


def _addresses(raw: str) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


class NotificationEvent(models.TextChoices):
    TRIGGER = "TRIGGER"
    RESOLVE = "RESOLVE"


class NotificationStatus(models.TextChoices):
    PENDING = "PENDING"  # queued or between retries
    SENT = "SENT"
    FAILED = "FAILED"  # gave up: retries exhausted or a permanent error


class Notification(models.Model):
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="notifications")
    channel = models.ForeignKey(NotificationChannel, on_delete=models.CASCADE, related_name="notifications")
    event = models.CharField(max_length=8, choices=NotificationEvent.choices)
    round = models.PositiveIntegerField(default=1, help_text="Which trigger round (repeats after the cooldown).")
    status = models.CharField(max_length=8, choices=NotificationStatus.choices, default=NotificationStatus.PENDING)
    tries = models.PositiveIntegerField(default=0)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["alert", "channel", "event", "round"], name="notification_once_per_round")
        ]

    def __str__(self) -> str:
        return f"{self.event} #{self.alert_id} → {self.channel.name}: {self.status}"


class BackupStatus(models.TextChoices):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


class Backup(models.Model):
    database = models.CharField(max_length=100)
    status = models.CharField(max_length=9, choices=BackupStatus.choices, default=BackupStatus.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    path = models.CharField(max_length=500, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    row_counts = models.JSONField(default=dict, blank=True)
    ledger_totals = models.JSONField(default=dict, blank=True, help_text="Sum of positive entries per asset.")
    error = models.TextField(blank=True)
    verified = models.BooleanField(default=False)
    verified_at = models.DateTimeField(null=True, blank=True)
    verify_error = models.TextField(blank=True)
    pruned_at = models.DateTimeField(null=True, blank=True, help_text="When retention removed the file.")

    class Meta:
        ordering = ["-started_at"]
        # Backups are read-only in the admin; "verify now" needs this permission.
        permissions = [("verify_backup", "Can queue a backup verification")]

    def __str__(self) -> str:
        return f"backup #{self.pk} {self.started_at:%Y-%m-%d %H:%M} {self.status}"

