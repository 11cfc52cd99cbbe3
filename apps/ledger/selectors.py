"""Reads of accounts, balances and income lines (no writes here)."""
from datetime import datetime
from decimal import Decimal

from .models import Account, Balance, Income


def balance_amount(*, account: Account, asset_code: str) -> Decimal:
    row = Balance.objects.filter(account=account, asset__code=asset_code).values_list("amount", flat=True).first()
    return row if row is not None else Decimal(0)


def system_balances() -> list[dict]:
    """Balances of every system account, for the ops dashboard."""
    return list(
        Balance.objects.filter(account__user__isnull=True)
        .values("account__kind", "asset__code", "amount", "updated_at")
        .order_by("account__kind", "asset__code")
    )



def incomes_of_user(*, user, symbol: str | None = None, income_type: str | None = None,
                    start: datetime | None = None, end: datetime | None = None, limit: int = 100,
                    page: int = 1) -> list[Income]:
    """Binance `income`: oldest first; from `start` upwards when given, else the newest page."""
    rows = Income.objects.select_related("asset").filter(user=user)
    if symbol is not None:
        rows = rows.filter(symbol=symbol)
    if income_type is not None:
        rows = rows.filter(income_type=income_type)
    if start is not None:
        rows = rows.filter(created_at__gte=start)
    if end is not None:
        rows = rows.filter(created_at__lte=end)
    window = slice((page - 1) * limit, page * limit)
    if start is not None:
        return list(rows.order_by("id")[window])
    return list(reversed(rows.order_by("-id")[window]))
