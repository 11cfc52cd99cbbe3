"""The only writer of balances: posting balanced ledger transactions.

`ledger_post_many` validates every posting in Python (known assets, non-zero amounts
within the asset's precision, legs summing to zero per asset), then hands the legs to
PostgreSQL once (array parameters, or COPY into a temporary table for a large call)
and does the rest set-based: one statement locks the balance rows it touches with
SELECT ... FOR UPDATE in (account id, asset id) order so concurrent posters cannot
deadlock, postings whose idempotency key was already booked are skipped, and one
statement computes every entry's balance_after (a running sum per balance), refuses
the call if a non-negative balance would end a posting below zero, and otherwise
writes the entries and the balances. The cost is a constant number of statements
whatever the number of legs. `ledger_post_staged` books a posting whose legs a SELECT
yields (a funding or delivery posting: one leg per position, computed by PostgreSQL),
with the same rules checked in SQL, so the legs never travel through Python; from
`TABLE_LOCK_FROM` legs it locks the balance table instead of each balance row.
Both run inside the caller's transaction when there is one, so a service that books
several things commits them together.
"""
import json
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Callable, Sequence

from django.db import IntegrityError, connection, transaction

from .errors import InsufficientBalance, InvalidAmount, LedgerError, PrecisionExceeded, Unbalanced, UnknownAsset
from .models import (
    MAY_GO_NEGATIVE_KINDS,
    Account,
    AccountKind,
    Asset,
    Income,
    IncomeType,
    LedgerTransaction,
    TransactionKind,
)
from .money import exponent_for, quantize_amount, to_decimal
from .staging import ARRAYS, COPY_FROM_LEGS, LegRows, Stage, legs_stage

from exchange.pgbulk import array_literal, instances_saved, numbered_unnest, settings_local

_KINDS = frozenset(TransactionKind.values)
_ZERO = Decimal(0)


def bound_cursor():
    """A cursor with server-side parameter binding, for the fixed raw statements of order entry
    and posting: typed parameters (explicit casts where PostgreSQL cannot infer a type), no
    client-side quoting of each value into the SQL text. Where the process allows prepared
    statements (DB_SERVER_SIDE_BINDING: the web), each statement is prepared at its first run
    in a connection and runs on its generic plan (the connection's plan_cache_mode), so
    PostgreSQL neither parses nor plans it again; the ORM's statements are not prepared there
    (see the settings). These statements spell the statuses of partial indexes as literals
    (`exchange.pgbulk.text_literals`): a generic plan cannot match a parameter against an
    index's predicate. (psycopg forgets its prepared statements at a rollback: the next run
    prepares again.) Wrapped like Django's own cursors (execute wrappers, query logging, the
    prometheus counters).
    """
    connection.ensure_connection()
    return connection._prepare_cursor(_bound_cursor_class()(connection.connection))


_BOUND: list = []


def _bound_cursor_class():
    if not _BOUND:
        from django.db.backends.postgresql.base import ServerBindingCursor

        class PreparingCursor(ServerBindingCursor):
            def execute(self, query, params=None, *, prepare=True, **kwargs):
                # Prepared at the first run (psycopg ignores it where the connection disables
                # prepared statements: without DB_SERVER_SIDE_BINDING).
                return super().execute(query, params, prepare=prepare, **kwargs)

        cls = PreparingCursor
        factory = getattr(connection.connection, "cursor_factory", None)
        if factory is not None and factory.__module__.startswith("django_prometheus"):
            from django_prometheus.db.common import ExportingCursorWrapper

            cls = ExportingCursorWrapper(PreparingCursor, connection.alias, connection.vendor)
        _BOUND.append(cls)
    return _BOUND[0]


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


def _resolve_assets(postings: Sequence[Posting]) -> dict[str, Asset]:
    """Assets by code: those passed as instances as they are, codes looked up in one query.

    One pass over the legs that looks at each distinct asset object once (a large
    posting repeats the same instance or code on every leg).
    """
    seen: set[int] = set()
    given: dict[str, Asset] = {}
    codes: set[str] = set()
    for posting in postings:
        for leg in posting.legs:
            asset = leg.asset
            if id(asset) in seen:
                continue
            seen.add(id(asset))
            if isinstance(asset, Asset):
                given[asset.code] = asset
            else:
                codes.add(asset)
    codes -= given.keys()
    found = {**given, **({a.code: a for a in Asset.objects.filter(code__in=codes)} if codes else {})}
    unknown = sorted(codes - found.keys())
    if unknown:
        raise UnknownAsset(f"Unknown asset: {', '.join(unknown)}.")
    return found


def _amount(value) -> Decimal:
    try:
        return to_decimal(value)
    except (TypeError, ValueError) as exc:
        raise InvalidAmount(f"Invalid amount {value!r}: {exc}.") from exc


def _collect(postings: Sequence[Posting], assets: dict[str, Asset]) -> LegRows:
    """Validate every posting and flatten its legs into columns (posting index, account, asset, amount).

    The one per-leg Python loop of a posting, kept to attribute reads and a few Decimal
    operations: a funding or delivery posting has a leg per position.
    """
    rows = LegRows()
    postings_of, account_ids, asset_ids, amounts = rows.posting, rows.account_id, rows.asset_id, rows.amount
    last_asset = object()
    asset = None
    asset_id = unit = None
    for index, posting in enumerate(postings):
        if posting.kind not in _KINDS:
            raise LedgerError(f"Unknown transaction kind {posting.kind!r}.")
        legs = posting.legs
        if len(legs) < 2:
            raise Unbalanced("A ledger transaction needs at least two legs.")
        sums: dict[int, Decimal] = {}
        for leg in legs:
            if leg.asset is not last_asset:
                last_asset = leg.asset
                asset = assets[last_asset if isinstance(last_asset, str) else last_asset.code]
                asset_id, unit = asset.pk, exponent_for(asset.precision)
            amount = leg.amount
            if type(amount) is not Decimal or not amount.is_finite():
                amount = _amount(amount)
            if not amount:
                raise InvalidAmount("A ledger leg amount must not be zero.")
            if amount.quantize(unit, rounding=ROUND_DOWN) != amount:
                raise PrecisionExceeded(
                    f"Amount {amount} has more than {asset.precision} decimal places allowed for {asset.code}."
                )
            account = leg.account
            if type(account) is not int:
                account = account if isinstance(account, int) else account.id
            sums[asset_id] = sums.get(asset_id, _ZERO) + amount
            postings_of.append(index)
            account_ids.append(account)
            asset_ids.append(asset_id)
            amounts.append(amount)
        for asset_id, total in sums.items():
            if total != 0:
                code = next(a.code for a in assets.values() if a.pk == asset_id)
                raise Unbalanced(f"Legs do not sum to zero for {code} (sum {total}).")
    return rows


LOCK_SQL = """
{legs},
pairs AS MATERIALIZED (SELECT DISTINCT account_id, asset_id FROM legs),
locked AS (
    SELECT b.id FROM ledger_balance b JOIN pairs t ON b.account_id = t.account_id AND b.asset_id = t.asset_id
    ORDER BY b.account_id, b.asset_id
    FOR UPDATE OF b
)
SELECT (SELECT count(*) FROM locked), (SELECT count(*) FROM pairs), (SELECT count(*) FROM legs)
"""

UNKNOWN_ACCOUNTS_SQL = """
{legs}
SELECT DISTINCT l.account_id FROM legs l
WHERE NOT EXISTS (SELECT 1 FROM ledger_account a WHERE a.id = l.account_id)
ORDER BY 1
"""

ENSURE_BALANCES_SQL = """
{legs}
INSERT INTO ledger_balance (account_id, asset_id, amount, may_go_negative, updated_at)
SELECT t.account_id, t.asset_id, 0, a.kind = ANY(%s), now()
FROM (SELECT DISTINCT account_id, asset_id FROM legs) t JOIN ledger_account a ON a.id = t.account_id
ORDER BY t.account_id, t.asset_id
ON CONFLICT (account_id, asset_id) DO NOTHING
"""


def _lock(stage) -> tuple[int, int]:
    """Lock the balance rows of the staged legs in (account id, asset id) order, creating the missing ones.

    The common case (every row exists) is one statement; otherwise the missing rows are
    inserted and the lock is taken again over all of them, still in order. Returns
    (distinct balances, legs).
    """
    with connection.cursor() as cursor:
        cursor.execute(LOCK_SQL.format(legs=stage.cte), stage.params)
        locked, pairs, legs = cursor.fetchone()
        if locked == pairs:
            return pairs, legs
        _ensure(stage)
        cursor.execute(LOCK_SQL.format(legs=stage.cte), stage.params)
        return pairs, legs


def _ensure(stage) -> None:
    """Create the missing balance rows of the staged legs (LedgerError for an unknown account)."""
    with connection.cursor() as cursor:
        cursor.execute(UNKNOWN_ACCOUNTS_SQL.format(legs=stage.cte), stage.params)
        missing = [row[0] for row in cursor.fetchall()]
        if missing:
            raise LedgerError(f"Unknown ledger account(s): {missing}.")
        cursor.execute(ENSURE_BALANCES_SQL.format(legs=stage.cte),
                       [*stage.params, [str(kind) for kind in MAY_GO_NEGATIVE_KINDS]])


# Balances after each leg: a running sum per balance in leg order. When every balance
# appears once in the call (a funding or delivery posting) the sum is the leg itself,
# and the window (a sort of every leg) is left out.
RUNNING = """
    b.amount + sum(l.amount) OVER pair AS after,
    lead(l.p) OVER pair IS DISTINCT FROM l.p AS ends_posting,
    lead(l.ord) OVER pair IS NULL AS ends_call"""
ONCE = """
    b.amount + l.amount AS after, true AS ends_posting, true AS ends_call"""
WINDOW = "WINDOW pair AS (PARTITION BY l.account_id, l.asset_id ORDER BY l.ord)"

# The first balance a posting would leave below zero (unless it may go negative), after all
# of that posting's legs: what refuses the posting (both write statements below).
SHORT = """short AS (
    SELECT p, account_id, asset_id, after FROM run
    WHERE ends_posting AND after < 0 AND NOT may_go_negative
    ORDER BY p, account_id, asset_id LIMIT 1
),"""

WRITE_SQL = """
{legs},
txn AS (SELECT * FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(id, p1)),
run AS MATERIALIZED (
    SELECT l.ord, l.p, l.account_id, l.asset_id, l.amount, t.id AS transaction_id, b.id AS balance_id,
           b.may_go_negative, {after}
    FROM legs l
    JOIN txn t ON t.p1 = l.p + 1 AND t.id IS NOT NULL
    JOIN ledger_balance b ON b.account_id = l.account_id AND b.asset_id = l.asset_id
    {window}
),
{short}
entries AS (
    INSERT INTO ledger_ledgerentry (transaction_id, account_id, asset_id, amount, balance_after)
    SELECT transaction_id, account_id, asset_id, amount, after FROM run
    WHERE NOT EXISTS (SELECT FROM short)
    ORDER BY ord
),
balances AS (
    UPDATE ledger_balance b SET amount = r.after, updated_at = now()
    FROM run r
    WHERE r.ends_call AND b.id = r.balance_id AND NOT EXISTS (SELECT FROM short)
)
SELECT p, account_id, asset_id, after FROM short
"""


# A large call in which every balance appears once (a funding or delivery posting): the
# balance update itself yields each entry's balance_after (RETURNING), so the legs meet
# the balances in one join and nothing is materialised. A balance that must not go
# negative is refused by its CHECK; WRITE_SQL then names it, writing nothing.
MOVE_SQL = """
{legs},
txn AS (SELECT * FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(id, p1)),
moved AS (
    UPDATE ledger_balance b SET amount = b.amount + l.amount, updated_at = now()
    FROM legs l JOIN txn t ON t.p1 = l.p + 1 AND t.id IS NOT NULL
    WHERE b.account_id = l.account_id AND b.asset_id = l.asset_id
    RETURNING l.ord, t.id AS transaction_id, l.account_id, l.asset_id, l.amount, b.amount AS after
)
INSERT INTO ledger_ledgerentry (transaction_id, account_id, asset_id, amount, balance_after)
SELECT transaction_id, account_id, asset_id, amount, after FROM moved ORDER BY ord
"""
NON_NEGATIVE = "balance_non_negative_unless_allowed"
UNBALANCED = "does not balance for asset"  # the entries' statement trigger (migration 0004)


def _write(stage, *, txn_ids: list[int | None], once: bool, assets: dict[str, Asset]) -> None:
    """Entries and balances of the new postings in one statement, or InsufficientBalance and nothing written.

    A transaction is atomic: what must not go negative is each balance after all the
    legs of a posting (postings in order, each seeing the ones before it).
    """
    if once and stage.copied:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(MOVE_SQL.format(legs=stage.cte), [*stage.params, txn_ids])
            return
        except IntegrityError as exc:
            if NON_NEGATIVE not in str(exc):
                raise
    sql = WRITE_SQL.format(legs=stage.cte, after=ONCE if once else RUNNING, window="" if once else WINDOW,
                           short=SHORT)
    with connection.cursor() as cursor:
        cursor.execute(sql, [*stage.params, txn_ids])
        short = cursor.fetchone()
    if short is not None:
        _, account_id, asset_id, after = short
        asset = next(a for a in assets.values() if a.pk == asset_id)
        after = quantize_amount(after, asset.precision)
        raise InsufficientBalance(f"Insufficient balance: account {account_id} would hold {after:f} {asset.code}.")


# Postings without an idempotency key (order margin holds or releases, a matcher batch, a
# deposit): the lock, the transaction rows and the write in one statement instead of three.
# The balance rows are locked in (account id, asset id) order as by LOCK_SQL, and the amounts
# the postings add to are read from that lock (a locked row is read at its latest version);
# the transaction ids are drawn in posting order (nextval over the rows sorted by position);
# nothing is written when a balance row is missing (the caller then creates them and takes
# the general path) or when a balance would end a posting below zero (`short`, as WRITE_SQL).
KEYLESS_SQL = """
{legs},
pairs AS MATERIALIZED (SELECT DISTINCT account_id, asset_id FROM legs),
locked AS MATERIALIZED (
    SELECT b.id, b.account_id, b.asset_id, b.amount, b.may_go_negative
    FROM ledger_balance b JOIN pairs t ON b.account_id = t.account_id AND b.asset_id = t.asset_id
    ORDER BY b.account_id, b.asset_id
    FOR UPDATE OF b
),
complete AS MATERIALIZED (SELECT (SELECT count(*) FROM locked) = (SELECT count(*) FROM pairs) AS ok),
run AS MATERIALIZED (
    SELECT l.ord, l.p, l.account_id, l.asset_id, l.amount, b.id AS balance_id, b.may_go_negative, {after}
    FROM legs l
    JOIN locked b ON b.account_id = l.account_id AND b.asset_id = l.asset_id
    WHERE (SELECT ok FROM complete)
    {window}
),
{short}
txn AS MATERIALIZED ({txns}),
inserted AS (
    INSERT INTO ledger_ledgertransaction (id, kind, idempotency_key, memo, reference, created_by_id, created_at)
    SELECT id, kind, idempotency_key, memo, reference, created_by_id, created_at FROM txn
),
entries AS (
    INSERT INTO ledger_ledgerentry (transaction_id, account_id, asset_id, amount, balance_after)
    SELECT t.id, r.account_id, r.asset_id, r.amount, r.after FROM run r JOIN txn t ON t.n = r.p + 1
    ORDER BY r.ord
),
balances AS (
    UPDATE ledger_balance b SET amount = r.after, updated_at = now()
    FROM run r
    WHERE r.ends_call AND b.id = r.balance_id AND EXISTS (SELECT FROM txn)
)
SELECT c.ok, ARRAY(SELECT id FROM txn ORDER BY n), s.account_id, s.asset_id, s.after
FROM complete c LEFT JOIN short s ON true
"""
# A new transaction's columns, as `_txn_values` gives them and the statements below cast them.
_TXN_COLUMNS = ("kind", "idempotency_key", "memo", "reference", "created_by_id", "created_at")
_TXN_CASTS = ("text", "text", "text", "jsonb", "bigint", "timestamptz")
_KEYLESS_SQL = {once: KEYLESS_SQL.format(
    legs=ARRAYS, after=ONCE if once else RUNNING, window="" if once else WINDOW, short=SHORT,
    txns=numbered_unnest(LedgerTransaction._meta.db_table, _TXN_CASTS, _TXN_COLUMNS,
                         where="(SELECT ok FROM complete) AND NOT EXISTS (SELECT FROM short)"))
    for once in (True, False)}
_REFERENCE = LedgerTransaction._meta.get_field("reference")
_CREATED_AT = LedgerTransaction._meta.get_field("created_at")


def _transactions_new(postings: Sequence[Posting]) -> list[LedgerTransaction]:
    """The unsaved transactions of these postings."""
    return [LedgerTransaction(kind=posting.kind, idempotency_key=posting.idempotency_key, memo=posting.memo[:255],
                              reference=posting.reference, created_by_id=posting.created_by_id)
            for posting in postings]


def _txn_literals(txns: Sequence[LedgerTransaction]) -> list[str]:
    """New transactions' columns (`_TXN_COLUMNS`) as array literals."""
    return [array_literal(column) for column in zip(*(_txn_values(txn) for txn in txns))]


def _txn_values(txn: LedgerTransaction) -> tuple:
    """A new transaction's column values (kind, idempotency key, memo, reference, creator, created_at)
    as the fields would prepare them: memo and creator are already a str and an id or None; the
    reference as the JSON text psycopg's Jsonb adapter would send; created_at stamped on the
    instance by its auto_now_add (an aware timezone.now())."""
    reference = json.dumps(_REFERENCE.get_prep_value(txn.reference), cls=_REFERENCE.encoder)
    return (str(txn.kind), txn.idempotency_key, txn.memo, reference, txn.created_by_id,
            _CREATED_AT.pre_save(txn, add=True))


_TXNS_INSERT_SQL = f"""
WITH t AS MATERIALIZED ({numbered_unnest(LedgerTransaction._meta.db_table, _TXN_CASTS, _TXN_COLUMNS)}),
inserted AS (
    INSERT INTO {LedgerTransaction._meta.db_table} (id, {', '.join(_TXN_COLUMNS)})
    SELECT id, {', '.join(_TXN_COLUMNS)} FROM t
)
SELECT id FROM t ORDER BY n
"""


def _transactions_insert(txns: list[LedgerTransaction]) -> None:
    """INSERT new transactions in one statement, setting their pks (what `bulk_create` writes,
    without its per-object query compilation: a posting call of a matcher batch or of a group
    of orders makes a transaction per order)."""
    with bound_cursor() as cursor:
        cursor.execute(_TXNS_INSERT_SQL, _txn_literals(txns))
        instances_saved(txns, [row[0] for row in cursor.fetchall()])


def _post_keyless(postings: Sequence[Posting], rows: LegRows,
                  assets: dict[str, Asset]) -> list[LedgerTransaction] | None:
    """Book keyless postings in one statement (`KEYLESS_SQL`); None (nothing written) when a balance row is missing."""
    txns = _transactions_new(postings)
    once = len(set(zip(rows.account_id, rows.asset_id))) == len(rows.account_id)
    with bound_cursor() as cursor:
        cursor.execute(_KEYLESS_SQL[once], [*rows.literals(), *_txn_literals(txns)])
        complete, txn_ids, account_id, asset_id, after = cursor.fetchone()
    if not complete:
        return None
    if not txn_ids:
        asset = next(a for a in assets.values() if a.pk == asset_id)
        after = quantize_amount(after, asset.precision)
        raise InsufficientBalance(f"Insufficient balance: account {account_id} would hold {after:f} {asset.code}.")
    instances_saved(txns, txn_ids)
    return txns


def ledger_post_many(*, postings: Sequence[Posting], savepoint: bool = True) -> list[LedgerTransaction]:
    """Book postings in order; returns one transaction per posting (the earlier one for a repeated key).

    `savepoint=False`: for a caller whose transaction ends anyway when the posting is refused
    (order entry's margin hold): saves the SAVEPOINT and RELEASE round trips, and a refusal
    leaves the caller's transaction unusable until it rolls back.
    """
    if not postings:
        return []
    assets = _resolve_assets(postings)
    rows = _collect(postings, assets)
    keys = [p.idempotency_key for p in postings if p.idempotency_key]
    if len(keys) != len(set(keys)):
        raise LedgerError("The same idempotency key appears twice in one call.")

    if not keys and len(rows.amount) < COPY_FROM_LEGS:
        with transaction.atomic(savepoint=savepoint):
            txns = _post_keyless(postings, rows, assets)
        if txns is not None:
            return txns
    # Its own savepoint: a refused posting leaves the caller's transaction usable.
    with transaction.atomic(savepoint=savepoint), legs_stage(rows) as stage:
        pairs, legs = _lock(stage)
        # Checked after the locks: a concurrent poster of the same key touches the same
        # balances, so it has either committed (we see its key) or not started.
        booked = dict(
            LedgerTransaction.objects.filter(idempotency_key__in=keys).values_list("idempotency_key", "pk")
        )
        new_txns = _transactions_new(
            [posting for posting in postings if not (posting.idempotency_key and posting.idempotency_key in booked)])
        if new_txns:
            try:
                with transaction.atomic(savepoint=bool(keys)):  # only a keyed posting can collide
                    _transactions_insert(new_txns)
            except IntegrityError as exc:
                raise LedgerError("Duplicate idempotency key (booked concurrently).") from exc
            fresh = iter(new_txns)
            txn_ids = [None if p.idempotency_key and p.idempotency_key in booked else next(fresh).pk for p in postings]
            _write(stage, txn_ids=txn_ids, once=pairs == legs, assets=assets)

    by_key = {txn.idempotency_key: txn for txn in new_txns if txn.idempotency_key}
    if booked:
        by_key.update({t.idempotency_key: t for t in LedgerTransaction.objects.filter(pk__in=booked.values())})
    fresh = iter(new_txns)
    result = []
    for posting in postings:
        if posting.idempotency_key and posting.idempotency_key in booked:
            result.append(by_key[posting.idempotency_key])
        else:
            result.append(next(fresh))
    return result


# -- postings whose legs PostgreSQL computes (funding, delivery: a leg per position) ---------------

# From this many legs a staged posting locks the balance table (EXCLUSIVE: plain reads go
# on, every other balance writer waits) instead of each balance row: the row locks of a
# million balances cost as much as writing them, and the posting then updates the rows
# in whatever order its join yields, which no concurrent writer can interleave with.
TABLE_LOCK_FROM = 20_000
# The hash joins and sorts of a large posting stay in memory; no JIT (compiling a plan
# costs ~0.3 s and gains nothing on statements that mostly write rows).
STAGED_WORK_MEM = "256MB"
STAGED_SETTINGS_SQL = "SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)"

STAGED_LEGS = "WITH legs AS NOT MATERIALIZED (SELECT 0 AS p, x.account_id, x.asset_id, x.amount, 0::bigint AS ord FROM ({sql}) x)"
# A concurrent posting's legs, computed once: its move meets balances other transactions are
# updating, and PostgreSQL rechecks such a row against the leg it joined (EvalPlanQual). A leg
# from a UNION ALL inlined into the join fails that recheck, and the balance would be skipped
# (seen: the shared clearing account's); a materialized leg passes it.
STAGED_LEGS_MATERIALIZED = STAGED_LEGS.replace("NOT MATERIALIZED", "MATERIALIZED")

# Per asset: legs, their sum, the zero ones, whether one has more places than the asset allows,
# and the range of account ids of the legs outside the given (shared) accounts.
STAGED_CHECK_SQL = """
{legs}
SELECT g.asset_id, a.code, g.legs, g.total, g.zeros, g.places > a.precision, g.low, g.high
FROM (SELECT asset_id, count(*) AS legs, sum(amount) AS total, count(*) FILTER (WHERE amount = 0) AS zeros,
             max(min_scale(amount)) AS places, min(account_id) FILTER (WHERE account_id <> ALL(%s::bigint[])) AS low,
             max(account_id) FILTER (WHERE account_id <> ALL(%s::bigint[])) AS high
      FROM legs GROUP BY asset_id) g
LEFT JOIN ledger_asset a ON a.id = g.asset_id
ORDER BY g.asset_id
"""

# Every balance appears once in a staged posting: the update yields each entry's balance_after.
# A large one (`TABLE_LOCK_FROM` legs and more) meets the balances in a merge join, hash joins
# off for this statement (STAGED_MERGE): the legs sorted in memory, the balances read
# through their (account, asset) index, so each balance page is read once and updated at
# once, in index order, and the entries come out in the order of their own index. A hash
# join would first read and hash the whole balance table (which then no longer fits the
# buffer cache) and update it in a second pass: ~20% of the statement's time at a million
# legs (bench/funding.py).
STAGED_MERGE = {"enable_hashjoin": "off"}
# A concurrent staged posting (one of several booked in parallel) updates its balances in the
# order its legs come, one index probe each, so that it takes each row lock in the order its
# caller chose: the per-user legs in (account, asset) order, as every other poster locks
# them, and the shared system accounts last, so that they stay locked only until its commit.
STAGED_IN_ORDER = {"enable_hashjoin": "off", "enable_mergejoin": "off"}
ENTRIES_FROM_BALANCES = "ledger.entries_from_balances"  # read by the entries' trigger (migration 0011)
# Read by the income lines' trigger (migration 0011): the statement's users come from positions
# (whose foreign key guarantees them), so it need not probe auth_user once per line.
INCOME_USERS_FROM_POSITIONS = "ledger.income_users_from_positions"
STAGED_MOVE_SQL = """
{legs},
moved AS (
    UPDATE ledger_balance b SET amount = b.amount + l.amount, updated_at = now()
    FROM legs l
    WHERE b.account_id = l.account_id AND b.asset_id = l.asset_id
    RETURNING b.account_id, b.asset_id, l.amount, b.amount AS after
)
INSERT INTO ledger_ledgerentry (transaction_id, account_id, asset_id, amount, balance_after)
SELECT %s, account_id, asset_id, amount, after FROM moved
"""

# A concurrent posting's move when its caller names the shared accounts: the other legs (its
# positions' accounts, in account order) meet their balances first, then the shared accounts'
# legs, so that those rows stay locked only from there to the commit (the entries are written in
# that order: Append reads `moved` to the end first). When the others' accounts are dense in
# their range of ids (from STAGED_CHECK_SQL; at most `STAGED_MERGE_SPAN` ids per leg: a settlement
# chunk's users' wallets) they meet their balances in one merge over that range (30 ms less than
# a probe per leg for a chunk of 50,000); otherwise (accounts opened years apart, where the merge
# would read every balance in between: 0.33 s for 50,000 legs spread over 700,000 balances, which
# the planner does not see coming) one probe per leg, in the legs' order.
STAGED_MERGE_SPAN = 4
STAGED_MOVE_SHARED_LAST_SQL = """
{legs},
moved AS (
    UPDATE ledger_balance b SET amount = b.amount + l.amount, updated_at = now()
    FROM legs l
    WHERE b.account_id = l.account_id AND b.asset_id = l.asset_id AND l.account_id <> ALL(%s::bigint[])
      AND b.account_id BETWEEN %s AND %s
    RETURNING b.account_id, b.asset_id, l.amount, b.amount AS after
), moved_shared AS (
    UPDATE ledger_balance b SET amount = b.amount + l.amount, updated_at = now()
    FROM legs l
    WHERE b.account_id = l.account_id AND b.asset_id = l.asset_id AND l.account_id = ANY(%s::bigint[])
    RETURNING b.account_id, b.asset_id, l.amount, b.amount AS after
)
INSERT INTO ledger_ledgerentry (transaction_id, account_id, asset_id, amount, balance_after)
SELECT %s, account_id, asset_id, amount, after FROM moved
UNION ALL
SELECT %s, account_id, asset_id, amount, after FROM moved_shared
"""

STAGED_TWICE_SQL = """
{legs}
SELECT account_id, asset_id FROM legs GROUP BY account_id, asset_id HAVING count(*) > 1 ORDER BY 1, 2 LIMIT 1
"""

STAGED_SHORT_SQL = """
{legs}
SELECT l.account_id, l.asset_id, b.amount + l.amount
FROM legs l JOIN ledger_balance b ON b.account_id = l.account_id AND b.asset_id = l.asset_id
WHERE b.amount + l.amount < 0 AND NOT b.may_go_negative
ORDER BY l.account_id, l.asset_id LIMIT 1
"""


class _Short(Exception):
    """A staged move updated fewer balances than there are legs (rolled back with its savepoint)."""


def balances_lock_for(*, legs: int) -> bool:
    """Lock the balance table (`balances_lock_all`) when a staged posting of this many legs
    will; returns whether it did. For a caller that reads balances before posting."""
    if legs < TABLE_LOCK_FROM:
        return False
    balances_lock_all()
    return True


def balances_lock_all() -> None:
    """Lock the whole balance table against other writers until the transaction ends (readers go on).

    For a service about to post one leg per position on a large share of all balances
    (`TABLE_LOCK_FROM` legs and more) that must first read some of them (a deficit
    cover): every other poster locks its rows after this, never before it, so no
    deadlock is possible. Taken before any balance row lock of the transaction.
    """
    with connection.cursor() as cursor:
        cursor.execute("LOCK TABLE ledger_balance IN EXCLUSIVE MODE")


def ledger_post_staged(*, posting: Posting, legs_sql: str, params: Sequence = (), concurrent: bool = False,
                       shared: Sequence[int] = (),
                       before_move: Callable[[int], None] | None = None) -> LedgerTransaction | None:
    """Book one posting whose legs are the rows (account_id, asset_id, amount) of a SELECT.

    For a posting of a leg per position that PostgreSQL computes itself (funding,
    delivery): the legs never travel through Python. The SELECT must yield the same
    rows each time it runs within the call (read a temporary table of the caller's) and
    each (account, asset) at most once. The rules are those of `ledger_post_many`, checked
    in SQL: known assets, non-zero amounts within the asset's precision, at least two legs
    summing to zero per asset; a balance that must not go negative refuses the posting
    (InsufficientBalance, nothing written); a repeated idempotency key returns the earlier
    transaction; no legs at all book nothing (None). `posting.legs` is not read. From `TABLE_LOCK_FROM` legs the balance table
    is locked (`balances_lock_all`), below it the balance rows in the ledger's order.

    `concurrent`: one of several large postings booked in parallel transactions (the chunks
    of a settlement). No table lock: each balance row is locked as it is updated, in the
    order of the SELECT's rows (`STAGED_IN_ORDER`), which must be the per-user legs in
    (account, asset) order and then the system accounts the parallel postings share. Naming
    those (`shared`, account ids) moves them after all the others, which meet their balances
    in one merge when their accounts are dense (`STAGED_MOVE_SHARED_LAST_SQL`: the same order
    of row locks).
    `before_move(transaction id)` runs once the transaction row exists and before any
    balance moves (lines that name the transaction); it is rolled back with a refused posting.
    """
    if posting.kind not in _KINDS:
        raise LedgerError(f"Unknown transaction kind {posting.kind!r}.")
    legs = (STAGED_LEGS_MATERIALIZED if concurrent else STAGED_LEGS).format(sql=legs_sql)
    params = list(params)
    with transaction.atomic(), connection.cursor() as cursor:  # a refused posting rolls back to here
        cursor.execute(STAGED_SETTINGS_SQL, [STAGED_WORK_MEM])  # for the rest of the transaction
        shared = list(shared) if concurrent else []
        cursor.execute(STAGED_CHECK_SQL.format(legs=legs), [*params, shared, shared])
        rows = cursor.fetchall()
        count = _staged_check(rows)
        if not count:
            return None
        stage = Stage(legs, params, copied=True)
        if not concurrent and not balances_lock_for(legs=count):
            _lock(stage)
        key = posting.idempotency_key
        booked = LedgerTransaction.objects.filter(idempotency_key=key).first() if key else None
        if booked is not None:
            return booked
        try:
            with transaction.atomic(savepoint=bool(key)):  # only a keyed posting can collide
                txn = LedgerTransaction.objects.create(
                    kind=posting.kind, idempotency_key=key, memo=posting.memo[:255], reference=posting.reference,
                    created_by_id=posting.created_by_id,
                )
        except IntegrityError as exc:
            raise LedgerError("Duplicate idempotency key (booked concurrently).") from exc
        if before_move is not None:
            before_move(txn.pk)
        if shared:
            low = min((row[6] for row in rows if row[6] is not None), default=None)
            high = max((row[7] for row in rows if row[7] is not None), default=None)
            dense = low is not None and high - low < STAGED_MERGE_SPAN * max(1, count - len(shared))
            move = (STAGED_MOVE_SHARED_LAST_SQL.format(legs=stage.cte),
                    [*stage.params, shared, low, high, shared, txn.pk, txn.pk],
                    STAGED_MERGE if dense else STAGED_IN_ORDER)
        else:
            plan = STAGED_IN_ORDER if concurrent else STAGED_MERGE if count >= TABLE_LOCK_FROM else {}
            move = (STAGED_MOVE_SQL.format(legs=stage.cte), [*stage.params, txn.pk], plan)
        try:
            _staged_move(cursor, stage, count, *move)
        except _Short:
            _ensure(stage)  # the table or the rows are ours, or a concurrent insert of one is a no-op
            try:
                _staged_move(cursor, stage, count, *move)
            except _Short:
                raise LedgerError("A staged posting's legs changed between its statements.") from None
    return txn


def _staged_check(rows) -> int:
    """The number of legs, after the ledger's rules (per asset: known, non-zero, precision, zero sum)."""
    count = 0
    for asset_id, code, legs, total, zeros, too_precise, _, _ in rows:
        if code is None:
            raise UnknownAsset(f"Unknown asset id {asset_id}.")
        if zeros:
            raise InvalidAmount("A ledger leg amount must not be zero.")
        if too_precise:
            raise PrecisionExceeded(f"An amount has more decimal places than {code} allows.")
        if total != 0:
            raise Unbalanced(f"Legs do not sum to zero for {code} (sum {total}).")
        count += legs
    return count  # one leg alone cannot sum to zero


def _staged_move(cursor, stage: Stage, count: int, sql: str, params: list, plan: dict[str, str]) -> None:
    """Balances and entries in one statement (`sql`, a STAGED_MOVE of `stage`); _Short when a
    balance row is missing or a balance repeats."""
    try:
        with transaction.atomic():  # its rollback also restores the settings
            # Its entries come from the balances it updates: their trigger need not probe for
            # each one's balance row (ledger migration 0011), for this statement only.
            settings = {ENTRIES_FROM_BALANCES: "on", **plan}
            with settings_local(cursor, **settings):
                cursor.execute(sql, params)
                moved = cursor.rowcount
            if moved != count:
                raise _Short
    except (IntegrityError, _Short) as exc:
        # A balance updated twice keeps one of its legs: the entries then miss the other
        # (refused by their trigger), or that leg alone takes the balance below zero.
        cursor.execute(STAGED_TWICE_SQL.format(legs=stage.cte), stage.params)
        twice = cursor.fetchone()
        if twice is not None:
            raise LedgerError(f"A staged posting has two legs on account {twice[0]} asset {twice[1]}.") from None
        if isinstance(exc, _Short) or UNBALANCED in str(exc):
            # The legs sum to zero (checked), so the entries do not: a leg found no balance row
            # (the entries' trigger refuses the statement before its row count can be read).
            raise _Short from None
        if NON_NEGATIVE not in str(exc):
            raise
        cursor.execute(STAGED_SHORT_SQL.format(legs=stage.cte), stage.params)
        account_id, asset_id, after = cursor.fetchone()
        asset = Asset.objects.get(pk=asset_id)
        after = quantize_amount(after, asset.precision)
        raise InsufficientBalance(f"Insufficient balance: account {account_id} would hold {after:f} {asset.code}.")


SHORT_SQL = """
{legs}
SELECT b.account_id, b.amount
FROM ledger_balance b
JOIN (SELECT account_id, asset_id, sum(amount) AS delta FROM legs GROUP BY account_id, asset_id) d
  ON b.account_id = d.account_id AND b.asset_id = d.asset_id
{where}
"""


def _pairs(account_ids, asset: Asset, amounts=None) -> LegRows:
    rows = LegRows()
    rows.account_id = list(account_ids)
    rows.posting = [0] * len(rows.account_id)
    rows.asset_id = [asset.pk] * len(rows.account_id)
    rows.amount = list(amounts) if amounts is not None else [_ZERO] * len(rows.account_id)
    return rows


def balances_lock(*, account_ids, asset: Asset) -> dict[int, Decimal]:
    """Lock the balances of these accounts in one asset, in the ledger's lock order; account id -> amount.

    For a service that must decide its legs from current balances (e.g. covering a
    deficit) inside its transaction: the later `ledger_post_many` finds the rows locked.
    """
    rows = _pairs(set(account_ids), asset)
    with legs_stage(rows) as stage:
        _lock(stage)
        with connection.cursor() as cursor:
            cursor.execute(SHORT_SQL.format(legs=stage.cte, where=""), stage.params)
            return dict(cursor.fetchall())


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
            FROM ledger_balance b
            WHERE b.account_id = ANY(ARRAY(SELECT a.id FROM ledger_account a WHERE a.user_id = %s))
              AND b.asset_id = %s
            ORDER BY b.account_id
            FOR UPDATE OF b
            """,
            [user_id, asset.pk],
        )
        return dict(cursor.fetchall())


def ledger_post(
    *,
    kind: str,
    legs: Sequence[Leg],
    idempotency_key: str | None = None,
    memo: str = "",
    reference: dict | None = None,
    created_by=None,
    savepoint: bool = True,
) -> LedgerTransaction:
    posting = Posting(
        kind=kind,
        legs=legs,
        idempotency_key=idempotency_key,
        memo=memo,
        reference=reference or {},
        created_by_id=created_by.pk if created_by is not None else None,
    )
    return ledger_post_many(postings=[posting], savepoint=savepoint)[0]


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
    savepoint: bool = True,
) -> LedgerTransaction:
    """Move a positive amount from one account to another (`savepoint`: see `ledger_post_many`)."""
    amount = _positive(amount)
    return ledger_post(
        kind=kind,
        legs=[Leg(source, asset, -amount), Leg(destination, asset, amount)],
        idempotency_key=idempotency_key,
        memo=memo,
        reference=reference,
        created_by=created_by,
        savepoint=savepoint,
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
        # get_or_create: a repeated idempotency key returns the earlier transaction. The line's time
        # is its transaction's, so the lookup goes through income_user_time (income lines have no
        # index on their transaction: a scan of every line would grow with the table).
        Income.objects.get_or_create(
            transaction=posted, user=user, income_type=IncomeType.TRANSFER, created_at=posted.created_at,
            defaults={"amount": amount, "asset": _asset(asset), "info": kind},
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
