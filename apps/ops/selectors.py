"""Reads for the ops dashboard."""
import json

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, Sum

from apps.contracts.models import Contract
from apps.ledger.selectors import system_balances
from apps.ledger.tasks import LAST_RESULT_KEY
from apps.ops.models import Alert, AlertStatus, Backup, BackupStatus
from exchange.redis import get_redis


def dashboard_summary() -> dict:
    contracts = Contract.objects.annotate(
        long_oi=Sum("positions__size", filter=Q(positions__size__gt=0)),
        open_positions=Count("positions", filter=~Q(positions__size=0)),
    ).order_by("symbol")
    try:
        raw = get_redis().get(LAST_RESULT_KEY)
        last_check = json.loads(raw) if raw else None
    except Exception:
        last_check = None
    return {
        "contracts": contracts,
        "system_balances": system_balances(),
        "user_count": get_user_model().objects.filter(is_staff=False).count(),
        "last_invariant_check": last_check,
        **alerts_panel(),
    }


def alerts_panel() -> dict:
    """Firing alerts (most severe first), how many are pending, and the latest backups."""
    rank = {"CRITICAL": 0, "HIGH": 1, "WARNING": 2, "INFO": 3}
    firing = sorted(
        Alert.objects.filter(status=AlertStatus.FIRING).select_related("acknowledged_by"),
        key=lambda a: (rank[a.level], -a.fired_at.timestamp() if a.fired_at else 0),
    )
    return {
        "firing_alerts": firing,
        "pending_alert_count": Alert.objects.filter(status=AlertStatus.PENDING).count(),
        "last_backup": Backup.objects.order_by("-started_at").first(),
        "last_verified_backup": Backup.objects.filter(status=BackupStatus.SUCCEEDED, verified=True)
        .order_by("-started_at")
        .first(),
    }


def risk_snapshot() -> dict:
    """Positions, exposure at mark, margin utilization and the insurance fund, per symbol.

    Cheap enough for every scrape: one grouped query over open positions (partial
    index), the latest prices from Redis, one grouped sum of user balances.
    Margin utilization = (Σ |size| × mark × contract size / leverage + order margin
    held) / users' total balances, in the insurance fund's asset (USDT).
    """
    from decimal import Decimal

    from django.conf import settings
    from django.db.models import F
    from django.db.models.functions import Abs

    from apps.ledger.models import AccountKind, Balance
    from apps.marketdata.selectors import price_latest_many
    from apps.positions.models import Position

    from .sources import insurance_fund_balance

    asset = getattr(settings, "OPS_INSURANCE_FUND_ASSET", "USDT")
    rows = (
        Position.objects.exclude(size=0)
        .values("contract_id")
        .annotate(
            positions=Count("id"),
            open_interest=Sum("size", filter=Q(size__gt=0)),
            abs_size=Sum(Abs("size")),
            size_per_leverage=Sum(Abs("size") / F("leverage")),
        )
    )
    by_contract = {row["contract_id"]: row for row in rows}
    contracts = list(Contract.objects.filter(pk__in=list(by_contract)).select_related("settle_asset"))
    prices = price_latest_many(contracts=contracts)
    symbols, initial_margin = {}, Decimal(0)
    for contract in sorted(contracts, key=lambda c: c.symbol):
        row, price = by_contract[contract.pk], prices.get(contract.symbol)
        mark = price.mark_price if price is not None else None
        exposure = None if mark is None else row["abs_size"] * mark * contract.contract_size
        if mark is not None and contract.settle_asset.code == asset:
            initial_margin += row["size_per_leverage"] * mark * contract.contract_size
        symbols[contract.symbol] = {
            "positions": row["positions"], "open_interest": row["open_interest"] or Decimal(0), "exposure": exposure,
        }
    balances = dict(
        Balance.objects.filter(account__user__isnull=False, asset__code=asset)
        .values_list("account__kind")
        .annotate(total=Sum("amount"))
    )
    total = sum(balances.values(), Decimal(0))
    used = initial_margin + balances.get(AccountKind.ORDER_MARGIN, Decimal(0))
    return {
        "symbols": symbols,
        "margin_utilization": (used / total).quantize(Decimal("0.000001")) if total > 0 else None,
        "insurance_fund_asset": asset,
        "insurance_fund_balance": insurance_fund_balance(),
    }
