"""Changes a user makes to a position's settings and margin: leverage, margin type, isolated margin.

Each runs under the position's row lock (the lock order entry also takes) and refuses
a change that would leave the account unsafe, with the reference exchange's codes.
"""
from decimal import Decimal

from django.db import connection, transaction

from apps.contracts.lifecycle import status_share_lock
from apps.contracts.models import Contract, ContractStatus
from apps.ledger.errors import InsufficientBalance
from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.money import fits_precision
from apps.ledger.services import account_get_or_create, ledger_transfer, bound_cursor
from exchange.errors import ErrorCode, ExchangeError

from .models import MarginType, Position
from .selectors import account_overview
from .tiers import contract_tiers, tier_leverage

ZERO = Decimal(0)
ADD, REDUCE = 1, 2


def position_lock(*, user, contract: Contract) -> Position:
    """Lock the user's balances in the contract's asset, then their position row (created if missing).

    The project's lock order is balances (by account id), then positions, then orders:
    the matcher locks every balance of a batch first and then writes positions and
    orders, so anything that takes a position or order lock and later moves money must
    have locked the money first, or the two can deadlock.
    """
    return position_and_balances_lock(user=user, contract=contract)[0]


def position_and_balances_lock(*, user, contract: Contract) -> tuple[Position, dict[int, Decimal]]:
    """`position_lock`, also returning the locked balances (account id -> amount)."""
    return entry_lock(user=user, contract=contract, status=False)[1:3]


def entry_lock(*, user, contract: Contract, status: bool = True
               ) -> tuple[str | None, Position, dict[int, Decimal], dict[str, int]]:
    """(the contract's status read FOR SHARE, the position, the balances, the user's wallet and
    order-margin account ids by kind) for order entry: `entry_lock_many` for one user."""
    current, locked = entry_lock_many(users=[user], contract=contract, status=status)
    return (current, *locked[user.pk])


def entry_lock_many(*, users, contract: Contract, status: bool = True, create: bool = True
                    ) -> tuple[str | None, dict[int, tuple[Position, dict[int, Decimal], dict[str, int]]]]:
    """(the contract's status read FOR SHARE, {user id: (position, balances, account ids by kind)})
    for order entry of several users at once: one statement (two when a position row is missing).

    Takes the locks in the project's order: the contract row FOR SHARE (a lifecycle change
    waits for this transaction; `status=False` leaves it out and returns None), then the
    users' balances in the settle asset by account id (as `user_balances_lock` takes one
    user's), then the position rows. Each step is gated on the previous one having run to
    the end (a one-time filter on its row count), so the statement locks in that order as
    separate statements would; locked rows are read at their latest committed version.
    Missing position rows are created and locked after it; with `create=False` they are
    returned unsaved instead (the defaults a new row gets), for a caller that saves only
    those it needs (`position_save_new`): under the users' balance locks, which every
    writer of a position takes first, no other transaction can create them meanwhile.
    The account ids (wallet and order margin) spare the margin hold its account lookups (a
    kind not there yet is absent: the caller creates it).
    """
    user_ids = sorted({user.pk for user in users})
    with bound_cursor() as cursor:
        cursor.execute(_ENTRY_LOCK_SQL[status], {"users": user_ids, "contract": contract.pk,
                                                 "asset": contract.settle_asset_id, "kinds": _ENTRY_KINDS})
        rows = cursor.fetchall()
    current = rows[0][1] if rows else None
    locked, missing = {}, []
    for row in rows:
        user_id, _, accounts, amounts, kinds, ids = row[:6]
        position = Position.from_db(connection.alias, _POSITION_FIELDS, row[6:]) if row[6] is not None else None
        if position is None:
            missing.append(user_id)
        locked[user_id] = (position, dict(zip(accounts, amounts)) if accounts else {},
                           dict(zip(kinds, ids)) if kinds else {})
    if missing and not create:
        for user_id in missing:
            locked[user_id] = (Position(user_id=user_id, contract=contract), *locked[user_id][1:])
    elif missing:
        Position.objects.bulk_create([Position(user_id=u, contract=contract) for u in missing], ignore_conflicts=True)
        for position in Position.objects.select_for_update().filter(user_id__in=missing, contract=contract
                                                                    ).order_by("user_id"):
            locked[position.user_id] = (position, *locked[position.user_id][1:])
    return current, locked


def position_save_new(positions: list[Position]) -> None:
    """Store the unsaved positions `entry_lock_many(create=False)` returned (their rows and locks)."""
    new = list({id(position): position for position in positions if position._state.adding}.values())
    if new:
        Position.objects.bulk_create(new)


_POSITION_FIELDS = [f.attname for f in Position._meta.concrete_fields]
_ENTRY_KINDS = [str(AccountKind.WALLET), str(AccountKind.ORDER_MARGIN)]
_STATUS_CTE = "st AS MATERIALIZED (SELECT status FROM contracts_contract WHERE id = %(contract)s::bigint FOR SHARE),"


def _entry_lock_sql(status: bool) -> str:
    columns = ", ".join(f"p.{f.column}" for f in Position._meta.concrete_fields)
    return f"""
    WITH {_STATUS_CTE if status else ""}
    bal AS MATERIALIZED (
        SELECT b.account_id, b.amount, a.user_id FROM ledger_balance b JOIN ledger_account a ON a.id = b.account_id
        WHERE b.account_id = ANY(ARRAY(SELECT a.id FROM ledger_account a WHERE a.user_id = ANY(%(users)s::bigint[])))
          AND b.asset_id = %(asset)s::bigint {"AND (SELECT count(*) FROM st) >= 0" if status else ""}
        ORDER BY b.account_id
        FOR UPDATE OF b
    ),
    pos AS MATERIALIZED (
        SELECT {columns} FROM {Position._meta.db_table} p
        WHERE p.user_id = ANY(%(users)s::bigint[]) AND p.contract_id = %(contract)s::bigint
          AND (SELECT count(*) FROM bal) >= 0
        ORDER BY p.user_id
        FOR UPDATE OF p
    )
    SELECT u.id, {"(SELECT status FROM st)" if status else "NULL::text"},
           (SELECT array_agg(account_id ORDER BY account_id) FROM bal WHERE bal.user_id = u.id),
           (SELECT array_agg(amount ORDER BY account_id) FROM bal WHERE bal.user_id = u.id),
           (SELECT array_agg(a.kind::text ORDER BY a.id) FROM ledger_account a
             WHERE a.user_id = u.id AND a.contract_id IS NULL AND a.kind = ANY(%(kinds)s::text[])),
           (SELECT array_agg(a.id ORDER BY a.id) FROM ledger_account a
             WHERE a.user_id = u.id AND a.contract_id IS NULL AND a.kind = ANY(%(kinds)s::text[])),
           pos.*
    FROM unnest(%(users)s::bigint[]) AS u(id)
    LEFT JOIN pos ON pos.user_id = u.id
    ORDER BY u.id
    """


_ENTRY_LOCK_SQL = {True: _entry_lock_sql(True), False: _entry_lock_sql(False)}


def max_notional_for_leverage(contract: Contract, leverage: int) -> Decimal:
    """The largest position notional the leverage allows: the cap of the last tier permitting it."""
    allowed = [t.notional_cap for t in contract_tiers(contract) if t.max_leverage >= leverage]
    return max(allowed, default=ZERO)


def _view(user, contract):
    overview = account_overview(user=user)
    view = next(v for v in overview.positions if v.contract.pk == contract.pk)
    return overview, view


def leverage_change(*, user, contract: Contract, leverage: int) -> Position:
    if not 1 <= leverage <= contract.max_leverage:
        raise ExchangeError(f"Leverage {leverage} is not valid (1 to {contract.max_leverage}).",
                            code=ErrorCode.INVALID_LEVERAGE)
    from apps.trading.services import leverage_exposure  # trading builds on positions, not the reverse

    with transaction.atomic():
        position = position_lock(user=user, contract=contract)
        # The tier is judged on the larger side of position + open orders (what the orders can
        # fill into, as order entry judges it), not on the position alone: open orders with no
        # position must not let the leverage rise past their tier.
        notional = leverage_exposure(user=user, contract=contract, position=position)
        position_notional = ZERO
        if position.size:
            overview, view = _view(user, contract)
            position_notional = abs(view.risk.notional)
            notional = max(notional, position_notional)
        if notional:
            allowed = tier_leverage(contract, notional)
            if leverage > allowed:
                raise ExchangeError(f"Leverage {leverage}x exceeds the {allowed}x allowed for a position and open "
                                    f"orders of notional {notional.normalize():f}.",
                                    code=ErrorCode.MAX_LEVERAGE_RATIO)
        if position.size:
            new_initial = position_notional / Decimal(leverage)
            if view.is_isolated:
                short = new_initial > view.isolated_margin + view.risk.unrealized_pnl
            else:
                asset = overview.asset(contract.settle_asset.code)
                short = asset.available + view.risk.initial_margin - new_initial < 0
            if short:
                raise ExchangeError("Leverage is smaller than permitted: insufficient margin balance.",
                                    code=ErrorCode.MIN_LEVERAGE_RATIO)
        Position.objects.filter(pk=position.pk).update(leverage=leverage)
        position.leverage = leverage
    return position


def margin_type_change(*, user, contract: Contract, margin_type: str) -> Position:
    from apps.trading.models import OPEN_STATUSES, Order  # trading builds on positions, not the reverse

    if margin_type not in MarginType.values:
        raise ExchangeError(f"Invalid marginType {margin_type!r}.", code=ErrorCode.INVALID_PARAMETER)
    with transaction.atomic():
        position = position_lock(user=user, contract=contract)
        if position.margin_type == margin_type:
            raise ExchangeError("No need to change margin type.", code=ErrorCode.NO_NEED_TO_CHANGE_MARGIN_TYPE)
        if Order.objects.filter(user=user, contract=contract, status__in=OPEN_STATUSES).exists():
            raise ExchangeError("Margin type cannot be changed if there exists open orders.",
                                code=ErrorCode.THERE_EXISTS_OPEN_ORDERS)
        if position.size:
            raise ExchangeError("Margin type cannot be changed if there exists position.",
                                code=ErrorCode.THERE_EXISTS_QUANTITY)
        Position.objects.filter(pk=position.pk).update(margin_type=margin_type)
        position.margin_type = margin_type
    return position


def position_margin_adjust(*, user, contract: Contract, amount: Decimal, direction: int) -> Decimal:
    """Add margin to (1) or remove it from (2) an isolated position; returns the amount moved."""
    asset = contract.settle_asset
    if amount <= 0 or not fits_precision(amount, asset.precision):
        raise ExchangeError(f"Invalid amount {amount}: positive, at most {asset.precision} decimals.",
                            code=ErrorCode.BAD_PRECISION if amount > 0 else ErrorCode.AMOUNT_MUST_BE_POSITIVE)
    if direction not in (ADD, REDUCE):
        raise ExchangeError("type must be 1 (add) or 2 (reduce).", code=ErrorCode.INVALID_PARAMETER)
    with transaction.atomic():
        # The status first, FOR SHARE, as order entry reads it: a delivery waits for this change,
        # and once it has begun the margin is fixed (its plan books every isolated margin there is).
        if status_share_lock(contract.pk) in (ContractStatus.SETTLING, ContractStatus.SETTLED):
            raise ExchangeError(f"{contract.symbol} is being delivered: its isolated margin can no longer change.",
                                code=ErrorCode.INVALID_SYMBOL_STATUS)
        position = position_lock(user=user, contract=contract)
        if position.margin_type != MarginType.ISOLATED or not position.size:
            raise ExchangeError("Margin can only be adjusted on an open isolated position.",
                                code=ErrorCode.INVALID_PARAMETER)
        overview, view = _view(user, contract)
        wallet = account_get_or_create(kind=AccountKind.WALLET, user=user)
        isolated = account_get_or_create(kind=AccountKind.ISOLATED_MARGIN, user=user, contract=contract)
        if direction == ADD:
            if amount > overview.asset(asset.code).available:
                raise ExchangeError("Margin is insufficient.", code=ErrorCode.MARGIN_NOT_SUFFICIENT)
            source, destination = wallet, isolated
        else:
            removable = min(view.isolated_margin,
                            view.isolated_margin + view.risk.unrealized_pnl - view.risk.initial_margin)
            if amount > removable:
                raise ExchangeError(f"Isolated balance insufficient: at most {max(ZERO, removable).normalize():f} "
                                    "can be removed.", code=ErrorCode.ISOLATED_BALANCE_INSUFFICIENT)
            source, destination = isolated, wallet
        try:
            ledger_transfer(source=source, destination=destination, asset=asset, amount=amount,
                            kind=TransactionKind.TRANSFER,
                            reference={"position_margin": direction, "symbol": contract.symbol})
        except InsufficientBalance as exc:
            raise ExchangeError("Margin is insufficient.", code=ErrorCode.MARGIN_NOT_SUFFICIENT) from exc
    return amount
