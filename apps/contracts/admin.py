"""Contract specs with their margin tiers inline; the tier table is validated as a whole."""
import logging

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied

from exchange.errors import ExchangeError

from .lifecycle import contract_halt, contract_resume
from .models import Contract, ContractStatusChange, MarginTier
from .tiers import TierSpec, tiers_validate

logger = logging.getLogger(__name__)


def action_failed(model_admin, request, label: str, exc: Exception) -> None:
    """An admin action that failed, shown to the operator (never a 500); anything but a domain
    refusal (ExchangeError) is also logged with its traceback."""
    if not isinstance(exc, ExchangeError):
        logger.error("admin action on %s failed", label, exc_info=exc)
    model_admin.message_user(request, f"{label}: {exc}", messages.ERROR)


class MarginTierFormSet(forms.BaseInlineFormSet):
    def clean(self):
        super().clean()
        specs = []
        for form in self.forms:
            data = getattr(form, "cleaned_data", None)
            if not data or data.get("DELETE") or form.errors:
                continue
            specs.append(
                TierSpec(
                    bracket=data["bracket"],
                    notional_floor=data["notional_floor"],
                    notional_cap=data["notional_cap"],
                    maintenance_rate=data["maintenance_rate"],
                    maintenance_amount=data["maintenance_amount"],
                    max_leverage=data["max_leverage"],
                )
            )
        problems = tiers_validate(specs) if specs else []
        if problems:
            raise forms.ValidationError(problems)


class MarginTierInline(admin.TabularInline):
    model = MarginTier
    formset = MarginTierFormSet
    extra = 0
    ordering = ("bracket",)


class StatusChangeInline(admin.TabularInline):
    model = ContractStatusChange
    fields = ("at", "from_status", "to_status", "reason", "actor", "recorded_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("at", "id")

    def has_add_permission(self, request, obj=None):
        return False


class LifecycleActions:
    """Halt and resume through the lifecycle (one place for the admin's status changes).

    Both need `contracts.halt_contract`, on the contracts and on the delivery calendar alike.
    """

    def has_halt_contract_permission(self, request):
        return request.user.has_perm("contracts.halt_contract")

    @admin.action(description="Halt trading (the matcher stops; resume returns to the previous status)",
                  permissions=["halt_contract"])
    def halt(self, request, queryset):
        self._require_halt_permission(request)
        for contract in queryset:
            self._lifecycle(request, contract, contract_halt, "halted")

    @admin.action(description="Resume a halted contract", permissions=["halt_contract"])
    def resume(self, request, queryset):
        self._require_halt_permission(request)
        for contract in queryset:
            self._lifecycle(request, contract, contract_resume, "resumed")

    def _require_halt_permission(self, request) -> None:
        # Django only offers and runs the actions with the permission; refuse here too.
        if not self.has_halt_contract_permission(request):
            raise PermissionDenied

    def _lifecycle(self, request, contract, change, done: str) -> None:
        try:
            changed = change(contract=contract, actor=request.user)
        except Exception as exc:
            action_failed(self, request, contract.symbol, exc)
            return
        self.message_user(request, f"{contract.symbol} {done}." if changed else f"{contract.symbol}: no change.")


@admin.register(Contract)
class ContractAdmin(LifecycleActions, admin.ModelAdmin):
    list_display = ("symbol", "contract_type", "status", "max_leverage", "maker_fee_rate", "taker_fee_rate", "delivery_time")
    list_filter = ("contract_type", "status")
    search_fields = ("symbol",)
    inlines = [MarginTierInline, StatusChangeInline]
    actions = ["halt", "resume"]
    fieldsets = (
        (None, {"fields": ("symbol", "contract_type", "status", "base_asset", "quote_asset", "settle_asset", "onboard_time")}),
        ("Grid and limits", {"fields": (
            "contract_size", "tick_size", "lot_size", "min_qty", "max_qty", "market_max_qty", "min_notional",
            "min_price", "max_price",
            "price_precision", "quantity_precision", "max_open_orders",
            "percent_price_up", "percent_price_down", "market_max_deviation",
        )}),
        ("Leverage and fees", {"fields": ("max_leverage", "maker_fee_rate", "taker_fee_rate", "liquidation_fee_rate")}),
        ("Funding (perpetual)", {"fields": (
            "funding_interval_hours", "funding_rate_cap", "funding_rate_floor", "interest_rate",
            "funding_policy", "impact_notional",
        )}),
        ("Delivery", {"fields": ("delivery_time", "settlement_window_minutes", "delivery_fee_rate", "settlement_price")}),
    )

    def get_readonly_fields(self, request, obj=None):
        # The grid and the settlement price define booked history once a contract exists.
        if obj is None:
            return ()
        # The status moves only through the lifecycle (actions here, the delivery scheduler).
        return ("symbol", "contract_type", "status", "base_asset", "quote_asset", "settle_asset", "contract_size",
                "settlement_price")
