"""Reads: margin status of an account, the freeze, ADL quantiles, records.

`margin_statuses` is the exact (Decimal) judgement the screen's float flags are
confirmed with; `adl_quantiles` is the 0–4 light of `positionRisk.adl`.
"""
import time
from decimal import Decimal

import numpy as np

from apps.ledger.models import CROSS_KINDS, Account, AccountKind, Balance
from apps.marketdata.selectors import price_latest_many
from apps.positions.models import MarginType, Position
from apps.positions.selectors import account_overview
from apps.positions.tiers import contract_tiers

from .models import Liquidation, LiquidationStatus, MarginCall, Scope
from .status import MarginStatus, statuses_from_overview

ZERO = Decimal(0)


def account_frozen(*, user_id: int) -> bool:
    """True while a liquidation of any of the user's scopes is active (order entry refuses with -2023)."""
    return Liquidation.objects.filter(user_id=user_id, status=LiquidationStatus.ACTIVE).exists()


def margin_statuses(*, user) -> list[MarginStatus]:
    """The user's cross status per settle asset, then each open isolated position's."""
    return statuses_from_overview(user.pk, account_overview(user=user))


def margin_status(*, user, asset_code: str = "USDT", contract=None) -> MarginStatus | None:
    """One scope: the cross account in `asset_code`, or the isolated position on `contract`."""
    for status in margin_statuses(user=user):
        if contract is None and status.scope == Scope.CROSS and status.asset == asset_code:
            return status
        if contract is not None and status.scope == Scope.ISOLATED and status.contract.pk == contract.pk:
            return status
    return None


def margin_calls_recent(*, user, limit: int = 50):
    return list(MarginCall.objects.filter(user=user).select_related("contract", "asset")[:limit])


# ADL ranking ------------------------------------------------------------------------------

ADL_CACHE_SECONDS = 5.0
_adl_cache: dict[int, tuple[float, dict[int, int]]] = {}


def adl_scores(*, contract) -> dict[int, tuple[int, float]]:
    """user id -> (side +1/-1, score) for every open position of the contract (design 4a).

    PnL% = max(0, uPnL) / max(1, wallet), margin ratio = maintenance / (wallet + uPnL),
    score = PnL% × margin ratio; wallet is the position's backing (isolated margin, or the
    cross wallet: wallet plus open-order margin) and uPnL its own. Floats: a ranking, not money.
    """
    snapshot = price_latest_many(contracts=[contract])[contract.symbol]
    rows = list(Position.objects.filter(contract=contract).exclude(size=0)
                .values_list("user_id", "size", "entry_price", "margin_type"))
    if snapshot is None or not rows:
        return {}
    mark, cs = float(snapshot.mark_price), float(contract.contract_size)
    users = [r[0] for r in rows]
    # Accounts first, then balances by the (account, asset) key: an index path whatever the
    # statistics say (a join on the user ids could scan every balance per holder).
    isolated_accounts = dict(Account.objects.filter(kind=AccountKind.ISOLATED_MARGIN, contract=contract,
                                                    user_id__in=users).values_list("id", "user_id"))
    cross_accounts = dict(Account.objects.filter(kind__in=CROSS_KINDS,
                                                 contract__isnull=True, user_id__in=users).values_list("id", "user_id"))
    isolated = {isolated_accounts[account]: amount for account, amount in
                Balance.objects.filter(account_id__in=list(isolated_accounts), asset=contract.settle_asset_id)
                .values_list("account_id", "amount")}
    cross: dict[int, float] = {}
    for account, amount in (Balance.objects.filter(account_id__in=list(cross_accounts), asset=contract.settle_asset_id)
                            .values_list("account_id", "amount")):
        user_id = cross_accounts[account]
        cross[user_id] = cross.get(user_id, 0.0) + float(amount)
    tiers = contract_tiers(contract)
    caps = np.array([float(t.notional_cap) for t in tiers])
    rates = np.array([float(t.maintenance_rate) for t in tiers])
    amounts = np.array([float(t.maintenance_amount) for t in tiers])
    size = np.array([float(r[1]) for r in rows])
    entry = np.array([float(r[2]) for r in rows])
    wallet = np.array([float(isolated.get(r[0], 0)) if r[3] == MarginType.ISOLATED else cross.get(r[0], 0.0)
                       for r in rows])
    notional = np.abs(size) * mark * cs
    tier = np.minimum(np.searchsorted(caps, notional, side="right"), len(tiers) - 1)
    maintenance = np.maximum(0.0, notional * rates[tier] - amounts[tier])
    upnl = (mark - entry) * size * cs
    pnl_pct = np.maximum(0.0, upnl) / np.maximum(1.0, wallet)
    equity = wallet + upnl
    # No equity: no profit to take (and no 0 × inf); such positions rank last.
    ratio = np.where(equity > 0, maintenance / np.where(equity > 0, equity, 1.0), 0.0)
    score = pnl_pct * ratio
    return {u: (1 if s > 0 else -1, float(sc)) for u, s, sc in zip(users, size, score)}


def _quantiles(scores: dict[int, tuple[int, float]]) -> dict[int, int]:
    """Per side, 0 for no profit, else ceil(4 × (rank + 1) / n): 1–4 by quartile of the side's scores."""
    out: dict[int, int] = {}
    for side in (1, -1):
        users = [u for u, (s, _) in scores.items() if s == side]
        if not users:
            continue
        values = np.array([scores[u][1] for u in users])
        order = values.argsort(kind="stable")
        rank = np.empty(len(values))
        rank[order] = np.arange(len(values))
        light = np.where(values > 0, np.ceil(4 * (rank + 1) / len(values)), 0)
        out.update({u: int(q) for u, q in zip(users, light)})
    return out


def adl_quantiles(*, user) -> dict[str, int]:
    """symbol -> 0–4, the ADL light of each of the user's open positions (4: first in the queue)."""
    out: dict[str, int] = {}
    now = time.monotonic()
    for position in Position.objects.filter(user=user).exclude(size=0).select_related("contract"):
        contract = position.contract
        hit = _adl_cache.get(contract.pk)
        if hit is None or now - hit[0] >= ADL_CACHE_SECONDS:
            hit = (now, _quantiles(adl_scores(contract=contract)))
            _adl_cache[contract.pk] = hit
        out[contract.symbol] = hit[1].get(user.pk, 0)
    return out


def adl_cache_forget() -> None:
    _adl_cache.clear()
