"""Assets, accounts and the double-entry ledger.

Every change of a balance is a `LedgerTransaction` whose `LedgerEntry` legs sum to
zero per asset; the database refuses anything else (a statement-level trigger, see
migration 0002) and refuses edits of entries (append-only). `Balance` is the running
total per (account, asset), written only by `apps.ledger.services` in the same
database transaction as the entries.
"""
from django.conf import settings
from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models import Q

from .fields import MoneyField


class Asset(models.Model):
    code = models.CharField(max_length=16, unique=True)
    name = models.CharField(max_length=64, blank=True)
    # Fractional digits a booked amount of this asset may carry (USDT: 8).
    precision = models.PositiveSmallIntegerField(default=8)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.CheckConstraint(condition=Q(precision__lte=18), name="asset_precision_max_18"),
            models.CheckConstraint(condition=Q(code__regex=r"^[A-Z0-9]{2,16}$"), name="asset_code_upper"),
        ]

    def __str__(self) -> str:
        return self.code


class AccountKind(models.TextChoices):
    # Belong to a user.
    WALLET = "WALLET", "User wallet (cross margin lives here)"
    ORDER_MARGIN = "ORDER_MARGIN", "Margin held by open orders"
    ISOLATED_MARGIN = "ISOLATED_MARGIN", "Isolated position margin (per contract)"
    # What the user owes (<= 0): a loss beyond the free wallet, borrowed against the order
    # margin the user still holds, and repaid first from what returns to the wallet.
    RECEIVABLE = "RECEIVABLE", "Owed by the user, backed by order margin held"
    # System accounts, one of each.
    FEE_INCOME = "FEE_INCOME", "Fee income"
    INSURANCE_FUND = "INSURANCE_FUND", "Insurance fund"
    FUNDING_CLEARING = "FUNDING_CLEARING", "Funding clearing (holds funding rounding dust)"
    PNL_CLEARING = "PNL_CLEARING", "Realized PnL clearing"
    # Holds a delivery booked in chunks between its plan and its last chunk (zero otherwise).
    DELIVERY_CLEARING = "DELIVERY_CLEARING", "Delivery clearing (a delivery booking in chunks)"
    BAD_DEBT = "BAD_DEBT", "Bad debt"
    EXTERNAL = "EXTERNAL", "External world (deposits and withdrawals)"


USER_KINDS = (AccountKind.WALLET, AccountKind.ORDER_MARGIN, AccountKind.ISOLATED_MARGIN, AccountKind.RECEIVABLE)
# What a user owns (>= 0 always, except by recorded bad debt); a RECEIVABLE is what they owe.
USER_ASSET_KINDS = (AccountKind.WALLET, AccountKind.ORDER_MARGIN, AccountKind.ISOLATED_MARGIN)
# A user's cross-margin cash: free wallet, order margin held, less what they owe.
CROSS_KINDS = (AccountKind.WALLET, AccountKind.ORDER_MARGIN, AccountKind.RECEIVABLE)
SYSTEM_KINDS = tuple(kind for kind in AccountKind if kind not in USER_KINDS)
# Accounts whose balance may be negative by construction (the counterpart of money
# that entered or left, or a clearing account in between). Every other balance has a
# database CHECK that keeps it >= 0.
MAY_GO_NEGATIVE_KINDS = (
    AccountKind.EXTERNAL,
    AccountKind.PNL_CLEARING,
    AccountKind.FUNDING_CLEARING,
    AccountKind.DELIVERY_CLEARING,
    AccountKind.BAD_DEBT,
    AccountKind.RECEIVABLE,
)


class Account(models.Model):
    kind = models.CharField(max_length=24, choices=AccountKind.choices)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="ledger_accounts"
    )
    contract = models.ForeignKey(
        "contracts.Contract", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        # The admin's wallet adjustment books money: not granted by view/change on accounts.
        permissions = [("adjust_wallet", "Can credit or debit a wallet")]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "user", "contract"], nulls_distinct=False, name="account_unique_kind_user_contract"
            ),
            models.CheckConstraint(
                condition=Q(kind__in=USER_KINDS, user__isnull=False) | (~Q(kind__in=USER_KINDS) & Q(user__isnull=True)),
                name="account_user_iff_user_kind",
            ),
            models.CheckConstraint(
                condition=Q(kind=AccountKind.ISOLATED_MARGIN, contract__isnull=False)
                | (~Q(kind=AccountKind.ISOLATED_MARGIN) & Q(contract__isnull=True)),
                name="account_contract_iff_isolated",
            ),
        ]

    def __str__(self) -> str:
        owner = self.user.get_username() if self.user_id else "system"
        suffix = f" {self.contract.symbol}" if self.contract_id else ""
        return f"{owner}:{self.kind}{suffix}"

    @property
    def is_user_account(self) -> bool:
        return self.kind in USER_KINDS


class Balance(models.Model):
    # No single-column indexes: balance_unique_account_asset serves account lookups, and an
    # asset is never deleted. Fewer indexes and the table's fillfactor (migration 0005)
    # let a posting's balance updates be HOT (no index writes).
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="balances", db_index=False)
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+", db_index=False)
    amount = MoneyField(default=0)
    # Copied from the account kind when the row is created so the database itself can
    # refuse a negative user balance (a CHECK cannot look at another table).
    may_go_negative = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["account_id", "asset_id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "asset"], name="balance_unique_account_asset"),
            models.CheckConstraint(
                condition=Q(may_go_negative=True) | Q(amount__gte=0), name="balance_non_negative_unless_allowed"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.amount} {self.asset.code}"


class TransactionKind(models.TextChoices):
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    ADJUSTMENT = "ADJUSTMENT", "Manual adjustment by ops"
    TRANSFER = "TRANSFER"
    ORDER_MARGIN = "ORDER_MARGIN", "Order margin hold / release"
    TRADE = "TRADE", "Trade: fees, realized PnL, margin"
    FUNDING = "FUNDING"
    LIQUIDATION = "LIQUIDATION"
    INSURANCE = "INSURANCE"
    ADL = "ADL", "Auto-deleveraging"
    BAD_DEBT = "BAD_DEBT"
    DELIVERY = "DELIVERY"


class LedgerTransaction(models.Model):
    kind = models.CharField(max_length=16, choices=TransactionKind.choices)
    # Repeats are refused by key: a job or an external adjustment carries one.
    idempotency_key = models.CharField(max_length=128, null=True, blank=True, unique=True)
    memo = models.CharField(max_length=255, blank=True)
    reference = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind}"


class LedgerEntry(models.Model):
    # No per-row foreign-key constraints on the two bulk tables (entries, income): a
    # funding or delivery posting writes ~1M rows, and PostgreSQL checks a foreign key
    # row by row (~10 µs each, 3 per row: longer than the whole posting). The statement
    # triggers of migration 0004 check the references set-based instead, and referenced
    # rows cannot go away (see there). No single-column indexes on account and asset:
    # entry_account_asset_id serves account lookups, and an asset is never deleted. The
    # transaction's index is a BRIN (migration 0007): entries are appended in about the
    # order of their transaction ids, and a B-tree insert per row cost 10-30% of an entry.
    transaction = models.ForeignKey(
        LedgerTransaction, on_delete=models.PROTECT, related_name="entries", db_constraint=False, db_index=False
    )
    account = models.ForeignKey(
        Account, on_delete=models.PROTECT, related_name="entries", db_constraint=False, db_index=False
    )
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False)
    amount = MoneyField()
    # The account's balance of this asset right after this entry: a balance history
    # (insurance fund, wallets) without replaying the ledger.
    balance_after = MoneyField()

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "ledger entries"
        indexes = [
            models.Index(fields=["account", "asset", "id"], name="entry_account_asset_id"),
            BrinIndex(fields=["transaction"], name="entry_transaction_brin", autosummarize=True),
        ]
        constraints = [models.CheckConstraint(condition=~Q(amount=0), name="entry_amount_non_zero")]

    def __str__(self) -> str:
        return f"{self.account} {self.amount:+} {self.asset.code}"


class IncomeType(models.TextChoices):
    """Binance `incomeType` values (their spelling, including DELIVERED_SETTELMENT)."""

    TRANSFER = "TRANSFER"
    REALIZED_PNL = "REALIZED_PNL"
    FUNDING_FEE = "FUNDING_FEE"
    COMMISSION = "COMMISSION"
    INSURANCE_CLEAR = "INSURANCE_CLEAR"
    DELIVERED_SETTELMENT = "DELIVERED_SETTELMENT"
    AUTO_EXCHANGE = "AUTO_EXCHANGE"


class Income(models.Model):
    """A user's cash flow as the client API reports it (`GET /fapi/v1/income`).

    The ledger nets a whole matcher batch into one transaction, so the per-trade and
    per-position lines a client sees are kept here, written in the same transaction
    as the ledger posting they explain (`transaction` points at it).
    """

    # References checked per statement, as for ledger entries; income_user_time serves user lookups.
    # No index on the transaction or on the time alone: nothing looks lines up by either (the
    # API reads a user's lines by time, the admin lists them newest first), and a funding or
    # delivery posting writes a line per position: every index costs ~1-2 µs a line.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="incomes", db_constraint=False, db_index=False
    )
    symbol = models.CharField(max_length=32, blank=True)
    income_type = models.CharField(max_length=24, choices=IncomeType.choices)
    amount = MoneyField()
    asset = models.ForeignKey(Asset, on_delete=models.PROTECT, related_name="+", db_constraint=False, db_index=False)
    info = models.CharField(max_length=64, blank=True)
    trade_id = models.BigIntegerField(null=True, blank=True)
    transaction = models.ForeignKey(LedgerTransaction, on_delete=models.PROTECT, related_name="+", db_constraint=False,
                                    db_index=False)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["user", "created_at"], name="income_user_time")]

    def __str__(self) -> str:
        return f"{self.user} {self.income_type} {self.amount}"
