"""Contract specs with their margin tiers inline; the tier table is validated as a whole."""
from django import forms
from django.contrib import admin

from .models import Contract, MarginTier
from .tiers import TierSpec, tiers_validate


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


@admin.register(Contract)
class ContractAdmin(admin.ModelAdmin):
    list_display = ("symbol", "contract_type", "status", "max_leverage", "maker_fee_rate", "taker_fee_rate", "delivery_time")
    list_filter = ("contract_type", "status")
    search_fields = ("symbol",)
    inlines = [MarginTierInline]
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
        return ("symbol", "contract_type", "base_asset", "quote_asset", "settle_asset", "contract_size", "settlement_price")
