"""Liquidations, their step records (ADL executions included: kind ADL, with the counterparty,
quantity, price and PnL) and margin calls: read-only (written by the liquidation engine)."""
from django.contrib import admin

from apps.ledger.admin import ReadOnlyAdmin

from .models import Liquidation, LiquidationRecord, MarginCall


class LiquidationRecordInline(admin.TabularInline):
    model = LiquidationRecord
    extra = 0
    can_delete = False
    fields = ("created_at", "kind", "step", "symbol", "order", "counterparty", "quantity", "price", "bankruptcy_price",
              "pnl", "ratio", "clearance_fee", "surplus_to_fund", "fund_cover", "bad_debt", "details")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Liquidation)
class LiquidationAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "scope", "contract", "asset", "status", "ratio", "equity", "maintenance", "steps",
                    "started_at", "finished_at")
    list_filter = ("status", "scope", "contract", "asset")
    search_fields = ("user__username",)
    date_hierarchy = "started_at"
    list_select_related = ("user", "contract", "asset")
    inlines = [LiquidationRecordInline]


@admin.register(LiquidationRecord)
class LiquidationRecordAdmin(ReadOnlyAdmin):
    list_display = ("id", "liquidation", "kind", "step", "symbol", "order", "counterparty", "quantity", "price",
                    "bankruptcy_price", "pnl", "clearance_fee", "surplus_to_fund", "fund_cover", "bad_debt",
                    "created_at")
    list_filter = ("kind", "symbol")  # kind ADL: every auto-deleveraging execution
    search_fields = ("liquidation__user__username", "counterparty__username", "symbol")
    list_select_related = ("liquidation__user", "order", "counterparty")


@admin.register(MarginCall)
class MarginCallAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "scope", "contract", "asset", "level", "ratio", "equity", "maintenance",
                    "deposit_required", "created_at")
    list_filter = ("level", "scope", "contract", "asset")
    search_fields = ("user__username",)
    list_select_related = ("user", "contract", "asset")
