"""Notional-tiered maintenance margin (design section 3, Binance leverage brackets).

The maintenance margin of a notional is the progressive sum over brackets of the part
of the notional inside each bracket times that bracket's rate. The same number is
`notional × rate_of_its_bracket − cum`, with cumₙ = floorₙ × (rateₙ − rateₙ₋₁) + cumₙ₋₁;
both are here and the tests assert they agree. Pure functions over `TierSpec`, so the
order-entry, liquidation and screening code share one rule.
"""
from dataclasses import dataclass
from decimal import Decimal
from typing import Iterable, Sequence


@dataclass(frozen=True)
class TierSpec:
    bracket: int
    notional_floor: Decimal
    notional_cap: Decimal
    maintenance_rate: Decimal
    maintenance_amount: Decimal
    max_leverage: int


class TierError(ValueError):
    pass


def tier_specs_from_rows(rows: Iterable) -> list[TierSpec]:
    """TierSpecs from MarginTier rows (or anything with the same attributes)."""
    specs = [
        TierSpec(
            bracket=row.bracket,
            notional_floor=row.notional_floor,
            notional_cap=row.notional_cap,
            maintenance_rate=row.maintenance_rate,
            maintenance_amount=row.maintenance_amount,
            max_leverage=row.max_leverage,
        )
        for row in rows
    ]
    return sorted(specs, key=lambda spec: spec.bracket)


def cumulative_amounts(floors: Sequence[Decimal], rates: Sequence[Decimal]) -> list[Decimal]:
    """cumₙ = floorₙ × (rateₙ − rateₙ₋₁) + cumₙ₋₁ with cum₁ = 0."""
    amounts: list[Decimal] = []
    previous_rate = Decimal(0)
    previous_cum = Decimal(0)
    for index, (floor, rate) in enumerate(zip(floors, rates)):
        cum = Decimal(0) if index == 0 else floor * (rate - previous_rate) + previous_cum
        amounts.append(cum)
        previous_rate, previous_cum = rate, cum
    return amounts


def tiers_validate(tiers: Sequence[TierSpec]) -> list[str]:
    """Problems with a tier table, empty when it is consistent."""
    problems: list[str] = []
    if not tiers:
        return ["a contract needs at least one margin tier"]
    ordered = sorted(tiers, key=lambda tier: tier.bracket)
    if [tier.bracket for tier in ordered] != list(range(1, len(ordered) + 1)):
        problems.append("brackets must be numbered 1, 2, 3, ... without gaps")
    if ordered[0].notional_floor != 0:
        problems.append("the first tier must start at notional 0")
    expected_cum = cumulative_amounts(
        [tier.notional_floor for tier in ordered], [tier.maintenance_rate for tier in ordered]
    )
    for previous, tier in zip(ordered, ordered[1:]):
        if tier.notional_floor != previous.notional_cap:
            problems.append(f"tier {tier.bracket} must start where tier {previous.bracket} ends")
        if tier.maintenance_rate <= previous.maintenance_rate:
            problems.append(f"tier {tier.bracket} must have a higher maintenance rate than tier {previous.bracket}")
        if tier.max_leverage > previous.max_leverage:
            problems.append(f"tier {tier.bracket} may not allow more leverage than tier {previous.bracket}")
    for tier, cum in zip(ordered, expected_cum):
        if tier.maintenance_amount != cum:
            problems.append(f"tier {tier.bracket} maintenance amount must be {cum.normalize():f}")
    return problems


def tier_for_notional(tiers: Sequence[TierSpec], notional: Decimal) -> TierSpec:
    """The bracket a (non-negative) notional falls in; above the last cap it is the last."""
    notional = abs(notional)
    for tier in tiers:
        if tier.notional_floor <= notional < tier.notional_cap:
            return tier
    if tiers and notional >= tiers[-1].notional_cap:
        return tiers[-1]
    raise TierError("no margin tiers configured")


def maintenance_margin(tiers: Sequence[TierSpec], notional: Decimal) -> Decimal:
    """notional × rate − cum of the notional's bracket."""
    notional = abs(notional)
    tier = tier_for_notional(tiers, notional)
    return notional * tier.maintenance_rate - tier.maintenance_amount


def maintenance_margin_progressive(tiers: Sequence[TierSpec], notional: Decimal) -> Decimal:
    """Σ over brackets of (part of the notional inside the bracket) × rate."""
    notional = abs(notional)
    total = Decimal(0)
    for index, tier in enumerate(tiers):
        if notional <= tier.notional_floor:
            break
        last = index == len(tiers) - 1
        upper = notional if last else min(notional, tier.notional_cap)
        total += (upper - tier.notional_floor) * tier.maintenance_rate
    return total


def max_leverage_for_notional(tiers: Sequence[TierSpec], notional: Decimal) -> int:
    return tier_for_notional(tiers, notional).max_leverage
