"""Ops console for the ledger: accounts with the wallet adjustment action, read-only history."""
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.shortcuts import render

from exchange.errors import ExchangeError

from .forms import WalletAdjustmentForm
from .models import Account, AccountKind, Asset, Balance, Income, LedgerEntry, LedgerTransaction
from .services import wallet_adjust


class ReadOnlyAdmin(admin.ModelAdmin):
    """History that must not be edited: viewable by staff, never changed through the admin."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Asset)
class AssetAdmin(admin.ModelAdmin):
    list_display = ("code", "name", "precision")
    search_fields = ("code", "name")

    def get_readonly_fields(self, request, obj=None):
        # Changing the precision of an asset that has balances would re-interpret history.
        return ("code", "precision") if obj else ()


class BalanceInline(admin.TabularInline):
    model = Balance
    fields = ("asset", "amount", "updated_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("id", "kind", "user", "contract", "created_at")
    list_filter = ("kind",)
    search_fields = ("user__username", "user__email", "contract__symbol")
    list_select_related = ("user", "contract")
    readonly_fields = ("kind", "user", "contract", "created_at")
    inlines = [BalanceInline]
    actions = ["adjust_wallet"]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_adjust_wallet_permission(self, request):
        return request.user.has_perm("ledger.adjust_wallet")

    @admin.action(description="Credit or debit the wallet (booked through the ledger)", permissions=["adjust_wallet"])
    def adjust_wallet(self, request, queryset):
        # Django offers and runs the action only with the permission; the form and its
        # apply=1 POST come back through here, so refuse again rather than rely on that alone.
        if not self.has_adjust_wallet_permission(request):
            raise PermissionDenied
        wallets = list(queryset.filter(kind=AccountKind.WALLET).select_related("user"))
        if len(wallets) != queryset.count() or not wallets:
            self.message_user(request, "Select user WALLET accounts only.", messages.ERROR)
            return None
        form = WalletAdjustmentForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            try:
                with transaction.atomic():
                    for wallet in wallets:
                        wallet_adjust(
                            user=wallet.user,
                            asset=form.cleaned_data["asset"],
                            amount=form.signed_amount(),
                            memo=form.cleaned_data["memo"],
                            created_by=request.user,
                        )
            except ExchangeError as exc:
                self.message_user(request, f"Nothing booked: {exc.msg}", messages.ERROR)
                return None
            self.message_user(
                request, f"Booked {form.signed_amount()} {form.cleaned_data['asset']} on {len(wallets)} wallet(s)."
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Credit or debit wallets",
            "form": form,
            "accounts": wallets,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return render(request, "admin/ledger/adjust_wallet.html", context)


@admin.register(Balance)
class BalanceAdmin(ReadOnlyAdmin):
    list_display = ("account", "asset", "amount", "updated_at")
    list_filter = ("asset", "account__kind")
    search_fields = ("account__user__username",)
    list_select_related = ("account__user", "account__contract", "asset")


class LedgerEntryInline(admin.TabularInline):
    model = LedgerEntry
    fields = ("account", "asset", "amount", "balance_after")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "memo", "created_by", "idempotency_key", "created_at")
    list_filter = ("kind", "created_at")
    search_fields = ("memo", "idempotency_key", "entries__account__user__username")
    date_hierarchy = "created_at"
    inlines = [LedgerEntryInline]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "transaction", "account", "asset", "amount", "balance_after")
    list_filter = ("asset", "account__kind", "transaction__kind")
    search_fields = ("account__user__username", "transaction__memo")
    list_select_related = ("transaction", "account__user", "account__contract", "asset")


@admin.register(Income)
class IncomeAdmin(ReadOnlyAdmin):
    """What clients see in GET /fapi/v1/income: transfers, commissions, realized PnL, funding."""

    list_display = ("id", "user", "symbol", "income_type", "amount", "asset", "trade_id", "transaction", "created_at")
    list_filter = ("income_type", "symbol", "asset")
    search_fields = ("user__username",)
    list_select_related = ("user", "asset", "transaction")
    date_hierarchy = "created_at"
