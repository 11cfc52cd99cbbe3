"""Reads of accounts and balances (no writes here)."""
from decimal import Decimal

from .models import Account, Balance


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

