"""Delivery contracts: the lifecycle on the scheduler's clock, the roll, notices and cash settlement.

`delivery_advance(now=)` is the beat job (every minute; idempotent, so it also catches up
after downtime). It first lists missing quarterlies (`delivery_roll`), then walks every
delivery contract whose time has come through its lifecycle, one recorded step at a time
(`apps.contracts.lifecycle`):

    PENDING ─onboard─▶ TRADING ─T−30 min─▶ CLOSE_ONLY ─T─▶ SETTLING ─settled─▶ SETTLED

From T−24 h every holder gets one `DeliveryNotice` (user data stream event, and an email
when `DELIVERY_NOTICE_EMAIL` is on). A HALTED contract is left alone until ops resume it.

Settlement (`delivery_settle`) is idempotent per contract (one `DeliverySettlement` row):
1. the price: `SettlementPriceCalculator` over the `PriceMinute` venue prices of the hour
   before delivery (window = the contract's `settlement_window_minutes`), weighted by the
   contract's index constituents; stored with its full audit in its own transaction. No
   valid minute → NO_PRICE, a CRITICAL alert, and the contract stays SETTLING (retried
   each run: late minute data or fixed constituents let it settle; a price is never made up);
2. the money, in ONE durable transaction under the contract's row lock (which waits for a
   matcher batch in flight; the batch reads the status FOR SHARE): pending journal
   commands are closed, every open order EXPIRED and its hold released, every position
   closed at the settlement price — realized PnL against PNL_CLEARING, the delivery fee
   to FEE_INCOME, isolated margin back to the wallet — as one ledger posting keyed
   `delivery:<SYMBOL>`; losses a wallet cannot pay are covered by the insurance fund, then
   bad debt (`deficits_cover`, as for fills; an isolated position's loss stops at its
   isolated margin). Set-based: every position's PnL and fee are computed in SQL into the
   temporary table `delivery_rows` (in user order: what is written from it follows the
   indexes of the lines and entries), from which the posting's legs (`ledger_post_staged`),
   the income rows (DELIVERED_SETTELMENT, COMMISSION) and the closed positions are written
   with one statement each; the contract becomes SETTLED in the same transaction. A crash
   anywhere rolls all of it back; the next run starts it again;
3. more than `DELIVERY_CHUNK_POSITIONS` positions: that transaction is the plan. It does all
   of the above but the rows: one parallel aggregate counts the positions and their
   quantities per bucket of user ids, `delivery_rows` holds the isolated positions only
   (their covers are decided here), and the buckets are cut into `DeliveryChunk`s (ranges
   of users, with their count, quantity and isolated covers); its posting moves the covers
   into DELIVERY_CLEARING; the run is SETTLING. Each chunk is then one transaction
   (`delivery_chunks_book`, `DELIVERY_SETTLE_WORKERS` at a time, shared with any other
   runner): its rows are computed and checked against the plan (nothing changes a position
   of a SETTLING contract), its posting (key `delivery:<SYMBOL>:<chunk>`) pays its positions'
   results (PnL − fee, covers) out of DELIVERY_CLEARING to their accounts, locking each
   balance as it moves it (DELIVERY_CLEARING last: the one row the chunks share, which
   nothing else moves), a cross wallet that cannot pay is covered then (`_cover_short`), its
   income lines are written and its positions closed. Once all are booked, one posting (key
   `delivery:<SYMBOL>:results`) settles DELIVERY_CLEARING against PNL_CLEARING (Σ PnL) and
   FEE_INCOME (Σ fees), the run is DONE and the contract SETTLED. A crash keeps the plan and
   the chunks booked; the next run books the rest. (The plan sums no PnL or fee: exact and
   rounded per position, that is most of a plan's time; each chunk's rows have them anyway.)
"""
from __future__ import annotations

import logging
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from apps.contracts.calendar import DELIVERY_TIME_OF_DAY, delivery_symbol, quarterly_expiries_after
from apps.contracts.lifecycle import contract_status_set
from apps.contracts.models import Contract, ContractStatus, ContractType, MarginTier
from apps.ledger.models import AccountKind, Income, IncomeType, TransactionKind
from apps.ledger.errors import InsufficientBalance
from apps.ledger.services import (
    INCOME_USERS_FROM_POSITIONS,
    STAGED_IN_ORDER,
    STAGED_SETTINGS_SQL,
    STAGED_WORK_MEM,
    Leg,
    Posting,
    accounts_for_users,
    balances_lock,
    balances_lock_all,
    balances_lock_for,
    ledger_post,
    ledger_post_staged,
    system_account,
)
from apps.marketdata.engine.quotes import to_ms
from apps.marketdata.engine.settlement_price import SettlementPriceCalculator, SettlementStatus
from apps.marketdata.models import IndexConstituent
from apps.marketdata.selectors import constituents_of, price_settlement_quotes
from apps.marketdata.services import constituents_ensure_default
from apps.positions.booking import deficits_cover, wallets_backing
from apps.trading.models import OPEN_STATUSES
from exchange.errors import ErrorCode, ExchangeError
from exchange.pgbulk import PARALLEL_CTAS, settings_local

from . import formulas
from .chunks import INCOME_TURN, chunks_book
from .models import DeliveryChunk, DeliveryNotice, DeliverySettlement, DeliveryStatus

logger = logging.getLogger(__name__)
S = ContractStatus
NOTICE_BEFORE = timedelta(hours=24)
CLOSE_ONLY_BEFORE = timedelta(minutes=30)
ZERO = Decimal(0)


class DeliveryError(ExchangeError):
    code = ErrorCode.INVALID_PARAMETER


def idempotency_key(contract: Contract) -> str:
    return f"delivery:{contract.symbol}"


# -- the scheduler -------------------------------------------------------------------------


def delivery_advance(*, now: datetime | None = None) -> list[str]:
    """List missing quarterlies, then move every delivery contract on; returns what happened."""
    now = now or timezone.now()
    try:
        done = [f"listed {c.symbol}" for c in delivery_roll(now=now)]
    except Exception as exc:  # the contracts already listed still move on
        logger.exception("delivery roll failed")
        _alert("job_failure:delivery:roll", "CRITICAL", f"Listing the next quarterly contracts failed: {exc}", {})
        done = []
    contracts = Contract.objects.filter(contract_type=ContractType.DELIVERY).exclude(
        status__in=(S.SETTLED, S.HALTED)).select_related("settle_asset").order_by("delivery_time", "symbol")
    for contract in contracts:
        try:
            done.extend(f"{contract.symbol}: {step}" for step in delivery_advance_one(contract=contract, now=now))
        except Exception as exc:
            logger.exception("delivery lifecycle of %s failed", contract.symbol)
            _alert(f"job_failure:delivery:{contract.symbol}", "CRITICAL",
                   f"Delivery job for {contract.symbol} failed: {exc}", {"symbol": contract.symbol})
    return done


def delivery_advance_one(*, contract: Contract, now: datetime, requested_by=None) -> list[str]:
    """Every step of one contract's lifecycle that is due at `now`, in order."""
    if contract.contract_type != ContractType.DELIVERY:
        raise DeliveryError(f"{contract.symbol} is not a delivery contract.")
    steps: list[str] = []
    due = contract.delivery_time
    onboard = contract.onboard_time or contract.created_at or now

    def move(to_status: str, at: datetime, reason: str, expect: tuple[str, ...]) -> None:
        if contract_status_set(contract=contract, to_status=to_status, at=min(at, now), reason=reason,
                               actor=requested_by, expect=expect):
            steps.append(to_status)

    if contract.status == S.PENDING and now >= onboard:
        move(S.TRADING, onboard, "onboard time reached", (S.PENDING,))
    if contract.status in (S.TRADING, S.CLOSE_ONLY) and now >= due - NOTICE_BEFORE:
        sent = delivery_notices_send(contract=contract, now=now)
        if sent:
            steps.append(f"{sent} notice(s)")
    if contract.status == S.TRADING and now >= due - CLOSE_ONLY_BEFORE:
        move(S.CLOSE_ONLY, due - CLOSE_ONLY_BEFORE, "30 minutes before delivery: reduce-only", (S.TRADING,))
    if contract.status == S.CLOSE_ONLY and now >= due:
        move(S.SETTLING, due, "delivery time reached", (S.CLOSE_ONLY,))
    if contract.status == S.SETTLING:
        run = delivery_settle(contract=contract, now=now, requested_by=requested_by)
        steps.append(f"settlement {run.status}")
    return steps


# -- notices -------------------------------------------------------------------------------


def delivery_notices_send(*, contract: Contract, now: datetime) -> int:
    """One notice per current holder (those told already are skipped); returns how many are new."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO settlement_deliverynotice (contract_id, user_id, delivery_time, position_size, created_at)
            SELECT contract_id, user_id, %s, size, %s FROM positions_position
            WHERE contract_id = %s AND size <> 0
            ON CONFLICT (contract_id, user_id) DO NOTHING
            RETURNING id, user_id, position_size
            """,
            [contract.delivery_time, now, contract.pk],
        )
        fresh = cursor.fetchall()
    if fresh:
        transaction.on_commit(lambda: _notify(contract, fresh, now))
    return len(fresh)


def notice_payload(*, contract: Contract, position_size: Decimal, event_ms: int) -> dict:
    """The user data stream event of a delivery notice (not a Binance event; clients ignore unknown ones)."""
    return {"e": "DELIVERY_NOTICE", "E": event_ms, "s": contract.symbol, "dt": to_ms(contract.delivery_time),
            "pa": format(position_size.normalize(), "f")}


def _notify(contract: Contract, fresh: list[tuple[int, int, Decimal]], now: datetime) -> None:
    from apps.accounts.user_stream import user_events_publish

    event_ms = to_ms(now)
    try:
        for _, user_id, size in fresh:
            user_events_publish(user_id=user_id,
                                payloads=[notice_payload(contract=contract, position_size=size, event_ms=event_ms)])
    except Exception:
        logger.warning("delivery notices of %s not pushed to the user streams", contract.symbol, exc_info=True)
    if settings.DELIVERY_NOTICE_EMAIL:
        _email(contract, fresh)


def _email(contract: Contract, fresh: list[tuple[int, int, Decimal]]) -> None:
    from django.contrib.auth import get_user_model
    from django.core.mail import send_mass_mail

    users = dict(get_user_model().objects.filter(pk__in=[u for _, u, _ in fresh]).exclude(email="")
                 .values_list("pk", "email"))
    when = f"{contract.delivery_time:%Y-%m-%d %H:%M} UTC"
    messages = [
        (f"{contract.symbol} delivers at {when}",
         f"Your {contract.symbol} position of {size.normalize():f} will be closed at the settlement price at "
         f"{when}. From 30 minutes before, only reduce-only orders are accepted.",
         settings.DEFAULT_FROM_EMAIL, [users[user_id]])
        for _, user_id, size in fresh if user_id in users
    ]
    try:
        send_mass_mail(messages, fail_silently=False)
        DeliveryNotice.objects.filter(pk__in=[pk for pk, user_id, _ in fresh if user_id in users]).update(
            emailed_at=timezone.now())
    except Exception:
        logger.warning("delivery notice emails for %s failed", contract.symbol, exc_info=True)


# -- the settlement price ------------------------------------------------------------------


def settlement_price_compute(*, contract: Contract):
    """The calculator's result for the contract's window before delivery (nothing stored)."""
    window = timedelta(minutes=contract.settlement_window_minutes)
    end = contract.delivery_time
    weights = {c.venue: c.weight for c in constituents_of(contract=contract)}
    if not weights:
        return None, weights
    calculator = SettlementPriceCalculator(weights, window_ms=int(window.total_seconds() * 1000),
                                           tick=contract.tick_size)
    quotes = price_settlement_quotes(contract=contract, start=end - window, end=end)
    return calculator.calculate(contract.symbol, quotes, end=end), weights


def _price(run: DeliverySettlement, contract: Contract, now: datetime) -> DeliverySettlement:
    result, weights = settlement_price_compute(contract=contract)
    audit = result.to_audit() if result is not None else {"status": "no_price", "reason": "no index constituents"}
    audit["weights"] = {venue: str(w) for venue, w in sorted(weights.items())}
    window = timedelta(minutes=contract.settlement_window_minutes)
    fields = dict(audit=audit, window_start=contract.delivery_time - window, window_end=contract.delivery_time,
                  valid_minutes=result.valid_minutes if result is not None else 0, priced_at=now)
    # Written only while the run has no price: a concurrent runner may have priced it, or
    # priced and settled it, since this one read it (its DONE must not become PRICED again).
    unpriced = DeliverySettlement.objects.filter(pk=run.pk, settlement_price__isnull=True)
    if result is None or result.status != SettlementStatus.OK:
        fields.update(status=DeliveryStatus.NO_PRICE, error=audit.get("reason") or "no valid sample")
        if unpriced.update(attempts=F("attempts") + 1, **fields):
            _alert(f"delivery_no_price:{contract.symbol}", "CRITICAL",
                   f"{contract.symbol} cannot be settled ({fields['error']}; window: the "
                   f"{contract.settlement_window_minutes} minutes before {contract.delivery_time:%Y-%m-%d %H:%M} UTC)."
                   " It stays SETTLING.",
                   {"symbol": contract.symbol, "delivery_time": to_ms(contract.delivery_time)})
    else:
        fields.update(status=DeliveryStatus.PRICED, settlement_price=result.price, error="")
        with transaction.atomic():
            if unpriced.update(**fields):
                Contract.objects.filter(pk=contract.pk).update(settlement_price=result.price)
    run.refresh_from_db()
    if run.settlement_price is not None:
        contract.settlement_price = run.settlement_price
    return run


# -- the settlement ------------------------------------------------------------------------


def delivery_settle(*, contract: Contract, now: datetime | None = None, requested_by=None) -> DeliverySettlement:
    """Price (once) and settle a SETTLING contract exactly once; returns its run.

    Safe to call any number of times, concurrently: a DONE run is returned as it is;
    NO_PRICE leaves the contract SETTLING. Raises (after recording FAILED) on failure.
    """
    now = now or timezone.now()
    if contract.contract_type != ContractType.DELIVERY:
        raise DeliveryError(f"{contract.symbol} is not a delivery contract.")
    run = DeliverySettlement.objects.filter(contract=contract).first()
    if run is not None and run.status == DeliveryStatus.DONE:
        return run
    if contract.status != S.SETTLING:
        raise DeliveryError(f"{contract.symbol} is {contract.status}, not SETTLING: it is not delivered yet.")
    if run is None:
        run, _ = DeliverySettlement.objects.get_or_create(contract=contract,
                                                          defaults={"delivery_time": contract.delivery_time})
    if run.settlement_price is None:
        run = _price(run, contract, now)
        if run.status == DeliveryStatus.NO_PRICE:
            return run
    try:
        with transaction.atomic(durable=True):
            run = DeliverySettlement.objects.select_for_update().get(pk=run.pk)
            if run.status == DeliveryStatus.DONE:  # another runner finished while we waited
                return run
            if not run.chunks:  # not planned yet (a failed run rolled its plan back)
                # The contract's row lock waits for a matcher batch in flight and keeps the next out
                # (their status reads are FOR SHARE). NO KEY: rows that reference the contract (an
                # order, a journal command written by a liquidation holding balances this settlement
                # waits for) can still be inserted, else the two would deadlock.
                locked = Contract.objects.select_for_update(of=("self",), no_key=True) \
                    .select_related("settle_asset").get(pk=contract.pk)
                if locked.status != S.SETTLING:
                    raise DeliveryError(f"{contract.symbol} is {locked.status}, not SETTLING.")
                totals = _settle(contract=locked, price=run.settlement_price, run=run, requested_by=requested_by)
                if totals.chunks:
                    DeliverySettlement.objects.filter(pk=run.pk).update(status=DeliveryStatus.SETTLING,
                                                                        **totals.fields())
                else:
                    _done(run=run, contract=locked, now=now, requested_by=requested_by, **totals.fields())
        run.refresh_from_db()
        if run.status != DeliveryStatus.DONE:  # planned in chunks: book them, then close the run
            delivery_chunks_book(run=run, contract=contract, requested_by=requested_by)
            with transaction.atomic(durable=True):
                run = DeliverySettlement.objects.select_for_update().get(pk=run.pk)
                if run.status != DeliveryStatus.DONE:
                    _chunked_done(run=run, contract=contract, now=now, requested_by=requested_by)
    except Exception as exc:
        DeliverySettlement.objects.filter(pk=run.pk).exclude(status=DeliveryStatus.DONE).update(
            status=DeliveryStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], attempts=F("attempts") + 1)
        _alert(f"job_failure:delivery:{contract.symbol}", "CRITICAL",
               f"Delivery settlement of {contract.symbol} failed: {exc}", {"symbol": contract.symbol})
        raise
    contract.status = S.SETTLED
    run.refresh_from_db()
    return run


def _done(*, run: DeliverySettlement, contract: Contract, now: datetime, requested_by, **fields) -> None:
    """The run DONE and the contract SETTLED (under the contract's row lock, in the caller's transaction)."""
    DeliverySettlement.objects.filter(pk=run.pk).update(
        status=DeliveryStatus.DONE, attempts=F("attempts") + 1, error="", finished_at=now,
        requested_by=requested_by if requested_by is not None else run.requested_by, **fields)
    contract_status_set(contract=contract, to_status=S.SETTLED, at=now, actor=requested_by,
                        reason=f"settled at {run.settlement_price.normalize():f}")


@dataclass
class _Totals:
    positions: int = 0
    long_quantity: Decimal = ZERO
    short_quantity: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    orders_expired: int = 0
    order_margin_released: Decimal = ZERO
    covered: Decimal = ZERO
    bad_debt: Decimal = ZERO
    ledger_transaction_id: int | None = None
    chunks: int = 0

    def fields(self) -> dict:
        return dict(self.__dict__)


CLOSE_COMMANDS_SQL = """
WITH closed AS (
    UPDATE trading_ordercommand SET status = 'DONE', processed_at = now()
    WHERE contract_id = %s AND status = 'PENDING'
    RETURNING order_id, kind, margin_added
)
SELECT o.user_id, COALESCE(sum(c.margin_added) FILTER (WHERE c.kind = 'AMEND'), 0)
FROM closed c JOIN trading_order o ON o.id = c.order_id
GROUP BY o.user_id
"""

EXPIRE_ORDERS_SQL = """
WITH open AS (
    SELECT id, user_id, margin_held FROM trading_order
    WHERE contract_id = %s AND status = ANY(%s)
    ORDER BY id FOR UPDATE
), expired AS (
    UPDATE trading_order o SET status = 'EXPIRED', margin_held = 0, updated_at = now()
    FROM open WHERE o.id = open.id
)
SELECT user_id, count(*), sum(margin_held) FROM open GROUP BY user_id
"""

# Every open position of the contract with its accounts and, computed exactly in SQL and
# rounded half-even (`formulas.half_even_sql`, the ledger's rule), its realized PnL at the
# settlement price and its delivery fee. What the posting adds to a row comes later: the
# order margin released to its owner, its isolated margin, and the cover of a loss its
# owner cannot pay (from the insurance fund, `covered`, then bad debt, `lost`). `amount` is
# the row's wallet leg, pnl - fee + margin + covered + lost + released + borrowed (against
# the owner's order margin, or repaid when negative): a stored generated column, so every
# statement that sets one of those keeps it right.
# Rows in user order: the income lines, and the ledger entries and balances of wallets
# (created with their users), are then written in the order of their indexes, each leaf
# page filled once rather than revisited at random.
ROWS_TABLE_SQL = """
CREATE TEMP TABLE delivery_rows (
    position_id bigint NOT NULL, user_id integer NOT NULL, size numeric NOT NULL,
    entry_price numeric NOT NULL, isolated boolean NOT NULL, wallet bigint, isolated_account bigint,
    pnl numeric NOT NULL, fee numeric NOT NULL, released numeric NOT NULL DEFAULT 0,
    margin numeric NOT NULL DEFAULT 0, covered numeric NOT NULL DEFAULT 0, lost numeric NOT NULL DEFAULT 0,
    borrowed numeric NOT NULL DEFAULT 0,
    amount numeric GENERATED ALWAYS AS (pnl - fee + margin + covered + lost + released + borrowed) STORED
) ON COMMIT DROP
"""

# A position's realized PnL at the settlement price and its delivery fee, exact (the rows
# round them half-even, `formulas.half_even_sql`).
PNL_EXACT_SQL = "p.size * (%(price)s::numeric - p.entry_price) * %(cs)s::numeric"
FEE_EXACT_SQL = "abs(p.size) * %(fee_factor)s::numeric"

# Each value is computed once per position: the OFFSET 0 subqueries stay whole (inlined,
# an expression is computed again by each use the next level makes of it). An isolated
# position's margin account is looked up by itself (one index probe per isolated position,
# none for the others). For a delivery in one transaction: computed by a CREATE TABLE AS,
# which PostgreSQL may run with parallel workers (`PARALLEL_CTAS`; an INSERT ... SELECT is
# always serial), then copied in order into `delivery_rows` (whose generated column a CREATE
# TABLE AS cannot declare): 3.3 s instead of 3.9 s at a million positions, the copy included
# (bench/delivery.py with DELIVERY_CHUNK_POSITIONS above that).
ROWS_SELECT_SQL = f"""
SELECT r.*
FROM (SELECT x.position_id, x.user_id, x.size, x.entry_price, x.isolated, w.id AS wallet,
             CASE WHEN x.isolated THEN (SELECT iso.id FROM ledger_account iso
                                        WHERE iso.kind = 'ISOLATED_MARGIN' AND iso.user_id = x.user_id
                                          AND iso.contract_id = x.contract_id) END AS isolated_account,
             {formulas.half_even_sql('x.pnl')} AS pnl, {formulas.half_even_sql('x.fee')} AS fee
      FROM (SELECT p.id AS position_id, p.user_id, p.contract_id, p.size, p.entry_price,
                   p.margin_type = 'ISOLATED' AS isolated, {PNL_EXACT_SQL} AS pnl, {FEE_EXACT_SQL} AS fee
            FROM positions_position p
            WHERE p.contract_id = %(c)s AND p.size <> 0{{where}}
            OFFSET 0) x
      LEFT JOIN ledger_account w ON w.kind = 'WALLET' AND w.user_id = x.user_id AND w.contract_id IS NULL{{wallets}}
      ORDER BY x.user_id
      OFFSET 0) r
"""
# A chunk's positions: its users' (by the index of one position per user and contract).
CHUNK_USERS = " AND p.user_id BETWEEN %(user_from)s AND %(user_to)s"
# ... and their wallets: in a dense chunk (`_chunk_dense`), the accounts of the same range of
# users, read in user order and merged with the positions sorted by user (`CHUNK_ROWS_JOIN`):
# 35 ms against 75 ms for an index probe per position (a chunk of 50,000); in a sparse one (few
# holders among many users) a probe per position (`STAGED_IN_ORDER`), rather than every account
# of every user in between.
CHUNK_WALLETS = " AND w.user_id BETWEEN %(user_from)s AND %(user_to)s"
CHUNK_ROWS_JOIN = {"enable_hashjoin": "off", "enable_nestloop": "off"}
# A chunk is dense when its range of user ids is at most this many times its positions.
CHUNK_DENSE_SPAN = 4
# A chunked plan's rows: the isolated positions' (their margins and covers are decided by the plan).
ISOLATED_ONLY = " AND p.margin_type = 'ISOLATED'"
ROWS_COLUMNS = "position_id, user_id, size, entry_price, isolated, wallet, isolated_account, pnl, fee"
ROWS_COMPUTED_SQL = ("CREATE TEMP TABLE delivery_rows_computed ON COMMIT DROP AS "
                     + ROWS_SELECT_SQL.format(where="", wallets=""))
ROWS_SQL = f"INSERT INTO delivery_rows ({ROWS_COLUMNS}) SELECT {ROWS_COLUMNS} FROM delivery_rows_computed"
# Some of the positions' rows go straight into `delivery_rows` (no parallel workers to gain).
SOME_ROWS_SQL = f"INSERT INTO delivery_rows ({ROWS_COLUMNS}) " + ROWS_SELECT_SQL

# More positions than this, and the delivery is booked in chunks (reads no more rows than that).
CHUNKED_SQL = """
SELECT count(*) > %(size)s
FROM (SELECT 1 FROM positions_position p WHERE p.contract_id = %(c)s AND p.size <> 0 LIMIT %(size)s + 1) t
"""
# A chunked plan needs no row per position, only counts over runs of users in user order: the
# positions and their quantities per `width` consecutive user ids (a "bucket"; chunks are runs
# of buckets), in one aggregate that parallel workers share. No PnL or fee: each chunk books
# its own (0.15 s at a million, against 0.8 s for the same aggregate with the rounded PnL and
# fee of each position, and 3.2 s for the rows).
BUCKETS_SQL = """
SELECT count(*), min(p.user_id), max(p.user_id), count(*) FILTER (WHERE p.margin_type = 'ISOLATED'),
       COALESCE(sum(p.size) FILTER (WHERE p.size > 0), 0), COALESCE(-sum(p.size) FILTER (WHERE p.size < 0), 0)
FROM positions_position p
WHERE p.contract_id = %(c)s AND p.size <> 0
GROUP BY p.user_id / %(width)s ORDER BY p.user_id / %(width)s
"""
# A bucket spans this fraction of a chunk's positions at most (its user ids): chunks come out at
# DELIVERY_CHUNK_POSITIONS positions, less at most one bucket's.
BUCKETS_PER_CHUNK = 64

# The totals, and how many rows miss an account (created then).
ROWS_TOTALS_SQL = """
SELECT count(*), count(*) FILTER (WHERE isolated), COALESCE(sum(size) FILTER (WHERE size > 0), 0),
       COALESCE(-sum(size) FILTER (WHERE size < 0), 0), COALESCE(sum(pnl), 0), COALESCE(sum(fee), 0),
       count(*) FILTER (WHERE wallet IS NULL OR (isolated AND isolated_account IS NULL))
FROM delivery_rows
"""

ORDER_USERS_SQL = """
SELECT u.user_id, w.id, om.id
FROM (SELECT user_id FROM trading_order WHERE contract_id = %(c)s AND status = ANY(%(open)s)
      UNION
      SELECT o.user_id FROM trading_ordercommand c JOIN trading_order o ON o.id = c.order_id
      WHERE c.contract_id = %(c)s AND c.status = 'PENDING') AS u
LEFT JOIN ledger_account w ON w.kind = 'WALLET' AND w.user_id = u.user_id AND w.contract_id IS NULL
LEFT JOIN ledger_account om ON om.kind = 'ORDER_MARGIN' AND om.user_id = u.user_id AND om.contract_id IS NULL
"""

# Closed at the settlement price; a position that changed since it was read (nothing should
# write one while the contract row and the balances are ours) fails the settlement instead.
POSITIONS_CLOSE_SQL = """
UPDATE positions_position AS p
SET size = 0, entry_price = 0, realized_pnl = p.realized_pnl + d.pnl, updated_at = now()
FROM pg_temp.delivery_rows AS d
WHERE p.id = d.position_id AND p.size = d.size AND p.entry_price = d.entry_price{users}
"""
# A dense chunk's: its users' positions (read through the index of one position per user and
# contract) hashed against its rows, 40 ms against 57 ms for a probe of the primary key per row
# (50,000); a sparse chunk's: that probe per row.
CHUNK_CLOSE_USERS = " AND p.contract_id = %(c)s AND p.user_id BETWEEN %(user_from)s AND %(user_to)s"
CHUNK_CLOSE_JOIN = {"enable_nestloop": "off", "enable_mergejoin": "off"}

# Each isolated position's margin: its isolated account's balance.
ISOLATED_MARGINS_SQL = """
UPDATE delivery_rows d SET margin = b.amount FROM ledger_balance b
WHERE d.isolated AND b.account_id = d.isolated_account AND b.asset_id = %s
"""

# An isolated position's loss beyond its margin never reaches the wallet: the fund covers
# it while it has money, positions in id order, then bad debt takes the rest (the sum of
# the covers before a position is min(fund, the needs before it): a running sum).
ISOLATED_COVERS_SQL = """
WITH need AS (
    SELECT position_id, -(pnl - fee + margin) AS need FROM delivery_rows WHERE isolated AND pnl - fee + margin < 0
), alloc AS (
    SELECT position_id, need,
           least(need, greatest(0, %(fund)s::numeric - (sum(need) OVER (ORDER BY position_id) - need))) AS covered
    FROM need
)
UPDATE delivery_rows d SET covered = a.covered, lost = a.need - a.covered
FROM alloc a WHERE d.position_id = a.position_id
"""

# The posting's legs: a wallet leg per position (its result, margin back, covers, released
# order margin), an isolated-margin leg per isolated position, and the few others (order
# margin, owners of orders without a position, system accounts) as array parameters.
# (The isolated legs are left out when no position is isolated: one pass over the rows less.)
LEGS_SQL = """
SELECT d.wallet AS account_id, %s::bigint AS asset_id, d.amount FROM pg_temp.delivery_rows d WHERE d.amount <> 0
{isolated}UNION ALL
SELECT s.account_id, %s::bigint, s.amount
FROM unnest(%s::bigint[], %s::numeric[]) AS s(account_id, amount) WHERE s.amount <> 0
"""
ISOLATED_LEGS_SQL = """UNION ALL
SELECT d.isolated_account, %s::bigint, -d.margin FROM pg_temp.delivery_rows d WHERE d.isolated AND d.margin <> 0
"""

# The wallets the posting would take below zero (their balance, and their leg), and those of the
# given users (who owe and get order margin back: what they owe is repaid first).
SHORT_SQL = """
SELECT d.user_id, d.wallet, COALESCE(b.amount, 0), d.amount
FROM pg_temp.delivery_rows d
LEFT JOIN ledger_balance b ON b.account_id = d.wallet AND b.asset_id = %s
WHERE (d.amount < 0 AND COALESCE(b.amount, 0) + d.amount < 0) OR d.user_id = ANY(%s::int[])
ORDER BY d.wallet
"""

# Those of the given users who owe (their RECEIVABLE below zero).
OWING_SQL = f"""
SELECT a.user_id FROM ledger_account a JOIN ledger_balance b ON b.account_id = a.id AND b.asset_id = %s
WHERE a.user_id = ANY(%s::int[]) AND a.kind = '{AccountKind.RECEIVABLE}' AND b.amount < 0
ORDER BY 1
"""

# One pass over the rows (in user order): a position's PnL line, then its fee line. (The two
# kinds are a constant list the join reads from memory for each row: a VALUES list that
# referred to the row would be compiled again for each.)
INCOME_SQL = f"""
INSERT INTO {Income._meta.db_table} (user_id, symbol, income_type, amount, asset_id, info, trade_id,
                                      transaction_id, created_at)
SELECT d.user_id, %(symbol)s, k.income_type, CASE WHEN k.settled THEN d.pnl ELSE -d.fee END, %(asset)s,
       k.income_type, NULL::bigint, %(txn)s, now()
FROM pg_temp.delivery_rows d
CROSS JOIN (VALUES (true, %(settled)s), (false, %(commission)s)) AS k(settled, income_type)
WHERE CASE WHEN k.settled THEN d.pnl ELSE d.fee END <> 0
"""

# The hash joins over every position and account stay in memory, and no JIT (this transaction only).
SETTLE_WORK_MEM = STAGED_WORK_MEM
# The income lines' statement trigger reads every new line back (a transition table, two
# lines a position): kept in memory (a million positions' lines fit) rather than spilled to disk.
INCOME_WORK_MEM = "512MB"


def _rows_params(contract: Contract, price: Decimal) -> dict:
    return {"c": contract.pk, "price": price, "cs": contract.contract_size,
            "fee_factor": formulas.exact_product(price, contract.contract_size, contract.delivery_fee_rate),
            **formulas.half_even_sql_params(precision=contract.settle_asset.precision)}


def _rows_compute(*, contract: Contract, price: Decimal, users: tuple[int, int] | None = None,
                  dense: bool = True, isolated_only: bool = False) -> None:
    """`delivery_rows` of every open position of the contract, in user order; or of those of the
    users `users` (first, last: a chunk's; `dense`: see `_chunk_dense`), or of the isolated
    positions only (a chunked plan's)."""
    params = _rows_params(contract, price)
    with connection.cursor() as cursor:
        if users is None and not isolated_only:  # all the positions: hash joins, with parallel workers
            with settings_local(cursor, **PARALLEL_CTAS):
                cursor.execute(ROWS_COMPUTED_SQL, params)
            cursor.execute(ROWS_TABLE_SQL)
            cursor.execute(ROWS_SQL)
            cursor.execute("DROP TABLE delivery_rows_computed")
        elif users is not None:  # a chunk's: its users' positions and wallets, merged
            params["user_from"], params["user_to"] = users
            cursor.execute(ROWS_TABLE_SQL)
            with settings_local(cursor, **(CHUNK_ROWS_JOIN if dense else STAGED_IN_ORDER)):
                cursor.execute(SOME_ROWS_SQL.format(where=CHUNK_USERS, wallets=CHUNK_WALLETS if dense else ""), params)
        else:  # a chunked plan's isolated positions: few, the planner's choice of joins
            cursor.execute(ROWS_TABLE_SQL)
            cursor.execute(SOME_ROWS_SQL.format(where=ISOLATED_ONLY, wallets=""), params)


def _rows_stage(*, contract: Contract, price: Decimal, isolated_only: bool = False) -> tuple:
    """`delivery_rows` (one statement; the rare missing accounts created); returns
    (positions, isolated positions, long quantity, short quantity, realized PnL, fees) of its rows."""
    _rows_compute(contract=contract, price=price, isolated_only=isolated_only)
    with connection.cursor() as cursor:
        cursor.execute(ROWS_TOTALS_SQL)
        *totals, missing = cursor.fetchone()
        if missing:
            _accounts_fill(contract)
        # A temporary table has no statistics otherwise; a small sample is plenty for the plans
        # that read it (the row count is exact whatever the sample).
        with settings_local(cursor, default_statistics_target="10"):
            cursor.execute("ANALYZE delivery_rows")
        return tuple(totals)


def _accounts_fill(contract: Contract) -> None:
    """Open the accounts `delivery_rows` misses (rare: wallets come with deposits, an isolated
    margin account with the first isolated margin) and fill them in."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT user_id, wallet IS NULL, isolated AND isolated_account IS NULL"
                       " FROM delivery_rows WHERE wallet IS NULL OR (isolated AND isolated_account IS NULL)")
        missing = cursor.fetchall()
        wallets = accounts_for_users(kind=AccountKind.WALLET, user_ids=[u for u, w, _ in missing if w])
        isolated = accounts_for_users(kind=AccountKind.ISOLATED_MARGIN, user_ids=[u for u, _, i in missing if i],
                                      contract=contract)
        cursor.execute(
            """
            UPDATE delivery_rows d SET wallet = COALESCE(d.wallet, w.account_id),
                                       isolated_account = COALESCE(d.isolated_account, i.account_id)
            FROM unnest(%s::bigint[]) AS u(user_id)
            LEFT JOIN unnest(%s::bigint[], %s::bigint[]) AS w(user_id, account_id) ON w.user_id = u.user_id
            LEFT JOIN unnest(%s::bigint[], %s::bigint[]) AS i(user_id, account_id) ON i.user_id = u.user_id
            WHERE d.user_id = u.user_id
            """,
            [sorted({u for u, _, _ in missing}), list(wallets), list(wallets.values()), list(isolated),
             list(isolated.values())],
        )


def _plan_stage(*, contract: Contract, price: Decimal) -> tuple[tuple, list[tuple]]:
    """A chunked plan's totals (those of `_rows_stage`, with no PnL and fees: the chunks book
    them) and buckets (positions, first user, last user, Σ |size|; in user order), from one
    aggregate over the positions; `delivery_rows` holds the isolated positions only (the rare
    missing accounts created; a chunk creates those of the other positions)."""
    params = {"c": contract.pk, "width": max(1, settings.DELIVERY_CHUNK_POSITIONS // BUCKETS_PER_CHUNK)}
    with connection.cursor() as cursor, settings_local(cursor, **PARALLEL_CTAS):
        cursor.execute(BUCKETS_SQL, params)
        rows = cursor.fetchall()
    totals = (*(sum(row[i] for row in rows) for i in (0, 3, 4, 5)), ZERO, ZERO)
    if totals[1]:
        _rows_stage(contract=contract, price=price, isolated_only=True)
    else:  # no isolated position: not another pass over the positions to find none
        with connection.cursor() as cursor:
            cursor.execute(ROWS_TABLE_SQL)
    return totals, [(count, first, last, long + short) for count, first, last, _, long, short in rows]


def _order_owners(contract: Contract) -> tuple[dict[int, int], dict[int, int]]:
    """Wallet and order-margin account ids (user id -> account id) of the owners of open orders and
    pending commands (created when missing). Fixed while the contract row is ours (no order entry)."""
    with connection.cursor() as cursor:
        cursor.execute(ORDER_USERS_SQL, {"c": contract.pk, "open": list(OPEN_STATUSES)})
        owners = cursor.fetchall()
    wallets, order_margin = {}, {}
    for accounts, kind, pairs in ((wallets, AccountKind.WALLET, [(u, w) for u, w, _ in owners]),
                                  (order_margin, AccountKind.ORDER_MARGIN, [(u, om) for u, _, om in owners])):
        accounts.update((user, account) for user, account in pairs if account is not None)
        missing = [user for user, account in pairs if account is None]
        if missing:
            accounts.update(accounts_for_users(kind=kind, user_ids=missing))
    return wallets, order_margin


def _settle(*, contract: Contract, price: Decimal, run: DeliverySettlement, requested_by) -> _Totals:
    """The money of a delivery, set-based: every position's row is computed in one statement
    (`delivery_rows`) and the posting's legs, the income lines and the closed positions are
    read from it by one statement each; only the few order owners and the covers of the
    rare losses a wallet cannot pay pass through Python.

    More than `DELIVERY_CHUNK_POSITIONS` positions: the rows are stored as the run's chunks
    instead (`DeliveryChunk`, booked by `delivery_chunks_book`) and this posting moves what
    they will book, their PnL, fees and isolated covers, into DELIVERY_CLEARING; the order
    margin released and the covers are decided here as for a small delivery."""
    asset = contract.settle_asset
    totals = _Totals()
    fund = system_account(AccountKind.INSURANCE_FUND).pk
    bad_debt = system_account(AccountKind.BAD_DEBT).pk
    pnl_clearing = system_account(AccountKind.PNL_CLEARING).pk
    fee_income = system_account(AccountKind.FEE_INCOME).pk
    clearing = system_account(AccountKind.DELIVERY_CLEARING).pk
    with connection.cursor() as cursor:
        cursor.execute(STAGED_SETTINGS_SQL, [SETTLE_WORK_MEM])
        cursor.execute(CHUNKED_SQL, {"c": contract.pk, "size": settings.DELIVERY_CHUNK_POSITIONS})
        chunked = cursor.fetchone()[0]
        # Hash joins whatever the statistics say: right after a burst of new accounts and
        # positions the planner may think both tables tiny and nest a scan per holder.
        with settings_local(cursor, enable_nestloop="off"):
            if chunked:
                stage, buckets = _plan_stage(contract=contract, price=price)
            else:
                stage = _rows_stage(contract=contract, price=price)
            (totals.positions, isolated_count, totals.long_quantity, totals.short_quantity, totals.realized_pnl,
             totals.fees) = stage
            owner_wallets, order_margin = _order_owners(contract)

    # The lock order of every writer: balances, then positions, then orders. Every balance the
    # posting can touch is locked before any is read: the whole table for a large posting (as
    # ledger_post_staged will; counted with every leg it can have), else each row in ledger order.
    # (A chunked plan moves none of the positions' balances: its chunks lock them as they book.)
    large = not chunked and balances_lock_for(legs=totals.positions + isolated_count + 2 * len(order_margin) + 4)
    accounts = [fund, bad_debt, pnl_clearing, fee_income, clearing, *owner_wallets.values(),
                *order_margin.values()]
    if not large and not chunked:
        with connection.cursor() as cursor:
            cursor.execute("SELECT wallet FROM delivery_rows UNION ALL"
                           " SELECT isolated_account FROM delivery_rows WHERE isolated")
            accounts += [row[0] for row in cursor.fetchall()]
    current = balances_lock(account_ids=accounts, asset=asset)
    if not chunked:
        _positions_close(positions=totals.positions, contract=contract)

    releases: dict[int, Decimal] = defaultdict(Decimal)  # user id -> order margin back to the wallet
    with connection.cursor() as cursor:
        cursor.execute(CLOSE_COMMANDS_SQL, [contract.pk])
        for user_id, amount in cursor.fetchall():
            releases[user_id] += amount
        cursor.execute(EXPIRE_ORDERS_SQL, [contract.pk, list(OPEN_STATUSES)])
        for user_id, count, held in cursor.fetchall():
            releases[user_id] += held
            totals.orders_expired += count
        releases = {user_id: amount for user_id, amount in releases.items() if amount}
        totals.order_margin_released = sum(releases.values(), ZERO)
        others: dict[int, Decimal] = defaultdict(Decimal)  # the legs outside delivery_rows
        if releases and chunked:  # every release straight to its owner's wallet
            for user_id, amount in releases.items():
                others[order_margin[user_id]] -= amount
                others[owner_wallets[user_id]] += amount
        elif releases:
            cursor.execute(
                "UPDATE delivery_rows d SET released = t.amount"
                " FROM unnest(%s::bigint[], %s::numeric[])"
                " AS t(user_id, amount) WHERE d.user_id = t.user_id RETURNING d.user_id",
                [list(releases), list(releases.values())],
            )
            holders = {row[0] for row in cursor.fetchall()}
            for user_id, amount in releases.items():
                others[order_margin[user_id]] -= amount
                if user_id not in holders:
                    others[owner_wallets[user_id]] += amount
        if isolated_count:
            cursor.execute(ISOLATED_MARGINS_SQL, [asset.pk])
            cursor.execute(ISOLATED_COVERS_SQL, {"fund": current[fund]})
            cursor.execute("SELECT COALESCE(sum(covered), 0), COALESCE(sum(lost), 0) FROM delivery_rows"
                           " WHERE isolated")
            totals.covered, totals.bad_debt = cursor.fetchone()
    others[pnl_clearing] -= totals.realized_pnl
    others[fee_income] += totals.fees
    others[fund] -= totals.covered
    others[bad_debt] -= totals.bad_debt
    if chunked:  # the rows go into chunks; their isolated covers wait in DELIVERY_CLEARING
        totals.chunks, others[clearing] = _chunks_store(run=run, buckets=buckets)

    def post():
        return ledger_post_staged(
            posting=Posting(
                kind=TransactionKind.DELIVERY, legs=(), idempotency_key=idempotency_key(contract),
                memo=f"Delivery {contract.symbol} at {price.normalize():f}",
                reference={"symbol": contract.symbol, "settlement_price": str(price), "positions": totals.positions,
                           "orders_expired": totals.orders_expired},
                created_by_id=requested_by.pk if requested_by is not None else None,
            ),
            legs_sql=LEGS_SQL.format(isolated=ISOLATED_LEGS_SQL if isolated_count else ""),
            params=[asset.pk, *([asset.pk] if isolated_count else []), asset.pk, list(others), list(others.values())],
        )

    # Optimistic: every cross wallet can pay its loss (the ledger checks it in the statement that
    # books; the posting is refused, and rolled back, otherwise), and nobody who gets order margin
    # back owes anything (`_owing`, a few rows).
    owing = _owing(user_ids=list(releases), asset=asset)
    try:
        if owing:
            raise InsufficientBalance("order margin returns to users who owe")
        txn = post()
    except InsufficientBalance:
        _cover_short(others=others, current=current, totals=totals, asset=asset, fund=fund, bad_debt=bad_debt,
                     owing=owing, owner_wallets=owner_wallets)
        txn = post()
    if txn is not None:
        totals.ledger_transaction_id = txn.pk
        if not chunked:
            _incomes_insert(contract=contract, transaction_id=txn.pk)
    with connection.cursor() as cursor:  # ON COMMIT DROP, unless an outer transaction goes on (tests)
        cursor.execute("DROP TABLE delivery_rows")
    return totals


def _owing(*, user_ids: list[int], asset) -> list[int]:
    """Those of these users who owe (RECEIVABLE < 0)."""
    if not user_ids:
        return []
    with connection.cursor() as cursor:
        cursor.execute(OWING_SQL, [asset.pk, user_ids])
        return [row[0] for row in cursor.fetchall()]


def _cover_short(*, others: dict[int, Decimal], current: dict[int, Decimal], totals: _Totals, asset, fund: int,
                 bad_debt: int, owing: list[int], owner_wallets: dict[int, int]) -> None:
    """Bring the wallets the posting would take below zero, and those of `owing` (users who owe and
    get order margin back), to the rule of `deficits_cover`, as for fills: what is owed is repaid
    first, a loss beyond the wallet is borrowed against the order margin still held elsewhere,
    then covered by the fund (after the isolated covers), then bad debt, wallets in account order."""
    with connection.cursor() as cursor:
        cursor.execute(SHORT_SQL, [asset.pk, owing])
        rows = cursor.fetchall()
    wallets = {user_id: wallet for user_id, wallet, _, _ in rows}
    legs = {wallet: leg for _, wallet, _, leg in rows}
    current = {**current, **{wallet: balance for _, wallet, balance, _ in rows}}
    for user_id in owing:  # owners of orders without a position: their wallet leg is among `others`
        if user_id not in wallets:
            wallets[user_id] = owner_wallets[user_id]
            legs[wallets[user_id]] = others[wallets[user_id]]
    backed = wallets_backing(wallets=wallets, asset=asset, current=current, held_change=others)
    delta: dict[int, Decimal] = defaultdict(Decimal, legs)
    delta[fund], delta[bad_debt] = others[fund], others[bad_debt]
    covers = deficits_cover(wallets=wallets, delta=delta, current=current, fund=fund, bad_debt=bad_debt,
                            backing=backed.backing, receivable_for=backed.receivable_for)
    others[fund], others[bad_debt] = delta[fund], delta[bad_debt]
    for receivable in backed.receivables:
        others[receivable] += delta[receivable]
    changes = []
    for _, wallet, _, leg in rows:
        covered, lost = covers.get(wallet, (ZERO, ZERO))
        totals.covered += covered
        totals.bad_debt += lost
        changes.append((wallet, covered, lost, delta[wallet] - leg - covered - lost))
    in_rows = {user_id for user_id, _, _, _ in rows}
    for user_id in owing:
        if user_id not in in_rows:  # a release, less what it repays (nothing to cover)
            others[wallets[user_id]] = delta[wallets[user_id]]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE delivery_rows d SET covered = d.covered + t.covered, lost = d.lost + t.lost,"
            " borrowed = t.borrowed"
            " FROM unnest(%s::bigint[], %s::numeric[], %s::numeric[], %s::numeric[])"
            " AS t(wallet, covered, lost, borrowed) WHERE d.wallet = t.wallet",
            [[c[0] for c in changes], [c[1] for c in changes], [c[2] for c in changes], [c[3] for c in changes]],
        )


def _incomes_insert(*, contract: Contract, transaction_id: int) -> None:
    """Per position: its realized PnL (DELIVERED_SETTELMENT) and its delivery fee (COMMISSION). Its
    users come from positions: the income trigger need not look each one up."""
    with INCOME_TURN, connection.cursor() as cursor, settings_local(cursor, work_mem=INCOME_WORK_MEM,
                                                                    **{INCOME_USERS_FROM_POSITIONS: "on"}):
        cursor.execute(INCOME_SQL, {"symbol": contract.symbol, "asset": contract.settle_asset_id,
                                    "txn": transaction_id, "settled": IncomeType.DELIVERED_SETTELMENT.value,
                                    "commission": IncomeType.COMMISSION.value})


def _positions_close(*, positions: int, contract: Contract, chunk: DeliveryChunk | None = None) -> None:
    """The rows' positions closed: all of them (the planner's joins), or a chunk's (by its users'
    range when it is dense, else a probe per row)."""
    users, params, plan = "", None, {}
    if chunk is not None and _chunk_dense(chunk):
        users, plan = CHUNK_CLOSE_USERS, CHUNK_CLOSE_JOIN
        params = {"c": contract.pk, "user_from": chunk.user_from, "user_to": chunk.user_to}
    elif chunk is not None:
        plan = STAGED_IN_ORDER
    with connection.cursor() as cursor, settings_local(cursor, **plan):
        cursor.execute(POSITIONS_CLOSE_SQL.format(users=users), params)
        closed = cursor.rowcount
    if closed != positions:
        raise DeliveryError(f"{positions - closed} position(s) changed while the delivery read them.")


# -- chunks: a delivery of more than DELIVERY_CHUNK_POSITIONS positions -----------------------

# A chunk's rows as the plan saw them: the isolated margins (`ISOLATED_MARGINS_SQL`, fixed
# while the contract is SETTLING), then the plan's covers; and what they add up to, to check
# against the plan.
CHUNK_COVERS_SQL = f"""
UPDATE delivery_rows d SET covered = c.covered, lost = c.lost
FROM {DeliveryChunk._meta.db_table} k,
     unnest(k.cover_positions, k.cover_fund, k.cover_lost) AS c(position_id, covered, lost)
WHERE k.id = %s AND d.position_id = c.position_id
"""
CHUNK_CHECK_SQL = """
SELECT count(*), COALESCE(sum(abs(size)), 0), COALESCE(sum(covered + lost), 0), COALESCE(sum(pnl), 0),
       COALESCE(sum(fee), 0), count(*) FILTER (WHERE wallet IS NULL)
FROM delivery_rows
"""
# A chunk's legs: its positions' accounts in account order, then the system accounts (its
# DELIVERY_CLEARING share; the covers' fund and bad debt): the order a concurrent posting locks them.
CHUNK_LEGS_SQL = """
(SELECT u.account_id, %s::bigint AS asset_id, u.amount
 FROM (SELECT d.wallet AS account_id, d.amount FROM pg_temp.delivery_rows d WHERE d.amount <> 0
       UNION ALL
       SELECT d.isolated_account, -d.margin FROM pg_temp.delivery_rows d WHERE d.isolated AND d.margin <> 0) u
 ORDER BY u.account_id)
UNION ALL
SELECT s.account_id, %s::bigint, s.amount
FROM unnest(%s::bigint[], %s::numeric[]) AS s(account_id, amount) WHERE s.amount <> 0
"""


def _chunk_dense(chunk: DeliveryChunk) -> bool:
    """Whether the chunk's users are mostly holders: its positions and wallets are then read by
    their range of users (cheaper than a probe each; for sparse holders the range would hold
    many more rows than the chunk has positions)."""
    return chunk.user_to - chunk.user_from < CHUNK_DENSE_SPAN * chunk.positions


def _chunks_store(*, run: DeliverySettlement, buckets: list[tuple]) -> tuple[int, Decimal]:
    """Store the run's chunks: runs of consecutive buckets of up to `DELIVERY_CHUNK_POSITIONS`
    positions (a bucket holds at most 1/`BUCKETS_PER_CHUNK` of that), with the isolated covers
    the plan decided in `delivery_rows` (then emptied); returns (chunks, Σ their covers)."""
    chunks: list[DeliveryChunk] = []
    for positions, first, last, quantity in buckets:
        if chunks and chunks[-1].positions + positions <= settings.DELIVERY_CHUNK_POSITIONS:
            chunk = chunks[-1]
            chunk.positions += positions
            chunk.user_to = last
            chunk.quantity += quantity
        else:
            chunks.append(DeliveryChunk(run_id=run.pk, number=len(chunks), positions=positions, user_from=first,
                                        user_to=last, quantity=quantity, clearing=ZERO))
    starts = [chunk.user_from for chunk in chunks]
    with connection.cursor() as cursor:
        cursor.execute("SELECT user_id, position_id, covered, lost FROM delivery_rows"
                       " WHERE covered <> 0 OR lost <> 0 ORDER BY position_id")
        for user_id, position_id, covered, lost in cursor.fetchall():
            chunk = chunks[bisect_right(starts, user_id) - 1]
            chunk.cover_positions.append(position_id)
            chunk.cover_fund.append(covered)
            chunk.cover_lost.append(lost)
            chunk.clearing += covered + lost
        cursor.execute("TRUNCATE delivery_rows")
    DeliveryChunk.objects.bulk_create(chunks)
    return len(chunks), sum((chunk.clearing for chunk in chunks), ZERO)


def delivery_chunks_book(*, run: DeliverySettlement, contract: Contract, requested_by=None) -> int:
    """Book the run's chunks not booked yet (`chunks.chunks_book`, `DELIVERY_SETTLE_WORKERS` at a
    time); returns how many this call booked."""
    contract.settle_asset  # loaded once, before the threads
    return chunks_book(chunks=DeliveryChunk.objects.filter(run_id=run.pk),
                       fields=("id", "number", "positions", "quantity", "user_from", "user_to", "clearing"),
                       book=lambda chunk: _chunk_book(run=run, contract=contract, chunk=chunk,
                                                      requested_by=requested_by),
                       workers=settings.DELIVERY_SETTLE_WORKERS, name="delivery")


def _chunk_book(*, run: DeliverySettlement, contract: Contract, chunk: DeliveryChunk, requested_by) -> None:
    """One chunk: its positions' results (PnL − fee, the plan's isolated covers) out of
    DELIVERY_CLEARING to their accounts (one posting, key `delivery:<SYMBOL>:<chunk>`, locking
    each balance as it moves it, DELIVERY_CLEARING last), their income lines, the positions
    closed. A cross wallet that cannot pay its loss is covered as in `_settle`."""
    asset = contract.settle_asset
    fund = system_account(AccountKind.INSURANCE_FUND).pk
    bad_debt = system_account(AccountKind.BAD_DEBT).pk
    clearing = system_account(AccountKind.DELIVERY_CLEARING).pk
    price = run.settlement_price
    with connection.cursor() as cursor:
        cursor.execute(STAGED_SETTINGS_SQL, [SETTLE_WORK_MEM])
        # As funding's chunks: nobody is answered on this commit, and whatever later depends on it
        # flushes the WAL past it first (a server crash that loses it loses all of it).
        cursor.execute("SET LOCAL synchronous_commit = off")
        _rows_compute(contract=contract, price=price, users=(chunk.user_from, chunk.user_to),
                      dense=_chunk_dense(chunk))
        cursor.execute(ISOLATED_MARGINS_SQL, [asset.pk])
        cursor.execute(CHUNK_COVERS_SQL, [chunk.pk])
        cursor.execute(CHUNK_CHECK_SQL)
        positions, quantity, covers, realized_pnl, fees, no_wallet = cursor.fetchone()
        if (positions, quantity, covers) != (chunk.positions, chunk.quantity, chunk.clearing):
            raise DeliveryError(f"Chunk {chunk.number} of {run} changed since its plan: {positions} position(s) "
                                f"of {quantity} with covers of {covers} instead of {chunk.positions} of "
                                f"{chunk.quantity} with {chunk.clearing}.")
        if no_wallet:  # the plan opened the isolated positions' accounts only
            _accounts_fill(contract)
        with settings_local(cursor, default_statistics_target="10"):
            cursor.execute("ANALYZE delivery_rows")
    totals = _Totals()
    others: dict[int, Decimal] = defaultdict(Decimal, {clearing: -(realized_pnl - fees + covers)})

    def post(concurrent: bool):
        return ledger_post_staged(
            posting=Posting(
                kind=TransactionKind.DELIVERY, legs=(), idempotency_key=f"{idempotency_key(contract)}:{chunk.number}",
                memo=f"Delivery {contract.symbol} at {price.normalize():f} chunk {chunk.number}",
                reference={"symbol": contract.symbol, "settlement_price": str(price), "chunk": chunk.number,
                           "positions": chunk.positions},
                created_by_id=requested_by.pk if requested_by is not None else None,
            ),
            legs_sql=CHUNK_LEGS_SQL, params=[asset.pk, asset.pk, list(others), list(others.values())],
            concurrent=concurrent, shared=list(others),
            before_move=lambda txn_id: _incomes_insert(contract=contract, transaction_id=txn_id),
        )

    try:
        txn = post(True)  # optimistic, as `_settle`
    except InsufficientBalance:
        # Rare: the cover reads balances first, so the balance table is locked (the refused
        # posting's row locks went with it; this waits for the postings under way).
        balances_lock_all()
        current = balances_lock(account_ids=[fund, bad_debt, clearing], asset=asset)
        _cover_short(others=others, current=current, totals=totals, asset=asset, fund=fund, bad_debt=bad_debt,
                     owing=[], owner_wallets={})
        txn = post(False)
    _positions_close(positions=chunk.positions, contract=contract, chunk=chunk)
    DeliveryChunk.objects.filter(pk=chunk.pk).update(
        ledger_transaction_id=txn.pk if txn is not None else None, realized_pnl=realized_pnl, fees=fees,
        covered=totals.covered, bad_debt=totals.bad_debt, booked_at=timezone.now())
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE delivery_rows")


def _chunked_done(*, run: DeliverySettlement, contract: Contract, now: datetime, requested_by) -> None:
    left = run.chunk_set.filter(booked_at__isnull=True).count()
    if left:
        raise DeliveryError(f"{left} of {run.chunks} chunks of {run} are not booked yet.")
    chunks = run.chunk_set.aggregate(covered=Sum("covered"), bad_debt=Sum("bad_debt"), realized_pnl=Sum("realized_pnl"),
                                     fees=Sum("fees"))
    realized_pnl, fees = chunks["realized_pnl"], chunks["fees"]
    # What the chunks paid out of DELIVERY_CLEARING beyond the covers: the PnL from PNL_CLEARING,
    # less the fees, which go to FEE_INCOME. Two accounts every fill also posts to, moved once.
    legs = [Leg(system_account(kind).pk, contract.settle_asset, amount)
            for kind, amount in ((AccountKind.PNL_CLEARING, -realized_pnl), (AccountKind.FEE_INCOME, fees),
                                 (AccountKind.DELIVERY_CLEARING, realized_pnl - fees)) if amount]
    if legs:
        ledger_post(kind=TransactionKind.DELIVERY, legs=legs, idempotency_key=f"{idempotency_key(contract)}:results",
                    memo=f"Delivery {contract.symbol}: the chunks' PnL and fees", created_by=requested_by,
                    reference={"symbol": contract.symbol, "realized_pnl": str(realized_pnl), "fees": str(fees)})
    _done(run=run, contract=contract, now=now, requested_by=requested_by, realized_pnl=realized_pnl, fees=fees,
          covered=run.covered + chunks["covered"], bad_debt=run.bad_debt + chunks["bad_debt"])


# -- listing and the roll ------------------------------------------------------------------

# Copied from the template; the rest is the new contract's own.
_NOT_COPIED = {"id", "symbol", "status", "contract_type", "delivery_time", "settlement_price", "onboard_time",
               "created_at", "updated_at"}


def delivery_list(*, base_symbol: str, delivery_time: datetime, now: datetime | None = None,
                  template: Contract | None = None) -> Contract:
    """List `<BASE>_<YYMMDD>` delivering at `delivery_time`, with the spec, tiers and index of a template.

    The template defaults to the base's latest delivery contract, else its perpetual.
    The new contract is PENDING with onboard time `now`: the next scheduler run opens it.
    """
    now = now or timezone.now()
    if delivery_time.tzinfo is None:
        raise DeliveryError("The delivery time needs a time zone (UTC).")
    if delivery_time <= now + CLOSE_ONLY_BEFORE:
        raise DeliveryError(f"The delivery time {delivery_time:%Y-%m-%d %H:%M} UTC is too close or past: "
                            f"it must be more than {int(CLOSE_ONLY_BEFORE.total_seconds() // 60)} minutes ahead.")
    symbol = delivery_symbol(base_symbol, delivery_time)
    template = template or _template_of(base_symbol)
    if template is None:
        raise DeliveryError(f"No contract of {base_symbol} to copy the specification from.")
    if Contract.objects.filter(symbol=symbol).exists():
        raise DeliveryError(f"{symbol} is already listed.")
    fields = {f.attname: getattr(template, f.attname) for f in Contract._meta.concrete_fields
              if f.attname not in _NOT_COPIED}
    with transaction.atomic():
        contract = Contract.objects.create(symbol=symbol, contract_type=ContractType.DELIVERY, status=S.PENDING,
                                           delivery_time=delivery_time, onboard_time=now, **fields)
        MarginTier.objects.bulk_create(
            MarginTier(contract=contract, bracket=t.bracket, notional_floor=t.notional_floor,
                       notional_cap=t.notional_cap, maintenance_rate=t.maintenance_rate,
                       maintenance_amount=t.maintenance_amount, max_leverage=t.max_leverage)
            for t in template.margin_tiers.all()
        )
        constituents = [IndexConstituent(contract=contract, venue=c.venue, source_symbol=c.source_symbol,
                                         weight=c.weight, enabled=c.enabled)
                        for c in IndexConstituent.objects.filter(contract=template)]
        if constituents:
            IndexConstituent.objects.bulk_create(constituents)
        else:
            constituents_ensure_default(contract=contract)
    logger.info("listed %s (delivery %s)", symbol, delivery_time.isoformat())
    return contract


def _base_of(symbol: str) -> str:
    return symbol.split("_", 1)[0]


def _template_of(base_symbol: str) -> Contract | None:
    latest = (Contract.objects.filter(contract_type=ContractType.DELIVERY, symbol__startswith=f"{base_symbol}_")
              .order_by("-delivery_time").first())
    if latest is not None:
        return latest
    return Contract.objects.filter(symbol=base_symbol, contract_type=ContractType.PERPETUAL).first()


def delivery_roll(*, now: datetime | None = None) -> list[Contract]:
    """Keep the current and the next quarterly listed for every base that has delivery contracts."""
    if not settings.DELIVERY_ROLL_ENABLED:
        return []
    now = now or timezone.now()
    # Every symbol in one read (a few per base and year): the bases, and what is listed already.
    rows = list(Contract.objects.values_list("symbol", "contract_type"))
    existing = {symbol for symbol, _ in rows}
    listed = []
    for base in sorted({_base_of(s) for s, kind in rows if kind == ContractType.DELIVERY}):
        for expiry in quarterly_expiries_after(now, count=2):
            if expiry <= now + CLOSE_ONLY_BEFORE or delivery_symbol(base, expiry) in existing:
                continue
            listed.append(delivery_list(base_symbol=base, delivery_time=expiry, now=now))
    return listed


def parse_delivery_date(value: str) -> datetime:
    """`YYYY-MM-DD` → that day at the default delivery time of day (08:00 UTC)."""
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError as exc:
        raise DeliveryError(f"Invalid delivery date {value!r}: expected YYYY-MM-DD.") from exc
    return datetime.combine(day, DELIVERY_TIME_OF_DAY).astimezone(dt_timezone.utc)


def _alert(key: str, level: str, message: str, details: dict) -> None:
    try:
        from apps.ops.alerts import alert_raise

        alert_raise(key=key, level=level, message=message, details=details)
    except Exception:
        logger.exception("raising alert %s failed", key)
