"""Positions are changed only by the matcher's booking and the liquidation engine: read-only here."""
from django.contrib import admin

from apps.ledger.admin import ReadOnlyAdmin

from .models import Position


@admin.register(Position)
class PositionAdmin(ReadOnlyAdmin):
    list_display = ("id", "user", "contract", "size", "entry_price", "leverage", "margin_type", "realized_pnl", "updated_at")
    list_filter = ("contract", "margin_type")
    search_fields = ("user__username", "contract__symbol")
    list_select_related = ("user", "contract")
