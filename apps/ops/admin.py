"""Admin for alert rules, channels, alerts with their notifications, and backups.

Rules and channels are edited here (validated by the models' `clean`); alerts,
notifications and backups are history: read-only, with acknowledge / resolve and
"verify now" actions.
"""
from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.utils.html import format_html

from .alerts import alert_acknowledge, alert_resolve
from .models import Alert, AlertRule, AlertStatus, Backup, Notification, NotificationChannel
from .sources import SOURCES


class ReadOnlyMixin:
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AlertRuleForm(forms.ModelForm):
    class Meta:
        model = AlertRule
        fields = "__all__"
        help_texts = {
            "key": "Check sources: " + ", ".join(sorted(SOURCES)) + ". Event kinds: job_failure, backup_failure.",
        }


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleForm
    list_display = ("name", "key", "comparison", "threshold_display", "level", "for_seconds", "cooldown_seconds",
                    "enabled")
    list_filter = ("enabled", "level")
    list_editable = ("enabled",)
    search_fields = ("name", "key")

    @admin.display(description="threshold")
    def threshold_display(self, obj):
        return "—" if obj.threshold is None else f"{obj.threshold.normalize():f}"


@admin.register(NotificationChannel)
class NotificationChannelAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "min_level", "enabled", "destination")
    list_filter = ("kind", "enabled")

    @admin.display(description="destination")
    def destination(self, obj):
        if obj.target_env:
            return f"${obj.target_env}"
        if obj.kind == "EMAIL":
            return obj.target
        return (obj.target[:30] + "…") if len(obj.target) > 30 else (obj.target or "(default)")

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.base_fields["secret"].widget = forms.PasswordInput(render_value=True)
        return form


class NotificationInline(admin.TabularInline):
    model = Notification
    extra = 0
    can_delete = False
    fields = ("event", "round", "channel", "status", "tries", "response_code", "last_error", "sent_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("status_badge", "level", "message", "count", "first_seen", "last_seen", "acknowledged_by")
    list_filter = ("status", "level", "rule")
    search_fields = ("message", "dedup_key")
    inlines = [NotificationInline]
    actions = ["acknowledge", "resolve"]
    readonly_fields = [f.name for f in Alert._meta.fields]

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        color = {"FIRING": "#b00", "PENDING": "#b60", "RESOLVED": "green"}[obj.status]
        return format_html('<b style="color:{}">{}</b>', color, obj.status)

    def has_manage_alert_permission(self, request):
        # Change is denied to everyone (alerts are history); the actions have their own permission.
        return request.user.has_perm("ops.manage_alert")

    @admin.action(description="Acknowledge selected alerts", permissions=["manage_alert"])
    def acknowledge(self, request, queryset):
        if not self.has_manage_alert_permission(request):
            raise PermissionDenied
        done = sum(alert_acknowledge(alert=alert, user=request.user) for alert in queryset)
        self.message_user(request, f"{done} alert(s) acknowledged.", messages.SUCCESS)

    @admin.action(description="Resolve selected alerts (notifies the channels)", permissions=["manage_alert"])
    def resolve(self, request, queryset):
        if not self.has_manage_alert_permission(request):
            raise PermissionDenied
        done = 0
        for alert in queryset.filter(status__in=(AlertStatus.PENDING, AlertStatus.FIRING)):
            alert_resolve(key=alert.dedup_key, note=f"resolved by {request.user.get_username()}")
            done += 1
        self.message_user(request, f"{done} alert(s) resolved.", messages.SUCCESS)


@admin.register(Notification)
class NotificationAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("created_at", "alert", "channel", "event", "round", "status", "tries", "response_code")
    list_filter = ("status", "event", "channel")
    readonly_fields = [f.name for f in Notification._meta.fields]


@admin.register(Backup)
class BackupAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("id", "started_at", "status", "verified", "size", "database", "pruned_at")
    list_filter = ("status", "verified")
    actions = ["verify_now"]
    readonly_fields = [f.name for f in Backup._meta.fields]

    @admin.display(description="size", ordering="size_bytes")
    def size(self, obj):
        if obj.size_bytes is None:
            return "—"
        return f"{obj.size_bytes / 1_048_576:.2f} MiB" if obj.size_bytes >= 1_048_576 else f"{obj.size_bytes} B"

    def has_verify_backup_permission(self, request):
        return request.user.has_perm("ops.verify_backup")

    @admin.action(description="Verify now (restore into a scratch database)", permissions=["verify_backup"])
    def verify_now(self, request, queryset):
        if not self.has_verify_backup_permission(request):
            raise PermissionDenied
        from .tasks import backup_verify_task

        for backup in queryset:
            backup_verify_task.delay(backup.pk)
        self.message_user(
            request, f"Verification of {queryset.count()} backup(s) queued; the result appears here.", messages.INFO
        )
