"""Reads the liquidation tests share: balances of users and system accounts, sizes, records."""
from decimal import Decimal

from apps.ledger.models import AccountKind
from apps.ledger.selectors import balance_amount
from apps.ledger.services import account_get_or_create, system_account
from apps.liquidation.models import LiquidationRecord
from apps.positions.models import Position


def usdt_of(account) -> Decimal:
    return balance_amount(account=account, asset_code="USDT")


def wallet_of(user) -> Decimal:
    return usdt_of(account_get_or_create(kind=AccountKind.WALLET, user=user))


def isolated_of(user, contract) -> Decimal:
    return usdt_of(account_get_or_create(kind=AccountKind.ISOLATED_MARGIN, user=user, contract=contract))


def fund() -> Decimal:
    return usdt_of(system_account(AccountKind.INSURANCE_FUND))


def bad_debt() -> Decimal:
    return usdt_of(system_account(AccountKind.BAD_DEBT))


def size_of(user) -> Decimal:
    return Position.objects.get(user=user).size


def records(liquidation, kind):
    return list(LiquidationRecord.objects.filter(liquidation=liquidation, kind=kind).order_by("id"))
