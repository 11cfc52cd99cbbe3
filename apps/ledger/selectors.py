"""Reads of accounts and balances (no writes here)."""
from decimal import Decimal

from .models import Account, AccountKind, Balance, LedgerEntry


def balance_amount(*, account: Account, asset_code: str) -> Decimal:
    row = Balance.objects.filter(account=account, asset__code=asset_code).values_list("amount", flat=True).first()
    return row if row is not None else Decimal(0)


def user_wallet_balances(*, user) -> dict[str, Decimal]:
    rows = Balance.objects.filter(account__user=user, account__kind=AccountKind.WALLET).values_list(
        "asset__code", "amount"
    )
    return dict(rows)


def system_balances() -> list[dict]:
    """Balances of every system account, for the ops dashboard."""
    return list(
        Balance.objects.filter(account__user__isnull=True)
        .values("account__kind", "asset__code", "amount", "updated_at")
        .order_by("account__kind", "asset__code")
    )


def account_history(*, account: Account, asset_code: str, limit: int = 200):
    """The latest entries of an account with the balance after each (e.g. insurance fund history)."""
    return (
        LedgerEntry.objects.filter(account=account, asset__code=asset_code)
        .select_related("transaction")
        .order_by("-id")[:limit]
    )
