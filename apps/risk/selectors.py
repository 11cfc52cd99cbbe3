"""Reads of the risk app: hourly closes, account exposures in bulk, latest results, the
exchange-wide picture for ops.

`hourly_closes` gives the last mark of each hour from the per-minute records (kept
indefinitely), filling hours they miss from the per-second samples (kept a week), in
one query each. `exposures_for_users` is the bulk counterpart of
`positions.selectors.account_overview` for the beat job: the same equity (margin
balance of the settle asset: wallet + order margin + isolated margin + unrealized PnL)
and signed notionals at mark for many users in a constant number of queries.
`risk_overview` is what the ops dashboard and the staff endpoint show.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Trunc

from apps.contracts.models import Contract
from apps.ledger.models import USER_KINDS, Balance
from apps.marketdata.models import PriceMinute, PriceSample
from apps.marketdata.selectors import price_latest_many
from apps.positions.models import Position
from apps.trading.models import Trade

from .models import RiskLevelChoice, RiskRun, RiskSnapshot, RunStatus, VolatilityEstimate

ZERO = Decimal(0)
SETTLE_ASSET = "USDT"  # single-asset margin mode, as the account endpoints report it


def hour_floor(at: datetime) -> datetime:
    return at.astimezone(dt_timezone.utc).replace(minute=0, second=0, microsecond=0)


def hourly_closes(*, contract: Contract, start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """(hour start, last mark price seen in that hour) for hours in [start, end), oldest first."""
    out: dict[datetime, float] = {}
    for model, field_name in ((PriceSample, "at"), (PriceMinute, "minute")):
        rows = (
            model.objects.filter(contract=contract, **{f"{field_name}__gte": start, f"{field_name}__lt": end})
            .annotate(hour=Trunc(field_name, "hour", tzinfo=dt_timezone.utc))
            .order_by("hour", f"-{field_name}")
            .distinct("hour")
            .values_list("hour", "mark_price")
        )
        for hour, mark in rows:  # minute rows (second loop) win over samples
            out[hour] = float(mark)
    return sorted(out.items())


def traded_notional(*, contract: Contract, since: datetime) -> Decimal:
    """Quote notional traded in the contract since a time (for the liquidity score)."""
    total = Trade.objects.filter(contract=contract, created_at__gte=since).aggregate(
        total=Sum(F("price") * F("quantity"))
    )["total"]
    return (total or ZERO) * contract.contract_size


def volatility_latest_many(*, contracts) -> dict[int, VolatilityEstimate]:
    """contract id -> its newest estimate (one query)."""
    ids = [c.pk for c in contracts]
    rows = VolatilityEstimate.objects.filter(contract_id__in=ids).order_by("contract_id", "-bucket").distinct(
        "contract_id"
    )
    return {row.contract_id: row for row in rows}


def volatility_latest(*, contract: Contract) -> VolatilityEstimate | None:
    return VolatilityEstimate.objects.filter(contract=contract).order_by("-bucket").first()


def contracts_for_risk() -> list[Contract]:
    """Contracts the market model covers: every contract that trades or has positions."""
    from apps.contracts.models import ContractStatus

    return list(
        Contract.objects.filter(
            Q(status__in=(ContractStatus.TRADING, ContractStatus.CLOSE_ONLY, ContractStatus.HALTED))
            | Q(positions__size__gt=0) | Q(positions__size__lt=0)
        ).distinct().order_by("symbol")
    )


def users_with_open_positions() -> list[int]:
    return list(
        Position.objects.exclude(size=0).order_by("user_id").values_list("user_id", flat=True).distinct()
    )


@dataclass
class Exposure:
    """A user's equity and signed notional per symbol (at mark, entry price if no mark)."""

    equity: Decimal = ZERO
    positions: list[dict] = field(default_factory=list)

    def notional_by_symbol(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for p in self.positions:
            out[p["symbol"]] += float(p["notional"])
        return dict(out)


def exposures_for_users(*, user_ids: list[int]) -> dict[int, Exposure]:
    """Equity and open positions of many users: three queries and one Redis MGET."""
    result = {uid: Exposure() for uid in user_ids}
    balances = (
        Balance.objects.filter(account__user_id__in=user_ids, account__kind__in=USER_KINDS, asset__code=SETTLE_ASSET)
        .values("account__user_id").annotate(total=Sum("amount")).values_list("account__user_id", "total")
    )
    for uid, total in balances:
        result[uid].equity += total or ZERO
    positions = list(
        Position.objects.filter(user_id__in=user_ids).exclude(size=0)
        .select_related("contract").order_by("user_id", "contract__symbol")
    )
    contracts = {p.contract_id: p.contract for p in positions}
    marks = price_latest_many(contracts=list(contracts.values()))
    for p in positions:
        c = p.contract
        snap = marks.get(c.symbol)
        mark = snap.mark_price if snap is not None and snap.mark_price is not None else p.entry_price
        notional = p.size * mark * c.contract_size
        upnl = p.size * (mark - p.entry_price) * c.contract_size
        exposure = result[p.user_id]
        exposure.equity += upnl
        exposure.positions.append({
            "symbol": c.symbol, "size": str(p.size), "mark": str(mark), "entry_price": str(p.entry_price),
            "notional": str(notional), "unrealized_pnl": str(upnl), "leverage": p.leverage,
            "margin_type": p.margin_type,
        })
    return result


def snapshot_latest(*, user) -> RiskSnapshot | None:
    return RiskSnapshot.objects.filter(user=user).order_by("-computed_at", "-id").first()


def run_latest(*, finished: bool = True) -> RiskRun | None:
    runs = RiskRun.objects.order_by("-bucket")
    if finished:
        runs = runs.filter(status=RunStatus.DONE)
    return runs.first()


@dataclass
class RiskOverview:
    run: RiskRun | None
    accounts: int
    total_var_95: Decimal
    total_var_99: Decimal
    total_gross_notional: Decimal
    by_level: dict[str, int]
    top: list[RiskSnapshot]
    stale_volatility: list[VolatilityEstimate]


def risk_overview(*, limit: int = 10) -> RiskOverview:
    """The exchange-wide picture of the latest finished run: accounts by level, total VaR
    (sum over accounts, no netting: the insurance fund's gross exposure), the riskiest
    accounts, and contracts whose volatility fell back (not GARCH)."""
    run = run_latest()
    snapshots = RiskSnapshot.objects.filter(run=run) if run is not None else RiskSnapshot.objects.none()
    totals = snapshots.aggregate(
        n=Count("id"), v95=Sum("var_95"), v99=Sum("var_99"), gross=Sum("gross_notional")
    )
    counts = dict(snapshots.values("level").annotate(n=Count("id")).values_list("level", "n"))
    by_level = {choice.label.upper(): counts.get(choice.value, 0) for choice in RiskLevelChoice}
    top = list(snapshots.select_related("user").order_by("-overall_score", "-var_99")[:limit])
    latest_vol = VolatilityEstimate.objects.order_by("contract_id", "-bucket").distinct("contract_id")
    stale = [v for v in latest_vol.select_related("contract") if v.fallback]
    return RiskOverview(
        run=run,
        accounts=totals["n"] or 0,
        total_var_95=totals["v95"] or ZERO,
        total_var_99=totals["v99"] or ZERO,
        total_gross_notional=totals["gross"] or ZERO,
        by_level=by_level,
        top=top,
        stale_volatility=stale,
    )


def snapshot_history(*, user, since: datetime | None = None, limit: int = 96) -> list[RiskSnapshot]:
    rows = RiskSnapshot.objects.filter(user=user)
    if since is not None:
        rows = rows.filter(bucket__gte=since)
    return list(rows.order_by("-bucket")[:limit])


def retention_cutoff(*, now: datetime, days: float) -> datetime:
    return now - timedelta(days=days)
