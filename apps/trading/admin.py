"""Orders and trades: read-only records (the matcher is their only writer)."""
from django.contrib import admin

from apps.ledger.admin import ReadOnlyAdmin

from .models import CONDITIONAL_TYPES, OPEN_STATUSES, Order, OrderCommand, Trade


class WaitingFilter(admin.SimpleListFilter):
    title = "conditional state"
    parameter_name = "conditional"

    def lookups(self, request, model_admin):
        return (("waiting", "Waiting for its trigger"), ("fired", "Triggered"))

    def queryset(self, request, queryset):
        conditional = queryset.filter(order_type__in=CONDITIONAL_TYPES)
        if self.value() == "waiting":
            return conditional.filter(triggered_at__isnull=True, status__in=OPEN_STATUSES)
        if self.value() == "fired":
            return conditional.filter(triggered_at__isnull=False)
        return queryset


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "contract", "side", "order_type", "price", "stop_price", "quantity",
                    "executed_qty", "margin_held", "status", "reduce_only", "created_at")
    list_filter = ("contract", "status", "side", "order_type", WaitingFilter, "reduce_only", "working_type")
    search_fields = ("user__username", "client_order_id")
    list_select_related = ("user", "contract")
    date_hierarchy = "created_at"


@admin.register(OrderCommand)
class OrderCommandAdmin(ReadOnlyAdmin):
    """The journal: what the matcher has processed (DONE) and what it still owes (PENDING)."""

    list_display = ("seq", "contract", "kind", "order", "status", "created_at", "processed_at")
    list_filter = ("contract", "status", "kind")
    list_select_related = ("contract", "order")


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    list_display = ("id", "contract", "price", "quantity", "taker_side", "taker_order", "maker_order", "created_at")
    list_filter = ("contract", "taker_side")
    search_fields = ("taker_order__user__username", "maker_order__user__username")
    date_hierarchy = "created_at"
