"""Listing contracts with a validated margin-tier table."""
from dataclasses import dataclass
from decimal import Decimal
from typing import Sequence

from django.db import transaction

from exchange.errors import ErrorCode, ExchangeError

from .models import Contract, MarginTier
from .tiers import TierSpec, cumulative_amounts, tiers_validate


@dataclass(frozen=True)
class Bracket:
    """A bracket as published: notional cap, max leverage and maintenance rate (cum is derived)."""

    notional_cap: Decimal
    max_leverage: int
    maintenance_rate: Decimal


def tiers_from_brackets(brackets: Sequence[Bracket]) -> list[TierSpec]:
    floors = [Decimal(0)] + [b.notional_cap for b in brackets[:-1]]
    cums = cumulative_amounts(floors, [b.maintenance_rate for b in brackets])
    return [
        TierSpec(
            bracket=index + 1,
            notional_floor=floor,
            notional_cap=b.notional_cap,
            maintenance_rate=b.maintenance_rate,
            maintenance_amount=cum,
            max_leverage=b.max_leverage,
        )
        for index, (b, floor, cum) in enumerate(zip(brackets, floors, cums))
    ]


def contract_create(*, tiers: Sequence[TierSpec], **fields) -> Contract:
    """Create a contract and its tiers; refuses an inconsistent tier table."""
    problems = tiers_validate(tiers)
    if problems:
        raise ExchangeError("Invalid margin tiers: " + "; ".join(problems), code=ErrorCode.INVALID_PARAMETER)
    if tiers[0].max_leverage > fields.get("max_leverage", 125):
        raise ExchangeError("The first tier allows more leverage than the contract.", code=ErrorCode.INVALID_PARAMETER)
    with transaction.atomic():
        contract = Contract.objects.create(**fields)
        MarginTier.objects.bulk_create(
            MarginTier(
                contract=contract,
                bracket=t.bracket,
                notional_floor=t.notional_floor,
                notional_cap=t.notional_cap,
                maintenance_rate=t.maintenance_rate,
                maintenance_amount=t.maintenance_amount,
                max_leverage=t.max_leverage,
            )
            for t in tiers
        )
    return contract
