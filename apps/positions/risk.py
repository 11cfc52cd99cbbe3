"""Position risk numbers as pure functions: PnL, margins, liquidation price.

Shared by the account endpoints (`positionRisk`, `account`), the leverage and margin
services, and liquidation screening, so every place judges a position the same way.

Liquidation price in one-way mode (the reference exchange's formula):

    LP = (WB − TMM₁ + UPNL₁ + cum − side·|q|·EP) / (|q|·MMR − side·|q|)

with q in base units (size × contract size), side = +1 long / −1 short, EP the entry
price, MMR and cum the maintenance rate and amount of the position's tier, and WB the
margin backing it: the isolated margin for an isolated position; for a cross position
the cross wallet, less the maintenance margin (TMM₁) and plus the unrealized PnL
(UPNL₁) of the account's other cross positions.
"""
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from apps.contracts.tiers import TierSpec, tier_for_notional

ZERO = Decimal(0)


@dataclass(frozen=True)
class PositionRisk:
    notional: Decimal  # signed, at the mark price
    unrealized_pnl: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    tier: TierSpec


def position_risk(*, size: Decimal, entry_price: Decimal, mark: Decimal, leverage: int, contract_size: Decimal,
                  tiers: Sequence[TierSpec]) -> PositionRisk:
    notional = size * mark * contract_size
    tier = tier_for_notional(tiers, abs(notional)) if tiers else None
    maintenance = abs(notional) * tier.maintenance_rate - tier.maintenance_amount if tier else ZERO
    return PositionRisk(
        notional=notional,
        unrealized_pnl=(mark - entry_price) * size * contract_size if size else ZERO,
        initial_margin=abs(notional) / Decimal(leverage),
        maintenance_margin=max(ZERO, maintenance),
        tier=tier,
    )


def liquidation_price(*, size: Decimal, entry_price: Decimal, contract_size: Decimal, tier: TierSpec,
                      backing: Decimal, others_maintenance: Decimal = ZERO,
                      others_unrealized: Decimal = ZERO) -> Decimal:
    """The mark price at which the position's margin ratio reaches 100% (0 when none can)."""
    if size == 0:
        return ZERO
    side = 1 if size > 0 else -1
    qty = abs(size) * contract_size
    numerator = backing - others_maintenance + others_unrealized + tier.maintenance_amount - side * qty * entry_price
    denominator = qty * tier.maintenance_rate - side * qty
    if denominator == 0:
        return ZERO
    price = numerator / denominator
    return max(ZERO, price)
