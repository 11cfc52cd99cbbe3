"""Stored risk results: per-contract volatility estimates, assessment runs and
per-account risk snapshots.

`VolatilityEstimate` is one hourly estimate per contract (realized volatility with the
seed's hourly annualization, GARCH(1,1) parameters and forecast, the seed's 24-hour
daily volatility and the liquidity score) together with the margin adjustments they
imply; it is the one-hour cache that order entry reads. `RiskRun` is one run of the
beat job per time bucket (unique, so a second run of the same bucket does nothing)
and carries the market model it used (symbols, daily volatilities, correlations,
historical daily returns), so every chunk of the run, in whichever worker, computes
with the same numbers. `RiskSnapshot` is one account's assessment in a bucket
(unique per user and bucket). Amounts (equity, notionals, VaR, stress losses) are
Decimals in the settle asset (USDT); ratios, scores and volatilities are floats:
analytics, never booked.
"""
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.ledger.fields import MoneyField


class RiskLevelChoice(models.IntegerChoices):
    """`apps.risk.analytics.RiskLevel` as stored (ordered: higher is riskier)."""

    LOW = 0, "Low"
    MEDIUM = 1, "Medium"
    HIGH = 2, "High"
    CRITICAL = 3, "Critical"


class VolatilityMethod(models.TextChoices):
    GARCH = "garch", "GARCH(1,1) one-day forecast"
    SAMPLE = "sample", "Sample volatility (short history or no converged fit)"
    DEFAULT = "default", "Configured default (no usable price history)"


class VolatilityEstimate(models.Model):
    contract = models.ForeignKey("contracts.Contract", on_delete=models.CASCADE, related_name="+")
    bucket = models.DateTimeField(help_text="The hour this estimate belongs to (one per contract and hour).")
    computed_at = models.DateTimeField()
    observations = models.PositiveIntegerField(help_text="Hourly returns used.")
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    realized_volatility = models.FloatField(
        help_text="Annualized realized volatility of hourly log returns (factor 252×24)."
    )
    method = models.CharField(max_length=8, choices=VolatilityMethod.choices)
    fallback = models.BooleanField(help_text="True when GARCH was not used (sample or default volatility).")
    forecast_daily_volatility = models.FloatField(
        help_text="One-day volatility for VaR: the sum of the next 24 hourly GARCH variance forecasts (or the "
        "sample / default volatility), square-rooted."
    )
    garch_mu = models.FloatField(null=True, blank=True)
    garch_omega = models.FloatField(null=True, blank=True)
    garch_alpha = models.FloatField(null=True, blank=True)
    garch_beta = models.FloatField(null=True, blank=True)
    garch_loglikelihood = models.FloatField(null=True, blank=True)
    garch_converged = models.BooleanField(null=True, blank=True)
    garch_forecast = models.JSONField(
        default=list, blank=True, help_text="Annualized volatility forecast for each of the next 24 hours."
    )
    daily_volatility_24h = models.FloatField(
        help_text="The seed's margin volatility: std of the last 24 hourly returns × √24."
    )
    traded_notional_24h = MoneyField(default=Decimal("0"))
    liquidity_score = models.FloatField(help_text="min(1, 24 h traded notional / RISK_LIQUIDITY_FULL_NOTIONAL).")
    initial_margin_factor = models.DecimalField(
        max_digits=12, decimal_places=8,
        help_text="Volatility + liquidity adjustment: initial margin rate = 1/leverage × (1 + factor).",
    )
    maintenance_addon = models.DecimalField(
        max_digits=12, decimal_places=8, help_text="Added to the maintenance margin rate (0 / 0.1% / 0.2% / 0.5%)."
    )

    class Meta:
        ordering = ["-bucket", "contract_id"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "bucket"], name="risk_volatility_one_per_hour"),
            models.CheckConstraint(condition=Q(liquidity_score__gte=0, liquidity_score__lte=1),
                                   name="risk_volatility_liquidity_range"),
        ]
        indexes = [models.Index(fields=["contract", "-bucket"], name="risk_volatility_latest")]

    def __str__(self) -> str:
        return f"{self.contract.symbol} {self.bucket:%Y-%m-%d %H:%M} {self.method}"


class RunStatus(models.TextChoices):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class RiskRun(models.Model):
    """One beat run: every account with open positions, assessed in chunks."""

    bucket = models.DateTimeField(unique=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=RunStatus.choices, default=RunStatus.RUNNING)
    accounts = models.PositiveIntegerField(default=0)
    chunks = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    total_var_95 = MoneyField(null=True, blank=True, help_text="Sum of the accounts' 95% VaR (no netting).")
    total_var_99 = MoneyField(null=True, blank=True)
    error = models.TextField(blank=True)
    market = models.JSONField(default=dict, help_text="Symbols, daily volatilities and their sources, correlations.")
    history = models.JSONField(default=dict, help_text="Overlapping one-day returns for historical VaR.")

    class Meta:
        ordering = ["-bucket"]

    def __str__(self) -> str:
        return f"risk run {self.bucket:%Y-%m-%d %H:%M} ({self.status})"


class RiskSnapshot(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="risk_snapshots")
    run = models.ForeignKey(RiskRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="snapshots")
    bucket = models.DateTimeField()
    computed_at = models.DateTimeField()
    equity = MoneyField(help_text="Margin balance (wallet + unrealized PnL) in USDT.")
    gross_notional = MoneyField()
    net_notional = MoneyField()
    var_95 = MoneyField(help_text="One-day Monte Carlo VaR 95% (positive loss).")
    var_99 = MoneyField()
    es_95 = MoneyField()
    es_99 = MoneyField()
    hist_var_95 = MoneyField(null=True, blank=True, help_text="Historical one-day VaR; empty without enough history.")
    hist_var_99 = MoneyField(null=True, blank=True)
    paths = models.PositiveIntegerField()
    stress = models.JSONField(default=list, help_text="[{name, kind, pnl}] per named scenario.")
    stress_loss = MoneyField()
    worst_scenario = models.CharField(max_length=64, blank=True)
    concentration = models.FloatField()
    var_95_ratio = models.FloatField(null=True, help_text="Fraction of equity; empty when equity ≤ 0.")
    var_99_ratio = models.FloatField(null=True)
    stress_loss_ratio = models.FloatField(null=True)
    components = models.JSONField(default=dict)
    overall_score = models.FloatField()
    level = models.PositiveSmallIntegerField(choices=RiskLevelChoice.choices)
    recommendations = models.JSONField(default=list, help_text="[{code, message}], most urgent first.")
    inputs = models.JSONField(default=dict, help_text="Positions, volatilities and model details used.")

    class Meta:
        ordering = ["-bucket", "-overall_score"]
        constraints = [
            models.UniqueConstraint(fields=["user", "bucket"], name="risk_snapshot_one_per_bucket"),
            models.CheckConstraint(condition=Q(overall_score__gte=0, overall_score__lte=100),
                                   name="risk_snapshot_score_range"),
        ]
        indexes = [
            models.Index(fields=["user", "-computed_at"], name="risk_snapshot_user_latest"),
            models.Index(fields=["bucket", "-overall_score"], name="risk_snapshot_bucket_score"),
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.bucket:%Y-%m-%d %H:%M} {self.get_level_display()} ({self.overall_score:.1f})"
