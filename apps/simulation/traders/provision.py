"""The demo participants' users, wallets and API keys (Django side, run once at start).

Everything else the traders do goes through the client API; this is the operator's
part a real exchange would do by hand: create the users, fund them (an idempotent
deposit per user), and issue each one an API key with trade permission. Keys are
idempotent in effect: a start revokes the keys a previous run issued under
`KEY_LABEL` and issues one new key per user, whose secret lives only in this
process's memory (never on disk, never in the repository). When the exchange is on
loopback the key is limited to loopback addresses.

`faucet_refill` is the demo's faucet (as futures testnets have): a trend follower a
liquidation wiped out is topped back up to its starting wallet with a DEPOSIT
through the ledger service, so the demo keeps producing trends and liquidations.
"""
from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.db import transaction

from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_create, api_key_revoke
from apps.ledger.models import AccountKind, Asset
from apps.ledger.services import account_get_or_create, balances_lock, wallet_deposit

D = Decimal
KEY_LABEL = "demo traders"
ASSET = "USDT"
USER_PREFIX = "demo-"
# role -> (username stem, short id letter, starting wallet). Trend followers start small
# so that their high-leverage bets can be liquidated; makers carry inventory.
ROLES = {
    "maker": ("maker", "m", D("1000000")),
    "taker": ("taker", "t", D("100000")),
    "trend": ("trend", "f", D("2000")),
}


@dataclass(frozen=True)
class Credentials:
    name: str
    short: str
    role: str
    user_id: int
    deposit: Decimal
    api_key: str
    secret: str = field(repr=False)


def participant_specs(*, makers: int, takers: int, trend: int) -> list[tuple[str, str, str]]:
    """(role, username, short id) for each participant, e.g. ("maker", "demo-maker-1", "m1")."""
    specs = []
    for role, count in (("maker", makers), ("taker", takers), ("trend", trend)):
        stem, letter, _ = ROLES[role]
        if count < 0:
            raise ValueError(f"--{role} must not be negative")
        specs += [(role, f"{USER_PREFIX}{stem}-{i}", f"{letter}{i}") for i in range(1, count + 1)]
    return specs


def loopback_allowlist(base_url: str) -> list[str]:
    """Loopback addresses when the exchange is served on loopback; else any address."""
    host = urlsplit(base_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    return ["127.0.0.1", "::1"] if loopback else []


def provision_participants(*, specs: list[tuple[str, str, str]], base_url: str) -> list[Credentials]:
    User = get_user_model()
    allowlist = loopback_allowlist(base_url)
    out = []
    for role, name, short in specs:
        deposit = ROLES[role][2]
        with transaction.atomic():
            user, created = User.objects.get_or_create(username=name, defaults={"email": f"{name}@demo.invalid"})
            if created:
                user.set_unusable_password()  # an API-only account
                user.save(update_fields=["password"])
            account_get_or_create(kind=AccountKind.WALLET, user=user)
            wallet_deposit(user=user, asset=ASSET, amount=deposit, idempotency_key=f"demo-traders:fund:{name}",
                           memo="demo trader starting wallet")
            for old in ApiKey.objects.filter(user=user, label=KEY_LABEL, revoked_at__isnull=True):
                api_key_revoke(api_key=old)
            api_key, secret = api_key_create(user=user, label=KEY_LABEL, can_trade=True, ip_allowlist=allowlist)
        out.append(Credentials(name=name, short=short, role=role, user_id=user.pk, deposit=deposit,
                               api_key=api_key.key, secret=secret))
    return out


def faucet_refill(*, name: str, up_to: Decimal) -> Decimal | None:
    """Deposit what brings the user's wallet back to `up_to`; None when it is not below."""
    user = get_user_model().objects.get(username=name)
    wallet = account_get_or_create(kind=AccountKind.WALLET, user=user)
    asset = Asset.objects.get(code=ASSET)
    with transaction.atomic():  # read and top up under the wallet's lock: two refills never both deposit
        held = balances_lock(account_ids=[wallet.pk], asset=asset).get(wallet.pk, Decimal(0))
        missing = up_to - held
        if missing <= 0:
            return None
        # Both terms are amounts of the asset's precision, so is their difference.
        wallet_deposit(user=user, asset=asset, amount=missing,
                       idempotency_key=f"demo-traders:refill:{name}:{uuid.uuid4()}", memo="demo faucet")
    return missing
