"""Ops console for funding: rate history and premium samples (read-only), settlement
runs with their status and totals, and "settle now" — adding a run for a past funding
time, or the action on selected runs — which calls the same idempotent `funding_settle`
(a settled time is returned unchanged, never charged twice)."""
from django import forms
from django.contrib import admin, messages

from .models import FundingRate, FundingSettlement, PremiumSample, SettlementStatus
from .services import funding_settle


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(FundingRate)
class FundingRateAdmin(ReadOnlyAdmin):
    list_display = ("contract", "funding_time", "funding_rate", "mark_price", "policy", "premium_index",
                    "interest_rate", "samples")
    list_filter = ("contract", "policy")
    date_hierarchy = "funding_time"


@admin.register(PremiumSample)
class PremiumSampleAdmin(ReadOnlyAdmin):
    list_display = ("contract", "funding_time", "slot", "at", "policy", "premium", "contract_price", "mark_price",
                    "impact_bid", "impact_ask", "index_price")
    list_filter = ("contract", "policy")
    date_hierarchy = "funding_time"
    show_full_result_count = False


class SettleNowForm(forms.ModelForm):
    class Meta:
        model = FundingSettlement
        fields = ("contract", "funding_time")
        help_texts = {"funding_time": "A past funding time (UTC, on the contract's interval grid)."}


@admin.register(FundingSettlement)
class FundingSettlementAdmin(admin.ModelAdmin):
    list_display = ("contract", "funding_time", "status", "funding_rate", "mark_price", "positions", "paid",
                    "received", "dust", "covered", "attempts", "finished_at", "requested_by")
    list_filter = ("status", "contract")
    date_hierarchy = "funding_time"
    actions = ["settle_now"]
    readonly_fields = [f.name for f in FundingSettlement._meta.fields]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = SettleNowForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else ()

    def get_fields(self, request, obj=None):
        return ("contract", "funding_time") if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        """Adding a run = "settle now" for that funding time (idempotent)."""
        run = self._settle(request, obj.contract, obj.funding_time)
        if run is not None:
            obj.pk = run.pk
            obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        pass

    def _settle(self, request, contract, funding_time):
        try:
            run = funding_settle(contract=contract, funding_time=funding_time, requested_by=request.user)
        except Exception as exc:
            self.message_user(request, f"{contract.symbol} {funding_time:%Y-%m-%d %H:%M}: {exc}", messages.ERROR)
            return None
        self.message_user(request, f"{contract.symbol} {funding_time:%Y-%m-%d %H:%M} settled: rate "
                                   f"{run.funding_rate}, {run.positions} positions, dust {run.dust}.")
        return run

    @admin.action(description="Settle now (idempotent; settled runs are left as they are)")
    def settle_now(self, request, queryset):
        for run in queryset.select_related("contract"):
            if run.status == SettlementStatus.DONE:
                self.message_user(request, f"{run} was already settled: nothing charged.", messages.INFO)
                continue
            self._settle(request, run.contract, run.funding_time)
