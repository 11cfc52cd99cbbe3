"""The prices order entry and triggering are judged by: mark price and last trade price."""
from decimal import Decimal

from apps.marketdata.selectors import price_latest

from .models import Trade, WorkingType


def mark_price(contract) -> Decimal | None:
    snapshot = price_latest(contract=contract)
    return snapshot.mark_price if snapshot is not None else None


def last_price(contract) -> Decimal | None:
    return Trade.objects.filter(contract=contract).order_by("-id").values_list("price", flat=True).first()


def working_price(contract, working_type: str) -> Decimal | None:
    return mark_price(contract) if working_type == WorkingType.MARK_PRICE else last_price(contract)
