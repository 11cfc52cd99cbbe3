"""Contract specifications (perpetual and delivery) and their margin tiers.

Every trading rule of design section 3 is a per-contract column here with the design's
default; the database refuses inconsistent specs (grid sizes, fee ranges, funding
bounds, delivery fields present exactly for delivery contracts).
"""
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from apps.ledger.fields import MoneyField

RATE_DIGITS = {"max_digits": 12, "decimal_places": 8}


class ContractType(models.TextChoices):
    PERPETUAL = "PERPETUAL"
    DELIVERY = "DELIVERY"


class ContractStatus(models.TextChoices):
    PENDING = "PENDING", "Pending (listed, not trading yet)"
    TRADING = "TRADING"
    CLOSE_ONLY = "CLOSE_ONLY", "Close only (reducing orders only)"
    SETTLING = "SETTLING"
    SETTLED = "SETTLED"
    HALTED = "HALTED"


class FundingPolicy(models.TextChoices):
    SEED = "SEED", "Contract vs mark premium, EMA smoothed"
    IMPACT = "IMPACT", "Impact bid/ask vs index premium index"


FUNDING_INTERVALS = (1, 2, 3, 4, 6, 8, 12, 24)  # hours; each divides the day


class Contract(models.Model):
    symbol = models.CharField(max_length=32, unique=True)
    contract_type = models.CharField(max_length=16, choices=ContractType.choices)
    status = models.CharField(max_length=16, choices=ContractStatus.choices, default=ContractStatus.PENDING)
    base_asset = models.ForeignKey("ledger.Asset", on_delete=models.PROTECT, related_name="+")
    quote_asset = models.ForeignKey("ledger.Asset", on_delete=models.PROTECT, related_name="+")
    settle_asset = models.ForeignKey("ledger.Asset", on_delete=models.PROTECT, related_name="+")

    # Grid and size limits. The matcher works in integer ticks and lots of these sizes.
    contract_size = MoneyField(default=Decimal("1"))
    tick_size = MoneyField(default=Decimal("0.1"))
    lot_size = MoneyField(default=Decimal("0.001"))
    min_qty = MoneyField(default=Decimal("0.001"))
    max_qty = MoneyField(default=Decimal("1000"))
    market_max_qty = MoneyField(default=Decimal("120"))
    min_notional = MoneyField(default=Decimal("5"))
    # PRICE_FILTER bounds; also the matcher's price band (in ticks).
    min_price = MoneyField(default=Decimal("0.1"))
    max_price = MoneyField(default=Decimal("1000000"))
    price_precision = models.PositiveSmallIntegerField(default=1)
    quantity_precision = models.PositiveSmallIntegerField(default=3)
    max_open_orders = models.PositiveIntegerField(default=200)
    # PERCENT_PRICE filter: a limit buy may not exceed mark × (1 + up), a sell may not be
    # below mark × (1 − down); a market order may not move more than market_max_deviation.
    percent_price_up = models.DecimalField(default=Decimal("0.15"), **RATE_DIGITS)
    percent_price_down = models.DecimalField(default=Decimal("0.15"), **RATE_DIGITS)
    market_max_deviation = models.DecimalField(default=Decimal("0.30"), **RATE_DIGITS)

    max_leverage = models.PositiveSmallIntegerField(default=125)
    maker_fee_rate = models.DecimalField(default=Decimal("0.0002"), **RATE_DIGITS)
    taker_fee_rate = models.DecimalField(default=Decimal("0.0004"), **RATE_DIGITS)
    liquidation_fee_rate = models.DecimalField(default=Decimal("0.0125"), **RATE_DIGITS)

    # Funding (perpetuals only; ignored for delivery contracts).
    funding_interval_hours = models.PositiveSmallIntegerField(
        default=8, choices=[(hours, f"{hours} h") for hours in FUNDING_INTERVALS])
    funding_rate_cap = models.DecimalField(default=Decimal("0.0075"), **RATE_DIGITS)
    funding_rate_floor = models.DecimalField(default=Decimal("-0.0075"), **RATE_DIGITS)
    interest_rate = models.DecimalField(default=Decimal("0.0001"), **RATE_DIGITS)
    funding_policy = models.CharField(max_length=8, choices=FundingPolicy.choices, default=FundingPolicy.SEED)
    impact_notional = MoneyField(default=Decimal("25000"))

    # Delivery (delivery contracts only).
    delivery_time = models.DateTimeField(null=True, blank=True)
    settlement_window_minutes = models.PositiveSmallIntegerField(default=60)
    delivery_fee_rate = models.DecimalField(default=Decimal("0.0002"), **RATE_DIGITS)
    settlement_price = MoneyField(null=True, blank=True)

    # Bumped when the book's resting orders change outside the matcher (an ADL step expires the
    # reduce-only orders the smaller positions no longer cover): a matcher that sees a new value
    # rebuilds its book from the database before it matches anything more.
    book_version = models.PositiveBigIntegerField(default=0, editable=False)

    onboard_time = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["symbol"]
        # The admin's halt/resume actions (contracts and the delivery calendar) stop or restart matching.
        permissions = [("halt_contract", "Can halt and resume a contract")]
        constraints = [
            models.CheckConstraint(condition=Q(symbol__regex=r"^[A-Z0-9]+(_[0-9]{6})?$"), name="contract_symbol_format"),
            models.CheckConstraint(condition=Q(contract_size__gt=0), name="contract_size_positive"),
            models.CheckConstraint(condition=Q(tick_size__gt=0), name="contract_tick_positive"),
            models.CheckConstraint(condition=Q(lot_size__gt=0), name="contract_lot_positive"),
            models.CheckConstraint(condition=Q(min_qty__gte=F("lot_size")), name="contract_min_qty_ge_lot"),
            models.CheckConstraint(condition=Q(max_qty__gte=F("min_qty")), name="contract_max_qty_ge_min"),
            models.CheckConstraint(condition=Q(market_max_qty__gte=F("min_qty")), name="contract_market_max_ge_min"),
            models.CheckConstraint(condition=Q(min_notional__gte=0), name="contract_min_notional_non_negative"),
            models.CheckConstraint(
                condition=Q(min_price__gte=F("tick_size"), max_price__gt=F("min_price")), name="contract_price_bounds"
            ),
            models.CheckConstraint(condition=Q(max_leverage__gte=1, max_leverage__lte=200), name="contract_leverage_range"),
            models.CheckConstraint(
                condition=Q(maker_fee_rate__gte=Decimal("-0.01"), maker_fee_rate__lte=Decimal("0.01")),
                name="contract_maker_fee_range",
            ),
            models.CheckConstraint(
                condition=Q(taker_fee_rate__gte=0, taker_fee_rate__lte=Decimal("0.01"))
                & Q(taker_fee_rate__gte=-F("maker_fee_rate")),
                name="contract_taker_fee_range",
            ),
            models.CheckConstraint(
                condition=Q(liquidation_fee_rate__gte=0, liquidation_fee_rate__lt=Decimal("0.5")),
                name="contract_liquidation_fee_range",
            ),
            models.CheckConstraint(
                condition=Q(funding_rate_cap__gte=0, funding_rate_floor__lte=0), name="contract_funding_bounds"
            ),
            # Funding times are every interval from 00:00 UTC each day: the interval must divide the day.
            models.CheckConstraint(condition=Q(funding_interval_hours__in=FUNDING_INTERVALS),
                                   name="contract_funding_interval_divides_day",
                                   violation_error_message="The funding interval must divide 24 hours: "
                                                           "1, 2, 3, 4, 6, 8, 12 or 24."),
            models.CheckConstraint(
                condition=Q(percent_price_up__gt=0, percent_price_down__gt=0, percent_price_down__lt=1),
                name="contract_percent_price",
            ),
            models.CheckConstraint(condition=Q(impact_notional__gt=0), name="contract_impact_notional_positive"),
            models.CheckConstraint(
                condition=Q(contract_type=ContractType.DELIVERY, delivery_time__isnull=False)
                | (~Q(contract_type=ContractType.DELIVERY) & Q(delivery_time__isnull=True)),
                name="contract_delivery_time_iff_delivery",
            ),
            models.CheckConstraint(
                condition=Q(settlement_price__isnull=True) | Q(settlement_price__gt=0),
                name="contract_settlement_price_positive",
            ),
            models.CheckConstraint(
                condition=Q(settlement_window_minutes__gte=1), name="contract_settlement_window_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.symbol

    @property
    def is_perpetual(self) -> bool:
        return self.contract_type == ContractType.PERPETUAL


class MarginTier(models.Model):
    """One notional bracket: maintenance = notional × rate − maintenance_amount.

    `maintenance_amount` (Binance's `cum`) makes the one-line formula equal to the
    progressive sum over brackets; `apps.contracts.tiers` checks and computes both.
    """

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="margin_tiers")
    bracket = models.PositiveSmallIntegerField()
    notional_floor = MoneyField()
    notional_cap = MoneyField()
    maintenance_rate = models.DecimalField(**RATE_DIGITS)
    maintenance_amount = MoneyField(default=Decimal("0"))
    max_leverage = models.PositiveSmallIntegerField()

    class Meta:
        ordering = ["contract_id", "bracket"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "bracket"], name="tier_unique_bracket"),
            models.UniqueConstraint(fields=["contract", "notional_floor"], name="tier_unique_floor"),
            models.CheckConstraint(condition=Q(bracket__gte=1), name="tier_bracket_from_one"),
            models.CheckConstraint(condition=Q(notional_floor__gte=0), name="tier_floor_non_negative"),
            models.CheckConstraint(condition=Q(notional_cap__gt=F("notional_floor")), name="tier_cap_above_floor"),
            models.CheckConstraint(
                condition=Q(maintenance_rate__gt=0, maintenance_rate__lt=1), name="tier_rate_range"
            ),
            models.CheckConstraint(condition=Q(maintenance_amount__gte=0), name="tier_amount_non_negative"),
            models.CheckConstraint(condition=Q(max_leverage__gte=1), name="tier_leverage_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.contract.symbol} tier {self.bracket}"


class ContractStatusChange(models.Model):
    """One step of a contract's lifecycle, as it happened (`apps.contracts.lifecycle`)."""

    contract = models.ForeignKey(Contract, on_delete=models.CASCADE, related_name="status_changes")
    from_status = models.CharField(max_length=16, choices=ContractStatus.choices)
    to_status = models.CharField(max_length=16, choices=ContractStatus.choices)
    at = models.DateTimeField(help_text="When the change took effect (the scheduled time when it was due).")
    recorded_at = models.DateTimeField(auto_now_add=True)
    reason = models.CharField(max_length=255)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+",
        help_text="The staff user who changed it; empty for the scheduler.",
    )

    class Meta:
        ordering = ["contract_id", "at", "id"]
        constraints = [
            models.CheckConstraint(condition=~Q(from_status=F("to_status")), name="status_change_changes"),
        ]

    def __str__(self) -> str:
        return f"{self.contract.symbol}: {self.from_status} → {self.to_status}"
