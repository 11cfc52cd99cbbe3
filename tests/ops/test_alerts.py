"""Alert rules firing and resolving, channels receiving their documented payloads over
loopback HTTP and email, retries, deduplication, event alerts and two evaluators at once."""
import hashlib
import hmac
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.core import mail
from django.core.exceptions import ValidationError
from django.db import connection, connections
from django.urls import reverse

from apps.ops.alert_defaults import DEFAULT_RULES, rules_seed
from apps.ops.alerts import alert_raise, alert_resolve, rule_evaluate, rules_evaluate
from apps.ops.models import (
    Alert,
    AlertLevel,
    AlertRule,
    AlertStatus,
    ChannelKind,
    Notification,
    NotificationChannel,
    NotificationStatus,
)
from apps.ops.notify import backoff_seconds
from apps.ops.tasks import notification_deliver

D = Decimal
START = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_default_rules(db):
    """Each test states its rules; the migration's defaults would read the real heartbeats."""
    AlertRule.objects.all().delete()


@pytest.fixture
def evaluate(django_capture_on_commit_callbacks):
    """rules_evaluate with after-commit work (deliveries, auto actions) run as in production."""

    def run(**kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return rules_evaluate(**kwargs)

    return run


@pytest.fixture
def channels(db, receiver):
    return {
        "slack": NotificationChannel.objects.create(
            name="ops-slack", kind=ChannelKind.SLACK, min_level=AlertLevel.WARNING, target=receiver.url("/slack")
        ),
        "pagerduty": NotificationChannel.objects.create(
            name="pager", kind=ChannelKind.PAGERDUTY, min_level=AlertLevel.HIGH,
            target=receiver.url("/pd/v2/enqueue"), secret="R0UTINGKEY0123456789",
        ),
        "webhook": NotificationChannel.objects.create(
            name="hook", kind=ChannelKind.WEBHOOK, min_level=AlertLevel.INFO, target=receiver.url("/hook"),
            secret="s3cret",
        ),
    }


def rule(**fields) -> AlertRule:
    defaults = dict(name="Test value high", key="test.value", comparison="gt", threshold=D("100"),
                    level=AlertLevel.CRITICAL, for_seconds=0, cooldown_seconds=0)
    return AlertRule.objects.create(**{**defaults, **fields})


def test_rule_fires_and_resolves_with_documented_payloads(test_source, channels, receiver, evaluate):
    r = rule()
    test_source.value = D("150.5")
    with time_machine.travel(START, tick=False):
        result = evaluate()
    assert (result.fired, result.resolved) == (1, 0)
    alert = Alert.objects.get()
    assert alert.status == AlertStatus.FIRING and alert.value == D("150.5") and alert.rule == r
    assert alert.message == "Test value high: Test value is 150.5 u (alert when > 100 u)"

    [slack] = receiver.posts("/slack")
    assert slack["text"].startswith(":red_circle: [CRITICAL] FIRING: Test value high")
    assert slack["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn", "text": slack["text"]}}

    [pd] = receiver.posts("/pd/v2/enqueue")
    assert pd["routing_key"] == "R0UTINGKEY0123456789" and pd["event_action"] == "trigger"
    assert pd["dedup_key"] == f"rule:{r.pk}#{alert.pk}"
    assert pd["payload"]["summary"] == alert.message
    assert pd["payload"]["severity"] == "critical"
    assert pd["payload"]["source"] and pd["payload"]["timestamp"] == "2025-03-03T12:00:00+00:00"
    assert pd["payload"]["class"] == "test.value" and pd["payload"]["custom_details"]["value"] == "150.5"

    [hook_request] = [r for r in receiver.requests if r["path"] == "/hook"]
    hook = hook_request["json"]
    assert hook["event"] == "trigger" and hook["alert"]["status"] == "FIRING" and hook["alert"]["value"] == "150.5"
    signature = hmac.new(b"s3cret", hook_request["raw"], hashlib.sha256).hexdigest()
    assert hook_request["headers"]["X-Exchange-Signature"] == f"sha256={signature}"
    assert Notification.objects.filter(status=NotificationStatus.SENT).count() == 3

    test_source.value = D("99")
    with time_machine.travel(START + timedelta(seconds=15), tick=False):
        result = evaluate()
    assert (result.fired, result.resolved) == (0, 1)
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED and alert.resolved_at == START + timedelta(seconds=15)
    pd_resolve = receiver.posts("/pd/v2/enqueue")[1]
    assert pd_resolve == {"routing_key": "R0UTINGKEY0123456789", "event_action": "resolve", "dedup_key": pd["dedup_key"]}
    assert receiver.posts("/slack")[1]["text"].startswith(":white_check_mark: [CRITICAL] RESOLVED")
    assert receiver.posts("/hook")[1]["event"] == "resolve"

    # A new breach is a new alert (and a new PagerDuty incident).
    test_source.value = D("101")
    evaluate()
    assert Alert.objects.filter(status=AlertStatus.FIRING).count() == 1
    assert receiver.posts("/pd/v2/enqueue")[2]["dedup_key"] != pd["dedup_key"]


def test_channels_are_chosen_by_level(test_source, channels, receiver, evaluate):
    rule(level=AlertLevel.WARNING)
    test_source.value = D("101")
    evaluate()
    assert {r["path"] for r in receiver.requests} == {"/slack", "/hook"}  # PagerDuty only from HIGH


def test_firing_alert_notifies_once_until_cooldown_then_again(test_source, channels, receiver, evaluate):
    rule(cooldown_seconds=600)
    test_source.value = D("500")
    with time_machine.travel(START, tick=False) as traveller:
        evaluate()
        for _ in range(3):
            traveller.shift(timedelta(seconds=15))
            evaluate()
        assert len(receiver.posts("/slack")) == 1
        alert = Alert.objects.get()
        assert alert.count == 4 and alert.last_seen == START + timedelta(seconds=45)
        traveller.shift(timedelta(seconds=600))
        evaluate()
    assert len(receiver.posts("/slack")) == 2
    assert sorted(Notification.objects.filter(channel=channels["slack"]).values_list("round", flat=True)) == [1, 2]


def test_for_duration_keeps_alert_pending_and_forgets_a_blip(test_source, channels, receiver, evaluate):
    rule(for_seconds=60)
    test_source.value = D("200")
    with time_machine.travel(START, tick=False) as traveller:
        evaluate()
        assert Alert.objects.get().status == AlertStatus.PENDING
        traveller.shift(timedelta(seconds=30))
        test_source.value = D("50")
        evaluate()  # cleared before firing: no trace, nobody notified
        assert not Alert.objects.exists()
        test_source.value = D("200")
        evaluate()
        traveller.shift(timedelta(seconds=59))
        evaluate()
        assert Alert.objects.get().status == AlertStatus.PENDING and not receiver.requests
        traveller.shift(timedelta(seconds=1))
        evaluate()
    alert = Alert.objects.get()
    assert alert.status == AlertStatus.FIRING and alert.fired_at == START + timedelta(seconds=90)
    assert len(receiver.posts("/slack")) == 1


def test_missing_reading_neither_fires_nor_resolves(test_source, channels, evaluate):
    rule()
    test_source.value = D("101")
    evaluate()
    test_source.value = None
    evaluate()
    assert Alert.objects.get().status == AlertStatus.FIRING


def test_per_symbol_source_opens_one_alert_per_label(test_source, channels, evaluate):
    rule()
    test_source.value = {"BTCUSDT": D("500"), "ETHUSDT": D("1")}
    evaluate()
    assert list(Alert.objects.values_list("label", "status")) == [("BTCUSDT", "FIRING")]
    test_source.value = {"ETHUSDT": D("1")}  # BTCUSDT no longer reported (settled)
    evaluate()
    alert = Alert.objects.get(label="BTCUSDT")
    assert alert.status == AlertStatus.RESOLVED and alert.details["resolved_because"] == "no longer reported by the source"


def test_channel_failure_retries_then_succeeds_and_is_recorded(test_source, channels, receiver, evaluate):
    rule()
    receiver.responses = [500, 503]  # the first channel to be called fails twice
    for channel in ("pagerduty", "webhook"):
        channels[channel].enabled = False
        channels[channel].save()
    test_source.value = D("101")
    evaluate()
    notification = Notification.objects.get()
    assert notification.status == NotificationStatus.SENT and notification.tries == 3
    assert notification.response_code == 200 and "HTTP 503" in notification.last_error
    assert len(receiver.posts("/slack")) == 3


def test_permanent_refusal_is_not_retried(test_source, channels, receiver, evaluate):
    rule()
    receiver.default_status = 400
    test_source.value = D("101")
    evaluate()
    for notification in Notification.objects.all():
        assert notification.status == NotificationStatus.FAILED and notification.tries == 1
        assert notification.response_code == 400 and "server says no" in notification.last_error


def test_retries_are_bounded(test_source, channels, receiver, settings, evaluate):
    settings.OPS_NOTIFY_MAX_RETRIES = 2
    rule()
    receiver.default_status = 502
    test_source.value = D("101")
    evaluate()
    assert set(Notification.objects.values_list("status", "tries")) == {(NotificationStatus.FAILED, 3)}
    assert len(receiver.requests) == 9


def test_unreachable_receiver_is_a_temporary_failure(db, settings):
    settings.OPS_NOTIFY_MAX_RETRIES = 1
    channel = NotificationChannel.objects.create(name="dead", kind=ChannelKind.WEBHOOK, target="http://127.0.0.1:9/x")
    alert = alert_raise(key="job_failure:test", level="HIGH", message="m")
    notification = Notification.objects.create(alert=alert, channel=channel, event="TRIGGER", round=99)
    notification_deliver.apply(args=[notification.pk])
    notification.refresh_from_db()
    assert notification.status == NotificationStatus.FAILED and notification.tries == 2
    assert "connection failed" in notification.last_error


def test_backoff_is_exponential_and_capped(settings):
    settings.OPS_NOTIFY_BACKOFF_SECONDS = 10
    settings.OPS_NOTIFY_BACKOFF_MAX_SECONDS = 600
    assert [backoff_seconds(n) for n in range(8)] == [10, 20, 40, 80, 160, 320, 600, 600]


def test_a_sent_notification_is_not_sent_twice(test_source, channels, receiver, evaluate):
    rule()
    test_source.value = D("101")
    evaluate()
    notification = Notification.objects.get(channel=channels["slack"])
    notification_deliver.apply(args=[notification.pk])  # a duplicate delivery of the task
    assert len(receiver.posts("/slack")) == 1


def test_email_channel_uses_django_mail(test_source, db, evaluate):
    NotificationChannel.objects.create(
        name="oncall-mail", kind=ChannelKind.EMAIL, min_level=AlertLevel.WARNING, target="a@example.com, b@example.com"
    )
    rule()
    test_source.value = D("101")
    evaluate()
    [message] = mail.outbox
    assert message.to == ["a@example.com", "b@example.com"]
    assert message.subject.startswith("[CRITICAL] FIRING: Test value high")
    assert '"dedup_key"' in message.body
    test_source.value = D("1")
    evaluate()
    assert mail.outbox[1].subject.startswith("[CRITICAL] RESOLVED")


def test_secrets_can_come_from_the_environment(test_source, db, receiver, monkeypatch, evaluate):
    monkeypatch.setenv("OPS_TEST_PD_URL", receiver.url("/pd-env"))
    monkeypatch.setenv("OPS_TEST_PD_KEY", "ENVKEY")
    NotificationChannel.objects.create(name="pd-env", kind=ChannelKind.PAGERDUTY, min_level=AlertLevel.INFO,
                                       target_env="OPS_TEST_PD_URL", secret_env="OPS_TEST_PD_KEY")
    rule()
    test_source.value = D("101")
    evaluate()
    assert receiver.posts("/pd-env")[0]["routing_key"] == "ENVKEY"


def test_event_alerts_count_up_and_resolve(channels, receiver, django_capture_on_commit_callbacks):
    rules_seed(AlertRule)
    with django_capture_on_commit_callbacks(execute=True):
        first = alert_raise(key="job_failure:funding:BTCUSDT", level="WARNING", message="funding failed",
                            details={"error": "boom"})
        again = alert_raise(key="job_failure:funding:BTCUSDT", level="WARNING", message="funding failed again")
    assert first.pk == again.pk and again.count == 2
    assert again.level == AlertLevel.CRITICAL  # the "Job failed" rule's level is the floor
    assert len(receiver.posts("/pd/v2/enqueue")) == 1  # deduplicated
    assert "funding and delivery jobs are idempotent" in Alert.objects.get().details["auto_action"]["note"]
    with django_capture_on_commit_callbacks(execute=True):
        alert_resolve(key="job_failure:funding:BTCUSDT", note="next run succeeded")
    assert Alert.objects.get().status == AlertStatus.RESOLVED
    assert receiver.posts("/pd/v2/enqueue")[1]["event_action"] == "resolve"

    AlertRule.objects.filter(key="job_failure").update(enabled=False)
    assert alert_raise(key="job_failure:delivery", level="HIGH", message="silenced") is None


def test_ledger_invariant_rule_fires_without_automatic_action(db, evaluate):
    import json

    from apps.ledger.tasks import LAST_RESULT_KEY
    from exchange.redis import get_redis

    rules_seed(AlertRule)
    AlertRule.objects.exclude(key="ledger.invariant_violations").update(enabled=False)
    get_redis().set(LAST_RESULT_KEY, json.dumps({"at": time.time(), "violations": ["balances_sum_to_zero: x"]}))
    evaluate()
    alert = Alert.objects.get()
    assert alert.level == AlertLevel.CRITICAL and alert.value == 1
    assert alert.details["auto_action"]["action"] is None
    assert "No action is taken automatically for a broken ledger invariant" in alert.details["auto_action"]["note"]
    get_redis().set(LAST_RESULT_KEY, json.dumps({"at": time.time(), "violations": []}))
    evaluate()
    assert Alert.objects.get().status == AlertStatus.RESOLVED


def test_cpu_alert_records_diagnostics(db, evaluate, monkeypatch):
    from apps.ops import sources

    monkeypatch.setitem(sources.SOURCES, "system.cpu_percent",
                        sources.Source(key="system.cpu_percent", read=lambda: D("97"), description="CPU", unit="%"))
    rule(key="system.cpu_percent", threshold=D("80"), level=AlertLevel.WARNING)
    evaluate()
    details = Alert.objects.get().details["auto_action"]
    assert details["action"] == "cpu_top_processes" and details["top_processes"]


def test_default_rules_carry_the_seed_thresholds(db):
    AlertRule.objects.all().delete()
    assert rules_seed(AlertRule) == len(DEFAULT_RULES)
    assert rules_seed(AlertRule) == 0  # idempotent; never overwrites admin edits
    by_key = {r.key: r for r in AlertRule.objects.all()}
    assert (by_key["trading.orders_per_second"].threshold, by_key["trading.orders_per_second"].level) == (
        D("10000"), "WARNING")
    assert (by_key["trading.order_latency_p95_us"].threshold, by_key["trading.order_latency_p95_us"].level) == (
        D("1000"), "CRITICAL")
    assert (by_key["risk.insurance_fund_balance"].comparison, by_key["risk.insurance_fund_balance"].threshold,
            by_key["risk.insurance_fund_balance"].level) == ("lt", D("1000000"), "HIGH")
    assert (by_key["system.cpu_percent"].threshold, by_key["system.cpu_percent"].level) == (D("80"), "WARNING")
    assert by_key["ops.matcher_heartbeat_age"].level == "CRITICAL"
    assert {"ops.beat_heartbeat_age", "ops.pricefeed_heartbeat_age", "ledger.invariant_violations", "job_failure",
            "backup_failure"} <= set(by_key)
    for r in AlertRule.objects.all():
        r.full_clean()  # every default key is a registered source or a valid event kind


def test_rules_and_channels_reject_bad_input(db):
    with pytest.raises(ValidationError) as bad_rule:
        AlertRule(name="x", key="no.such.source", comparison="gt", threshold=None, level="HIGH").full_clean()
    assert set(bad_rule.value.message_dict) == {"key", "threshold"}
    with pytest.raises(ValidationError, match="finite"):
        AlertRule(name="y", key="system.cpu_percent", comparison="gt", threshold=D("NaN"), level="HIGH").full_clean()
    for kind, fields, field in [
        (ChannelKind.SLACK, {"target": "not a url"}, "target"),
        (ChannelKind.WEBHOOK, {"target": "ftp://example.com/x"}, "target"),
        (ChannelKind.EMAIL, {"target": "ops@example.com, nope"}, "target"),
        (ChannelKind.PAGERDUTY, {}, "secret"),
        (ChannelKind.SLACK, {"target_env": "lower-case"}, "target_env"),
    ]:
        with pytest.raises(ValidationError) as bad:
            NotificationChannel(name="c", kind=kind, **fields).full_clean()
        assert field in bad.value.message_dict, (kind, fields)


def test_admin_rejects_bad_threshold_and_acknowledges(client, make_user, test_source, channels, evaluate):
    staff = make_user("ops2", is_staff=True, is_superuser=True)
    client.force_login(staff)
    response = client.post(reverse("admin:ops_alertrule_add"), {
        "name": "bad", "key": "system.cpu_percent", "comparison": "gt", "threshold": "eighty", "level": "HIGH",
        "for_seconds": "0", "cooldown_seconds": "0", "enabled": "on",
    })
    assert response.status_code == 200 and "Enter a number." in response.content.decode()
    response = client.post(reverse("admin:ops_notificationchannel_add"), {
        "name": "s", "kind": "SLACK", "min_level": "HIGH", "target": "hooks.slack.com/no-scheme", "enabled": "on",
    })
    assert "Enter a valid http(s) URL." in response.content.decode()

    rule()
    test_source.value = D("101")
    evaluate()
    alert = Alert.objects.get()
    client.post(reverse("admin:ops_alert_changelist"), {"action": "acknowledge", "_selected_action": [alert.pk]})
    alert.refresh_from_db()
    assert alert.acknowledged_by == staff and alert.acknowledged_at is not None
    assert client.get(reverse("admin:ops_alert_change", args=[alert.pk])).status_code == 200
    notification = Notification.objects.first()
    assert client.get(reverse("admin:ops_notification_change", args=[notification.pk])).status_code == 200
    assert client.post(reverse("admin:ops_alert_change", args=[alert.pk]), {"message": "x"}).status_code == 403
    dashboard = client.get(reverse("ops:dashboard")).content.decode()
    assert "Test value high" in dashboard and "No backup yet" in dashboard


@pytest.mark.django_db(transaction=True)
def test_two_evaluators_at_once_notify_once(test_source, receiver):
    """Two beat instances evaluate the same rule concurrently: one alert, one notification per channel."""
    NotificationChannel.objects.create(name="hook", kind=ChannelKind.WEBHOOK, min_level="INFO",
                                       target=receiver.url("/hook"))
    r = rule()
    test_source.value = D("101")
    first_inside, release = threading.Event(), threading.Event()

    def hold_first_reader():
        if not first_inside.is_set():
            first_inside.set()
            assert release.wait(10)

    test_source.hook = hold_first_reader
    results, errors = [], []

    def evaluator():
        try:
            results.append(rule_evaluate(rule_id=r.pk))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    a = threading.Thread(target=evaluator)
    a.start()
    assert first_inside.wait(10)
    b = threading.Thread(target=evaluator)
    b.start()
    # Wait until the second evaluator is blocked on the rule's row lock, then let the first go.
    deadline = time.monotonic() + 10
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = "
                           "current_database()")
            if cursor.fetchone()[0]:
                break
            time.sleep(0.01)
        else:
            pytest.fail("the second evaluator never waited on the rule lock")
    release.set()
    a.join(10)
    b.join(10)
    assert not errors
    assert sorted(res.fired for res in results) == [0, 1]
    alert = Alert.objects.get()
    assert alert.status == AlertStatus.FIRING and alert.count == 2
    assert Notification.objects.count() == 1 and test_source.reads == 2
    assert len(receiver.posts("/hook")) == 1
