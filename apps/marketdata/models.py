"""Market-data records: index constituents, stored price samples, anomalies.

`IndexConstituent` says which venues (and which of their symbols) make up a
contract's index and with what configured weight; ops edit it in the admin and
the pricefeed reloads it. Prices are kept as two compact time series:
`PriceSample`, at most one row per contract per second (index, mark, basis, how
many venues were valid), pruned after a retention period; and `PriceMinute`, one
row per contract per minute with the per-venue volume-weighted prices the minute
saw, kept for funding and the auditable delivery settlement price (the
settlement calculator runs on exactly these rows). `PriceAnomaly` records every
anomaly the detector found, every stale-index episode and mark fallback, with
the pause a HIGH anomaly imposed and who lifted it.
"""
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from apps.ledger.fields import MoneyField

RATIO_DIGITS = {"max_digits": 30, "decimal_places": 12}


class IndexConstituent(models.Model):
    """One venue's quote in a contract's index, with its configured weight.

    The index weight of a quote is `weight × (1 + min(2, volume / 1000))`.
    `source_symbol` is the venue's (spot) symbol, e.g. BTCUSDT for both the
    BTCUSDT perpetual and the BTCUSDT_261225 quarterly contract.
    """

    contract = models.ForeignKey("contracts.Contract", on_delete=models.CASCADE, related_name="index_constituents")
    venue = models.CharField(max_length=32)
    source_symbol = models.CharField(max_length=32)
    weight = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("1"))
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["contract_id", "venue"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "venue"], name="constituent_unique_venue"),
            models.CheckConstraint(condition=Q(weight__gt=0), name="constituent_weight_positive"),
            models.CheckConstraint(condition=~Q(venue=""), name="constituent_venue_not_empty"),
            models.CheckConstraint(condition=~Q(source_symbol=""), name="constituent_symbol_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.contract.symbol}: {self.venue} {self.source_symbol} ×{self.weight.normalize():f}"


class PriceStatus(models.TextChoices):
    FRESH = "fresh", "Fresh (index from valid venues)"
    HELD = "held", "Index held (no valid venue)"
    PAUSED = "paused", "Mark paused by an anomaly"
    FALLBACK = "fallback", "Mark fell back to the last mark"


class PriceSample(models.Model):
    """The published index and mark of a contract, at most one row per second.

    `basis` is mark − index as published (the clamped, smoothed basis), and
    `valid_venues` how many venue quotes entered the index. Raw rows are pruned
    after `MARKETDATA_SAMPLE_RETENTION_DAYS`; `PriceMinute` keeps the minutes.
    """

    id = models.BigAutoField(primary_key=True)
    contract = models.ForeignKey("contracts.Contract", on_delete=models.CASCADE, related_name="+")
    at = models.DateTimeField()
    index_price = MoneyField()
    mark_price = MoneyField()
    basis = MoneyField()
    valid_venues = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=8, choices=PriceStatus.choices, default=PriceStatus.FRESH)

    class Meta:
        ordering = ["contract_id", "-at"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "at"], name="price_sample_unique_second"),
            models.CheckConstraint(condition=Q(index_price__gt=0, mark_price__gt=0), name="price_sample_positive"),
            models.CheckConstraint(condition=Q(basis=F("mark_price") - F("index_price")), name="price_sample_basis"),
        ]
        indexes = [models.Index(fields=["at"], name="price_sample_at")]

    def __str__(self) -> str:
        return f"{self.contract.symbol} {self.at:%Y-%m-%d %H:%M:%S} mark {self.mark_price.normalize():f}"


class PriceMinute(models.Model):
    """One minute of a contract's prices, kept for funding and delivery settlement.

    `venues` maps venue -> {"price": VWAP of the distinct quotes of the minute,
    "volume": their summed volume, "quotes": how many, "last_ts": epoch ms of the
    newest}; decimals are strings. The settlement price of a delivery contract is
    computed from these rows (`selectors.price_settlement_quotes`), so it can be
    recomputed and audited later. `index_price` / `mark_price` are the last values
    published in the minute.
    """

    id = models.BigAutoField(primary_key=True)
    contract = models.ForeignKey("contracts.Contract", on_delete=models.CASCADE, related_name="+")
    minute = models.DateTimeField()
    index_price = MoneyField()
    mark_price = MoneyField()
    venues = models.JSONField(default=dict)

    class Meta:
        ordering = ["contract_id", "-minute"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "minute"], name="price_minute_unique"),
            models.CheckConstraint(condition=Q(index_price__gt=0, mark_price__gt=0), name="price_minute_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.contract.symbol} {self.minute:%Y-%m-%d %H:%M}"


class AnomalyKind(models.TextChoices):
    PRICE_JUMP = "price_jump", "Price jump"
    VOLUME_SPIKE = "volume_spike", "Volume spike"
    SPREAD_WIDENING = "spread_widening", "Spread widening"
    INDEX_STALE = "index_stale", "Index stale (no valid venue; last index held)"
    MARK_FALLBACK = "mark_fallback", "Mark fell back to the last mark"


class AnomalySeverity(models.TextChoices):
    MEDIUM = "medium", "Medium (smoothing doubled, warning)"
    HIGH = "high", "High (mark paused, emergency)"
    ALERT = "alert", "Alert (data-quality event)"


class PriceAnomaly(models.Model):
    """A detected price anomaly or data-quality event of a contract.

    A HIGH anomaly pauses mark updates until `paused_until`; ops lift it early
    with the admin action (`lifted_at`, `lifted_by`), which the running pricefeed
    notices on its next tick. Stale-index episodes get one row each, with
    `ended_at` set when valid quotes return.
    """

    id = models.BigAutoField(primary_key=True)
    contract = models.ForeignKey("contracts.Contract", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=AnomalyKind.choices)
    severity = models.CharField(max_length=8, choices=AnomalySeverity.choices)
    detected_at = models.DateTimeField()
    value = models.DecimalField(null=True, blank=True, **RATIO_DIGITS)
    threshold = models.DecimalField(null=True, blank=True, **RATIO_DIGITS)
    observed = MoneyField(null=True, blank=True)
    reference = MoneyField(null=True, blank=True)
    message = models.CharField(max_length=500)
    detail = models.JSONField(default=dict, blank=True)
    paused_until = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    lifted_at = models.DateTimeField(null=True, blank=True)
    lifted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["-detected_at", "-id"]
        verbose_name_plural = "price anomalies"
        constraints = [
            models.CheckConstraint(
                condition=Q(paused_until__isnull=True) | Q(severity="high"), name="anomaly_pause_only_high"
            ),
            models.CheckConstraint(
                condition=Q(lifted_at__isnull=True) | Q(paused_until__isnull=False), name="anomaly_lift_needs_pause"
            ),
        ]
        indexes = [
            models.Index(fields=["contract", "-detected_at"], name="anomaly_contract_time"),
            models.Index(fields=["lifted_at"], name="anomaly_lifted_at"),
        ]

    def __str__(self) -> str:
        return f"{self.contract.symbol} {self.severity} {self.kind} at {self.detected_at:%Y-%m-%d %H:%M:%S}"
