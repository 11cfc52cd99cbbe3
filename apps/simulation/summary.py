"""The run's summary, read from the database at the end (amounts as exact decimal strings).

Nothing here comes from the simulation's own bookkeeping: trades, volume, funding,
liquidations, fund and bad-debt balances and open interest are what the exchange's
tables say, and the invariants are the same checks `manage.py check_ledger` runs.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db.models import Count, F, Sum

from apps.contracts.models import Contract
from apps.ledger.models import AccountKind, LedgerTransaction, TransactionKind
from apps.liquidation.models import Liquidation, LiquidationRecord, RecordKind
from apps.ops.invariants import ALL_CHECKS
from apps.positions.models import Position
from apps.settlement.models import DeliverySettlement, FundingRate, FundingSettlement, SettlementStatus
from apps.trading.models import Order, Trade

from .recorder import system_balance

ZERO = Decimal(0)


def _s(value) -> str:
    """A decimal as a plain string without trailing zeros ("0" for none)."""
    value = ZERO if value is None else Decimal(value)
    text = f"{value.normalize():f}"
    return "0" if text in ("-0", "0E-18") else text


def invariants_run() -> dict:
    """Every registered invariant check: name -> list of violations (empty when it holds)."""
    return {check.__name__: [str(v) for v in check()] for check in ALL_CHECKS}


def summary_from_database(*, scenario: str, seed: int, size: str, start: datetime, end: datetime) -> dict:
    trades = Trade.objects.aggregate(n=Count("id"), qty=Sum("quantity"), notional=Sum(F("price") * F("quantity")),
                                     fees=Sum(F("taker_fee") + F("maker_fee")))
    funding = FundingSettlement.objects.filter(status=SettlementStatus.DONE).aggregate(
        n=Count("id"), paid=Sum("paid"), received=Sum("received"), dust=Sum("dust"), covered=Sum("covered"))
    records = LiquidationRecord.objects.filter(kind=RecordKind.EXECUTION).aggregate(
        n=Count("id"), qty=Sum("quantity"), fee=Sum("clearance_fee"), surplus=Sum("surplus_to_fund"),
        cover=Sum("fund_cover"), bad=Sum("bad_debt"))
    open_interest = {}
    for contract in Contract.objects.order_by("symbol"):
        sizes = Position.objects.filter(contract=contract)
        longs = sizes.filter(size__gt=0).aggregate(s=Sum("size"))["s"]
        shorts = sizes.filter(size__lt=0).aggregate(s=Sum("size"))["s"]
        open_interest[contract.symbol] = {"long": _s(longs), "short": _s(-(shorts or ZERO)),
                                          "status": contract.status}
    orders = {row["status"]: row["n"] for row in Order.objects.values("status").annotate(n=Count("id"))
              .order_by("status")}
    invariants = invariants_run()
    return {
        "scenario": scenario,
        "seed": seed,
        "size": size,
        "simulated_start": start.isoformat(),
        "simulated_end": end.isoformat(),
        "trades": trades["n"],
        "volume": _s(trades["qty"]),
        "notional": _s(trades["notional"]),
        "trading_fees": _s(trades["fees"]),
        "orders_by_status": orders,
        "funding": {
            "settlements": funding["n"],
            "paid": _s(funding["paid"]),
            "received": _s(funding["received"]),
            "dust": _s(funding["dust"]),
            "covered_by_fund": _s(funding["covered"]),
            "rates": [{"time": r.funding_time.isoformat(), "rate": _s(r.funding_rate), "mark": _s(r.mark_price)}
                      for r in FundingRate.objects.order_by("funding_time")],
        },
        "liquidations": {
            "count": Liquidation.objects.count(),
            "accounts": Liquidation.objects.values("user").distinct().count(),
            "fills": records["n"],
            "quantity": _s(records["qty"]),
            "clearance_fees": _s(records["fee"]),
            "surplus_to_fund": _s(records["surplus"]),
            "fund_cover": _s(records["cover"]),
            "bad_debt": _s(records["bad"]),
            "no_fill_steps": LiquidationRecord.objects.filter(kind=RecordKind.NO_FILL).count(),
        },
        "deliveries": [
            {"symbol": d.contract.symbol, "delivery_time": d.delivery_time.isoformat(), "status": d.status,
             "settlement_price": _s(d.settlement_price), "valid_minutes": d.valid_minutes, "positions": d.positions,
             "long_quantity": _s(d.long_quantity), "short_quantity": _s(d.short_quantity),
             "realized_pnl": _s(d.realized_pnl), "fees": _s(d.fees)}
            for d in DeliverySettlement.objects.select_related("contract").order_by("delivery_time", "contract__symbol")
        ],
        "adl_events": LiquidationRecord.objects.filter(kind=RecordKind.ADL).count(),
        "adl_postings": LedgerTransaction.objects.filter(kind=TransactionKind.ADL).count(),
        "insurance_fund_balance": _s(system_balance(AccountKind.INSURANCE_FUND)),
        "bad_debt_balance": _s(system_balance(AccountKind.BAD_DEBT)),
        "fee_income_balance": _s(system_balance(AccountKind.FEE_INCOME)),
        "open_interest": open_interest,
        "invariants": {
            "checks": len(invariants),
            "passed": sum(1 for v in invariants.values() if not v),
            "violations": {name: v for name, v in invariants.items() if v},
        },
    }
