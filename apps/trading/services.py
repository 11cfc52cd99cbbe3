"""Order entry: validate, hold margin through the ledger, journal the command.

The order row, the margin hold and the journal command are written in one
transaction before the caller acknowledges; the matcher is woken after commit.
Anything refused raises an `ExchangeError` subclass and leaves nothing behind.
"""
import re
import uuid
from decimal import Decimal

from django.db import IntegrityError, transaction

from apps.contracts.grid import Grid, OffGrid
from apps.contracts.models import Contract, ContractStatus
from apps.ledger.errors import InsufficientBalance
from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.money import to_decimal
from apps.ledger.services import account_get_or_create, ledger_transfer
from apps.positions.models import Position
from exchange.errors import ErrorCode

from . import doorbell
from .errors import BadPrecision, BadSymbol, CancelRejected, MarginInsufficient, NoSuchOrder, OrderRejected
from .margin import order_hold
from .models import (
    OPEN_STATUSES,
    CommandKind,
    Order,
    OrderCommand,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
)

CLIENT_ORDER_ID = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")
ACCEPTING_STATUSES = (ContractStatus.TRADING, ContractStatus.CLOSE_ONLY)


def _decimal(value, name: str) -> Decimal:
    try:
        result = to_decimal(value)
    except (TypeError, ValueError) as exc:
        raise OrderRejected(f"Invalid {name}: {value!r}.") from exc
    if result <= 0:
        raise OrderRejected(f"{name.capitalize()} must be positive.")
    return result


def order_place(
    *,
    user,
    contract: Contract,
    side: str,
    quantity,
    price=None,
    order_type: str = OrderType.LIMIT,
    time_in_force: str = TimeInForce.GTC,
    reduce_only: bool = False,
    client_order_id: str | None = None,
    stp_mode: str = StpMode.EXPIRE_TAKER,
) -> Order:
    if contract.status not in ACCEPTING_STATUSES:
        raise BadSymbol(f"Symbol {contract.symbol} is not trading (status {contract.status}).")
    if side not in Side.values:
        raise OrderRejected(f"Invalid side {side!r}.")
    if order_type != OrderType.LIMIT:
        raise OrderRejected(f"Order type {order_type} is not accepted here.")
    if time_in_force not in TimeInForce.values:
        raise OrderRejected(f"Invalid timeInForce {time_in_force!r}.")
    if stp_mode not in StpMode.values:
        raise OrderRejected(f"Invalid selfTradePreventionMode {stp_mode!r}.")
    if client_order_id is not None and not CLIENT_ORDER_ID.fullmatch(client_order_id):
        raise OrderRejected("clientOrderId must be 1-36 characters of [.A-Z:/a-z0-9_-].",
                            code=ErrorCode.ILLEGAL_CHARS)
    quantity = _decimal(quantity, "quantity")
    price = _decimal(price, "price")
    grid = Grid.of(contract)
    try:
        grid.ticks(price)
        grid.lots(quantity)
    except OffGrid as exc:
        raise BadPrecision(f"Precision is over the maximum defined for this asset: {exc}.") from exc
    if quantity < contract.min_qty or quantity > contract.max_qty:
        raise OrderRejected(f"Quantity must be between {contract.min_qty.normalize()} and {contract.max_qty.normalize()}.")
    if price < contract.min_price or price > contract.max_price:
        raise OrderRejected(f"Price must be between {contract.min_price.normalize()} and {contract.max_price.normalize()}.")
    if quantity * price * contract.contract_size < contract.min_notional:
        raise OrderRejected(f"Order's notional must be no smaller than {contract.min_notional.normalize()}.")
    client_order_id = client_order_id or f"x-{uuid.uuid4().hex[:24]}"

    if contract.status == ContractStatus.CLOSE_ONLY and not reduce_only:
        raise OrderRejected(f"{contract.symbol} is close-only: only reduce-only orders are accepted.")

    with transaction.atomic():
        position, _ = Position.objects.get_or_create(user=user, contract=contract)
        hold = order_hold(
            quantity=quantity, price=price, contract=contract, leverage=position.leverage, reduce_only=reduce_only
        )
        try:
            with transaction.atomic():  # the unique key decides a race between two equal ids
                order = Order.objects.create(
                    user=user,
                    contract=contract,
                    client_order_id=client_order_id,
                    side=side,
                    order_type=order_type,
                    time_in_force=time_in_force,
                    price=price,
                    quantity=quantity,
                    reduce_only=reduce_only,
                    leverage=position.leverage,
                    stp_mode=stp_mode,
                    margin_held=hold,
                )
        except IntegrityError as exc:
            raise OrderRejected("ClientOrderId is duplicated.", code=ErrorCode.CLIENT_ORDER_ID_DUPLICATED) from exc
        if hold > 0:
            try:
                ledger_transfer(
                    source=account_get_or_create(kind=AccountKind.WALLET, user=user),
                    destination=account_get_or_create(kind=AccountKind.ORDER_MARGIN, user=user),
                    asset=contract.settle_asset,
                    amount=hold,
                    kind=TransactionKind.ORDER_MARGIN,
                    reference={"order_id": order.pk},
                )
            except InsufficientBalance as exc:
                raise MarginInsufficient("Margin is insufficient.") from exc
        OrderCommand.objects.create(contract=contract, kind=CommandKind.NEW, order=order)
        transaction.on_commit(lambda: doorbell.ring(contract.pk))
    return order


def order_cancel(*, user, order_id: int) -> Order:
    """Journal a cancel; the matcher closes the order and releases its hold."""
    with transaction.atomic():
        order = Order.objects.select_for_update().filter(pk=order_id, user=user).first()
        if order is None:
            raise NoSuchOrder("Unknown order sent.")
        if order.status not in OPEN_STATUSES:
            raise CancelRejected(f"Order is {order.status}; it cannot be cancelled.")
        OrderCommand.objects.create(contract_id=order.contract_id, kind=CommandKind.CANCEL, order=order)
        transaction.on_commit(lambda: doorbell.ring(order.contract_id))
    return order

