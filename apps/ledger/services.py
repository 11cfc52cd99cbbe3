"""The only writer of balances: posting balanced ledger transactions.

`ledger_post_many` validates every posting (known assets, non-zero amounts within the
asset's precision, legs summing to zero per asset), locks the balance rows it touches
with SELECT ... FOR UPDATE in (account id, asset id) order so concurrent posters cannot
deadlock, refuses any posting that would take a non-negative balance below zero,
skips postings whose idempotency key was already booked, then writes transactions,
entries and balances with one statement each. It runs inside the caller's transaction
when there is one, so a service that books several things commits them together.
"""
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Sequence

from django.db import IntegrityError, connection, transaction

from .errors import InsufficientBalance, InvalidAmount, LedgerError, PrecisionExceeded, Unbalanced, UnknownAsset
from .models import (
    MAY_GO_NEGATIVE_KINDS,
    Account,
    AccountKind,
    Asset,
    Income,
    IncomeType,
    LedgerEntry,
    LedgerTransaction,
    TransactionKind,
)
from .money import fits_precision, to_decimal


@dataclass(frozen=True)
class Leg:
    account: Account | int
    asset: Asset | str
    amount: Decimal

    @property
    def account_id(self) -> int:
        return self.account if isinstance(self.account, int) else self.account.pk


@dataclass
class Posting:
    kind: str
    legs: Sequence[Leg]
    idempotency_key: str | None = None
    memo: str = ""
    reference: dict = field(default_factory=dict)
    created_by_id: int | None = None


@dataclass(frozen=True)
class _NormalLeg:
    account_id: int
    asset_id: int
    amount: Decimal


def _resolve_assets(postings: Sequence[Posting]) -> dict[str, Asset]:
    """Assets by code: those passed as instances as they are, codes looked up in one query."""
    given = {leg.asset.code: leg.asset for p in postings for leg in p.legs if isinstance(leg.asset, Asset)}
    codes = {leg.asset for p in postings for leg in p.legs if isinstance(leg.asset, str)} - given.keys()
    found = {**given, **({a.code: a for a in Asset.objects.filter(code__in=codes)} if codes else {})}
    codes |= given.keys()
    unknown = sorted(codes - found.keys())
    if unknown:
        raise UnknownAsset(f"Unknown asset: {', '.join(unknown)}.")
    return found


def _normalize(posting: Posting, assets: dict[str, Asset]) -> list[_NormalLeg]:
    if posting.kind not in TransactionKind.values:
        raise LedgerError(f"Unknown transaction kind {posting.kind!r}.")
    if len(posting.legs) < 2:
        raise Unbalanced("A ledger transaction needs at least two legs.")
    sums: dict[int, Decimal] = defaultdict(Decimal)
    legs = []
    for leg in posting.legs:
        asset = assets[leg.asset if isinstance(leg.asset, str) else leg.asset.code]
        try:
            amount = to_decimal(leg.amount)
        except (TypeError, ValueError) as exc:
            raise InvalidAmount(f"Invalid amount {leg.amount!r}: {exc}.") from exc
        if amount == 0:
            raise InvalidAmount("A ledger leg amount must not be zero.")
        if not fits_precision(amount, asset.precision):
            raise PrecisionExceeded(
                f"Amount {amount} has more than {asset.precision} decimal places allowed for {asset.code}."
            )
        sums[asset.pk] += amount
        legs.append(_NormalLeg(account_id=leg.account_id, asset_id=asset.pk, amount=amount))
    for asset_id, total in sums.items():
        if total != 0:
            code = next(a.code for a in assets.values() if a.pk == asset_id)
            raise Unbalanced(f"Legs do not sum to zero for {code} (sum {total}).")
    return legs


def _ensure_balance_rows(pairs: list[tuple[int, int]], kinds: dict[int, str]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO ledger_balance (account_id, asset_id, amount, may_go_negative, updated_at)
            SELECT t.account_id, t.asset_id, 0, t.may_go_negative, now()
            FROM unnest(%s::bigint[], %s::bigint[], %s::boolean[]) AS t(account_id, asset_id, may_go_negative)
            ORDER BY t.account_id, t.asset_id
            ON CONFLICT (account_id, asset_id) DO NOTHING
            """,
            [
                [a for a, _ in pairs],
                [s for _, s in pairs],
                [kinds[a] in MAY_GO_NEGATIVE_KINDS for a, _ in pairs],
            ],
        )


def _lock_balances(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], list]:
    """Lock the balance rows in (account id, asset id) order; returns [id, amount, may_go_negative]."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT b.id, b.account_id, b.asset_id, b.amount, b.may_go_negative
            FROM ledger_balance b
            JOIN unnest(%s::bigint[], %s::bigint[]) AS t(account_id, asset_id)
              ON b.account_id = t.account_id AND b.asset_id = t.asset_id
            ORDER BY b.account_id, b.asset_id
            FOR UPDATE OF b
            """,
            [[a for a, _ in pairs], [s for _, s in pairs]],
        )
        return {(row[1], row[2]): [row[0], row[3], row[4]] for row in cursor.fetchall()}


def _lock_pairs(pairs: set[tuple[int, int]]) -> dict[tuple[int, int], list]:
    """Lock the balance rows in (account id, asset id) order, creating the missing ones first.

    The common case (every row exists) is one statement; otherwise the missing rows are
    inserted and the lock is taken again over all of them, still in order.
    """
    ordered = sorted(pairs)
    locked = _lock_balances(ordered)
    if len(locked) == len(ordered):
        return locked
    account_ids = sorted({account_id for account_id, _ in ordered})
    kinds = dict(Account.objects.filter(pk__in=account_ids).values_list("pk", "kind"))
    if len(kinds) != len(account_ids):
        missing = sorted(set(account_ids) - kinds.keys())
        raise LedgerError(f"Unknown ledger account(s): {missing}.")
    _ensure_balance_rows(ordered, kinds)
    return _lock_balances(ordered)


def balances_lock(*, account_ids, asset: Asset) -> dict[int, Decimal]:
    """Lock the balances of these accounts in one asset, in the ledger's lock order; account id -> amount.

    For a service that must decide its legs from current balances (e.g. covering a
    deficit) inside its transaction: the later `ledger_post_many` finds the rows locked.
    """
    locked = _lock_pairs({(account_id, asset.pk) for account_id in account_ids})
    return {account_id: state[1] for (account_id, _), state in locked.items()}


def user_balances_lock(*, user_id: int, asset: Asset) -> dict[int, Decimal]:
    """Lock every existing balance of one user in one asset (wallet, order margin, isolated margins).

    One statement, rows in account-id order: the same order `balances_lock` uses, so it
    cannot deadlock with a matcher batch locking many users' balances. Rows created later
    in the transaction are locked by their creator.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT b.account_id, b.amount
            FROM ledger_balance b JOIN ledger_account a ON a.id = b.account_id
            WHERE a.user_id = %s AND b.asset_id = %s
            ORDER BY b.account_id
            FOR UPDATE OF b
            """,
            [user_id, asset.pk],
        )
        return dict(cursor.fetchall())


def _write_balances(rows: list[tuple[int, Decimal]]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE ledger_balance AS b SET amount = t.amount, updated_at = now()
            FROM unnest(%s::bigint[], %s::numeric[]) AS t(id, amount)
            WHERE b.id = t.id
            """,
            [[row_id for row_id, _ in rows], [amount for _, amount in rows]],
        )


def ledger_post_many(*, postings: Sequence[Posting]) -> list[LedgerTransaction]:
    """Book postings in order; returns one transaction per posting (the earlier one for a repeated key)."""
    if not postings:
        return []
    assets = _resolve_assets(postings)
    normalized = [_normalize(posting, assets) for posting in postings]
    keys = [p.idempotency_key for p in postings if p.idempotency_key]
    if len(keys) != len(set(keys)):
        raise LedgerError("The same idempotency key appears twice in one call.")

    # Its own savepoint: a refused posting leaves the caller's transaction usable.
    with transaction.atomic():
        balances = _lock_pairs({(leg.account_id, leg.asset_id) for legs in normalized for leg in legs})
        # Checked after the locks: a concurrent poster of the same key touches the same
        # balances, so it has either committed (we see its key) or not started.
        booked = dict(
            LedgerTransaction.objects.filter(idempotency_key__in=keys).values_list("idempotency_key", "pk")
        )

        new_txns: list[LedgerTransaction] = []
        entry_rows: list[list[tuple[_NormalLeg, Decimal]]] = []
        for posting, legs in zip(postings, normalized):
            if posting.idempotency_key and posting.idempotency_key in booked:
                continue
            rows = []
            for leg in legs:
                state = balances[(leg.account_id, leg.asset_id)]
                state[1] += leg.amount
                rows.append((leg, state[1]))
            # A transaction is atomic: what must not go negative is each balance after all its legs.
            for key in {(leg.account_id, leg.asset_id) for leg in legs}:
                _, final, may_go_negative = balances[key]
                if final < 0 and not may_go_negative:
                    code = next(a.code for a in assets.values() if a.pk == key[1])
                    raise InsufficientBalance(f"Insufficient balance: account {key[0]} would hold {final} {code}.")
            new_txns.append(
                LedgerTransaction(
                    kind=posting.kind,
                    idempotency_key=posting.idempotency_key,
                    memo=posting.memo[:255],
                    reference=posting.reference,
                    created_by_id=posting.created_by_id,
                )
            )
            entry_rows.append(rows)

        if new_txns:
            try:
                with transaction.atomic(savepoint=bool(keys)):  # only a keyed posting can collide
                    LedgerTransaction.objects.bulk_create(new_txns)
            except IntegrityError as exc:
                raise LedgerError("Duplicate idempotency key (booked concurrently).") from exc
            entries = [
                LedgerEntry(
                    transaction_id=txn.pk,
                    account_id=leg.account_id,
                    asset_id=leg.asset_id,
                    amount=leg.amount,
                    balance_after=after,
                )
                for txn, rows in zip(new_txns, entry_rows)
                for leg, after in rows
            ]
            LedgerEntry.objects.bulk_create(entries)
            _write_balances([(state[0], state[1]) for state in balances.values()])

    by_key = {txn.idempotency_key: txn for txn in new_txns if txn.idempotency_key}
    if booked:
        by_key.update({t.idempotency_key: t for t in LedgerTransaction.objects.filter(pk__in=booked.values())})
    fresh = iter(txn for txn in new_txns)
    result = []
    for posting in postings:
        if posting.idempotency_key and posting.idempotency_key in booked:
            result.append(by_key[posting.idempotency_key])
        else:
            result.append(next(fresh))
    return result


def ledger_post(
    *,
    kind: str,
    legs: Sequence[Leg],
    idempotency_key: str | None = None,
    memo: str = "",
    reference: dict | None = None,
    created_by=None,
) -> LedgerTransaction:
    posting = Posting(
        kind=kind,
        legs=legs,
        idempotency_key=idempotency_key,
        memo=memo,
        reference=reference or {},
        created_by_id=created_by.pk if created_by is not None else None,
    )
    return ledger_post_many(postings=[posting])[0]


# Accounts are never deleted (PROTECT everywhere), so a process may remember them.
_accounts: dict[tuple[str, int | None, int | None], Account] = {}


def account_get_or_create(*, kind: str, user=None, contract=None) -> Account:
    """The account of a kind for a user (and contract), or the system account of a kind."""
    key = (kind, user.pk if user is not None else None, contract.pk if contract is not None else None)
    account = _accounts.get(key)
    if account is None:
        account, _ = Account.objects.get_or_create(kind=kind, user=user, contract=contract)
        if not connection.in_atomic_block:
            _accounts[key] = account  # only what is committed: a rolled-back creation must not stick
        else:
            transaction.on_commit(lambda: _accounts.setdefault(key, account))
    return account


def accounts_forget() -> None:
    """Drop remembered accounts (tests roll back what a process may have remembered)."""
    _accounts.clear()


def accounts_for_users(*, kind: str, user_ids, contract=None) -> dict[int, int]:
    """Account ids of a kind for many users at once (created when missing): user id -> account id."""
    user_ids = sorted(set(user_ids))
    if not user_ids:
        return {}
    rows = Account.objects.filter(kind=kind, contract=contract, user_id__in=user_ids)
    found = dict(rows.values_list("user_id", "pk"))
    missing = [u for u in user_ids if u not in found]
    if missing:
        Account.objects.bulk_create(
            [Account(kind=kind, user_id=u, contract=contract) for u in missing], ignore_conflicts=True
        )
        found = dict(rows.values_list("user_id", "pk"))
    return found


def system_account(kind: str) -> Account:
    return account_get_or_create(kind=kind)


def ledger_transfer(
    *,
    source: Account,
    destination: Account,
    asset: Asset | str,
    amount: Decimal,
    kind: str = TransactionKind.TRANSFER,
    idempotency_key: str | None = None,
    memo: str = "",
    reference: dict | None = None,
    created_by=None,
) -> LedgerTransaction:
    """Move a positive amount from one account to another."""
    amount = _positive(amount)
    return ledger_post(
        kind=kind,
        legs=[Leg(source, asset, -amount), Leg(destination, asset, amount)],
        idempotency_key=idempotency_key,
        memo=memo,
        reference=reference,
        created_by=created_by,
    )


def wallet_adjust(
    *,
    user,
    asset: Asset | str,
    amount: Decimal,
    memo: str,
    created_by=None,
    kind: str = TransactionKind.ADJUSTMENT,
    idempotency_key: str | None = None,
) -> LedgerTransaction:
    """Credit (amount > 0) or debit (amount < 0) a user's wallet against the external account."""
    try:
        amount = to_decimal(amount)
    except (TypeError, ValueError) as exc:
        raise InvalidAmount(f"Invalid amount {amount!r}: {exc}.") from exc
    if amount == 0:
        raise InvalidAmount("The adjustment amount must not be zero.")
    if kind == TransactionKind.ADJUSTMENT and not memo.strip():
        raise LedgerError("A manual adjustment needs a reason (memo).")
    wallet = account_get_or_create(kind=AccountKind.WALLET, user=user)
    external = system_account(AccountKind.EXTERNAL)
    with transaction.atomic():
        posted = ledger_post(
            kind=kind,
            legs=[Leg(wallet, asset, amount), Leg(external, asset, -amount)],
            idempotency_key=idempotency_key,
            memo=memo,
            reference={"user_id": user.pk},
            created_by=created_by,
        )
        # get_or_create: a repeated idempotency key returns the earlier transaction.
        Income.objects.get_or_create(
            transaction=posted, user=user, income_type=IncomeType.TRANSFER,
            defaults={"amount": amount, "asset": _asset(asset), "info": kind, "created_at": posted.created_at},
        )
    return posted


def wallet_deposit(*, user, asset: Asset | str, amount: Decimal, idempotency_key: str | None = None, memo: str = ""):
    return wallet_adjust(
        user=user,
        asset=asset,
        amount=_positive(amount),
        memo=memo or "deposit",
        kind=TransactionKind.DEPOSIT,
        idempotency_key=idempotency_key,
    )


def wallet_withdraw(*, user, asset: Asset | str, amount: Decimal, idempotency_key: str | None = None, memo: str = ""):
    return wallet_adjust(
        user=user,
        asset=asset,
        amount=-_positive(amount),
        memo=memo or "withdrawal",
        kind=TransactionKind.WITHDRAWAL,
        idempotency_key=idempotency_key,
    )


def _positive(amount) -> Decimal:
    try:
        value = to_decimal(amount)
    except (TypeError, ValueError) as exc:
        raise InvalidAmount(f"Invalid amount {amount!r}: {exc}.") from exc
    if value <= 0:
        raise InvalidAmount("The amount must be positive.")
    return value


def _asset(asset: Asset | str) -> Asset:
    if isinstance(asset, Asset):
        return asset
    found = Asset.objects.filter(code=asset).first()
    if found is None:
        raise UnknownAsset(f"Unknown asset {asset!r}.")
    return found
