"""Admin for market data: constituents (editable), samples and anomalies (read-only),
and the ops action that lifts a mark pause."""
from django.contrib import admin, messages
from django.utils import timezone

from .models import IndexConstituent, PriceAnomaly, PriceMinute, PriceSample
from .services import price_pause_lift


@admin.register(IndexConstituent)
class IndexConstituentAdmin(admin.ModelAdmin):
    list_display = ("contract", "venue", "source_symbol", "weight", "enabled", "updated_at")
    list_filter = ("enabled", "venue", "contract")
    list_editable = ("weight", "enabled")
    search_fields = ("contract__symbol", "venue", "source_symbol")


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(PriceSample)
class PriceSampleAdmin(ReadOnlyAdmin):
    list_display = ("contract", "at", "index_price", "mark_price", "basis", "valid_venues", "status")
    list_filter = ("status", "contract")
    date_hierarchy = "at"
    show_full_result_count = False


@admin.register(PriceMinute)
class PriceMinuteAdmin(ReadOnlyAdmin):
    list_display = ("contract", "minute", "index_price", "mark_price")
    list_filter = ("contract",)
    date_hierarchy = "minute"
    show_full_result_count = False


@admin.register(PriceAnomaly)
class PriceAnomalyAdmin(ReadOnlyAdmin):
    list_display = (
        "detected_at", "contract", "kind", "severity", "message", "paused_until", "pause_state", "ended_at",
        "lifted_at", "lifted_by",
    )
    list_filter = ("severity", "kind", "contract")
    date_hierarchy = "detected_at"
    actions = ["lift_pause"]

    @admin.display(description="pause")
    def pause_state(self, obj: PriceAnomaly) -> str:
        if obj.paused_until is None:
            return "-"
        if obj.lifted_at is not None:
            return "lifted"
        return "in force" if obj.paused_until > timezone.now() else "expired"

    def has_change_permission(self, request, obj=None):
        # The list action needs change permission; no field is editable (readonly_fields).
        return request.user.has_perm("marketdata.change_priceanomaly")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    @admin.action(description="Lift the mark pause (resume mark updates now)", permissions=["change"])
    def lift_pause(self, request, queryset):
        lifted = price_pause_lift(anomalies=queryset, by=request.user)
        if lifted:
            self.message_user(request, f"Lifted {lifted} pause(s); the pricefeed resumes on its next tick.")
        else:
            self.message_user(request, "No selected anomaly has a pause in force.", level=messages.WARNING)
