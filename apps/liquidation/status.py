"""Margin status of an account: the cross account per asset and each isolated position.

Pure functions over `apps.positions.selectors.account_overview`, so the numbers are the
ones `positionRisk` and `account` show. Equity = margin backing + unrealized PnL
(cross: cross wallet, i.e. wallet plus open-order margin, plus every cross position's
uPnL; isolated: the position's isolated margin plus its uPnL); ratio = equity /
maintenance margin. Levels: WARNING at or below 150%, DANGER at or below 120%,
LIQUIDATION at or below 100% (`conf.py`). The deposit to clear a level is the smallest
amount (in units of the asset's precision) after which the ratio is above it.

The bankruptcy price is `risk.liquidation_price` with a maintenance rate and amount of
zero: the mark at which the scope's equity is exactly zero.
"""
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal

from apps.contracts.tiers import TierSpec
from apps.positions.risk import liquidation_price
from apps.positions.selectors import AccountOverview, PositionView

from .conf import liquidation_setting
from .models import MarginLevel, Scope

ZERO = Decimal(0)
_NO_MAINTENANCE = TierSpec(bracket=0, notional_floor=ZERO, notional_cap=ZERO, maintenance_rate=ZERO,
                           maintenance_amount=ZERO, max_leverage=1)


def plain(value: Decimal) -> str:
    """A decimal as plain digits, as the client API sends numbers."""
    return format(value.normalize(), "f") if value else "0"


def thresholds() -> dict[str, Decimal]:
    """Level -> the ratio at or below which it applies, worst level last."""
    return {
        MarginLevel.WARNING: Decimal(liquidation_setting("LIQUIDATION_WARNING_RATIO")),
        MarginLevel.DANGER: Decimal(liquidation_setting("LIQUIDATION_DANGER_RATIO")),
        MarginLevel.LIQUIDATION: Decimal(liquidation_setting("LIQUIDATION_RATIO")),
    }


def level_of(ratio: Decimal | None, limits: dict[str, Decimal] | None = None) -> str:
    limits = limits or thresholds()
    level = MarginLevel.NORMAL
    if ratio is None:
        return level
    for name, limit in limits.items():  # WARNING, DANGER, LIQUIDATION: the last one that applies
        if ratio <= limit:
            level = name
    return level


def deposit_to_clear(*, equity: Decimal, maintenance: Decimal, threshold: Decimal, precision: int) -> Decimal:
    """Smallest deposit d (a multiple of 10^-precision) with (equity + d) / maintenance > threshold."""
    shortfall = threshold * maintenance - equity
    if maintenance <= 0 or shortfall < 0:
        return ZERO
    unit = Decimal(1).scaleb(-precision)
    return (shortfall / unit).to_integral_value(rounding=ROUND_FLOOR) * unit + unit


@dataclass(frozen=True)
class MarginStatus:
    user_id: int
    asset: str
    precision: int
    scope: str
    backing: Decimal  # cross wallet, or the isolated margin
    unrealized: Decimal
    maintenance: Decimal
    positions: tuple[PositionView, ...] = field(default=())
    contract: object = None  # the isolated position's contract

    @property
    def equity(self) -> Decimal:
        return self.backing + self.unrealized

    @property
    def ratio(self) -> Decimal | None:
        """equity / maintenance; None (infinite) when there is no maintenance margin."""
        return self.equity / self.maintenance if self.maintenance > 0 else None

    @property
    def level(self) -> str:
        return level_of(self.ratio)

    @property
    def deposits(self) -> dict[str, Decimal]:
        """Level -> the deposit that takes the ratio above that level's threshold (0 when already above)."""
        return {name: deposit_to_clear(equity=self.equity, maintenance=self.maintenance, threshold=limit,
                                       precision=self.precision)
                for name, limit in thresholds().items()}

    @property
    def symbol(self) -> str:
        return self.contract.symbol if self.contract is not None else ""


def statuses_from_overview(user_id: int, overview: AccountOverview) -> list[MarginStatus]:
    """The cross status per settle asset with open cross positions, then one per open isolated position."""
    out: list[MarginStatus] = []
    cross: dict[str, list[PositionView]] = {}
    for view in overview.positions:
        if not view.position.size:
            continue
        if view.is_isolated:
            asset = view.contract.settle_asset
            out.append(MarginStatus(user_id=user_id, asset=asset.code, precision=asset.precision,
                                    scope=Scope.ISOLATED, backing=view.isolated_margin,
                                    unrealized=view.risk.unrealized_pnl, maintenance=view.risk.maintenance_margin,
                                    positions=(view,), contract=view.contract))
        else:
            cross.setdefault(view.contract.settle_asset.code, []).append(view)
    for code, views in cross.items():
        asset = overview.assets[code]
        out.insert(0, MarginStatus(user_id=user_id, asset=code, precision=asset.asset.precision, scope=Scope.CROSS,
                                   backing=asset.cross_wallet,
                                   unrealized=sum((v.risk.unrealized_pnl for v in views), ZERO),
                                   maintenance=sum((v.risk.maintenance_margin for v in views), ZERO),
                                   positions=tuple(views)))
    return out


def bankruptcy_price(view: PositionView, status: MarginStatus) -> Decimal:
    """The mark at which the scope's equity is zero, the other positions of the scope at their mark (0: none)."""
    position = view.position
    others = [v for v in status.positions if v is not view]
    return liquidation_price(size=position.size, entry_price=position.entry_price,
                             contract_size=view.contract.contract_size, tier=_NO_MAINTENANCE,
                             backing=status.backing,
                             others_unrealized=sum((v.risk.unrealized_pnl for v in others), ZERO))
