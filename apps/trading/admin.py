"""Orders and trades: read-only records (the matcher is their only writer)."""
from django.contrib import admin

from apps.ledger.admin import ReadOnlyAdmin

from .models import Order, Trade


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "contract", "side", "order_type", "price", "quantity", "executed_qty", "status", "created_at")
    list_filter = ("contract", "status", "side", "order_type")
    search_fields = ("user__username", "client_order_id")
    list_select_related = ("user", "contract")
    date_hierarchy = "created_at"


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    list_display = ("id", "contract", "price", "quantity", "taker_side", "taker_order", "maker_order", "created_at")
    list_filter = ("contract", "taker_side")
    search_fields = ("taker_order__user__username", "maker_order__user__username")
    date_hierarchy = "created_at"
