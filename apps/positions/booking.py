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

`adl_book` is the other way positions move: auto-deleveraging closes a liquidated
position against ranked opposite positions at its bankruptcy price, without fees, in
one balanced ADL posting under an idempotency key. Both take the balances of every
account they touch first (one sorted lock), then the position rows: the project's lock
order, so a matcher batch and an ADL step on the same users run one after the other.
"""
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connection

from apps.ledger.models import Account, AccountKind, Income, IncomeType, LedgerTransaction, TransactionKind
from apps.ledger.money import quantize_amount
from apps.ledger.services import (
    Leg,
    Posting,
    accounts_for_users,
    balances_lock,
    ledger_post_many,
    system_account,
    user_balances_lock,
)

from exchange.pgbulk import array_literal, rows_copy

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

    order_id: int | None  # None: an ADL step (no order)
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
    pk: int
    leverage: int
    size: Decimal
    entry_price: Decimal
    stored_size: Decimal  # as read under the lock: `positions_update` writes only what moved
    stored_entry_price: Decimal
    realized: Decimal = Decimal(0)
    isolated_balance: Decimal = Decimal(0)


@dataclass
class BatchBooking:
    fills: list[BookedFill] = field(default_factory=list)
    ledger_transaction_id: int | None = None
    # `fills_book(positions_write=False)`: the positions' UPDATE (sql, params) left for the caller
    # to run (None: no position moved).
    positions_update: tuple[str, list] | None = None


def _ensure_positions(contract, user_ids: set[int]) -> dict[int, Position]:
    existing = {p.user_id: p for p in Position.objects.filter(contract=contract, user_id__in=user_ids)}
    missing = [Position(user_id=u, contract=contract) for u in user_ids if u not in existing]
    if missing:
        Position.objects.bulk_create(missing, ignore_conflicts=True)
        existing = {p.user_id: p for p in Position.objects.filter(contract=contract, user_id__in=user_ids)}
    return existing


# Per user: the position and every account a booking may post to, in one round trip (the
# unique (kind, user, contract) index serves each join). `_accounts_and_positions` falls back to
# the creating lookups when anything is missing (a first fill, a new isolated position).
ACCOUNTS_POSITIONS_SQL = f"""
SELECT u.id, p.id, p.margin_type, w.id, m.id, i.id, r.id
FROM unnest(%s::int[]) AS u(id)
LEFT JOIN positions_position p ON p.user_id = u.id AND p.contract_id = %s
LEFT JOIN ledger_account w ON w.user_id = u.id AND w.kind = '{AccountKind.WALLET}' AND w.contract_id IS NULL
LEFT JOIN ledger_account m ON m.user_id = u.id AND m.kind = '{AccountKind.ORDER_MARGIN}' AND m.contract_id IS NULL
LEFT JOIN ledger_account i ON i.user_id = u.id AND i.kind = '{AccountKind.ISOLATED_MARGIN}' AND i.contract_id = %s
LEFT JOIN ledger_account r ON r.user_id = u.id AND r.kind = '{AccountKind.RECEIVABLE}' AND r.contract_id IS NULL
"""
POSITIONS_LOCK_SQL = ("SELECT id, user_id, size, entry_price, leverage FROM positions_position"
                      " WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE")


def _accounts_and_positions(contract, user_ids: set[int], order_margin_users: set[int]):
    """(position ids, wallets, isolated-margin accounts, order-margin accounts, receivables), each by user id.

    Wallets for every user, isolated-margin accounts for the users whose position is isolated,
    order-margin accounts for `order_margin_users` and every other user who has one, the
    receivables that exist; missing positions, wallets and accounts to post to are created.
    """
    with connection.cursor() as cursor:
        cursor.execute(ACCOUNTS_POSITIONS_SQL, [array_literal(sorted(user_ids)), contract.pk, contract.pk])
        rows = cursor.fetchall()
    positions, wallets, isolated, order_margin, receivables = {}, {}, {}, {}, {}
    for user_id, position_id, margin_type, wallet, margin, iso, receivable in rows:
        if margin is not None:
            order_margin[user_id] = margin
        if receivable is not None:
            receivables[user_id] = receivable
        isolated_position = margin_type == MarginType.ISOLATED
        if position_id is None or wallet is None or (margin is None and user_id in order_margin_users) \
                or (iso is None and isolated_position):
            break
        positions[user_id], wallets[user_id] = position_id, wallet
        if isolated_position:
            isolated[user_id] = iso
    else:
        return positions, wallets, isolated, order_margin, receivables
    # Something to create: the lookups that create it, in the order accounts were always created in.
    order_margin.update(accounts_for_users(kind=AccountKind.ORDER_MARGIN, user_ids=order_margin_users))
    rows = _ensure_positions(contract, user_ids)
    wallets = accounts_for_users(kind=AccountKind.WALLET, user_ids=user_ids)
    isolated = accounts_for_users(kind=AccountKind.ISOLATED_MARGIN, contract=contract,
                                  user_ids={u for u, p in rows.items() if p.margin_type == MarginType.ISOLATED})
    return {u: p.pk for u, p in rows.items()}, wallets, isolated, order_margin, receivables


class _Book:
    """The per-account ledger deltas of one booking, over balances and positions it has locked."""

    def __init__(self, contract, user_ids: set[int], order_margin_users: set[int] = frozenset(),
                 lock_positions: bool = True):
        self.contract = contract
        self.precision = contract.settle_asset.precision
        self.cs = contract.contract_size
        positions, self.wallets, self.isolated, self.order_margin, self.receivables = _accounts_and_positions(
            contract, user_ids, set(order_margin_users))
        self.fund = system_account(AccountKind.INSURANCE_FUND).pk
        self.bad_debt = system_account(AccountKind.BAD_DEBT).pk
        self.fee_income = system_account(AccountKind.FEE_INCOME).pk
        self.pnl_clearing = system_account(AccountKind.PNL_CLEARING).pk
        # Every balance the posting can touch (the order margin released included), locked before
        # anything is decided from them, all at once in the ledger's lock order: the posting then
        # takes no lock out of order (delivery locks the same system accounts in one pass). Then the
        # positions, read again under their row locks (an ADL step may have just committed a
        # change to them: it holds these balances while it writes). A booking of released margin
        # only (`lock_positions=False`) neither reads nor writes a position: it locks none.
        self.current = balances_lock(account_ids=[*self.wallets.values(), *self.isolated.values(), self.fund,
                                                  self.bad_debt, self.fee_income, self.pnl_clearing,
                                                  *self.order_margin.values(), *self.receivables.values()],
                                     asset=contract.settle_asset)
        locked = []
        if lock_positions:
            with connection.cursor() as cursor:
                cursor.execute(POSITIONS_LOCK_SQL, [array_literal(sorted(positions.values()))])
                locked = cursor.fetchall()
        self.states = {
            user_id: _PositionState(pk=pk, leverage=leverage, size=size, entry_price=entry_price, stored_size=size,
                                    stored_entry_price=entry_price,
                                    isolated_balance=self.current[self.isolated[user_id]]
                                    if user_id in self.isolated else Decimal(0))
            for pk, user_id, size, entry_price, leverage in locked
        }
        self.delta: dict[int, Decimal] = defaultdict(Decimal)  # account id -> amount

    def apply(self, user_id: int, signed_qty: Decimal, price: Decimal, fee_rate: Decimal) -> tuple[Decimal, Decimal]:
        """Net one fill into the user's position; returns (fee, realized PnL), both quantized."""
        state, delta, precision = self.states[user_id], self.delta, self.precision
        before = state.size
        result = net_fill(size=state.size, entry_price=state.entry_price, signed_qty=signed_qty, price=price,
                          contract_size=self.cs)
        realized = quantize_amount(result.realized_pnl, precision)
        fee = quantize_amount(abs(signed_qty) * price * self.cs * fee_rate, precision)
        state.size, state.entry_price = result.size, result.entry_price
        state.realized += realized
        wallet = self.wallets[user_id]
        delta[wallet] += realized - fee
        if user_id in self.isolated:
            iso = self.isolated[user_id]
            if result.closed:
                back = state.isolated_balance if result.size == 0 or (before > 0) != (result.size > 0) else \
                    quantize_amount(state.isolated_balance * result.closed / abs(before), precision)
                state.isolated_balance -= back
                delta[iso] -= back
                delta[wallet] += back
            if result.opened:
                im = quantize_amount(result.opened * price * self.cs / Decimal(state.leverage), precision)
                state.isolated_balance += im
                delta[iso] += im
                delta[wallet] -= im
        return fee, realized

    def ring_fence(self, user_id: int, wallet_before: Decimal, outcome: LiquidationOutcome) -> None:
        """An isolated liquidated position's result never reaches the wallet: what the closing
        returned beyond `wallet_before` goes to the fund; a loss beyond the isolated margin is
        covered by the fund, then recorded bad debt."""
        if user_id not in self.isolated:
            return
        delta, wallet = self.delta, self.wallets[user_id]
        rest = delta[wallet] - wallet_before
        delta[wallet] -= rest
        if rest >= 0:
            delta[self.fund] += rest
            outcome.surplus_to_fund += rest
        else:
            covered = min(-rest, max(Decimal(0), self.current[self.fund] + delta[self.fund]))
            delta[self.fund] -= covered
            delta[self.bad_debt] -= -rest - covered
            outcome.fund_cover += covered
            outcome.bad_debt += -rest - covered

    def cover_deficits(self) -> dict[int, tuple[Decimal, Decimal]]:
        """`deficits_cover` over this booking's wallets: user id -> (fund cover, bad debt).

        First, opening margin this booking moved into an isolated position beyond what the wallet
        holds stays in the wallet: an order holds at its own price, and a fill above it (a sell's
        price improvement, a stop filled past its trigger) needs more. The position starts with
        less isolated margin, for the liquidation screen to judge; the insurance fund never pays
        for opening margin."""
        for user_id, iso in self.isolated.items():
            wallet = self.wallets[user_id]
            back = min(-(self.current[wallet] + self.delta[wallet]), self.delta[iso])
            if back > 0:
                self.delta[iso] -= back
                self.delta[wallet] += back
                self.states[user_id].isolated_balance -= back
        backed = WalletsBacking(
            backing={wallet: Backing(held=self.current[self.order_margin[u]] + self.delta[self.order_margin[u]]
                                     if u in self.order_margin else Decimal(0), receivable=self.receivables.get(u))
                     for u, wallet in self.wallets.items()},
            receivables=list(self.receivables.values()), users={w: u for u, w in self.wallets.items()},
            current=self.current)
        covers = deficits_cover(wallets=self.wallets, delta=self.delta, current=self.current, fund=self.fund,
                                bad_debt=self.bad_debt, backing=backed.backing, receivable_for=backed.receivable_for)
        return {u: covers[a] for u, a in self.wallets.items() if a in covers}

    def post(self, *, kind: str, reference: dict, idempotency_key: str | None = None,
             savepoint: bool = True, positions_write: bool = True) -> int | None:
        """One balanced posting of the deltas, then the positions; the transaction id (None: nothing moved).

        `savepoint=False`: the caller's transaction rolls back anyway when the posting is refused.
        `positions_write=False`: the positions' UPDATE is left in `self.positions_update`."""
        asset = self.contract.settle_asset
        legs = [Leg(account_id, asset, amount) for account_id, amount in sorted(self.delta.items()) if amount]
        txn_id = None
        if legs:
            txn_id = ledger_post_many(postings=[Posting(kind=kind, legs=legs, reference=reference,
                                                        idempotency_key=idempotency_key)],
                                      savepoint=savepoint)[0].pk
        self.positions_update = positions_update(self.states.values())
        if positions_write and self.positions_update is not None:
            with connection.cursor() as cursor:
                cursor.execute(*self.positions_update)
        return txn_id


def fills_book(*, contract, fills: list[Fill], releases: dict[int, Decimal], reference: dict,
               positions_write: bool = True) -> BatchBooking:
    """Book a batch: `fills` in execution order, `releases` = order margin returned per user id.

    `positions_write=False`: the positions' UPDATE comes back in `BatchBooking.positions_update`
    for the caller to run in its own next statement (the matcher's, with its orders), before commit."""
    user_ids = {f.taker_user_id for f in fills} | {f.maker_user_id for f in fills} | set(releases)
    if not user_ids:
        return BatchBooking()
    book = _Book(contract, user_ids, order_margin_users=set(releases), lock_positions=bool(fills))
    order_margin = book.order_margin
    delta, wallets, fund, precision, cs = book.delta, book.wallets, book.fund, book.precision, book.cs
    fee_income = Decimal(0)
    pnl_clearing = Decimal(0)
    booking = BatchBooking()

    # Liquidation hook (apps.liquidation): a LIQUIDATION taker pays no taker fee but the
    # clearance fee (contract.liquidation_fee_rate × notional, at most the fill's surplus over
    # the bankruptcy price) to the insurance fund. An isolated position's result is
    # ring-fenced (`_Book.ring_fence`); cross deficits are covered by `deficits_cover` below.
    # Each order's outcome is recorded by the liquidation app.
    outcomes: dict[int, LiquidationOutcome] = {}

    def apply_liquidation(fill: Fill, signed_qty: Decimal) -> tuple[Decimal, Decimal]:
        user_id, wallet = fill.taker_user_id, wallets[fill.taker_user_id]
        before = delta[wallet]
        _, realized = book.apply(user_id, signed_qty, fill.price, Decimal(0))
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
        book.ring_fence(user_id, before, outcome)
        return fee, realized

    for fill in fills:
        taker_qty = fill.quantity if fill.taker_is_buyer else -fill.quantity
        if fill.liquidation_order_id is None:
            taker_fee, taker_pnl = book.apply(fill.taker_user_id, taker_qty, fill.price, contract.taker_fee_rate)
            fee_income += taker_fee
        else:
            taker_fee, taker_pnl = apply_liquidation(fill, taker_qty)
        maker_fee, maker_pnl = book.apply(fill.maker_user_id, -taker_qty, fill.price, contract.maker_fee_rate)
        fee_income += maker_fee
        pnl_clearing -= taker_pnl + maker_pnl
        booking.fills.append(BookedFill(taker_fee, maker_fee, taker_pnl, maker_pnl))

    for user_id, amount in releases.items():
        if amount:
            delta[order_margin[user_id]] -= amount
            delta[wallets[user_id]] += amount

    delta[book.fee_income] += fee_income
    delta[book.pnl_clearing] += pnl_clearing
    covers = book.cover_deficits()
    if outcomes:  # liquidation hook: cross deficits of liquidated users, then the records
        by_user = {o.user_id: o for o in outcomes.values()}
        for user_id, (covered, bad) in covers.items():
            if user_id in by_user:
                by_user[user_id].fund_cover += covered
                by_user[user_id].bad_debt += bad
    # No savepoint of its own: a refused posting fails the batch, whose transaction rolls back (the
    # matcher rebuilds the book and replays it), so the SAVEPOINT / RELEASE pair was pure cost.
    booking.ledger_transaction_id = book.post(kind=TransactionKind.TRADE, reference=reference, savepoint=False,
                                              positions_write=positions_write)
    booking.positions_update = None if positions_write else book.positions_update
    if outcomes:
        from apps.liquidation.services import liquidation_outcomes_record  # liquidation builds on positions

        liquidation_outcomes_record(contract=contract, outcomes=list(outcomes.values()))
    return booking


INCOME_COLUMNS = ("user_id", "symbol", "income_type", "amount", "asset_id", "trade_id", "transaction_id", "created_at",
                  "info")


def incomes_record(*, contract, fills: list[Fill], booking: BatchBooking, trade_ids: list[int], at) -> None:
    """The client-facing income lines of a booked batch: commission and realized PnL per side per trade.

    A liquidation order's fee is its clearance fee, paid to the insurance fund: INSURANCE_CLEAR.
    """
    if booking.ledger_transaction_id is None:
        return
    symbol, asset_id, txn_id = contract.symbol, contract.settle_asset_id, booking.ledger_transaction_id
    rows = []
    for fill, booked, trade_id in zip(fills, booking.fills, trade_ids):
        taker_fee_type = IncomeType.COMMISSION if fill.liquidation_order_id is None else IncomeType.INSURANCE_CLEAR
        for user_id, fee, pnl, fee_type in (
                (fill.taker_user_id, booked.taker_fee, booked.taker_realized_pnl, taker_fee_type),
                (fill.maker_user_id, booked.maker_fee, booked.maker_realized_pnl, IncomeType.COMMISSION)):
            if fee:
                rows.append((user_id, symbol, fee_type, -fee, asset_id, trade_id, txn_id, at, ""))
            if pnl:
                rows.append((user_id, symbol, IncomeType.REALIZED_PNL, pnl, asset_id, trade_id, txn_id, at, ""))
    with connection.cursor() as cursor:
        rows_copy(cursor, Income._meta.db_table, INCOME_COLUMNS, rows)


# Auto-deleveraging -----------------------------------------------------------------------

@dataclass(frozen=True)
class AdlFill:
    """One counterparty's part of an ADL step; `fund_cover`/`bad_debt`: a loss its wallet could not pay."""

    user_id: int
    quantity: Decimal
    realized_pnl: Decimal
    fund_cover: Decimal = Decimal(0)
    bad_debt: Decimal = Decimal(0)


@dataclass
class AdlBooking:
    price: Decimal
    fills: list[AdlFill]
    # The liquidated side: quantity closed, its realized PnL, and fund / bad debt flows
    # (an isolated surplus to the fund, a deficit the closing left).
    outcome: LiquidationOutcome
    realized_pnl: Decimal = Decimal(0)
    ledger_transaction_id: int | None = None

    @property
    def quantity(self) -> Decimal:
        return self.outcome.quantity


def adl_lock(*, contract, user_ids) -> None:
    """Take the locks an ADL booking of these users needs, in the project's order (balances, then
    positions), so the caller can judge the liquidated scope on locked state before `adl_book`."""
    _Book(contract, set(user_ids))


def adl_book(*, contract, user_id: int, quantity: Decimal, price: Decimal, counterparties: list[int],
             idempotency_key: str, reference: dict) -> AdlBooking | None:
    """Auto-deleverage: close up to `quantity` of `user_id`'s position against the opposite positions
    of `counterparties`, in that order (the last one partially), at `price` (the bankruptcy price),
    without fees; realized PnL of both sides in ONE balanced ADL posting keyed `idempotency_key`.

    The liquidated side is settled as a liquidation (`_Book.ring_fence` for an isolated position,
    `deficits_cover` for a wallet, including a counterparty's). None when the key is already booked:
    nothing changes.
    """
    book = _Book(contract, {user_id, *counterparties})
    if LedgerTransaction.objects.filter(idempotency_key=idempotency_key).exists():
        return None
    state = book.states[user_id]
    sign = 1 if state.size > 0 else -1
    remaining = min(quantity, abs(state.size))
    outcome = LiquidationOutcome(None, user_id)
    booking = AdlBooking(price=price, fills=[], outcome=outcome)
    wallet = book.wallets[user_id]
    parts: list[tuple[int, Decimal, Decimal]] = []
    for other in counterparties:
        if remaining <= 0:
            break
        size = book.states[other].size
        if other == user_id or size == 0 or (size > 0) == (sign > 0):
            continue  # no longer on the opposite side
        take = min(remaining, abs(size))
        before = book.delta[wallet]
        _, realized = book.apply(user_id, -sign * take, price, Decimal(0))
        book.ring_fence(user_id, before, outcome)
        _, other_realized = book.apply(other, sign * take, price, Decimal(0))
        book.delta[book.pnl_clearing] -= realized + other_realized
        booking.realized_pnl += realized
        outcome.quantity += take
        outcome.notional += take * price * book.cs
        parts.append((other, take, other_realized))
        remaining -= take
    covers = book.cover_deficits()
    if user_id in covers:
        outcome.fund_cover += covers[user_id][0]
        outcome.bad_debt += covers[user_id][1]
    booking.fills = [AdlFill(u, q, pnl, *covers.get(u, (Decimal(0), Decimal(0)))) for u, q, pnl in parts]
    if parts:
        booking.ledger_transaction_id = book.post(kind=TransactionKind.ADL, reference=reference,
                                                  idempotency_key=idempotency_key)
    return booking


def order_margin_release(*, user_id: int, asset, amount: Decimal, reference: dict) -> None:
    """Return order margin to the user's wallet outside a matcher batch (a waiting conditional order
    cancelled, a quarantined command), repaying first what the user owes: one posting, the rule of
    `deficits_cover`, so a debt never stays larger than the order margin left to back it."""
    if amount <= 0:
        return
    wallet = accounts_for_users(kind=AccountKind.WALLET, user_ids=[user_id])[user_id]
    kinds = dict(Account.objects.filter(user_id=user_id, contract=None, kind__in=(
        AccountKind.ORDER_MARGIN, AccountKind.RECEIVABLE)).values_list("kind", "pk"))
    order_margin, receivable = kinds[AccountKind.ORDER_MARGIN], kinds.get(AccountKind.RECEIVABLE)
    current = defaultdict(Decimal, user_balances_lock(user_id=user_id, asset=asset))
    delta: dict[int, Decimal] = defaultdict(Decimal, {order_margin: -amount, wallet: amount})
    deficits_cover(wallets={user_id: wallet}, delta=delta, current=current,
                   fund=system_account(AccountKind.INSURANCE_FUND).pk, bad_debt=system_account(AccountKind.BAD_DEBT).pk,
                   backing={wallet: Backing(held=current[order_margin] - amount, receivable=receivable)})
    ledger_post_many(postings=[Posting(kind=TransactionKind.ORDER_MARGIN, reference=reference, legs=[
        Leg(account, asset, value) for account, value in sorted(delta.items()) if value])])


@dataclass(frozen=True)
class Backing:
    """What backs a wallet besides itself: the order margin its user holds after the booking, and
    the user's RECEIVABLE account (None: none yet)."""

    held: Decimal
    receivable: int | None


BACKING_SQL = f"""
SELECT a.user_id, a.kind, a.id, COALESCE(b.amount, 0)
FROM ledger_account a
LEFT JOIN ledger_balance b ON b.account_id = a.id AND b.asset_id = %s
WHERE a.user_id = ANY(%s::int[]) AND a.kind IN ('{AccountKind.ORDER_MARGIN}', '{AccountKind.RECEIVABLE}')
  AND a.contract_id IS NULL
"""


@dataclass
class WalletsBacking:
    """What `deficits_cover` needs to know of a set-based settlement's wallets (`wallets_backing`)."""

    backing: dict[int, Backing]  # wallet account -> Backing
    receivables: list[int]  # every RECEIVABLE account the cover may post to (`receivable_for` adds to it)
    users: dict[int, int]  # wallet account -> user id
    current: dict[int, Decimal]

    def receivable_for(self, wallet: int) -> int:
        user_id = self.users[wallet]
        account = accounts_for_users(kind=AccountKind.RECEIVABLE, user_ids=[user_id])[user_id]
        self.current[account] = Decimal(0)  # created now: its balance row comes with the posting
        self.receivables.append(account)
        return account


def wallets_backing(*, wallets: dict[int, int], asset, current: dict[int, Decimal],
                    held_change: dict[int, Decimal] | None = None) -> WalletsBacking:
    """The order margin held and what is owed by the users of these wallets (user id -> wallet
    account), for `deficits_cover` in a settlement that has locked the wallets: their order-margin
    and RECEIVABLE balances are locked too (every writer of those moves the wallet as well, so
    they cannot have changed) and the RECEIVABLE balances go into `current`. `held_change`:
    order-margin account -> what the settlement's own posting moves (a release, negative)."""
    held_change = held_change or {}
    with connection.cursor() as cursor:
        cursor.execute(BACKING_SQL, [asset.pk, sorted(wallets)])
        rows = cursor.fetchall()
    balances_lock(account_ids=[account for _, _, account, _ in rows], asset=asset)
    accounts = {(user_id, kind): (account, amount) for user_id, kind, account, amount in rows}
    result = WalletsBacking(backing={}, receivables=[], users={w: u for u, w in wallets.items()}, current=current)
    for user_id, wallet in wallets.items():
        held, held_balance = accounts.get((user_id, AccountKind.ORDER_MARGIN), (None, Decimal(0)))
        receivable, owed = accounts.get((user_id, AccountKind.RECEIVABLE), (None, Decimal(0)))
        if receivable is not None:
            current[receivable] = owed
            result.receivables.append(receivable)
        result.backing[wallet] = Backing(held=held_balance + held_change.get(held, Decimal(0)), receivable=receivable)
    return result


def deficits_cover(*, wallets: dict[int, int], delta: dict[int, Decimal], current: dict[int, Decimal],
                   fund: int, bad_debt: int, backing: dict[int, Backing] | None = None,
                   receivable_for=None) -> dict[int, tuple[Decimal, Decimal]]:
    """Bring every wallet to >= 0 with the user's own money first, then the insurance fund, then bad debt.

    With `backing` (wallet account -> `Backing`): what the user owes is repaid from the wallet
    as far as it goes, and a wallet still short borrows against the order margin the user
    holds (its RECEIVABLE goes down to minus that much; `receivable_for(wallet)` creates the
    account when needed). The fund pays only what the user's free wallet and holds cannot:
    a loss taken while margin is held on open orders is the user's, not the fund's.

    Returns account id -> (covered by the fund, recorded as bad debt) for the wallets topped up.
    """
    backing = backing or {}
    covers: dict[int, tuple[Decimal, Decimal]] = {}
    for account in sorted(wallets.values()):
        back = backing.get(account)
        if back is not None:
            receivable = back.receivable
            owed = -(current[receivable] + delta[receivable]) if receivable is not None else Decimal(0)
            free = current[account] + delta[account] - owed
            borrowed = min(max(-free, Decimal(0)), back.held)
            if borrowed != owed:
                if receivable is None:
                    receivable = receivable_for(account)
                delta[receivable] += owed - borrowed
                delta[account] -= owed - borrowed
        missing = -(current[account] + delta[account])
        if missing <= 0:
            continue
        covered = min(missing, max(Decimal(0), current[fund] + delta[fund]))
        delta[account] += missing
        delta[fund] -= covered
        delta[bad_debt] -= missing - covered
        covers[account] = (covered, missing - covered)
    return covers


POSITIONS_UPDATE_SQL = """
UPDATE positions_position AS p
SET size = t.size, entry_price = t.entry_price, realized_pnl = p.realized_pnl + t.realized, updated_at = now()
FROM unnest(%s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[]) AS t(id, size, entry_price, realized)
WHERE p.id = t.id
"""


def positions_update(states) -> tuple[str, list] | None:
    """The UPDATE (sql, params) of the positions that moved, None if none did."""
    changed = [s for s in states if s.size != s.stored_size or s.entry_price != s.stored_entry_price or s.realized]
    if not changed:
        return None
    return POSITIONS_UPDATE_SQL, [
        array_literal([s.pk for s in changed]),
        array_literal([s.size for s in changed]),
        array_literal([s.entry_price for s in changed]),
        array_literal([s.realized for s in changed]),
    ]
