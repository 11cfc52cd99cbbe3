"""Ops console for settlement.

Funding: rate history and premium samples (read-only), settlement runs with their
status and totals, and "settle now" — adding a run for a past funding time, or the
action on selected runs — which calls the same idempotent `funding_settle` (a settled
time is returned unchanged, never charged twice).

Delivery: the calendar of delivery contracts with their status history and the
"settle now", "halt" and "resume" actions, and the settlement runs with the audited
samples behind each settlement price.
"""
from datetime import datetime, timezone as dt_timezone

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from apps.contracts.admin import LifecycleActions, StatusChangeInline, action_failed
from apps.contracts.models import ContractType

from .delivery import delivery_advance_one
from .models import (
    DeliveryContract,
    DeliverySettlement,
    DeliveryChunk,
    FundingChunk,
    FundingRate,
    FundingSettlement,
    PremiumSample,
    SettlementStatus,
)
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


class FundingChunkInline(admin.TabularInline):
    """A large run's chunks: what each booked, its posting, and which are still to book."""

    model = FundingChunk
    fields = ("number", "positions", "paid", "received", "dust", "covered", "ledger_transaction", "booked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("number",)

    def get_queryset(self, request):  # not the payment arrays of chunks still to book
        return super().get_queryset(request).defer("user_ids", "isolated", "account_ids", "amounts")

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="dust")
    def dust(self, chunk):
        return chunk.dust


@admin.register(FundingSettlement)
class FundingSettlementAdmin(admin.ModelAdmin):
    list_display = ("contract", "funding_time", "status", "funding_rate", "mark_price", "positions", "chunks", "paid",
                    "received", "dust", "covered", "attempts", "finished_at", "requested_by")
    list_filter = ("status", "contract")
    date_hierarchy = "funding_time"
    actions = ["settle_now"]
    readonly_fields = [f.name for f in FundingSettlement._meta.fields]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = SettleNowForm
        return super().get_form(request, obj, **kwargs)

    def get_inlines(self, request, obj):
        return [FundingChunkInline] if obj is not None and obj.chunks else []

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else ()

    def get_fields(self, request, obj=None):
        return ("contract", "funding_time") if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request, obj)

    def has_add_permission(self, request):
        # Adding a run settles it: the same permission as the action.
        return super().has_add_permission(request) and self.has_settle_funding_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    def has_settle_funding_permission(self, request):
        return request.user.has_perm("settlement.settle_funding")

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Adding a run settles it, in the settlement's own durable transaction (`funding_settle`),
        # which cannot run inside the one Django's change form wraps around the save.
        if object_id is None:
            return self._changeform_view(request, object_id, form_url, extra_context)
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        """Adding a run = "settle now" for that funding time (idempotent)."""
        run = self._settle(request, obj.contract, obj.funding_time)
        if run is not None:
            obj.pk = run.pk
            obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        pass

    def _settle(self, request, contract, funding_time):
        if not self.has_settle_funding_permission(request):
            raise PermissionDenied
        try:
            run = funding_settle(contract=contract, funding_time=funding_time, requested_by=request.user)
        except Exception as exc:
            action_failed(self, request, f"{contract.symbol} {funding_time:%Y-%m-%d %H:%M}", exc)
            return None
        self.message_user(request, f"{contract.symbol} {funding_time:%Y-%m-%d %H:%M} settled: rate "
                                   f"{run.funding_rate}, {run.positions} positions, dust {run.dust}.")
        return run

    @admin.action(description="Settle now (idempotent; settled runs are left as they are)",
                  permissions=["settle_funding"])
    def settle_now(self, request, queryset):
        if not self.has_settle_funding_permission(request):
            raise PermissionDenied
        for run in queryset.select_related("contract"):
            if run.status == SettlementStatus.DONE:
                self.message_user(request, f"{run} was already settled: nothing charged.", messages.INFO)
                continue
            self._settle(request, run.contract, run.funding_time)


# -- delivery --------------------------------------------------------------------------------


@admin.register(DeliveryContract)
class DeliveryCalendarAdmin(LifecycleActions, admin.ModelAdmin):
    """Delivery contracts by delivery time, with their lifecycle and the ops actions.

    "Settle now" runs every lifecycle step that is due for the contract (the same
    idempotent `delivery_advance_one` the scheduler runs): it never settles before the
    delivery time, and a settled contract is left as it is.
    """

    list_display = ("symbol", "status", "delivery_time", "time_to_delivery", "settlement_price", "settlement_status")
    list_filter = ("status",)
    date_hierarchy = "delivery_time"
    search_fields = ("symbol",)
    inlines = [StatusChangeInline]
    actions = ["settle_now", "halt", "resume"]
    fields = ("symbol", "status", "delivery_time", "onboard_time", "settlement_window_minutes", "delivery_fee_rate",
              "settlement_price")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).filter(contract_type=ContractType.DELIVERY).select_related("delivery")

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="time to delivery")
    def time_to_delivery(self, obj):
        left = obj.delivery_time - timezone.now()
        if left.total_seconds() <= 0:
            return "due"
        return f"{left.days} d {left.seconds // 3600} h {left.seconds % 3600 // 60} min"

    @admin.display(description="settlement")
    def settlement_status(self, obj):
        try:
            return obj.delivery.get_status_display()
        except DeliverySettlement.DoesNotExist:
            return "—"

    def has_settle_delivery_permission(self, request):
        return request.user.has_perm("settlement.settle_delivery")

    @admin.action(description="Settle now (runs the steps that are due; never before the delivery time)",
                  permissions=["settle_delivery"])
    def settle_now(self, request, queryset):
        if not self.has_settle_delivery_permission(request):
            raise PermissionDenied
        now = timezone.now()
        for contract in queryset.select_related("settle_asset"):
            try:
                steps = delivery_advance_one(contract=contract, now=now, requested_by=request.user)
            except Exception as exc:
                action_failed(self, request, contract.symbol, exc)
                continue
            if not steps:
                self.message_user(request, f"{contract.symbol}: nothing is due (status {contract.status}, delivery "
                                           f"{contract.delivery_time:%Y-%m-%d %H:%M} UTC).", messages.INFO)
            else:
                self.message_user(request, f"{contract.symbol}: {', '.join(steps)}.")


class DeliveryChunkInline(admin.TabularInline):
    """A large delivery's chunks: their positions, the isolated covers the plan put in
    DELIVERY_CLEARING for each, the PnL and fees each booked, its own covers, its posting, and
    which are still to book."""

    model = DeliveryChunk
    fields = ("number", "positions", "quantity", "user_from", "user_to", "clearing", "realized_pnl", "fees", "covered",
              "bad_debt", "ledger_transaction", "booked_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("number",)

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(DeliverySettlement)
class DeliverySettlementAdmin(ReadOnlyAdmin):
    list_display = ("contract", "delivery_time", "status", "settlement_price", "valid_minutes", "positions",
                    "chunks", "long_quantity", "short_quantity", "fees", "covered", "bad_debt", "attempts",
                    "finished_at")
    list_filter = ("status",)
    date_hierarchy = "delivery_time"
    readonly_fields = ("contract", "delivery_time", "status", "settlement_price", "window_start", "window_end",
                       "valid_minutes", "samples", "positions", "chunks", "long_quantity", "short_quantity",
                       "realized_pnl", "fees", "orders_expired", "order_margin_released", "covered", "bad_debt",
                       "ledger_transaction", "attempts", "error", "requested_by", "priced_at", "finished_at")
    fields = readonly_fields

    def get_inlines(self, request, obj):
        return [DeliveryChunkInline] if obj is not None and obj.chunks else []

    @admin.display(description="the samples behind the price")
    def samples(self, obj):
        """Every minute of the window: its median, value, and the quotes kept (with weight) and dropped."""
        minutes = obj.audit.get("minutes", [])
        if not minutes:
            return obj.audit.get("reason") or "—"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((_minute(m["start"]), m["median"] or "—", m["value"] or m.get("reason") or "—",
              ", ".join(f"{q['venue']} {q['price']} × {q['weight']}" for q in m["kept"]) or "—",
              ", ".join(f"{q['venue']} {q['price']} ({q['reason']})" for q in m["dropped"]) or "—")
             for m in minutes),
        )
        weights = ", ".join(f"{v} {w}" for v, w in obj.audit.get("weights", {}).items())
        return format_html(
            "<p>Weights: {}. Unrounded mean: {}.</p><table><tr><th>minute (UTC)</th><th>median</th><th>value</th>"
            "<th>kept (price × source weight × volume)</th><th>dropped</th></tr>{}</table>",
            weights or "—", obj.audit.get("unrounded") or "—", rows)


def _minute(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=dt_timezone.utc).strftime("%Y-%m-%d %H:%M")
