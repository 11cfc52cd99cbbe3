"""Liquidations (each also the account's freeze), their step records, and margin calls.

A `Liquidation` row in status ACTIVE is the freeze: order entry refuses the user's
orders (-2023) while one exists. One ACTIVE liquidation per scope (user + asset + contract
for an isolated position, user + settle asset for the cross account: a USDT-settled and a
BTC-settled cross account are separate scopes) is a unique constraint, so a scope is never
liquidated twice at once, and one scope's liquidation never holds up another's. Every step
of it is a `LiquidationRecord`; each liquidation order and each auto-deleveraging step has
a step number unique within its liquidation, and each ADL execution is unique per (step,
counterparty), so a step replayed after a crash cannot be booked twice.
"""
from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.ledger.fields import MoneyField


class LiquidationStatus(models.TextChoices):
    ACTIVE = "ACTIVE"
    DONE = "DONE"


class Scope(models.TextChoices):
    CROSS = "CROSS"
    ISOLATED = "ISOLATED"


class Liquidation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="liquidations")
    asset = models.ForeignKey("ledger.Asset", on_delete=models.PROTECT, related_name="+")
    scope = models.CharField(max_length=8, choices=Scope.choices)
    # The isolated position's contract; null for the cross account.
    contract = models.ForeignKey("contracts.Contract", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="+")
    status = models.CharField(max_length=8, choices=LiquidationStatus.choices, default=LiquidationStatus.ACTIVE)
    # Margin ratio, equity and maintenance margin that started it.
    ratio = models.DecimalField(max_digits=40, decimal_places=18)
    equity = MoneyField()
    maintenance = MoneyField()
    steps = models.PositiveIntegerField(default=0)  # liquidation orders journalled so far
    started_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "asset", "contract"], condition=Q(status="ACTIVE"),
                                    nulls_distinct=False, name="liquidation_one_active_per_scope"),
            models.CheckConstraint(condition=Q(scope="CROSS", contract__isnull=True)
                                   | Q(scope="ISOLATED", contract__isnull=False), name="liquidation_scope_contract"),
        ]
        indexes = [models.Index(fields=["user"], condition=Q(status="ACTIVE"), name="liquidation_active_by_user")]

    def __str__(self) -> str:
        where = self.contract.symbol if self.contract_id else "cross"
        return f"#{self.pk} {self.user} {where} {self.status}"


class RecordKind(models.TextChoices):
    CONDITIONS = "CONDITIONS", "Conditions that triggered it"
    FREEZE = "FREEZE", "Account frozen, open orders cancelled"
    PLAN = "PLAN", "Plan: positions in priority order"
    ORDER = "ORDER", "Liquidation order journalled"
    EXECUTION = "EXECUTION", "Fills of a liquidation order (fee, surplus, fund, bad debt)"
    NO_FILL = "NO_FILL", "A liquidation order filled nothing"
    DELEVERAGE = "DELEVERAGE", "Auto-deleveraging step (the fund could not cover the gap)"
    ADL = "ADL", "ADL execution against one counterparty"
    FINISHED = "FINISHED", "Ratio restored or nothing left: unfrozen"


class LiquidationRecord(models.Model):
    liquidation = models.ForeignKey(Liquidation, on_delete=models.PROTECT, related_name="records")
    kind = models.CharField(max_length=12, choices=RecordKind.choices)
    symbol = models.CharField(max_length=32, blank=True)
    order = models.ForeignKey("trading.Order", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # ORDER and DELEVERAGE records: the liquidation's step number (`Liquidation.steps`); ADL
    # records carry their DELEVERAGE step's number.
    step = models.PositiveIntegerField(null=True, blank=True)
    # ADL: the deleveraged counterparty and its realized PnL at the bankruptcy price.
    counterparty = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="adl_records")
    pnl = MoneyField(null=True, blank=True)
    quantity = MoneyField(null=True, blank=True)
    price = MoneyField(null=True, blank=True)
    bankruptcy_price = MoneyField(null=True, blank=True)
    ratio = models.DecimalField(max_digits=40, decimal_places=18, null=True, blank=True)
    # Money of an EXECUTION: clearance fee and surplus paid into the insurance fund, the
    # deficit it covered, and what it could not (recorded bad debt).
    clearance_fee = MoneyField(default=0)
    surplus_to_fund = MoneyField(default=0)
    fund_cover = MoneyField(default=0)
    bad_debt = MoneyField(default=0)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["liquidation", "step"], condition=Q(kind__in=["ORDER", "DELEVERAGE"]),
                                    name="liquidation_record_one_per_step"),
            models.UniqueConstraint(fields=["liquidation", "step", "counterparty"], condition=Q(kind="ADL"),
                                    name="liquidation_record_adl_once"),
            models.CheckConstraint(condition=~Q(kind="ADL") | Q(counterparty__isnull=False, step__isnull=False),
                                   name="liquidation_record_adl_counterparty"),
        ]
        indexes = [models.Index(fields=["counterparty"], condition=Q(kind="ADL"), name="liquidation_adl_by_user")]

    def __str__(self) -> str:
        return f"#{self.liquidation_id}.{self.pk} {self.kind} {self.symbol}"

    @property
    def fund_delta(self):
        return self.clearance_fee + self.surplus_to_fund - self.fund_cover


class MarginLevel(models.TextChoices):
    NORMAL = "NORMAL"
    WARNING = "WARNING"
    DANGER = "DANGER"
    LIQUIDATION = "LIQUIDATION"


class MarginCall(models.Model):
    """A MARGIN_CALL pushed to a user (recorded whether or not anybody was listening)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="margin_calls")
    # The scope's settle asset: with the contract (null for the cross account) it names the scope,
    # a USDT-settled and a BTC-settled cross account being separate ones.
    asset = models.ForeignKey("ledger.Asset", on_delete=models.PROTECT, related_name="+")
    scope = models.CharField(max_length=8, choices=Scope.choices)
    contract = models.ForeignKey("contracts.Contract", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="+")
    level = models.CharField(max_length=12, choices=MarginLevel.choices)
    ratio = models.DecimalField(max_digits=40, decimal_places=18)
    equity = MoneyField()
    maintenance = MoneyField()
    deposit_required = MoneyField()
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["user", "asset", "contract", "-id"], name="margin_call_by_asset_scope")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.user} {self.level}"
