"""The fill-booking service: one matcher batch into positions and the ledger.

Called by the matcher inside the batch's database transaction. For every fill, in
order, both sides' positions are netted (`netting.net_fill`), maker and taker fees
are charged, realized PnL is booked against the PnL clearing account, and for
isolated positions the opened part's initial margin moves into the position's
isolated-margin account (and a proportional part moves back when it is reduced).
Order margin released by the matcher returns to the wallet.

Everything is netted per account into ONE balanced ledger transaction per batch (the
Trade rows carry each fill's fees and PnL for audit), positions are written with one
UPDATE, and a wallet that a loss would take below zero is topped up from the
insurance fund and then the bad-debt account, so a batch can always be booked and no
user wallet goes negative except by recorded bad debt.
"""
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connection

from apps.ledger.models import AccountKind, Income, IncomeType, TransactionKind
from apps.ledger.money import quantize_amount
from apps.ledger.services import (
    Leg,
    Posting,
    accounts_for_users,
    balances_lock,
    ledger_post_many,
    system_account,
)

from .models import MarginType, Position
from .netting import net_fill


@dataclass(frozen=True)
class Fill:
    taker_user_id: int
    maker_user_id: int
    taker_is_buyer: bool
    price: Decimal
    quantity: Decimal
    # Liquidation hook (apps.liquidation): set when the taker is a LIQUIDATION order, whose
    # `price` field carries the bankruptcy price. See `_apply_liquidation` in fills_book.
    liquidation_order_id: int | None = None
    bankruptcy_price: Decimal | None = None


@dataclass
class LiquidationOutcome:
    """What one liquidation order's fills in a batch paid to and drew from the insurance fund."""

    order_id: int
    user_id: int
    quantity: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    clearance_fee: Decimal = Decimal(0)
    surplus_to_fund: Decimal = Decimal(0)
    fund_cover: Decimal = Decimal(0)
    bad_debt: Decimal = Decimal(0)


@dataclass(frozen=True)
class BookedFill:
    taker_fee: Decimal
    maker_fee: Decimal
    taker_realized_pnl: Decimal
    maker_realized_pnl: Decimal


@dataclass
class _PositionState:
    row: Position
    size: Decimal
    entry_price: Decimal
    realized: Decimal = Decimal(0)
    isolated_balance: Decimal = Decimal(0)


@dataclass
class BatchBooking:
    fills: list[BookedFill] = field(default_factory=list)
    ledger_transaction_id: int | None = None


def _ensure_positions(contract, user_ids: set[int]) -> dict[int, Position]:
    existing = {p.user_id: p for p in Position.objects.filter(contract=contract, user_id__in=user_ids)}
    missing = [Position(user_id=u, contract=contract) for u in user_ids if u not in existing]
    if missing:
        Position.objects.bulk_create(missing, ignore_conflicts=True)
        existing = {p.user_id: p for p in Position.objects.filter(contract=contract, user_id__in=user_ids)}
    return existing


def fills_book(*, contract, fills: list[Fill], releases: dict[int, Decimal], reference: dict) -> BatchBooking:
    """Book a batch: `fills` in execution order, `releases` = order margin returned per user id."""
    asset = contract.settle_asset
    precision = asset.precision
    cs = contract.contract_size
    user_ids = {f.taker_user_id for f in fills} | {f.maker_user_id for f in fills} | set(releases)
    if not user_ids:
        return BatchBooking()
    positions = _ensure_positions(contract, user_ids)
    isolated_users = {u for u, p in positions.items() if p.margin_type == MarginType.ISOLATED}
    wallets = accounts_for_users(kind=AccountKind.WALLET, user_ids=user_ids)
    order_margin = accounts_for_users(kind=AccountKind.ORDER_MARGIN, user_ids=user_ids)
    isolated = accounts_for_users(kind=AccountKind.ISOLATED_MARGIN, user_ids=isolated_users, contract=contract)
    fund = system_account(AccountKind.INSURANCE_FUND).pk
    bad_debt = system_account(AccountKind.BAD_DEBT).pk
    # Locked before anything is decided from them, all at once in the ledger's lock order.
    current = balances_lock(account_ids=[*wallets.values(), *isolated.values(), fund, bad_debt], asset=asset)
    states = {
        u: _PositionState(row=p, size=p.size, entry_price=p.entry_price,
                          isolated_balance=current[isolated[u]] if u in isolated else Decimal(0))
        for u, p in positions.items()
    }

    delta: dict[int, Decimal] = defaultdict(Decimal)  # account id -> amount
    fee_income = Decimal(0)
    pnl_clearing = Decimal(0)
    booking = BatchBooking()

    def apply(user_id: int, signed_qty: Decimal, price: Decimal, fee_rate: Decimal) -> tuple[Decimal, Decimal]:
        state = states[user_id]
        before = state.size
        result = net_fill(size=state.size, entry_price=state.entry_price, signed_qty=signed_qty, price=price,
                          contract_size=cs)
        realized = quantize_amount(result.realized_pnl, precision)
        fee = quantize_amount(abs(signed_qty) * price * cs * fee_rate, precision)
        state.size, state.entry_price = result.size, result.entry_price
        state.realized += realized
        wallet = wallets[user_id]
        delta[wallet] += realized - fee
        if user_id in isolated_users:
            iso = isolated[user_id]
            if result.closed:
                back = state.isolated_balance if result.size == 0 or (before > 0) != (result.size > 0) else \
                    quantize_amount(state.isolated_balance * result.closed / abs(before), precision)
                state.isolated_balance -= back
                delta[iso] -= back
                delta[wallet] += back
            if result.opened:
                im = quantize_amount(result.opened * price * cs / Decimal(state.row.leverage), precision)
                state.isolated_balance += im
                delta[iso] += im
                delta[wallet] -= im
        return fee, realized

    # Liquidation hook (apps.liquidation): a LIQUIDATION taker pays no taker fee but the
    # clearance fee (contract.liquidation_fee_rate × notional, at most the fill's surplus over
    # the bankruptcy price) to the insurance fund. An isolated position's result is
    # ring-fenced: everything the fill returns to the wallet beyond that (the rest of the
    # surplus) goes to the fund too, and a loss beyond the isolated margin is covered by
    # the fund and then recorded bad debt, never by the wallet. Cross deficits are covered
    # by `deficits_cover` below. Each order's outcome is recorded by the liquidation app.
    outcomes: dict[int, LiquidationOutcome] = {}

    def apply_liquidation(fill: Fill, signed_qty: Decimal) -> tuple[Decimal, Decimal]:
        user_id, wallet = fill.taker_user_id, wallets[fill.taker_user_id]
        before = delta[wallet]
        _, realized = apply(user_id, signed_qty, fill.price, Decimal(0))
        notional = fill.quantity * fill.price * cs
        closing_long = signed_qty < 0
        surplus = (fill.price - fill.bankruptcy_price) * fill.quantity * cs * (1 if closing_long else -1)
        fee = max(Decimal(0), min(quantize_amount(notional * contract.liquidation_fee_rate, precision),
                                  quantize_amount(surplus, precision)))
        delta[wallet] -= fee
        delta[fund] += fee
        outcome = outcomes.setdefault(fill.liquidation_order_id, LiquidationOutcome(fill.liquidation_order_id, user_id))
        outcome.quantity += fill.quantity
        outcome.notional += notional
        outcome.clearance_fee += fee
        if user_id in isolated_users:
            rest = delta[wallet] - before
            delta[wallet] -= rest
            if rest >= 0:
                delta[fund] += rest
                outcome.surplus_to_fund += rest
            else:
                covered = min(-rest, max(Decimal(0), current[fund] + delta[fund]))
                delta[fund] -= covered
                delta[bad_debt] -= -rest - covered
                outcome.fund_cover += covered
                outcome.bad_debt += -rest - covered
        return fee, realized

    for fill in fills:
        taker_qty = fill.quantity if fill.taker_is_buyer else -fill.quantity
        if fill.liquidation_order_id is None:
            taker_fee, taker_pnl = apply(fill.taker_user_id, taker_qty, fill.price, contract.taker_fee_rate)
            fee_income += taker_fee
        else:
            taker_fee, taker_pnl = apply_liquidation(fill, taker_qty)
        maker_fee, maker_pnl = apply(fill.maker_user_id, -taker_qty, fill.price, contract.maker_fee_rate)
        fee_income += maker_fee
        pnl_clearing -= taker_pnl + maker_pnl
        booking.fills.append(BookedFill(taker_fee, maker_fee, taker_pnl, maker_pnl))

    for user_id, amount in releases.items():
        if amount:
            delta[order_margin[user_id]] -= amount
            delta[wallets[user_id]] += amount

    delta[system_account(AccountKind.FEE_INCOME).pk] += fee_income
    delta[system_account(AccountKind.PNL_CLEARING).pk] += pnl_clearing
    covers = deficits_cover(wallets=wallets, delta=delta, current=current, fund=fund, bad_debt=bad_debt)
    if outcomes:  # liquidation hook: cross deficits of liquidated users, then the records
        by_user = {o.user_id: o for o in outcomes.values()}
        for user_id, account in wallets.items():
            if user_id in by_user and account in covers:
                by_user[user_id].fund_cover += covers[account][0]
                by_user[user_id].bad_debt += covers[account][1]
    legs = [Leg(account_id, asset, amount) for account_id, amount in sorted(delta.items()) if amount]
    if legs:
        booking.ledger_transaction_id = ledger_post_many(
            postings=[Posting(kind=TransactionKind.TRADE, legs=legs, reference=reference)]
        )[0].pk
    _write_positions(states.values())
    if outcomes:
        from apps.liquidation.services import liquidation_outcomes_record  # liquidation builds on positions

        liquidation_outcomes_record(contract=contract, outcomes=list(outcomes.values()))
    return booking


def incomes_record(*, contract, fills: list[Fill], booking: BatchBooking, trade_ids: list[int], at) -> None:
    """The client-facing income lines of a booked batch: commission and realized PnL per side per trade."""
    if booking.ledger_transaction_id is None:
        return
    rows = []
    for fill, booked, trade_id in zip(fills, booking.fills, trade_ids):
        for user_id, fee, pnl in ((fill.taker_user_id, booked.taker_fee, booked.taker_realized_pnl),
                                  (fill.maker_user_id, booked.maker_fee, booked.maker_realized_pnl)):
            common = dict(user_id=user_id, symbol=contract.symbol, asset_id=contract.settle_asset_id,
                          trade_id=trade_id, transaction_id=booking.ledger_transaction_id, created_at=at)
            if fee:
                rows.append(Income(income_type=IncomeType.COMMISSION, amount=-fee, **common))
            if pnl:
                rows.append(Income(income_type=IncomeType.REALIZED_PNL, amount=pnl, **common))
    Income.objects.bulk_create(rows)


def deficits_cover(*, wallets: dict[int, int], delta: dict[int, Decimal], current: dict[int, Decimal],
                    fund: int, bad_debt: int) -> dict[int, tuple[Decimal, Decimal]]:
    """Top up wallets that would end below zero: from the insurance fund first, then bad debt.

    Returns account id -> (covered by the fund, recorded as bad debt) for the wallets topped up.
    """
    covers: dict[int, tuple[Decimal, Decimal]] = {}
    for account in sorted(wallets.values()):
        missing = -(current[account] + delta[account])
        if missing <= 0:
            continue
        covered = min(missing, max(Decimal(0), current[fund] + delta[fund]))
        delta[account] += missing
        delta[fund] -= covered
        delta[bad_debt] -= missing - covered
        covers[account] = (covered, missing - covered)
    return covers


def _write_positions(states) -> None:
    changed = [s for s in states if s.size != s.row.size or s.entry_price != s.row.entry_price or s.realized]
    if not changed:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE positions_position AS p
            SET size = t.size, entry_price = t.entry_price, realized_pnl = p.realized_pnl + t.realized,
                updated_at = now()
            FROM unnest(%s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[]) AS t(id, size, entry_price, realized)
            WHERE p.id = t.id
            """,
            [
                [s.row.pk for s in changed],
                [s.size for s in changed],
                [s.entry_price for s in changed],
                [s.realized for s in changed],
            ],
        )
