"""Time series of a simulation run, read from the database after each step (for the plots).

Floats here are for drawing only; the summary's figures are Decimals read at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Sum

from apps.ledger.models import AccountKind, Balance
from apps.liquidation.models import Liquidation, LiquidationRecord, RecordKind
from apps.liquidation.selectors import margin_statuses
from apps.marketdata.selectors import price_latest
from apps.positions.models import Position
from apps.trading.prices import last_price


def system_balance(kind: str, asset_code: str = "USDT"):
    from decimal import Decimal

    amount = Balance.objects.filter(account__kind=kind, account__user__isnull=True,
                                    asset__code=asset_code).aggregate(s=Sum("amount"))["s"]
    return amount if amount is not None else Decimal(0)


@dataclass
class Recorder:
    contract: object
    users: list
    rows: list[dict] = field(default_factory=list)
    ratios: list[tuple[float, list[float]]] = field(default_factory=list)  # (t, margin ratios of open accounts)

    def sample(self, exchange, *, ratios: bool) -> None:
        contract = self.contract
        snapshot = price_latest(contract=contract)
        last = last_price(contract)
        t = exchange.now.timestamp()
        self.rows.append({
            "t": t,
            "index": float(snapshot.index_price) if snapshot else None,
            "mark": float(snapshot.mark_price) if snapshot else None,
            "last": float(last) if last is not None else None,
            "open_interest": float(Position.objects.filter(contract=contract, size__gt=0)
                                   .aggregate(s=Sum("size"))["s"] or 0),
            "insurance_fund": float(system_balance(AccountKind.INSURANCE_FUND)),
            "bad_debt": float(system_balance(AccountKind.BAD_DEBT)),
            "liquidations": Liquidation.objects.count(),
            "liquidation_fills": LiquidationRecord.objects.filter(kind=RecordKind.EXECUTION).count(),
            "adl": LiquidationRecord.objects.filter(kind=RecordKind.ADL).count(),
        })
        if ratios:
            values = []
            for user in self.users:
                for status in margin_statuses(user=user):
                    if status.ratio is not None:
                        values.append(float(status.ratio))
            self.ratios.append((t, values))
