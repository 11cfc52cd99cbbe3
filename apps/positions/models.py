"""Positions: one per (user, contract) in one-way mode, with a signed size.

Isolated margin is not a column here: it is the balance of the position's
ISOLATED_MARGIN ledger account, so the ledger stays the only record of money.
"""
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.ledger.fields import MoneyField


class MarginType(models.TextChoices):
    CROSS = "CROSS"
    ISOLATED = "ISOLATED"


class Position(models.Model):
    # No index on `size` (nor one filtered by it) and room on every page (fillfactor 45, migration
    # 0002): a fill or a delivery changes size, entry price and PnL, none indexed, so the update is
    # HOT — no index writes. Open positions of a contract are found through the contract index.
    # The user index is the unique (user, contract) constraint's.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="positions",
                             db_index=False)
    contract = models.ForeignKey("contracts.Contract", on_delete=models.PROTECT, related_name="positions")
    # Signed: > 0 long, < 0 short, 0 flat (the row stays for leverage and margin type).
    size = MoneyField(default=Decimal("0"))
    entry_price = MoneyField(default=Decimal("0"))
    leverage = models.PositiveSmallIntegerField(default=20)
    margin_type = models.CharField(max_length=8, choices=MarginType.choices, default=MarginType.CROSS)
    realized_pnl = MoneyField(default=Decimal("0"))
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["contract_id", "user_id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "contract"], name="position_one_per_user_contract"),
            models.CheckConstraint(condition=Q(leverage__gte=1), name="position_leverage_positive"),
            models.CheckConstraint(condition=Q(entry_price__gte=0), name="position_entry_non_negative"),
            models.CheckConstraint(
                condition=~Q(size=0) | Q(entry_price=0), name="position_flat_has_no_entry_price"
            ),
            models.CheckConstraint(
                condition=Q(size=0) | Q(entry_price__gt=0), name="position_open_has_entry_price"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.contract.symbol} {self.size}"

    @property
    def side(self) -> str:
        if self.size > 0:
            return "LONG"
        if self.size < 0:
            return "SHORT"
        return "FLAT"

    @property
    def notional_at_entry(self) -> Decimal:
        return self.size * self.entry_price * self.contract.contract_size
