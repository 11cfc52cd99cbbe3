"""Order entry: validate, hold margin through the ledger, journal the command.

The order row, the margin hold and (for an order that goes live at once) the journal
command are written in one transaction before the caller acknowledges; the matcher
is woken after commit. Orders that arrive together share that transaction
(`orders_place_many`; `order_place` is it for one order), each still judged and
answered on its own. Conditional orders wait outside the book until
`apps.trading.triggers` journals them. Anything refused raises an `ExchangeError`
subclass and leaves nothing behind.

The checks run in the order Binance reports them: parameters, grid and filters,
then (under the position's row lock, so two concurrent orders of one account are
judged one after the other) reduce-only, open-order limits, the leverage tier and
finally the margin hold.
"""
import logging
import re
import uuid
from dataclasses import dataclass
from typing import Sequence
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, models, transaction

from apps.contracts.grid import Grid, OffGrid
from apps.contracts.lifecycle import ACCEPTING_STATUSES
from apps.contracts.models import Contract, ContractStatus
from apps.ledger.errors import InsufficientBalance
from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.money import to_decimal
from apps.ledger.services import Leg, Posting, account_get_or_create, bound_cursor, ledger_post_many
from apps.liquidation.models import Liquidation, LiquidationStatus
from apps.ops.metrics import RISK_CHECK, measure_latency
from apps.positions.booking import order_margin_release
from apps.positions.models import Position
from apps.positions.services import entry_lock, entry_lock_many, position_save_new
from apps.risk.conf import risk_setting
from apps.risk.services import exposure_params, exposure_sql, risk_pretrade_check
from apps.positions.tiers import tier_leverage
from exchange.pgbulk import array_literal, instances_saved, numbered_unnest, text_literals
from exchange.errors import ErrorCode, ExchangeError

from . import doorbell
from .errors import BadPrecision, BadSymbol, CancelRejected, MarginInsufficient, NoSuchOrder, OrderRejected
from .margin import order_hold
from .models import (
    CONDITIONAL_TYPES,
    MARKET_TYPES,
    OPEN_STATUSES,
    CommandKind,
    CommandStatus,
    Order,
    OrderCommand,
    OrderStatus,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
    WorkingType,
)
from .prices import mark_price, working_price
from .rules import band_limits, is_triggered, protection_price

logger = logging.getLogger(__name__)
CLIENT_ORDER_ID = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")
CALLBACK_RATE_RANGE = (Decimal("0.1"), Decimal("10"))
ZERO = Decimal(0)

# Which parameters each order type needs (Binance USDⓈ-M "new order" rules).
NEEDS_PRICE = (OrderType.LIMIT, OrderType.STOP, OrderType.TAKE_PROFIT)
NEEDS_STOP_PRICE = (OrderType.STOP, OrderType.STOP_MARKET, OrderType.TAKE_PROFIT, OrderType.TAKE_PROFIT_MARKET)
CLOSE_POSITION_TYPES = (OrderType.STOP_MARKET, OrderType.TAKE_PROFIT_MARKET)
CLIENT_TYPES = frozenset(t for t in OrderType.values if t != OrderType.LIQUIDATION)
# The choices' values, built once (each `.values` of a Django choices class builds a new list).
SIDES, STP_MODES, WORKING_TYPES, TIFS = (frozenset(c.values) for c in (Side, StpMode, WorkingType, TimeInForce))


@dataclass(frozen=True)
class OrderSpec:
    """A validated order request: typed, on the grid, inside the static filters."""

    side: str
    order_type: str
    quantity: Decimal | None
    price: Decimal | None
    stop_price: Decimal | None
    time_in_force: str
    reduce_only: bool
    close_position: bool
    client_order_id: str
    stp_mode: str
    working_type: str
    activation_price: Decimal | None
    callback_rate: Decimal | None
    price_protect: bool


def _error(msg: str, code: ErrorCode) -> OrderRejected:
    return OrderRejected(msg, code=code)


def _missing(name: str) -> OrderRejected:
    return _error(f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.",
                  ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED)


def _not_required(name: str) -> OrderRejected:
    return _error(f"Parameter '{name}' sent when not required.", ErrorCode.PARAM_NOT_REQUIRED)


def _positive(value, name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        result = to_decimal(value)
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise _missing(name) from exc
    if not result.is_finite() or result <= 0:
        raise _error(f"Parameter '{name}' must be a positive number.", ErrorCode.INVALID_PARAMETER)
    return result


def order_spec(*, contract: Contract, side: str, order_type: str, quantity=None, price=None, stop_price=None,
               time_in_force: str | None = None, reduce_only: bool = False, close_position: bool = False,
               client_order_id: str | None = None, stp_mode: str = StpMode.EXPIRE_TAKER,
               working_type: str = WorkingType.CONTRACT_PRICE, activation_price=None, callback_rate=None,
               price_protect: bool = False) -> OrderSpec:
    """Check everything that does not depend on the account or the market; raise on the first problem."""
    if contract.status not in ACCEPTING_STATUSES:
        raise BadSymbol(f"Symbol {contract.symbol} is not trading (status {contract.status}).")
    if side not in SIDES:
        raise _error(f"Invalid side {side!r}.", ErrorCode.INVALID_SIDE)
    if order_type not in CLIENT_TYPES:
        raise _error(f"Invalid orderType {order_type!r}.", ErrorCode.INVALID_ORDER_TYPE)
    if stp_mode not in STP_MODES:
        raise _error(f"Invalid selfTradePreventionMode {stp_mode!r}.", ErrorCode.INVALID_PARAMETER)
    if working_type not in WORKING_TYPES:
        raise _error(f"Invalid workingType {working_type!r}.", ErrorCode.INVALID_PARAMETER)
    if client_order_id is not None and not CLIENT_ORDER_ID.fullmatch(client_order_id):
        raise _error("newClientOrderId must be 1-36 characters of [.A-Z:/a-z0-9_-].", ErrorCode.ILLEGAL_CHARS)

    quantity = _positive(quantity, "quantity")
    price = _positive(price, "price")
    stop_price = _positive(stop_price, "stopPrice")
    activation_price = _positive(activation_price, "activationPrice")
    callback_rate = _positive(callback_rate, "callbackRate")

    if order_type in NEEDS_PRICE:
        if price is None:
            raise _missing("price")
        time_in_force = time_in_force or TimeInForce.GTC
        if time_in_force not in TIFS:
            raise _error(f"Invalid timeInForce {time_in_force!r}.", ErrorCode.INVALID_TIF)
    else:
        if price is not None:
            raise _not_required("price")
        if time_in_force not in (None, TimeInForce.GTC, TimeInForce.IOC):
            raise _error(f"timeInForce {time_in_force} is not valid for {order_type} orders.", ErrorCode.INVALID_TIF)
        time_in_force = TimeInForce.IOC  # market-type orders never rest
    if order_type in NEEDS_STOP_PRICE:
        if stop_price is None:
            raise _missing("stopPrice")
    elif stop_price is not None:
        raise _not_required("stopPrice")
    if order_type == OrderType.TRAILING_STOP_MARKET:
        if callback_rate is None:
            raise _missing("callbackRate")
        low, high = CALLBACK_RATE_RANGE
        if not low <= callback_rate <= high:
            raise _error(f"callbackRate must be between {low} and {high}.", ErrorCode.INVALID_PARAMETER)
    elif callback_rate is not None or activation_price is not None:
        raise _not_required("callbackRate" if callback_rate is not None else "activationPrice")
    if close_position:
        if order_type not in CLOSE_POSITION_TYPES:
            raise _error("closePosition is only valid with STOP_MARKET or TAKE_PROFIT_MARKET.",
                         ErrorCode.OPTIONAL_PARAMS_BAD_COMBO)
        if quantity is not None:
            raise _not_required("quantity")
        if reduce_only:
            raise _not_required("reduceOnly")
    elif quantity is None:
        raise _missing("quantity")
    _check_status(contract, contract.status, reducing=reduce_only or close_position)
    _check_filters(contract, order_type=order_type, prices=(price, stop_price, activation_price), quantity=quantity)
    return OrderSpec(side=side, order_type=order_type, quantity=quantity, price=price, stop_price=stop_price,
                     time_in_force=time_in_force, reduce_only=reduce_only, close_position=close_position,
                     client_order_id=client_order_id or f"x-{uuid.uuid4().hex[:24]}", stp_mode=stp_mode,
                     working_type=working_type, activation_price=activation_price, callback_rate=callback_rate,
                     price_protect=price_protect)


def _check_filters(contract: Contract, *, order_type: str, prices, quantity: Decimal | None) -> None:
    """The tick and lot grid (-1111), then the PRICE_FILTER and LOT_SIZE bounds, of order entry
    and of an amend; `prices` may hold None for a price the order does not have."""
    grid = Grid.of(contract)
    try:
        for value in prices:
            if value is not None:
                grid.ticks(value)
        if quantity is not None:
            grid.lots(quantity)
    except OffGrid as exc:
        raise BadPrecision(f"Precision is over the maximum defined for this asset: {exc}.") from exc
    for value in prices:
        if value is not None and value < contract.min_price:
            raise _error(f"Price less than min price {contract.min_price.normalize():f}.",
                         ErrorCode.PRICE_LESS_THAN_MIN_PRICE)
        if value is not None and value > contract.max_price:
            raise _error(f"Price greater than max price {contract.max_price.normalize():f}.",
                         ErrorCode.PRICE_HIGHER_THAN_MULTIPLIER_UP)
    if quantity is not None:
        max_qty = contract.market_max_qty if order_type in MARKET_TYPES else contract.max_qty
        if quantity < contract.min_qty:
            raise _error(f"Quantity less than min quantity {contract.min_qty.normalize():f}.",
                         ErrorCode.QTY_LESS_THAN_MIN_QTY)
        if quantity > max_qty:
            raise _error(f"Quantity greater than max quantity {max_qty.normalize():f}.",
                         ErrorCode.QTY_GREATER_THAN_MAX_QTY)


def _check_min_notional(contract: Contract, quantity: Decimal, price: Decimal) -> None:
    """MIN_NOTIONAL (-4164) of an order that is not reduce-only (the caller skips those)."""
    if quantity * price * contract.contract_size < contract.min_notional:
        raise _error(f"Order's notional must be no smaller than {contract.min_notional.normalize():f} "
                     "(unless you choose reduce only).", ErrorCode.MIN_NOTIONAL)


def _check_status(contract: Contract, status: str, *, reducing: bool) -> None:
    """Orders are accepted while the contract trades; in CLOSE_ONLY only reduce-only ones."""
    if status not in ACCEPTING_STATUSES:
        raise BadSymbol(f"Symbol {contract.symbol} is not trading (status {status}).")
    if status == ContractStatus.CLOSE_ONLY and not reducing:
        raise _error(f"Invalid symbol status for opening position: {contract.symbol} is close-only before "
                     "delivery; only reduce-only orders are accepted.", ErrorCode.INVALID_SYMBOL_STATUS)


def _entry_state(*, user, contract: Contract, exposure: bool) -> dict:
    """`_entry_states` of one user."""
    return _entry_states(users=[user], contract=contract, exposure_users=[user] if exposure else [])[user.pk]


def _entry_states(*, users, contract: Contract, exposure_users) -> dict[int, dict]:
    """Per user: the liquidation freeze, the account's open orders on the contract and (for
    `exposure_users`) the pre-trade risk check's reads, in one statement under the entry locks.

    Count, open notional per side and reduce-only quantity per side of the open orders on the
    contract, and whether a liquidation of the account is active
    (`apps.liquidation.selectors.account_frozen`, folded in here to save a round trip under
    the balance lock); then the rows of the risk check's exposure query
    (`risk_pretrade_check(rows=...)`), read here rather than in a statement of their own. The
    open orders are read once, summed per (user, contract, side, reducing): the contract's
    groups give the counts and sums, the non-reducing groups of an exposed user its exposure's
    'O' rows (as `exposure_sql` would read them). Raw SQL because the ORM spends longer
    building these queries than PostgreSQL spends running them.
    """
    exposed = {user.pk for user in exposure_users}
    with bound_cursor() as cursor:
        cursor.execute(_entry_state_sql(), {**exposure_params(users=users), "contract": contract.pk,
                                            "exposed": sorted(exposed)})
        rows = cursor.fetchall()
    states = {user.pk: {"count": 0, "buy_notional": ZERO, "sell_notional": ZERO, "reducing_buys": ZERO,
                        "reducing_sells": ZERO, "frozen": False,
                        "exposure": [] if user.pk in exposed else None} for user in users}
    for row in rows:
        kind, state = row[0], states[row[7]]
        if kind in _OPEN_GROUPS:
            _, contract_id, symbol, contract_size, open_qty, notional, side, _, count = row
            buy = side == Side.BUY
            if contract_id == contract.pk:
                state["count"] += int(count)
                if kind == _REDUCING_GROUP:
                    state["reducing_buys" if buy else "reducing_sells"] += open_qty
                else:
                    state["buy_notional" if buy else "sell_notional"] += notional
            if kind != _REDUCING_GROUP and state["exposure"] is not None:
                state["exposure"].append(("O", contract_id, symbol, contract_size, open_qty, None, side))
        elif kind == "F":
            state["frozen"] = True
        else:
            state["exposure"].append(row[:7])
    return states


_OPEN_GROUP, _REDUCING_GROUP = "G", "R"
_OPEN_GROUPS = (_OPEN_GROUP, _REDUCING_GROUP)
_ENTRY_STATE_SQL: list[str] = []


def _entry_state_sql() -> str:
    # Rows of nine columns, the exposure query's eight (the user id eighth) and one more:
    # 'G' / 'R' (a user's open non-reducing / reducing orders on one contract and side: contract,
    # symbol, contract size, open quantity, open notional, side, user, count; those on other
    # contracts only for the users in %(exposed)s), 'F' (frozen: a liquidation is active), then
    # the exposure's account rows (kinds B, P) of the users in %(exposed)s.
    if not _ENTRY_STATE_SQL:
        _ENTRY_STATE_SQL.append(f"""
    (SELECT CASE WHEN g.reducing THEN '{_REDUCING_GROUP}' ELSE '{_OPEN_GROUP}' END, g.contract_id, c.symbol,
            c.contract_size, g.open, g.notional, g.side, g.user_id, g.n::numeric
     FROM (SELECT user_id, contract_id, side, reduce_only OR close_position AS reducing, count(*) AS n,
                  sum(quantity - executed_qty) AS open,
                  -- the price an open order is valued at (`_admitted` values a new one the same way)
                  sum((quantity - executed_qty) * COALESCE(price, protection_price, stop_price, activation_price, 0))
                      AS notional
           FROM {Order._meta.db_table}
           WHERE user_id = ANY(%(users)s::bigint[]) AND status IN ({text_literals(OPEN_STATUSES)})
             AND (contract_id = %(contract)s::bigint OR user_id = ANY(%(exposed)s::bigint[]))
           GROUP BY user_id, contract_id, side, reduce_only OR close_position) AS g
     JOIN {Contract._meta.db_table} c ON c.id = g.contract_id)
    UNION ALL
    (SELECT DISTINCT 'F', NULL::bigint, NULL::text, NULL::numeric, NULL::numeric, NULL::numeric, NULL::text, user_id,
            NULL::numeric
     FROM {Liquidation._meta.db_table}
     WHERE user_id = ANY(%(users)s::bigint[]) AND status = {text_literals([LiquidationStatus.ACTIVE])})
    UNION ALL
    (SELECT x.*, NULL::numeric FROM ({exposure_sql("accounts")}) AS x WHERE x.user_id = ANY(%(exposed)s::bigint[]))
    """)
    return _ENTRY_STATE_SQL[0]


def _check_reducing(spec: OrderSpec, position: Position, exposure: dict) -> Decimal:
    """Reduce-only / close-position orders must shrink the position; returns their quantity."""
    size = position.size
    if size == 0 or (size > 0) == (spec.side == Side.BUY):
        raise _error("ReduceOnly Order is rejected: it would not reduce the position.", ErrorCode.REDUCE_ONLY_REJECT)
    if spec.close_position:
        return abs(size)
    pending = exposure["reducing_buys"] if spec.side == Side.BUY else exposure["reducing_sells"]
    if spec.quantity + pending > abs(size):
        raise _error(
            f"ReduceOnly Order is rejected: {spec.quantity.normalize():f} plus {pending.normalize():f} in other "
            f"reduce-only orders exceeds the position of {abs(size).normalize():f}.",
            ErrorCode.REDUCE_ONLY_REJECT,
        )
    return spec.quantity


def _check_band(spec: OrderSpec, contract: Contract, mark: Decimal | None) -> None:
    if spec.price is None or mark is None:
        return
    lowest_sell, highest_buy = band_limits(mark=mark, up=contract.percent_price_up, down=contract.percent_price_down)
    if spec.side == Side.BUY and spec.price > highest_buy:
        raise _error(f"Limit price can't be higher than {highest_buy.normalize():f}.",
                     ErrorCode.PRICE_HIGHER_THAN_MULTIPLIER_UP)
    if spec.side == Side.SELL and spec.price < lowest_sell:
        raise _error(f"Limit price can't be lower than {lowest_sell.normalize():f}.",
                     ErrorCode.PRICE_LOWER_THAN_MULTIPLIER_DOWN)


def _side_notional(side: str, contract: Contract, position: Position, exposure: dict,
                   quantity: Decimal = ZERO, price: Decimal = ZERO) -> Decimal:
    """The notional the leverage tier is judged on for one side: the position if it is on that
    side (at its entry price), plus the open non-reducing orders on that side, plus a new
    order's `quantity` at `price`."""
    if side == Side.BUY:
        held, pending = max(ZERO, position.size), exposure["buy_notional"]
    else:
        held, pending = max(ZERO, -position.size), exposure["sell_notional"]
    return (held * position.entry_price + pending + quantity * price) * contract.contract_size


def leverage_exposure(*, user, contract: Contract, position: Position) -> Decimal:
    """The notional a leverage change is judged on: the larger side of (position + open orders
    on that side), as order entry judges each order's side (`_check_leverage_tier`), so the
    open orders can never fill into a position the new leverage's tier does not allow.
    Call it under the position's row lock (`apps.positions.services.position_lock`)."""
    exposure = _entry_state(user=user, contract=contract, exposure=False)
    return max(_side_notional(side, contract, position, exposure) for side in Side.values)


def _check_leverage_tier(spec: OrderSpec, contract: Contract, position: Position, exposure: dict,
                         quantity: Decimal, price: Decimal) -> None:
    """The side this order adds to (position plus open orders plus it) must fit the tier its leverage allows."""
    notional = _side_notional(spec.side, contract, position, exposure, quantity, price)
    allowed = tier_leverage(contract, notional)
    if position.leverage > allowed:
        raise _error(
            f"Exceeded the maximum allowable position at current leverage: a notional of "
            f"{notional.normalize():f} allows at most {allowed}x.",
            ErrorCode.MAX_LEVERAGE_RATIO,
        )


def order_place(*, user, contract: Contract, side: str, order_type: str = OrderType.LIMIT, **params) -> Order:
    """Accept an order (or refuse it with nothing persisted): `orders_place_many` of one."""
    [result] = orders_place_many([OrderRequest(user=user, contract=contract,
                                                params={"side": side, "order_type": order_type, **params})])
    return order_outcome(result)


def order_outcome(result: "Order | Exception") -> Order:
    """One result of `orders_place_many`: the stored order, or the exception that refused it, raised."""
    if isinstance(result, Exception):
        raise result
    return result


@dataclass(frozen=True)
class OrderRequest:
    """One order to place: `params` are `order_place`'s keyword arguments (side, order_type, quantity, ...)."""

    user: object
    contract: Contract
    params: dict


def orders_place_many(requests: Sequence[OrderRequest]) -> list[Order | Exception]:
    """Accept several orders, each accepted or refused on its own: per request, the stored
    order or the `ExchangeError` that refused it (nothing of it persisted; any other
    exception is an unexpected error of that order, logged).

    The requests of one contract share one transaction: one statement locks every user's
    balances and position (`entry_lock_many`), one reads their open orders and exposure
    (`_entry_states`), then each order is judged in request order against what the orders
    before it have already taken (margin, open-order count, notional per side, reduce-only
    quantity, risk exposure: `_Account`), and the accepted ones are written together (rows,
    journal commands, margin holds) and committed once. The rules are those of a single
    order, judged in the same order. Should the writing fail (a client order id stored
    concurrently, say), the group is placed again one order per transaction, so that only
    the order at fault is refused.
    """
    results: list[Order | Exception | None] = [None] * len(requests)
    marks: dict[int, Decimal | None] = {}
    groups: dict[int, list[tuple[int, _Draft]]] = {}
    for index, request in enumerate(requests):
        contract = request.contract
        if contract.pk not in marks:
            marks[contract.pk] = mark_price(contract)
        try:
            draft = _draft(user=request.user, contract=contract, mark=marks[contract.pk], **request.params)
        except ExchangeError as exc:
            results[index] = exc
            continue
        groups.setdefault(contract.pk, []).append((index, draft))
    for group in groups.values():
        _place_group(group, results)
    return results


@dataclass(frozen=True)
class _Draft:
    """An order request past every check that needs no lock."""

    user: object
    contract: Contract
    spec: OrderSpec
    mark: Decimal | None
    protection: Decimal | None  # a market order's protection price

    @property
    def conditional(self) -> bool:
        return self.spec.order_type in CONDITIONAL_TYPES

    @property
    def reducing(self) -> bool:
        return self.spec.reduce_only or self.spec.close_position


def _draft(*, user, contract: Contract, mark: Decimal | None, side: str, order_type: str = OrderType.LIMIT,
           **params) -> _Draft:
    spec = order_spec(contract=contract, side=side, order_type=order_type, **params)
    conditional = spec.order_type in CONDITIONAL_TYPES
    _check_band(spec, contract, mark)
    protection = None
    if spec.order_type in MARKET_TYPES and not conditional:
        if mark is None:
            raise _error(f"No mark price for {contract.symbol} yet: market orders are not accepted.",
                         ErrorCode.NEW_ORDER_REJECTED)
        protection = protection_price(side=spec.side, mark=mark, deviation=contract.market_max_deviation,
                                      tick=contract.tick_size, min_price=contract.min_price,
                                      max_price=contract.max_price)
    if conditional and spec.stop_price is not None:
        current = working_price(contract, spec.working_type)
        if current is not None and is_triggered(order_type=spec.order_type, side=spec.side,
                                                stop_price=spec.stop_price, price=current):
            raise _error("Order would immediately trigger.", ErrorCode.ORDER_WOULD_IMMEDIATELY_TRIGGER)
    if not spec.reduce_only and not spec.close_position and spec.price is not None and spec.quantity is not None:
        _check_min_notional(contract, spec.quantity, spec.price)
    return _Draft(user=user, contract=contract, spec=spec, mark=mark, protection=protection)


@dataclass
class _Account:
    """One user's reads under the entry locks, moved by each order admitted as storing it will move them."""

    position: Position
    balances: dict[int, Decimal]
    accounts: dict[str, int]
    entry: dict  # `_entry_states`' reads


def _place_group(group: list[tuple[int, _Draft]], results: list) -> None:
    """Place one contract's drafts in one transaction; on a failed write, one by one. Never
    raises: an order's unexpected error is its own result (the other groups go on)."""
    placed: list[tuple[int, Order]] = []
    try:
        with transaction.atomic():
            placed = _accept(group, results)
    except Exception as exc:
        if len(group) > 1:
            for item in group:
                results[item[0]] = None
                _place_group([item], results)
            return
        if not isinstance(exc, ExchangeError):  # a write refused the only order (ExchangeError), or a bug
            logger.exception("order entry: unexpected error placing an order")
        results[group[0][0]] = exc
        return
    for index, order in placed:
        results[index] = order


def _accept(group: list[tuple[int, _Draft]], results: list) -> list[tuple[int, Order]]:
    contract = group[0][1].contract
    users = list({draft.user.pk: draft.user for _, draft in group}.values())
    # The status read again FOR SHARE (a lifecycle change - close-only, settling, halt - waits
    # for these orders), then the balances and the positions, locked in one statement.
    status, locked = entry_lock_many(users=users, contract=contract, create=False)
    risk = risk_setting("RISK_PRETRADE_ENABLED")
    entries = _entry_states(users=users, contract=contract,
                            exposure_users=[d.user for _, d in group if risk and not d.reducing])
    accounts = {pk: _Account(*locked[pk], entries[pk]) for pk in locked}
    placed, client_ids = [], set()
    for index, draft in group:
        try:
            key = (draft.user.pk, draft.spec.client_order_id)
            if key in client_ids:
                raise _error("ClientOrderId is duplicated.", ErrorCode.CLIENT_ORDER_ID_DUPLICATED)
            order = _admit(draft, status, accounts[draft.user.pk])
        except ExchangeError as exc:
            results[index] = exc
            continue
        client_ids.add(key)
        placed.append((index, order))
    if not placed:
        return placed
    orders = [order for _, order in placed]
    try:
        # The unique key decides a race between two equal ids; no savepoint is needed
        # because a refusal ends (rolls back) the whole transaction anyway.
        _orders_insert(orders)
    except IntegrityError as exc:
        if len(orders) > 1:
            raise  # `_place_group` places the group again one order at a time
        raise _error("ClientOrderId is duplicated.", ErrorCode.CLIENT_ORDER_ID_DUPLICATED) from exc
    position_save_new([accounts[order.user_id].position for order in orders])
    _holds([(order, order.user, order.margin_held) for order in orders], {pk: a.accounts for pk, a in accounts.items()})
    if any(order.status == OrderStatus.PENDING_NEW for order in orders):
        transaction.on_commit(lambda: doorbell.ring(contract.pk))
    return placed


def _admit(draft: _Draft, status: str, account: _Account) -> Order:
    """Judge one draft under the entry locks (raises on refusal); the unsaved order, `account` moved by it."""
    spec, contract, user, position, exposure = draft.spec, draft.contract, draft.user, account.position, account.entry
    reducing = draft.reducing
    _check_status(contract, status, reducing=reducing)
    # Liquidation freeze: judged under the balance lock that starting a liquidation also takes.
    if exposure["frozen"]:
        raise _error("User in liquidation mode now.", ErrorCode.USER_IN_LIQUIDATION)
    if exposure["count"] >= contract.max_open_orders:
        raise _error("Reach max open order limit.", ErrorCode.MAX_OPEN_ORDER_EXCEEDED)
    quantity = _check_reducing(spec, position, exposure) if reducing else spec.quantity
    # The price margin is judged at: the limit, the protection price of a market buy,
    # the mark for a market sell (it fills at or below the bid), the trigger for stops.
    hold_price = spec.price or (draft.protection if spec.side == Side.BUY else None) or draft.mark \
        or spec.stop_price or spec.activation_price or working_price(contract, spec.working_type)
    if hold_price is None:
        raise _error(f"No reference price for {contract.symbol} yet.", ErrorCode.NEW_ORDER_REJECTED)
    if not reducing:
        if spec.price is None:
            _check_min_notional(contract, quantity, hold_price)
        _check_leverage_tier(spec, contract, position, exposure, quantity, hold_price)
    hold = order_hold(quantity=quantity, price=hold_price, contract=contract, leverage=position.leverage,
                      reduce_only=reducing)
    # Looked up, not created: a refused order of a group that commits must leave nothing behind.
    wallet = account.accounts.get(AccountKind.WALLET)
    if hold > account.balances.get(wallet, ZERO):  # the ledger would refuse it too; say so before the risk gate
        raise MarginInsufficient("Margin is insufficient.")
    if not reducing:  # before the order is counted: the check counts the open orders itself
        with measure_latency(RISK_CHECK):
            risk_pretrade_check(user=user, contract=contract, side=spec.side, quantity=quantity, price=hold_price,
                                mark=draft.mark, rows=exposure["exposure"])
    order = Order(
        user=user, contract=contract, client_order_id=spec.client_order_id, side=spec.side,
        order_type=spec.order_type, time_in_force=spec.time_in_force, price=spec.price,
        protection_price=draft.protection, stop_price=spec.stop_price, quantity=quantity,
        reduce_only=spec.reduce_only, close_position=spec.close_position, leverage=position.leverage,
        stp_mode=spec.stp_mode, working_type=spec.working_type, price_protect=spec.price_protect,
        activation_price=spec.activation_price, callback_rate=spec.callback_rate, margin_held=hold,
        status=OrderStatus.NEW if draft.conditional else OrderStatus.PENDING_NEW,
    )
    _admitted(account, order, wallet)
    return order


def _admitted(account: _Account, order: Order, wallet: int | None) -> None:
    """What storing `order` changes in `_entry_states`' reads and the wallet (the orders after it see it)."""
    entry, buy = account.entry, order.side == Side.BUY
    entry["count"] += 1
    if order.reduce_only or order.close_position:
        entry["reducing_buys" if buy else "reducing_sells"] += order.quantity
    else:
        # The price the open-notional aggregate values an open order at (`_entry_state_sql`).
        px = order.price or order.protection_price or order.stop_price or order.activation_price or ZERO
        entry["buy_notional" if buy else "sell_notional"] += order.quantity * px
        if entry["exposure"] is not None:  # an open non-reducing order row of `exposure_sql`
            contract = order.contract
            entry["exposure"].append(("O", contract.pk, contract.symbol, contract.contract_size, order.quantity,
                                      None, order.side))
    if order.margin_held:  # then the wallet exists: it held at least that much
        account.balances[wallet] = account.balances[wallet] - order.margin_held


# Fields whose database preparation is the identity on PostgreSQL for a value of the given
# type (what order entry sets): such a value (or None) goes into the row as it is; anything
# else goes through the field, as `Model.save()` would. (The rows travel as array literals,
# `_orders_insert`, so psycopg never sees the values' Python types.)
_AS_IS = ((models.CharField, str), (models.BooleanField, bool), (models.DecimalField, Decimal),
          (models.ForeignKey, int), (models.IntegerField, int))
_STAMP = object()  # an auto_now(_add) DateTimeField: its pre_save value as it is
_insert_plans: dict[tuple[type, tuple[str, ...]], tuple[list[str], list[tuple]]] = {}


def _insert_plan(model, skip: tuple[str, ...]) -> tuple[list[str], list[tuple]]:
    plan = _insert_plans.get((model, skip))
    if plan is None:
        columns, steps = [], []
        for field in model._meta.concrete_fields:
            if field.primary_key or field.attname in skip:
                continue
            columns.append(field.column)
            plain = None
            if getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
                # pre_save stamps the instance with timezone.now(): aware (USE_TZ), taken as it is.
                plain = _STAMP if isinstance(field, models.DateTimeField) and settings.USE_TZ else None
            else:
                plain = next((kind for cls, kind in _AS_IS if isinstance(field, cls)), None)
            steps.append((field, field.attname, plain))
        plan = _insert_plans[model, skip] = (columns, steps)
    return plan


def _insert_parts(instance, *, skip: tuple[str, ...] = ()) -> tuple[list[str], list]:
    """Columns and database values of a new row, as `Model.save()` would insert them
    (defaults, auto_now stamps set on the instance, values prepared by each field)."""
    columns, steps = _insert_plan(type(instance), skip)
    values = []
    for field, attname, plain in steps:
        if plain is _STAMP:
            values.append(field.pre_save(instance, add=True))
            continue
        if plain is not None:
            value = getattr(instance, attname)
            if value is None or type(value) is plain or (plain is str and isinstance(value, str)):
                values.append(value)
                continue
        values.append(field.get_db_prep_save(field.pre_save(instance, add=True), connection))
    return columns, values


def _orders_insert(orders: list[Order]) -> None:
    """INSERT the orders and, for those that go live now, their NEW journal commands, in request
    order (the journal's sequence is the acceptance order), in one statement. Sets each order's
    pk (and its stamps, through the fields' pre_save).

    What `Order.objects.create` and `OrderCommand.objects.create` would write, without the
    ORM's per-call query compilation; every column goes as one array literal
    (`exchange.pgbulk.array_literal`), which psycopg passes as a string.
    """
    sql = _orders_insert_sql()
    rows = [_insert_parts(order)[1] for order in orders]
    commands: dict[int, list] = {}  # contract id -> the values of its NEW command (all alike)
    for order in orders:
        if order.contract_id not in commands:
            command = OrderCommand(contract_id=order.contract_id, kind=CommandKind.NEW)
            commands[order.contract_id] = _insert_parts(command, skip=("order_id",))[1]
    command_rows = [commands[order.contract_id] for order in orders]
    params = [array_literal(column) for column in zip(*rows)]
    params += [array_literal(column) for column in zip(*command_rows)]
    params.append(array_literal([order.status == OrderStatus.PENDING_NEW for order in orders]))
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        instances_saved(orders, [row[0] for row in cursor.fetchall()])


_ORDERS_INSERT_SQL: list[str] = []


def _orders_insert_sql() -> str:
    # The ids are drawn in request order (nextval over the rows sorted by their position) and
    # the commands inserted in that order, so both sequences follow the requests.
    if not _ORDERS_INSERT_SQL:
        order_columns, order_steps = _insert_plan(Order, ())
        command_columns, command_steps = _insert_plan(OrderCommand, ("order_id",))
        fields = [f for f, _, _ in order_steps] + [f for f, _, _ in command_steps]
        o = [f"o{i}" for i in range(len(order_columns))]
        c = [f"c{i}" for i in range(len(command_columns))]
        rows = numbered_unnest(Order._meta.db_table, [f.cast_db_type(connection) for f in fields] + ["boolean"],
                               o + c + ["journal"])
        _ORDERS_INSERT_SQL.append(f"""
WITH t AS MATERIALIZED ({rows}),
o AS (INSERT INTO {Order._meta.db_table} (id, {', '.join(order_columns)}) SELECT id, {', '.join(o)} FROM t),
c AS (INSERT INTO {OrderCommand._meta.db_table} ({', '.join(command_columns)}, order_id)
      SELECT {', '.join(c)}, id FROM t WHERE journal ORDER BY n)
SELECT id FROM t ORDER BY n""")
    return _ORDERS_INSERT_SQL[0]


def _holds(holds: list[tuple[Order, object, Decimal]], accounts: dict[int, dict[str, int]]) -> None:
    """Hold margin for orders (wallet -> order margin): one ledger transaction per (order, its user,
    amount) with an amount, one call for all. `accounts`: user id -> the user's account ids by kind (from
    the entry lock; a missing one is created). Refused: MarginInsufficient for one hold; for
    several, the ledger's error (`_place_group` places the group again one order at a time)."""
    postings = []
    for order, user, amount in holds:
        if amount > 0:
            asset = order.contract.settle_asset
            postings.append(Posting(
                kind=TransactionKind.ORDER_MARGIN, reference={"order_id": order.pk},
                legs=[Leg(_account_id(accounts[user.pk], AccountKind.WALLET, user), asset, -amount),
                      Leg(_account_id(accounts[user.pk], AccountKind.ORDER_MARGIN, user), asset, amount)]))
    try:
        # savepoint=False: a refused hold refuses the order(s): the caller's transaction rolls back
        ledger_post_many(postings=postings, savepoint=False)
    except InsufficientBalance as exc:
        if len(postings) > 1:
            raise
        raise MarginInsufficient("Margin is insufficient.") from exc


def _account_id(accounts: dict[str, int], kind: str, user) -> int:
    """The user's account of a kind: from `entry_lock`'s read, else looked up (created when missing)."""
    found = accounts.get(kind)
    if found is None:
        found = accounts[kind] = account_get_or_create(kind=kind, user=user).pk
    return found


def _release(*, order: Order, amount: Decimal) -> None:
    order_margin_release(user_id=order.user_id, asset=order.contract.settle_asset, amount=amount,
                         reference={"order_id": order.pk, "release": True})


def order_get(*, user, contract: Contract | None = None, order_id: int | None = None, client_order_id: str | None = None,
              lock: bool = False) -> Order:
    if order_id is None and not client_order_id:
        raise _error("Either orderId or origClientOrderId must be sent.", ErrorCode.MANDATORY_PARAM_EMPTY_OR_MALFORMED)
    rows = Order.objects.select_related("contract", "contract__settle_asset").filter(user=user)
    if contract is not None:
        rows = rows.filter(contract=contract)
    rows = rows.filter(pk=order_id) if order_id is not None else rows.filter(client_order_id=client_order_id)
    order = (rows.select_for_update(of=("self",)) if lock else rows).first()
    if order is None:
        raise NoSuchOrder("Order does not exist.")
    return order


def order_cancel(*, user, contract: Contract | None = None, order_id: int | None = None,
                 client_order_id: str | None = None) -> Order:
    """Cancel an open order: journal it for the matcher, or close a waiting conditional order at once."""
    with transaction.atomic():
        order = order_get(user=user, contract=contract, order_id=order_id, client_order_id=client_order_id, lock=True)
        _cancel_locked(order)
    return order


def _cancel_locked(order: Order) -> None:
    if order.status not in OPEN_STATUSES:
        raise CancelRejected(f"Order is {order.status}; it cannot be cancelled.", code=ErrorCode.CANCEL_REJECTED)
    if order.is_waiting:
        # Not in the book: the matcher never saw it, so it closes here, under the row lock
        # the trigger also takes.
        _release(order=order, amount=order.margin_held)
        Order.objects.filter(pk=order.pk).update(status=OrderStatus.CANCELED, margin_held=ZERO)
        order.status, order.margin_held = OrderStatus.CANCELED, ZERO
        return
    OrderCommand.objects.create(contract_id=order.contract_id, kind=CommandKind.CANCEL, order=order)
    transaction.on_commit(lambda: doorbell.ring(order.contract_id))


def orders_cancel_all(*, user, contract: Contract) -> int:
    """Cancel every open order of the account on the symbol; returns how many were cancelled."""
    with transaction.atomic():
        orders = list(
            Order.objects.select_related("contract__settle_asset", "user")
            .filter(user=user, contract=contract, status__in=OPEN_STATUSES)
            .order_by("pk").select_for_update(of=("self",))
        )
        live = [o for o in orders if not o.is_waiting]
        for order in orders:
            if order.is_waiting:
                _cancel_locked(order)
        OrderCommand.objects.bulk_create(
            [OrderCommand(contract_id=contract.pk, kind=CommandKind.CANCEL, order=o) for o in live]
        )
        if live:
            transaction.on_commit(lambda: doorbell.ring(contract.pk))
    return len(orders)


def order_amend(*, user, contract: Contract, quantity, price, side: str | None = None, order_id: int | None = None,
                client_order_id: str | None = None) -> Order:
    """Binance "modify order" (PUT /fapi/v1/order): new price and total quantity of an open LIMIT order.

    The new order is judged by order entry's rules (one function per rule): the grid and the
    price and quantity filters, min notional (not for reduce-only), the price band; then,
    under the entry locks, for an amend that grows the order (a reduce-only order's quantity,
    any other order's notional), the reduce-only limit, the leverage tier, the margin and the
    pre-trade risk check, each judged with the order's current remainder replaced by the new
    one. One amend of an order is in flight at a time (-5026 while an earlier one is still
    in the journal): the extra hold is priced off the order's current hold, which a pending
    amend is about to change.

    A quantity decrease at the same price keeps book priority (the C book decides). Extra
    margin for a larger or dearer order is held now and travels with the command.
    """
    quantity = _positive(quantity, "quantity")
    price = _positive(price, "price")
    if quantity is None:
        raise _missing("quantity")
    if price is None:
        raise _missing("price")
    _check_filters(contract, order_type=OrderType.LIMIT, prices=(price,), quantity=quantity)
    mark = mark_price(contract)
    with transaction.atomic():
        # An amend can match: only while the contract matches (any order may be amended in close-only).
        # Money before the order row: the lock order.
        status, position, balances, accounts = entry_lock(user=user, contract=contract)
        _check_status(contract, status, reducing=True)
        order = order_get(user=user, contract=contract, order_id=order_id, client_order_id=client_order_id, lock=True)
        if side is not None and side != order.side:
            raise _error("Side does not match the order.", ErrorCode.INVALID_SIDE)
        if order.status not in OPEN_STATUSES or order.order_type != OrderType.LIMIT:
            raise _error(f"Only open LIMIT orders can be modified (order is {order.order_type} {order.status}).",
                         ErrorCode.NEW_ORDER_REJECTED)
        if quantity <= order.executed_qty:
            raise _error("Quantity must be greater than the executed quantity.", ErrorCode.NEW_ORDER_REJECTED)
        # Under the order's row lock, which every amend of it takes: a second amend sees the first's command.
        if OrderCommand.objects.filter(order=order, kind=CommandKind.AMEND, status=CommandStatus.PENDING).exists():
            raise _error("Exceed maximum modify order limit: an earlier modification of this order is still "
                         "pending; retry once it is processed.", ErrorCode.MODIFY_ORDER_LIMIT)
        reducing = order.reduce_only
        if not reducing:
            _check_min_notional(contract, quantity, price)
        old_open, new_open = order.quantity - order.executed_qty, quantity - order.executed_qty
        # The spec of the order's new remainder: what a new order in its place would be.
        spec = OrderSpec(side=order.side, order_type=OrderType.LIMIT, quantity=new_open, price=price, stop_price=None,
                         time_in_force=order.time_in_force, reduce_only=reducing, close_position=False,
                         client_order_id=order.client_order_id, stp_mode=order.stp_mode,
                         working_type=order.working_type, activation_price=None, callback_rate=None,
                         price_protect=False)
        _check_band(spec, contract, mark)
        required = order_hold(quantity=new_open, price=price, contract=contract,
                              leverage=order.leverage, reduce_only=reducing)
        added = max(ZERO, required - order.margin_held)
        grows = new_open > old_open if reducing else new_open * price > old_open * order.price
        if grows:
            exposure = _without_order(_entry_state(user=user, contract=contract,
                                                   exposure=not reducing and risk_setting("RISK_PRETRADE_ENABLED")),
                                      order, old_open)
            if exposure["frozen"]:
                raise _error("User in liquidation mode now.", ErrorCode.USER_IN_LIQUIDATION)
            if reducing:
                _check_reducing(spec, position, exposure)
            else:
                _check_leverage_tier(spec, contract, position, exposure, new_open, price)
                if added > balances.get(_account_id(accounts, AccountKind.WALLET, user), ZERO):
                    raise MarginInsufficient("Margin is insufficient.")
                with measure_latency(RISK_CHECK):
                    risk_pretrade_check(user=user, contract=contract, side=order.side, quantity=new_open,
                                        price=price, mark=mark, rows=exposure["exposure"])
        if added:
            _holds([(order, user, added)], {user.pk: accounts})
        OrderCommand.objects.create(contract=contract, kind=CommandKind.AMEND, order=order, price=price,
                                    quantity=quantity, margin_added=added)
        transaction.on_commit(lambda: doorbell.ring(contract.pk))
    return order


def _without_order(exposure: dict, order: Order, open_qty: Decimal) -> dict:
    """`_entry_state`'s reads with `order`'s current remainder (`open_qty`) taken out: the
    other open orders, which an amend's new remainder is judged against."""
    result = dict(exposure)
    buy = order.side == Side.BUY
    if order.reduce_only or order.close_position:
        key = "reducing_buys" if buy else "reducing_sells"
        result[key] = exposure[key] - open_qty
        return result
    key = "buy_notional" if buy else "sell_notional"
    result[key] = exposure[key] - open_qty * order.price
    if exposure["exposure"] is not None:
        # The risk check's per-side open-order rows (kind 'O': ..., summed open quantity, ..., side).
        result["exposure"] = [
            (*row[:4], row[4] - open_qty, *row[5:])
            if row[0] == "O" and row[1] == order.contract_id and row[6] == order.side else row
            for row in exposure["exposure"]
        ]
    return result
