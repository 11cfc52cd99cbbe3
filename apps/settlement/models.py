"""Funding of perpetuals: premium samples, the settled rate history, and settlement runs.

`PremiumSample` is one narrow row per contract per sampling slot (every
`FUNDING_SAMPLE_SECONDS`, default 5 s, numbered from 1 within the funding interval it
belongs to): the premium and the two prices it came from (contract price and mark
for the SEED policy, impact bid/ask and index for the IMPACT policy; the other
columns stay NULL). The slot number is the weight of the interval average
(Σ i·Pᵢ / Σ i) and, with (contract, funding_time), the unique key, so two samplers
firing at once store one row.

`FundingRate` is the published history (`GET /fapi/v1/fundingRate`): one row per
(contract, funding time), written in the settlement's transaction.

`FundingSettlement` is the job record of one (contract, funding time): its row lock
serializes concurrent runners, its status says whether the money moved, and it keeps
the totals (paid by payers, received by receivers, and the rounding dust left in the
FUNDING_CLEARING account, which is the one account that holds funding dust).

`FundingChunk` is one part of a large settlement (more positions than
`FUNDING_CHUNK_POSITIONS`): the payments of its positions as fixed when the run was
planned (parallel arrays, emptied once booked: the income lines and ledger entries
then hold them), and the posting that booked them. Each chunk is booked in its own
transaction, so chunks run in parallel and a run killed half-way keeps the chunks it
booked; the next run books the others.
"""
from django.contrib.postgres.fields import ArrayField
from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.contracts.models import RATE_DIGITS, Contract, FundingPolicy
from apps.ledger.fields import MoneyField

RATIO_DIGITS = {"max_digits": 30, "decimal_places": 12}


class PremiumSample(models.Model):
    id = models.BigAutoField(primary_key=True)
    contract = models.ForeignKey("contracts.Contract", on_delete=models.CASCADE, related_name="+")
    funding_time = models.DateTimeField(help_text="End of the funding interval the sample belongs to.")
    slot = models.PositiveIntegerField(help_text="1-based sample slot within the interval; its weight.")
    at = models.DateTimeField()
    policy = models.CharField(max_length=8, choices=FundingPolicy.choices)
    premium = models.DecimalField(**RATIO_DIGITS)
    # SEED: contract (last trade) price vs mark.
    contract_price = MoneyField(null=True, blank=True)
    mark_price = MoneyField(null=True, blank=True)
    # IMPACT: impact bid / ask (average fill of the impact notional) vs index.
    impact_bid = MoneyField(null=True, blank=True)
    impact_ask = MoneyField(null=True, blank=True)
    index_price = MoneyField(null=True, blank=True)

    class Meta:
        ordering = ["contract_id", "-funding_time", "-slot"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "funding_time", "slot"], name="premium_sample_unique_slot"),
            models.CheckConstraint(condition=Q(slot__gte=1), name="premium_sample_slot_from_one"),
        ]
        indexes = [models.Index(fields=["at"], name="premium_sample_at")]

    def __str__(self) -> str:
        return f"{self.contract.symbol} {self.funding_time:%Y-%m-%d %H:%M} #{self.slot} {self.premium}"


class FundingRate(models.Model):
    contract = models.ForeignKey("contracts.Contract", on_delete=models.PROTECT, related_name="+")
    funding_time = models.DateTimeField()
    funding_rate = models.DecimalField(**RATE_DIGITS)
    mark_price = MoneyField()
    policy = models.CharField(max_length=8, choices=FundingPolicy.choices)
    # The interval's time-weighted premium (before clamps), the interest it used and how
    # many samples it had: enough to re-derive the rate from the formula.
    premium_index = models.DecimalField(**RATIO_DIGITS)
    interest_rate = models.DecimalField(**RATE_DIGITS)
    samples = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["contract_id", "-funding_time"]
        constraints = [
            models.UniqueConstraint(fields=["contract", "funding_time"], name="funding_rate_unique_time"),
            models.CheckConstraint(condition=Q(mark_price__gt=0), name="funding_rate_mark_positive"),
        ]
        indexes = [models.Index(fields=["funding_time"], name="funding_rate_time")]

    def __str__(self) -> str:
        return f"{self.contract.symbol} {self.funding_time:%Y-%m-%d %H:%M} {self.funding_rate}"


class SettlementStatus(models.TextChoices):
    PENDING = "PENDING", "Pending (not settled yet)"
    SETTLING = "SETTLING", "Settling (booked in chunks; the next run books what is left)"
    DONE = "DONE", "Settled"
    FAILED = "FAILED", "Failed (retried by the next run; chunks already booked stay booked)"


class SettlementRun(models.Model):
    """What every settlement job run records: its posting, its attempts and last error, who asked."""

    ledger_transaction = models.ForeignKey(
        "ledger.LedgerTransaction", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class FundingSettlement(SettlementRun):
    contract = models.ForeignKey("contracts.Contract", on_delete=models.PROTECT, related_name="+")
    funding_time = models.DateTimeField()
    status = models.CharField(max_length=8, choices=SettlementStatus.choices, default=SettlementStatus.PENDING)
    funding_rate = models.DecimalField(null=True, blank=True, **RATE_DIGITS)
    mark_price = MoneyField(null=True, blank=True)
    positions = models.PositiveIntegerField(default=0)
    paid = MoneyField(default=0, help_text="Sum paid by the paying side (positive).")
    received = MoneyField(default=0, help_text="Sum received by the receiving side (positive).")
    dust = MoneyField(default=0, help_text="paid − received: left in the FUNDING_CLEARING account.")
    covered = MoneyField(default=0, help_text="Payments the insurance fund or bad debt covered.")
    chunks = models.PositiveIntegerField(
        default=0, help_text="Chunks the payments were booked in (0: one posting, the run's ledger transaction).")

    class Meta:
        ordering = ["-funding_time", "contract_id"]
        # The admin's "settle now" (the action and adding a run) moves funding between users.
        permissions = [("settle_funding", "Can settle funding now")]
        constraints = [
            models.UniqueConstraint(fields=["contract", "funding_time"], name="funding_settlement_unique_time"),
            models.CheckConstraint(
                condition=~Q(status="DONE") | Q(funding_rate__isnull=False, mark_price__isnull=False),
                name="funding_settlement_done_has_rate",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.contract.symbol} {self.funding_time:%Y-%m-%d %H:%M} {self.status}"


class FundingChunk(models.Model):
    run = models.ForeignKey(FundingSettlement, on_delete=models.PROTECT, related_name="chunk_set")
    number = models.PositiveIntegerField(help_text="0-based; positions in user order.")
    positions = models.PositiveIntegerField()
    paid = MoneyField(default=0)
    received = MoneyField(default=0)
    covered = MoneyField(default=0)
    # The payments as planned, one element per position (emptied once booked).
    user_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    isolated = ArrayField(models.BooleanField(), default=list, blank=True)
    account_ids = ArrayField(models.BigIntegerField(), default=list, blank=True)
    amounts = ArrayField(MoneyField(), default=list, blank=True)
    ledger_transaction = models.ForeignKey(
        "ledger.LedgerTransaction", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    booked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run_id", "number"]
        constraints = [models.UniqueConstraint(fields=["run", "number"], name="funding_chunk_unique_number")]

    @property
    def dust(self):
        return self.paid - self.received

    def __str__(self) -> str:
        return f"{self.run} chunk {self.number}"


# -- delivery ------------------------------------------------------------------------------


class DeliveryStatus(models.TextChoices):
    PENDING = "PENDING", "Pending (delivery time not reached or not yet priced)"
    NO_PRICE = "NO_PRICE", "No valid price samples: not settled, ops alerted"
    PRICED = "PRICED", "Settlement price fixed; positions not settled yet"
    SETTLING = "SETTLING", "Settling (booked in chunks; the next run books what is left)"
    DONE = "DONE", "Settled"
    FAILED = "FAILED", "Failed (nothing booked; retried by the next run)"


class DeliverySettlement(SettlementRun):
    """The delivery of one contract: its audited settlement price and the cash settlement.

    One row per contract (the idempotency key). `audit` is the settlement price
    calculator's full record (every minute of the window with its median, the quotes kept
    with their weights and those dropped with the reason), so the price can be re-derived
    from `marketdata.PriceMinute` and checked at any later time.
    """

    contract = models.OneToOneField("contracts.Contract", on_delete=models.PROTECT, related_name="delivery")
    delivery_time = models.DateTimeField()
    status = models.CharField(max_length=8, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    settlement_price = MoneyField(null=True, blank=True)
    window_start = models.DateTimeField(null=True, blank=True)
    window_end = models.DateTimeField(null=True, blank=True)
    valid_minutes = models.PositiveIntegerField(default=0)
    audit = models.JSONField(default=dict, blank=True)
    positions = models.PositiveIntegerField(default=0)
    long_quantity = MoneyField(default=0)
    short_quantity = MoneyField(default=0)
    realized_pnl = MoneyField(default=0, help_text="Σ realized PnL of the closed positions (≈ 0: it is zero-sum "
                                                   "with what the PnL clearing account held).")
    fees = MoneyField(default=0)
    orders_expired = models.PositiveIntegerField(default=0)
    order_margin_released = MoneyField(default=0)
    covered = MoneyField(default=0, help_text="Losses the insurance fund covered.")
    bad_debt = MoneyField(default=0, help_text="Losses beyond the fund, recorded as bad debt.")
    priced_at = models.DateTimeField(null=True, blank=True)
    chunks = models.PositiveIntegerField(
        default=0, help_text="Chunks the positions were closed in (0: one posting, the run's ledger transaction).")

    class Meta:
        ordering = ["-delivery_time", "contract_id"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(status__in=("PRICED", "DONE")) | Q(settlement_price__gt=0),
                name="delivery_priced_has_price",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.contract.symbol} delivery {self.status}"


class DeliveryChunk(models.Model):
    """The positions of the users `user_from`..`user_to` of a large delivery (up to
    `DELIVERY_CHUNK_POSITIONS`, in user order; one position per user and contract).

    The plan counted them (`positions`, `quantity`) and decided their isolated covers, which
    its posting moved into DELIVERY_CLEARING (`clearing`). Booking a chunk computes its
    positions' rows (nothing can change a position of a SETTLING contract: count, quantity
    and covers must be the plan's, or the chunk fails) and pays each position's result
    (PnL − fee, the covers) out of DELIVERY_CLEARING, records its `realized_pnl` and `fees`
    (returned to DELIVERY_CLEARING from PNL_CLEARING and FEE_INCOME by the run's last posting),
    writes their income lines and closes them. The plan's isolated covers are stored (the few
    positions whose loss went beyond their margin); `covered` and `bad_debt` are the chunk's
    own, of cross wallets that could not pay their loss when it was booked.
    """

    run = models.ForeignKey(DeliverySettlement, on_delete=models.PROTECT, related_name="chunk_set")
    number = models.PositiveIntegerField(help_text="0-based; positions in user order.")
    positions = models.PositiveIntegerField()
    user_from = models.IntegerField(help_text="Its first user (id).")
    user_to = models.IntegerField(help_text="Its last user (id).")
    quantity = MoneyField(default=0, help_text="Σ |size| of its positions, as the plan counted them.")
    clearing = MoneyField(help_text="Σ isolated covers of its positions (fund and bad debt): what the plan put "
                                    "into DELIVERY_CLEARING for it.")
    realized_pnl = MoneyField(default=0, help_text="Σ realized PnL of its positions (once booked).")
    fees = MoneyField(default=0, help_text="Σ delivery fees of its positions (once booked).")
    covered = MoneyField(default=0)
    bad_debt = MoneyField(default=0)
    # The plan's isolated covers: position id, covered by the fund, recorded as bad debt.
    cover_positions = ArrayField(models.BigIntegerField(), default=list, blank=True)
    cover_fund = ArrayField(MoneyField(), default=list, blank=True)
    cover_lost = ArrayField(MoneyField(), default=list, blank=True)
    ledger_transaction = models.ForeignKey(
        "ledger.LedgerTransaction", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    booked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run_id", "number"]
        constraints = [models.UniqueConstraint(fields=["run", "number"], name="delivery_chunk_unique_number")]

    def __str__(self) -> str:
        return f"{self.run} chunk {self.number}"


class DeliveryNotice(models.Model):
    """A holder told that their position will be delivered (24 h before; once per holder)."""

    contract = models.ForeignKey("contracts.Contract", on_delete=models.PROTECT, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    delivery_time = models.DateTimeField()
    position_size = MoneyField()
    created_at = models.DateTimeField(auto_now_add=True)
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["contract", "user"], name="delivery_notice_once")]

    def __str__(self) -> str:
        return f"{self.contract.symbol} notice to user {self.user_id}"


class DeliveryContract(Contract):
    """The delivery calendar in the admin: delivery contracts with their lifecycle (a proxy)."""

    class Meta:
        proxy = True
        ordering = ["delivery_time", "symbol"]
        # The delivery calendar's "settle now" closes every position of the contract.
        permissions = [("settle_delivery", "Can settle a delivery contract now")]
        verbose_name = "delivery calendar entry"
        verbose_name_plural = "delivery calendar"
