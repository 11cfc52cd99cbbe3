"""Demo data for a fresh exchange: assets, BTC/ETH perpetuals with published brackets,
the next quarterly BTC contract, system accounts, a funded insurance fund, demo users
with balances, a staff login and the default alert rules. Idempotent: existing rows are kept, deposits carry
idempotency keys.
"""
import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from apps.contracts.calendar import delivery_symbol, quarterly_expiries_after
from apps.contracts.models import Contract, ContractStatus, ContractType
from apps.contracts.services import Bracket, contract_create, tiers_from_brackets
from apps.ledger.models import USER_KINDS, Account, AccountKind, Asset, TransactionKind
from apps.ledger.services import Leg, ledger_post, system_account, wallet_deposit
from apps.ops.alert_defaults import rules_seed
from apps.ops.models import AlertRule

D = Decimal

# Design section 4a: BTCUSDT leverage brackets (notional cap, max leverage, MMR).
BTC_BRACKETS = [
    Bracket(D("50000"), 125, D("0.004")),
    Bracket(D("250000"), 100, D("0.005")),
    Bracket(D("3000000"), 50, D("0.01")),
    Bracket(D("20000000"), 20, D("0.025")),
    Bracket(D("40000000"), 10, D("0.05")),
    Bracket(D("100000000"), 5, D("0.10")),
    Bracket(D("120000000"), 4, D("0.125")),
    Bracket(D("200000000"), 3, D("0.15")),
    Bracket(D("300000000"), 2, D("0.25")),
    Bracket(D("500000000"), 1, D("0.50")),
]
# The same shape with ETH's smaller caps.
ETH_BRACKETS = [
    Bracket(D("50000"), 125, D("0.004")),
    Bracket(D("250000"), 100, D("0.005")),
    Bracket(D("2000000"), 50, D("0.01")),
    Bracket(D("10000000"), 20, D("0.025")),
    Bracket(D("20000000"), 10, D("0.05")),
    Bracket(D("50000000"), 5, D("0.10")),
    Bracket(D("60000000"), 4, D("0.125")),
    Bracket(D("80000000"), 3, D("0.15")),
    Bracket(D("100000000"), 2, D("0.25")),
    Bracket(D("200000000"), 1, D("0.50")),
]
# Quarterly contracts allow less leverage.
QUARTERLY_BRACKETS = [
    Bracket(D("375000"), 25, D("0.02")),
    Bracket(D("2000000"), 10, D("0.05")),
    Bracket(D("5000000"), 5, D("0.10")),
    Bracket(D("10000000"), 4, D("0.125")),
    Bracket(D("20000000"), 3, D("0.15")),
    Bracket(D("50000000"), 2, D("0.25")),
    Bracket(D("100000000"), 1, D("0.50")),
]

DEMO_USERS = ("alice", "bob", "carol", "dave")
DEMO_DEPOSIT = D("100000")
INSURANCE_SEED = D("2000000")
OPS_USERNAME = "ops"


@dataclass
class SeedResult:
    created_contracts: list[str]
    ops_password: str | None  # set only when the ops user was created now


def _asset(code: str, name: str, precision: int = 8) -> Asset:
    asset, _ = Asset.objects.get_or_create(code=code, defaults={"name": name, "precision": precision})
    return asset


def _perpetual(symbol: str, base: Asset, usdt: Asset, brackets, **overrides) -> Contract | None:
    if Contract.objects.filter(symbol=symbol).exists():
        return None
    fields = dict(
        symbol=symbol,
        contract_type=ContractType.PERPETUAL,
        status=ContractStatus.TRADING,
        base_asset=base,
        quote_asset=usdt,
        settle_asset=usdt,
        onboard_time=timezone.now(),
        impact_notional=D("200") * brackets[0].max_leverage,  # 200 USDT / IMR at max leverage
    )
    fields.update(overrides)
    return contract_create(tiers=tiers_from_brackets(brackets), **fields)


def _quarterly(base_symbol: str, base: Asset, usdt: Asset, now: datetime) -> Contract | None:
    expiry = quarterly_expiries_after(now, count=1)[0]
    symbol = delivery_symbol(base_symbol, expiry)
    if Contract.objects.filter(symbol=symbol).exists():
        return None
    return contract_create(
        tiers=tiers_from_brackets(QUARTERLY_BRACKETS),
        symbol=symbol,
        contract_type=ContractType.DELIVERY,
        status=ContractStatus.TRADING,
        base_asset=base,
        quote_asset=usdt,
        settle_asset=usdt,
        max_leverage=25,
        delivery_time=expiry,
        onboard_time=now,
    )


def seed_demo(*, credentials_file: Path | None = None) -> SeedResult:
    now = timezone.now()
    User = get_user_model()
    with transaction.atomic():
        usdt = _asset("USDT", "Tether USD")
        btc = _asset("BTC", "Bitcoin")
        eth = _asset("ETH", "Ether")
        for kind in AccountKind:
            if kind not in USER_KINDS:
                system_account(kind)
        created = [
            c.symbol
            for c in (
                _perpetual("BTCUSDT", btc, usdt, BTC_BRACKETS),
                _perpetual(
                    "ETHUSDT", eth, usdt, ETH_BRACKETS, tick_size=D("0.01"), price_precision=2, max_qty=D("10000"),
                    market_max_qty=D("2000"),
                ),
                _quarterly("BTCUSDT", btc, usdt, now),
            )
            if c is not None
        ]
        ledger_post(
            kind=TransactionKind.INSURANCE,
            legs=[
                Leg(system_account(AccountKind.INSURANCE_FUND), usdt, INSURANCE_SEED),
                Leg(system_account(AccountKind.EXTERNAL), usdt, -INSURANCE_SEED),
            ],
            idempotency_key="seed:insurance-fund",
            memo="initial insurance fund",
        )
        for name in DEMO_USERS:
            user, _ = User.objects.get_or_create(username=name, defaults={"email": f"{name}@demo.invalid"})
            Account.objects.get_or_create(kind=AccountKind.WALLET, user=user, contract=None)
            wallet_deposit(user=user, asset=usdt, amount=DEMO_DEPOSIT, idempotency_key=f"seed:deposit:{name}")

        rules_seed(AlertRule)  # the migration made them; a flushed database gets them back here

        password = None
        if not User.objects.filter(username=OPS_USERNAME).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(OPS_USERNAME, email="ops@demo.invalid", password=password)
    if password and credentials_file is not None:
        credentials_file.parent.mkdir(parents=True, exist_ok=True)
        credentials_file.write_text(f"username: {OPS_USERNAME}\npassword: {password}\n")
        credentials_file.chmod(0o600)
    return SeedResult(created_contracts=created, ops_password=password)


def database_is_empty() -> bool:
    return not Contract.objects.exists()
