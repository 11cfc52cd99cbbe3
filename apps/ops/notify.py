"""Delivery of one notification to its channel: payloads and the HTTP/mail send.

Payload shapes follow each receiver's documented format:
- Slack incoming webhook: `{"text": ..., "blocks": [...]}`; Slack answers 200 "ok".
- PagerDuty Events API v2 (`/v2/enqueue`): `routing_key`, `event_action`
  (trigger | resolve), `dedup_key`, and for a trigger `payload` with `summary`,
  `source`, `severity` (critical | error | warning | info), `timestamp`, `component`,
  `class`, `custom_details`; PagerDuty answers 202.
- Generic webhook: `{"event": "trigger"|"resolve", "alert": {...}}`, signed with
  `X-Exchange-Signature: sha256=<hex HMAC of the body>` when the channel has a secret.
- Email: Django's `send_mail` to the channel's addresses.

`notification_attempt` makes one attempt and records it. 5xx, 408, 429 and network
errors are temporary (the task retries with exponential backoff); other 4xx are
permanent (the receiver refuses the request; retrying cannot help).
"""
import hashlib
import hmac
import json
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from .models import (
    PAGERDUTY_EVENTS_URL,
    Alert,
    AlertLevel,
    ChannelKind,
    Notification,
    NotificationChannel,
    NotificationEvent,
    NotificationStatus,
    _addresses,
)

logger = logging.getLogger(__name__)

PAGERDUTY_SEVERITY = {
    AlertLevel.CRITICAL: "critical",
    AlertLevel.HIGH: "error",
    AlertLevel.WARNING: "warning",
    AlertLevel.INFO: "info",
}
SLACK_EMOJI = {AlertLevel.CRITICAL: ":red_circle:", AlertLevel.HIGH: ":large_orange_circle:",
               AlertLevel.WARNING: ":large_yellow_circle:", AlertLevel.INFO: ":large_blue_circle:"}
TEMPORARY_HTTP = {408, 425, 429}


class DeliveryError(Exception):
    def __init__(self, message: str, *, code: int | None = None, temporary: bool = True):
        super().__init__(message)
        self.code = code
        self.temporary = temporary


@dataclass(frozen=True)
class Attempt:
    status: str
    retry: bool


def channel_target(channel: NotificationChannel) -> str:
    if channel.target_env:
        value = os.environ.get(channel.target_env, "")
        if not value:
            raise DeliveryError(f"environment variable {channel.target_env} is not set", temporary=False)
        return value
    if channel.kind == ChannelKind.PAGERDUTY and not channel.target:
        return PAGERDUTY_EVENTS_URL
    return channel.target


def channel_secret(channel: NotificationChannel) -> str:
    if channel.secret_env:
        value = os.environ.get(channel.secret_env, "")
        if not value:
            raise DeliveryError(f"environment variable {channel.secret_env} is not set", temporary=False)
        return value
    return channel.secret


def _title(alert: Alert, event: str) -> str:
    state = "RESOLVED" if event == NotificationEvent.RESOLVE else "FIRING"
    return f"[{alert.level}] {state}: {alert.message}"[:1024]


def _alert_link(alert: Alert) -> str:
    if not settings.OPS_ALERT_BASE_URL:
        return ""
    return f"{settings.OPS_ALERT_BASE_URL.rstrip('/')}/admin/ops/alert/{alert.pk}/change/"


def alert_document(alert: Alert) -> dict:
    return {
        "id": alert.pk,
        "dedup_key": alert.dedup_key,
        "key": alert.key,
        "label": alert.label,
        "rule": alert.rule.name if alert.rule_id else None,
        "level": alert.level,
        "status": alert.status,
        "message": alert.message,
        "value": None if alert.value is None else str(alert.value.normalize()),
        "count": alert.count,
        "first_seen": alert.first_seen.isoformat(),
        "last_seen": alert.last_seen.isoformat(),
        "fired_at": alert.fired_at.isoformat() if alert.fired_at else None,
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
        "details": alert.details,
        "link": _alert_link(alert),
        "source": settings.OPS_ALERT_SOURCE,
    }


def payload_slack(alert: Alert, event: str) -> dict:
    emoji = ":white_check_mark:" if event == NotificationEvent.RESOLVE else SLACK_EMOJI[AlertLevel(alert.level)]
    text = f"{emoji} {_title(alert, event)}"
    context = f"`{alert.dedup_key}` · seen {alert.count}× since {alert.first_seen:%Y-%m-%d %H:%M:%S} UTC"
    if _alert_link(alert):
        context += f" · <{_alert_link(alert)}|open in admin>"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def payload_pagerduty(alert: Alert, event: str, *, routing_key: str) -> dict:
    body = {
        "routing_key": routing_key,
        "event_action": "resolve" if event == NotificationEvent.RESOLVE else "trigger",
        # One PagerDuty incident per firing: a later firing of the same rule is a new one.
        "dedup_key": f"{alert.dedup_key}#{alert.pk}"[:255],
    }
    if event == NotificationEvent.TRIGGER:
        body["payload"] = {
            "summary": alert.message[:1024],
            "source": settings.OPS_ALERT_SOURCE,
            "severity": PAGERDUTY_SEVERITY[AlertLevel(alert.level)],
            "timestamp": alert.fired_at.isoformat() if alert.fired_at else alert.first_seen.isoformat(),
            "component": alert.label or alert.key,
            "group": "exchange",
            "class": alert.key,
            "custom_details": {**alert.details, "value": alert_document(alert)["value"], "count": alert.count},
        }
        if _alert_link(alert):
            body["links"] = [{"href": _alert_link(alert), "text": "Alert in the exchange admin"}]
    return body


def payload_webhook(alert: Alert, event: str) -> dict:
    return {"event": event.lower(), "alert": alert_document(alert)}


def _post_json(url: str, body: dict, *, headers: dict | None = None) -> int:
    data = json.dumps(body, separators=(",", ":"), default=str).encode()
    request = urllib.request.Request(
        url, data=data, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "exchange-ops/1", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.OPS_NOTIFY_TIMEOUT_SECONDS) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode(errors="replace")
        temporary = exc.code >= 500 or exc.code in TEMPORARY_HTTP
        raise DeliveryError(f"HTTP {exc.code}: {detail}", code=exc.code, temporary=temporary) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        raise DeliveryError(f"connection failed: {getattr(exc, 'reason', exc)}") from exc


def send(channel: NotificationChannel, alert: Alert, event: str) -> int | None:
    """Send one notification; returns the HTTP status (None for mail) or raises DeliveryError."""
    if channel.kind == ChannelKind.EMAIL:
        target = channel_target(channel)
        body = json.dumps(alert_document(alert), indent=2, default=str)
        try:
            send_mail(_title(alert, event)[:200], f"{alert.message}\n\n{body}\n", None, _addresses(target))
        except Exception as exc:  # SMTP errors are worth retrying
            raise DeliveryError(f"mail failed: {exc}") from exc
        return None
    url = channel_target(channel)
    if channel.kind == ChannelKind.SLACK:
        return _post_json(url, payload_slack(alert, event))
    if channel.kind == ChannelKind.PAGERDUTY:
        return _post_json(url, payload_pagerduty(alert, event, routing_key=channel_secret(channel)))
    body = payload_webhook(alert, event)
    headers = {}
    secret = channel_secret(channel)
    if secret:
        raw = json.dumps(body, separators=(",", ":"), default=str).encode()
        headers["X-Exchange-Signature"] = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return _post_json(url, body, headers=headers)


def notification_attempt(*, notification_id: int, final: bool) -> Attempt:
    """One delivery attempt of a notification, recorded on its row.

    The row stays locked during the attempt, so a duplicate task (delivery is at least
    once) waits and then finds it sent. `final` marks the last allowed try: a temporary
    failure then becomes FAILED instead of asking for a retry.
    """
    with transaction.atomic():
        notification = (
            Notification.objects.select_for_update(of=("self",))
            .select_related("channel", "alert", "alert__rule")
            .filter(pk=notification_id)
            .first()
        )
        if notification is None or notification.status != NotificationStatus.PENDING:
            return Attempt(status=notification.status if notification else "MISSING", retry=False)
        notification.tries += 1
        try:
            notification.response_code = send(notification.channel, notification.alert, notification.event)
        except DeliveryError as exc:
            notification.last_error = str(exc)[:2000]
            notification.response_code = exc.code
            give_up = final or not exc.temporary
            notification.status = NotificationStatus.FAILED if give_up else NotificationStatus.PENDING
            notification.save()
            logger.warning("notification %s to %s failed (try %d): %s", notification_id,
                           notification.channel.name, notification.tries, exc)
            return Attempt(status=notification.status, retry=not give_up)
        notification.status = NotificationStatus.SENT
        notification.sent_at = timezone.now()  # last_error keeps the failure before, if any
        notification.save()
        return Attempt(status=notification.status, retry=False)


def backoff_seconds(retries: int) -> int:
    return min(settings.OPS_NOTIFY_BACKOFF_MAX_SECONDS, settings.OPS_NOTIFY_BACKOFF_SECONDS * 2**retries)
