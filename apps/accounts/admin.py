"""Admin for API keys: list (never the secret), create (secret shown once), revoke."""
from django.contrib import admin, messages
from django.utils import timezone

from .forms import ApiKeyAdminForm
from .models import ApiKey
from .services import api_key_create, api_key_revoke, api_key_update


class ActiveFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyAdminForm
    list_display = ["key_prefix", "user", "label", "can_trade", "allowlist", "created_at", "last_used_at", "revoked_at"]
    list_filter = [ActiveFilter, "can_trade"]
    search_fields = ["key", "label", "user__username"]
    list_select_related = ["user"]
    readonly_fields = ["key", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_keys"]
    raw_id_fields = ["user"]

    @admin.display(description="API key")
    def key_prefix(self, obj):
        return f"{obj.key[:12]}…"

    @admin.display(description="IP allow-list")
    def allowlist(self, obj):
        return ", ".join(obj.ip_allowlist) or "any"

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["user", *self.readonly_fields]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["user", "label", "can_trade", "ip_allowlist"]
        return ["user", "key", "label", "can_trade", "ip_allowlist", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            api_key_update(
                api_key=obj, label=data["label"], can_trade=data["can_trade"], ip_allowlist=data["ip_allowlist"]
            )
            return
        created, secret = api_key_create(
            user=data["user"], label=data["label"], can_trade=data["can_trade"], ip_allowlist=data["ip_allowlist"]
        )
        obj.pk = created.pk
        obj.__dict__.update({f.attname: getattr(created, f.attname) for f in ApiKey._meta.concrete_fields})
        self.message_user(
            request,
            f"API key {created.key} created. Secret (shown only this once, copy it now): {secret}",
            level=messages.WARNING,
        )

    def has_delete_permission(self, request, obj=None):
        # Keys are revoked, not deleted, so their history stays.
        return False

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        count = 0
        for api_key in queryset.filter(revoked_at__isnull=True):
            api_key_revoke(api_key=api_key)
            count += 1
        self.message_user(request, f"Revoked {count} API key(s) at {timezone.now():%Y-%m-%d %H:%M:%S} UTC.")
