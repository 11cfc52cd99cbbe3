"""Reads for the ops dashboard."""
import json

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, Sum

from apps.contracts.models import Contract, ContractStatus
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


DASHBOARD_MINUTES = 10
DASHBOARD_MAX_POINTS = 300


def _thin(rows: list, limit: int = DASHBOARD_MAX_POINTS) -> list:
    """Every n-th row so at most `limit` remain, always keeping the newest."""
    if len(rows) <= limit:
        return rows
    step = -(-len(rows) // limit)
    return rows[::-1][::step][::-1]


def dashboard_feed() -> dict:
    """What the ops dashboard's charts and panels show, as JSON-ready data (times in epoch s).

    - matcher: per symbol, the points the matcher writes every 5 s (orders/s, trades/s,
      batch p95 in ms) from its Prometheus counters and histogram;
    - prices: per symbol, index and mark from the stored samples (≤ 1 a second);
    - insurance_fund: its balance after each ledger entry, and now;
    - latency: per operation, the worst p95 reported by a process and the SLA;
    - alerts (firing and pending, then the last resolved), health (as /readyz).
    """
    from datetime import timedelta

    from django.conf import settings
    from django.utils import timezone

    from apps.ledger.models import AccountKind, LedgerEntry
    from apps.marketdata.selectors import price_history

    from .health import readiness
    from .metrics import SLA_SECONDS, latency_read, series_read
    from .sources import insurance_fund_balance, metric_read

    now = timezone.now()
    start = now - timedelta(minutes=DASHBOARD_MINUTES)
    contracts = list(
        Contract.objects.exclude(status__in=(ContractStatus.PENDING, ContractStatus.SETTLED)).order_by("symbol")
    )
    matcher, prices = {}, {}
    for contract in contracts:
        points = series_read(f"matcher:{contract.symbol}", since=start.timestamp())
        matcher[contract.symbol] = {
            "t": [p["t"] for p in points],
            "orders_per_s": [p["orders_per_s"] for p in points],
            "trades_per_s": [p["trades_per_s"] for p in points],
            "batch_p95_ms": [p["batch_p95_ms"] for p in points],
        }
        samples = _thin(price_history(contract=contract, start=start, end=now + timedelta(seconds=1)))
        prices[contract.symbol] = {
            "t": [s.at.timestamp() for s in samples],
            "mark": [float(s.mark_price) for s in samples],
            "index": [float(s.index_price) for s in samples],
        }
    asset = getattr(settings, "OPS_INSURANCE_FUND_ASSET", "USDT")
    entries = list(
        LedgerEntry.objects.filter(
            account__kind=AccountKind.INSURANCE_FUND, account__user__isnull=True, asset__code=asset
        )
        .order_by("-id")
        .values_list("transaction__created_at", "balance_after")[:DASHBOARD_MAX_POINTS]
    )[::-1]
    balance = insurance_fund_balance()
    fund_t = [at.timestamp() for at, _ in entries] + [now.timestamp()]
    fund_v = [float(b) for _, b in entries] + [float(balance)]
    latency = {}
    for operation, sla in SLA_SECONDS.items():
        reports = latency_read(operation)
        worst = max((r["p95_us"] for r in reports.values()), default=None)
        latency[operation] = {"p95_us": worst, "sla_us": round(sla * 1_000_000), "processes": len(reports),
                              "violated": worst is not None and worst > sla * 1_000_000}
    order_p95 = metric_read("order_latency_p95_us")
    return {
        "at": now.timestamp(),
        "symbols": [c.symbol for c in contracts],
        "matcher": matcher,
        "prices": prices,
        "insurance_fund": {"asset": asset, "t": fund_t, "balance": fund_v, "current": str(balance)},
        "latency": latency,
        "order_latency_p95_us": None if order_p95 is None else float(order_p95),
        "alerts": alerts_feed(),
        "health": readiness(),
    }


def alerts_feed(*, resolved: int = 10) -> list[dict]:
    rank = {"CRITICAL": 0, "HIGH": 1, "WARNING": 2, "INFO": 3}
    open_alerts = sorted(
        Alert.objects.filter(status__in=(AlertStatus.FIRING, AlertStatus.PENDING)),
        key=lambda a: (a.status != AlertStatus.FIRING, rank.get(a.level, 9), -a.last_seen.timestamp()),
    )
    recent = list(Alert.objects.filter(status=AlertStatus.RESOLVED).order_by("-resolved_at")[:resolved])
    return [
        {
            "id": a.pk, "level": a.level, "status": a.status, "message": a.message, "count": a.count,
            "since": (a.fired_at or a.first_seen).timestamp(),
            "resolved_at": a.resolved_at.timestamp() if a.resolved_at else None,
            "acknowledged": a.acknowledged_at is not None,
        }
        for a in open_alerts + recent
    ]
