"""Orders and trades.

An order row is written (with its journal sequence number) before the client gets an
acknowledgement; the matcher owns every later change of it. Trades are immutable
records of fills, written by the matcher's booking service.
"""
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from apps.ledger.fields import MoneyField


class Side(models.TextChoices):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(models.TextChoices):
    LIMIT = "LIMIT"
    MARKET = "MARKET"
    STOP = "STOP"
    STOP_MARKET = "STOP_MARKET"
    TAKE_PROFIT = "TAKE_PROFIT"
    TAKE_PROFIT_MARKET = "TAKE_PROFIT_MARKET"
    TRAILING_STOP_MARKET = "TRAILING_STOP_MARKET"
    LIQUIDATION = "LIQUIDATION"


class TimeInForce(models.TextChoices):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    GTX = "GTX", "Post only"


class WorkingType(models.TextChoices):
    MARK_PRICE = "MARK_PRICE"
    CONTRACT_PRICE = "CONTRACT_PRICE"


# Conditional (Binance "algo") orders wait, outside the book, for their trigger.
CONDITIONAL_TYPES = (
    OrderType.STOP,
    OrderType.STOP_MARKET,
    OrderType.TAKE_PROFIT,
    OrderType.TAKE_PROFIT_MARKET,
    OrderType.TRAILING_STOP_MARKET,
)
# Types that execute as market orders (with a protection price) once live.
MARKET_TYPES = (
    OrderType.MARKET,
    OrderType.STOP_MARKET,
    OrderType.TAKE_PROFIT_MARKET,
    OrderType.TRAILING_STOP_MARKET,
    OrderType.LIQUIDATION,
)


class OrderStatus(models.TextChoices):
    PENDING_NEW = "PENDING_NEW", "Accepted, not yet matched"
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"


class StpMode(models.TextChoices):
    NONE = "NONE"
    EXPIRE_TAKER = "EXPIRE_TAKER"
    EXPIRE_MAKER = "EXPIRE_MAKER"
    EXPIRE_BOTH = "EXPIRE_BOTH"


OPEN_STATUSES = (OrderStatus.PENDING_NEW, OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)
# In the book, once the matcher has given them a time priority.
RESTING_STATUSES = (OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED)


class Order(models.Model):
    # No single-column indexes on the two keys: order_user_contract / order_unique_client_id and
    # order_contract_status lead with them, and every index costs the matcher's batch update of
    # thousands of orders a new entry per row (a status change is never a HOT update).
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="orders",
                             db_index=False)
    contract = models.ForeignKey("contracts.Contract", on_delete=models.PROTECT, related_name="orders",
                                 db_index=False)
    client_order_id = models.CharField(max_length=36)
    side = models.CharField(max_length=4, choices=Side.choices)
    order_type = models.CharField(max_length=24, choices=OrderType.choices)
    time_in_force = models.CharField(max_length=3, choices=TimeInForce.choices, default=TimeInForce.GTC)
    price = MoneyField(null=True, blank=True)
    # Market-type orders: the worst price they may fill at (mark ± the contract's market
    # deviation), fixed when they go live so a replay matches them identically.
    protection_price = MoneyField(null=True, blank=True)
    # Conditional orders: trigger on `working_type` crossing `stop_price`; trailing stops
    # arm at `activation_price` and trigger `callback_rate` percent off `trail_extreme`.
    stop_price = MoneyField(null=True, blank=True)
    working_type = models.CharField(max_length=16, choices=WorkingType.choices, default=WorkingType.CONTRACT_PRICE)
    close_position = models.BooleanField(default=False)
    price_protect = models.BooleanField(default=False)
    activation_price = MoneyField(null=True, blank=True)
    callback_rate = models.DecimalField(max_digits=6, decimal_places=2, null=True, blank=True)
    trail_extreme = MoneyField(null=True, blank=True)
    triggered_at = models.DateTimeField(null=True, blank=True)
    quantity = MoneyField()
    executed_qty = MoneyField(default=Decimal("0"))
    cum_quote = MoneyField(default=Decimal("0"))
    reduce_only = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=OrderStatus.choices, default=OrderStatus.PENDING_NEW)
    # Initial margin plus worst-case fee still held in the user's ORDER_MARGIN account
    # for the open quantity; released as the order fills or closes.
    margin_held = MoneyField(default=Decimal("0"))
    leverage = models.PositiveSmallIntegerField(default=20)
    stp_mode = models.CharField(max_length=16, choices=StpMode.choices, default=StpMode.EXPIRE_TAKER)
    # Book priority assigned by the matcher when the order rests (its processing order);
    # the book is rebuilt from resting orders in this order.
    priority = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["user", "client_order_id"], name="order_unique_client_id"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="order_quantity_positive"),
            models.CheckConstraint(condition=Q(executed_qty__gte=0), name="order_executed_non_negative"),
            models.CheckConstraint(condition=Q(executed_qty__lte=F("quantity")), name="order_not_overfilled"),
            models.CheckConstraint(condition=Q(price__isnull=True) | Q(price__gt=0), name="order_price_positive"),
            models.CheckConstraint(condition=Q(margin_held__gte=0), name="order_margin_non_negative"),
        ]
        indexes = [
            models.Index(fields=["contract", "status"], name="order_contract_status"),
            models.Index(fields=["user", "contract", "-id"], name="order_user_contract"),
            # Open orders of an account: entry's exposure and open-order count, the risk
            # gate and cancel-all read them on every order; history must not be scanned.
            models.Index(fields=["user", "contract"], condition=Q(status__in=OPEN_STATUSES),
                         name="order_user_contract_open"),
            models.Index(
                fields=["contract"], condition=Q(status="NEW", triggered_at__isnull=True,
                                                 order_type__in=CONDITIONAL_TYPES),
                name="order_conditional_waiting",
            ),
            # Resting reduce-only and close-position orders: the matcher re-reads those of every
            # account that filled (`matching.FILL_ORDERS_SQL`), on a plan that may be generic.
            # Few rows, so that read stays small however deep the book.
            models.Index(
                fields=["contract", "user"],
                condition=Q(status__in=RESTING_STATUSES, priority__isnull=False) & (
                    Q(reduce_only=True) | Q(close_position=True)),
                name="order_resting_reducing",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.side} {self.quantity.normalize():f} {self.contract.symbol}"

    @property
    def is_conditional(self) -> bool:
        return self.order_type in CONDITIONAL_TYPES

    @property
    def is_waiting(self) -> bool:
        """A conditional order not yet triggered: open, but not in the book."""
        return self.is_conditional and self.triggered_at is None and self.status in OPEN_STATUSES


class CommandKind(models.TextChoices):
    NEW = "NEW"
    CANCEL = "CANCEL"
    AMEND = "AMEND"


class CommandStatus(models.TextChoices):
    PENDING = "PENDING"
    DONE = "DONE"
    # A command whose processing failed repeatedly on its own: set aside so the symbol's
    # journal moves on; ops are alerted (apps/trading/quarantine.py).
    QUARANTINED = "QUARANTINED"


class OrderCommand(models.Model):
    """The journal: every accepted command, persisted before it is acknowledged.

    `seq` (a bigserial) orders the commands; the matcher of the contract processes the
    PENDING ones in `seq` order and marks them DONE in the same transaction that books
    their results, so a crash replays exactly the unfinished ones.
    """

    seq = models.BigAutoField(primary_key=True)
    contract = models.ForeignKey("contracts.Contract", on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=8, choices=CommandKind.choices)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="commands")
    # AMEND: the new price (null keeps it) and the new total quantity.
    price = MoneyField(null=True, blank=True)
    quantity = MoneyField(null=True, blank=True)
    # AMEND: extra margin moved into ORDER_MARGIN when the amend was accepted; the matcher
    # adds it to the order's hold when the amend applies, and releases it when it is refused.
    margin_added = MoneyField(default=Decimal("0"))
    status = models.CharField(max_length=12, choices=CommandStatus.choices, default=CommandStatus.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["seq"]
        indexes = [
            models.Index(
                fields=["contract", "seq"], condition=Q(status="PENDING"), name="command_pending_by_contract"
            )
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} order {self.order_id}"


class Trade(models.Model):
    # trade_contract_recent leads with the contract: no index of its own (the batch writes thousands of trades).
    contract = models.ForeignKey("contracts.Contract", on_delete=models.PROTECT, related_name="trades", db_index=False)
    price = MoneyField()
    quantity = MoneyField()
    taker_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="+")
    maker_order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="+")
    taker_side = models.CharField(max_length=4, choices=Side.choices)
    taker_fee = MoneyField(default=Decimal("0"))
    maker_fee = MoneyField(default=Decimal("0"))
    taker_realized_pnl = MoneyField(default=Decimal("0"))
    maker_realized_pnl = MoneyField(default=Decimal("0"))
    # The journal command whose processing produced this fill.
    command_seq = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(price__gt=0), name="trade_price_positive"),
            models.CheckConstraint(condition=Q(quantity__gt=0), name="trade_quantity_positive"),
            models.CheckConstraint(condition=~Q(taker_order=F("maker_order")), name="trade_distinct_orders"),
        ]
        indexes = [models.Index(fields=["contract", "-id"], name="trade_contract_recent")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.contract.symbol} {self.quantity.normalize():f}@{self.price.normalize():f}"
