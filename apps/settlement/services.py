"""Funding writes: premium sampling and the zero-sum settlement of (contract, funding time).

Sampling (`premium_samples_take`, every `FUNDING_SAMPLE_SECONDS` from beat) stores
one `PremiumSample` per perpetual and slot and refreshes the cached predicted rate.

Settlement (`funding_settle`) of one (contract, funding time):
1. the `FundingSettlement` row is created (unique per contract and time) and locked
   FOR UPDATE, so a second runner (two beats, a manual "settle now") waits, then sees
   DONE and returns without touching anything;
2. the plan (`_plan`, in that transaction): the rate of the interval from its samples
   (`selectors.rate_quote`, written to the `FundingRate` history), the mark (the last
   stored before the funding time), and every open position's payment
   (`formulas.payment`, run as `formulas.PAYMENT_SQL` over all positions in one
   statement, into the temporary table `funding_payments`) to its margin account: the
   WALLET for cross positions, the position's ISOLATED_MARGIN account for isolated ones
   (as the reference exchange does: isolated funding moves the isolated margin);
3. up to `FUNDING_CHUNK_POSITIONS` positions are booked in that same transaction (key
   `funding:<SYMBOL>:<funding ms>`). More are stored as `FundingChunk`s of that many
   payments, committed, then booked one transaction per chunk (key `...:<chunk>`),
   `FUNDING_SETTLE_WORKERS` at a time (`funding_chunks_book`); the run is DONE once all are;
4. a booking (`_book`) is ONE ledger posting whose legs the ledger reads from
   `funding_payments` (`ledger_post_staged`): a leg per account and one FUNDING_CLEARING
   leg of −Σ payments; the rounding dust (what the payers paid minus what the receivers
   got, a few 1e-8 per position at most) stays in FUNDING_CLEARING, the one documented
   dust account, and is recorded on the run. Its income lines (`Income` FUNDING_FEE, one
   INSERT ... SELECT) are written in the posting, before its balances move;
5. the posting is tried as it is: the ledger refuses it (and rolls it back) when a payer's
   account cannot pay in full; then the balance table is locked, the short payers (found
   in SQL) are covered by the insurance fund, then bad debt — the rule of
   `apps.positions.booking` (`deficits_cover`), reused — and it is posted again.
Nothing per position passes through Python: payments, legs, sums and income lines are
SQL over all positions (bench/funding.py).
A crash rolls back the transaction under way only: a plan or a single booking is redone
from scratch, booked chunks stay booked and the next run (the beat every minute retries
due times, oldest first) books the rest from the stored plan, so each position is charged
exactly once, at the planned rate. Failures mark the run FAILED and raise
`job_failure:funding:<SYMBOL>`.

Positions are those open when the settlement runs; for a funding time settled late
(scheduler down) that is the positions at catch-up time, at the rate and mark of the
missed interval (the system keeps no position history to do better).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from apps.contracts.models import Contract, FundingPolicy
from apps.ledger.errors import InsufficientBalance
from apps.ledger.models import AccountKind, Income, IncomeType, TransactionKind
from apps.ledger.services import (
    INCOME_USERS_FROM_POSITIONS,
    STAGED_SETTINGS_SQL,
    STAGED_WORK_MEM,
    Posting,
    accounts_for_users,
    balances_lock,
    balances_lock_all,
    ledger_post_staged,
    system_account,
)
from apps.marketdata.engine.quotes import to_ms
from apps.marketdata.models import PriceSample
from apps.marketdata.selectors import price_latest
from apps.positions.booking import deficits_cover as cover_deficits, wallets_backing
from exchange.errors import ErrorCode, ExchangeError
from exchange.pgbulk import PARALLEL_CTAS, settings_local
from exchange.redis import get_redis

from . import formulas
from .chunks import INCOME_TURN, chunks_book
from .models import FundingChunk, FundingRate, FundingSettlement, PremiumSample, SettlementStatus
from .selectors import (
    PREDICTED_KEY,
    PREDICTED_TTL_SECONDS,
    funding_contracts,
    funding_interval,
    funding_time_is_valid,
    funding_time_of,
    funding_times_due,
    impact_prices,
    predicted_to_json,
    rate_quote,
    sample_seconds,
)

logger = logging.getLogger(__name__)
# A price snapshot older than this is not sampled (the pricefeed is down).
SAMPLE_PRICE_MAX_AGE = timedelta(seconds=60)


class FundingError(ExchangeError):
    code = ErrorCode.INVALID_PARAMETER


def idempotency_key(*, contract: Contract, funding_time: datetime) -> str:
    return f"funding:{contract.symbol}:{to_ms(funding_time)}"


# -- sampling --------------------------------------------------------------------------------


def premium_sample_take(*, contract: Contract, now: datetime) -> PremiumSample | None:
    """Store this slot's premium of one perpetual (None when there is nothing to sample)."""
    if not contract.is_perpetual:
        return None
    funding_time = funding_time_of(contract=contract, at=now)
    start = funding_time - funding_interval(contract)
    slot = int((now - start).total_seconds() // sample_seconds()) + 1
    snapshot = price_latest(contract=contract)
    if snapshot is None or now - snapshot.at > SAMPLE_PRICE_MAX_AGE:
        return None
    row = PremiumSample(contract=contract, funding_time=funding_time, slot=slot, at=now,
                        policy=contract.funding_policy)
    if contract.funding_policy == FundingPolicy.IMPACT:
        row.impact_bid, row.impact_ask = impact_prices(contract=contract)
        row.index_price = snapshot.index_price
        row.premium = formulas.premium_impact(impact_bid=row.impact_bid, impact_ask=row.impact_ask,
                                              index_price=snapshot.index_price)
    else:
        from apps.trading.prices import last_price

        contract_price = last_price(contract)
        if contract_price is None:
            return None
        row.contract_price, row.mark_price = contract_price, snapshot.mark_price
        row.premium = formulas.premium_seed(contract_price=contract_price, mark_price=snapshot.mark_price)
    # A second sampler in the same slot stores nothing (unique contract, funding time, slot).
    # Raw: bulk_create's compilation cost more than the statement (a sample every tick).
    with connection.cursor() as cursor:
        cursor.execute(PREMIUM_INSERT_SQL, [contract.pk, funding_time, slot, now, row.policy, row.premium,
                                            row.contract_price, row.mark_price, row.impact_bid, row.impact_ask,
                                            row.index_price])
    return row


PREMIUM_INSERT_SQL = f"""
INSERT INTO {PremiumSample._meta.db_table} (contract_id, funding_time, slot, at, policy, premium, contract_price,
                                            mark_price, impact_bid, impact_ask, index_price)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""


def premium_samples_take(*, now: datetime | None = None) -> int:
    """Sample every funding perpetual and refresh its cached predicted rate; returns rows stored."""
    now = now or timezone.now()
    stored = 0
    cache: list[tuple[str, str]] = []
    for contract in funding_contracts():
        try:
            if premium_sample_take(contract=contract, now=now) is not None:
                stored += 1
            quote = rate_quote(contract=contract, funding_time=funding_time_of(contract=contract, at=now))
            cache.append((PREDICTED_KEY.format(symbol=contract.symbol), predicted_to_json(contract=contract, quote=quote)))
        except Exception:
            logger.exception("premium sample failed for %s", contract.symbol)
    if cache:
        transaction.on_commit(lambda: _cache_predicted(cache))
    return stored


def _cache_predicted(items: list[tuple[str, str]]) -> None:
    try:
        pipe = get_redis().pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, ex=PREDICTED_TTL_SECONDS)
        pipe.execute()
    except Exception:
        logger.warning("caching predicted funding rates failed", exc_info=True)


def premium_samples_prune(*, older_than: timedelta, now: datetime | None = None) -> int:
    """Drop samples of intervals that ended before now − older_than (rates keep their inputs)."""
    cutoff = (now or timezone.now()) - older_than
    deleted, _ = PremiumSample.objects.filter(funding_time__lt=cutoff).delete()
    return deleted


# -- settlement ------------------------------------------------------------------------------


def funding_settle(*, contract: Contract, funding_time: datetime, now: datetime | None = None,
                   requested_by=None) -> FundingSettlement:
    """Settle one funding time of one perpetual exactly once; returns its run (DONE).

    Safe to call any number of times, concurrently: a DONE run is returned as it is, and the
    chunks of a large run are shared out between the runners (each booked once).
    Raises (after recording FAILED and raising the job-failure alert) when it cannot settle.
    """
    now = now or timezone.now()
    if not contract.is_perpetual:
        raise FundingError(f"{contract.symbol} is not a perpetual: it does not fund.")
    if funding_time.tzinfo is None or not funding_time_is_valid(contract=contract, funding_time=funding_time):
        raise FundingError(f"{funding_time.isoformat()} is not a funding time of {contract.symbol} "
                           f"(every {contract.funding_interval_hours} h from 00:00 UTC).")
    if funding_time > now:
        raise FundingError(f"Funding time {funding_time.isoformat()} of {contract.symbol} has not come yet.")
    # In order: an earlier time left unsettled would never be (the beat goes on from the last one
    # settled), and the seed policy's smoothing needs the previous interval's rate.
    earlier = funding_times_due(contract=contract, now=funding_time - timedelta(microseconds=1), max_catch_up=1)
    if earlier:
        raise FundingError(f"Funding time {earlier[0].isoformat()} of {contract.symbol} is not settled yet: "
                           "funding times are settled in order.")
    run, _ = FundingSettlement.objects.get_or_create(contract=contract, funding_time=funding_time)
    if run.status == SettlementStatus.DONE:
        return run
    try:
        with transaction.atomic(durable=True):
            run = FundingSettlement.objects.select_for_update().get(pk=run.pk)
            if run.status == SettlementStatus.DONE:  # another runner finished while we waited
                return run
            if not run.chunks:  # not planned yet (a failed run rolled its plan back)
                _plan(run=run, contract=contract, funding_time=funding_time, now=now, requested_by=requested_by)
        if run.chunks:
            run.refresh_from_db()
            funding_chunks_book(run=run, contract=contract, requested_by=requested_by)
            with transaction.atomic(durable=True):
                run = FundingSettlement.objects.select_for_update().get(pk=run.pk)
                if run.status != SettlementStatus.DONE:
                    _chunked_done(run=run, now=now, requested_by=requested_by)
    except Exception as exc:
        FundingSettlement.objects.filter(pk=run.pk).exclude(status=SettlementStatus.DONE).update(
            status=SettlementStatus.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], attempts=F("attempts") + 1,
        )
        _alert_failure(contract=contract, funding_time=funding_time, exc=exc)
        raise
    run.refresh_from_db()
    return run


def _alert_failure(*, contract: Contract, funding_time: datetime, exc: Exception) -> None:
    try:
        from apps.ops.alerts import alert_raise

        alert_raise(
            key=f"job_failure:funding:{contract.symbol}", level="CRITICAL",
            message=f"Funding settlement of {contract.symbol} at {funding_time:%Y-%m-%d %H:%M} UTC failed: {exc}",
            details={"symbol": contract.symbol, "funding_time": to_ms(funding_time), "error": str(exc)[:500]},
        )
    except Exception:
        logger.exception("raising the funding failure alert failed")


def _mark_at(*, contract: Contract, funding_time: datetime) -> Decimal:
    """The last stored mark before the funding time, within the interval (fixed once the time has passed)."""
    mark = (
        PriceSample.objects.filter(contract=contract, at__lt=funding_time,
                                   at__gte=funding_time - funding_interval(contract))
        .order_by("-at").values_list("mark_price", flat=True).first()
    )
    if mark is None:
        raise FundingError(f"No mark price of {contract.symbol} in the interval before {funding_time.isoformat()}.")
    return mark


# Every open position's payment, computed once in PostgreSQL (`formulas.PAYMENT_SQL`,
# exact and half-even) with its margin account: the WALLET for cross, the position's
# ISOLATED_MARGIN account for isolated (NULL when the account does not exist yet), and
# what covers it when its owner cannot pay in full (`cover`, set for those few only).
# Rows in user order: the income lines are then written in the order of their index
# (user, time), and the ledger's entries and balances (wallets are created with their
# users) nearly so, each leaf page filled once rather than revisited at random.
PAYMENTS_SQL = f"""
CREATE TEMP TABLE funding_payments ON COMMIT DROP AS
SELECT p.user_id, p.margin_type = 'ISOLATED' AS isolated, a.id AS account_id,
       {formulas.PAYMENT_SQL} AS amount, 0::numeric AS cover
FROM positions_position p
{formulas.PAYMENT_SQL_FROM}
LEFT JOIN ledger_account a
  ON a.user_id = p.user_id
 AND a.kind = CASE WHEN p.margin_type = 'ISOLATED' THEN 'ISOLATED_MARGIN' ELSE 'WALLET' END
 AND a.contract_id IS NOT DISTINCT FROM CASE WHEN p.margin_type = 'ISOLATED' THEN p.contract_id END
WHERE p.contract_id = %(contract)s AND p.size <> 0
ORDER BY p.user_id
"""
# The statement above only reads shared tables until its rows are written, so PostgreSQL may
# read and join them with parallel workers (the other core: its hash join and the payment of
# a million positions are most of its time), the leader writing the rows in order (Gather
# Merge; `PARALLEL_CTAS`).

# What the payers pay and the receivers get (positive sums), of all the payments or of the chunks.
TOTALS_SQL = """
SELECT COALESCE(-sum(amount) FILTER (WHERE amount < 0), 0), COALESCE(sum(amount) FILTER (WHERE amount > 0), 0)
FROM funding_payments
"""
CHUNKS_TOTALS_SQL = f"""
SELECT COALESCE(sum(paid), 0), COALESCE(sum(received), 0) FROM {FundingChunk._meta.db_table} WHERE run_id = %s
"""

# The posting's legs: one per paying or receiving position (one position per user and
# contract: one per margin account), and the system accounts' (FUNDING_CLEARING: −Σ; the
# covers' insurance fund and bad debt) as array parameters. Until a payer is covered every
# cover is 0: the first try reads the payments alone (LEGS_SQL), the second adds the covers.
LEGS_SYSTEM = """
UNION ALL
SELECT s.account_id, %s::bigint, s.amount
FROM unnest(%s::bigint[], %s::numeric[]) AS s(account_id, amount) WHERE s.amount <> 0
"""
# The positions' legs come in account order, the system legs last: the order a chunk locks them.
LEGS_SQL = """
(SELECT f.account_id, %s::bigint AS asset_id, f.amount
 FROM pg_temp.funding_payments f WHERE f.amount <> 0 ORDER BY f.account_id)
""" + LEGS_SYSTEM
LEGS_COVERED_SQL = """
(SELECT f.account_id, %s::bigint AS asset_id, f.amount + f.cover AS amount
 FROM pg_temp.funding_payments f WHERE f.amount + f.cover <> 0 ORDER BY f.account_id)
""" + LEGS_SYSTEM

# The payers that cannot pay in full (their balance, and what they owe), once the balances are locked.
SHORT_SQL = """
SELECT f.user_id, f.account_id, COALESCE(b.amount, 0), f.amount, f.isolated
FROM pg_temp.funding_payments f
LEFT JOIN ledger_balance b ON b.account_id = f.account_id AND b.asset_id = %s
WHERE f.amount < 0 AND COALESCE(b.amount, 0) + f.amount < 0 AND NOT COALESCE(b.may_go_negative, false)
ORDER BY f.account_id
"""

# The hash joins over every position and account stay in memory, and no JIT (this transaction only).
SETTLE_WORK_MEM = STAGED_WORK_MEM


def _payments(*, contract: Contract, mark: Decimal, rate: Decimal) -> int:
    """Fill `funding_payments` (one statement); returns the number of positions."""
    params = formulas.payment_sql_params(mark_price=mark, rate=rate, contract_size=contract.contract_size,
                                         precision=contract.settle_asset.precision)
    with connection.cursor() as cursor:
        cursor.execute(STAGED_SETTINGS_SQL, [SETTLE_WORK_MEM])
        with settings_local(cursor, **PARALLEL_CTAS):
            cursor.execute(PAYMENTS_SQL, {**params, "contract": contract.pk})
            positions = cursor.rowcount
        cursor.execute("SELECT EXISTS (SELECT FROM funding_payments WHERE account_id IS NULL)")
        if cursor.fetchone()[0]:  # first funding of a user without that account: created, as the old per-row path did
            cursor.execute("SELECT DISTINCT user_id, isolated FROM funding_payments WHERE account_id IS NULL")
            missing = cursor.fetchall()
            cross = accounts_for_users(kind=AccountKind.WALLET, user_ids=[u for u, iso in missing if not iso])
            iso = accounts_for_users(kind=AccountKind.ISOLATED_MARGIN, user_ids=[u for u, iso in missing if iso],
                                     contract=contract)
            found = [(u, iso_, (iso if iso_ else cross)[u]) for u, iso_ in missing]
            cursor.execute(
                """
                UPDATE funding_payments f SET account_id = t.account_id
                FROM unnest(%s::bigint[], %s::boolean[], %s::bigint[]) AS t(user_id, isolated, account_id)
                WHERE f.account_id IS NULL AND f.user_id = t.user_id AND f.isolated = t.isolated
                """,
                [[u for u, _, _ in found], [i for _, i, _ in found], [a for _, _, a in found]],
            )
        return positions


def _cover_short(*, system: dict[int, Decimal], asset) -> Decimal:
    """Cover the payers that cannot pay in full; returns what the insurance fund and bad debt paid.

    Called with the balance table locked (`balances_lock_all`); the short payers come back from
    SQL and are covered by the one rule of apps.positions.booking (`deficits_cover`): a cross
    payer borrows against the order margin it holds, then the insurance fund pays, then bad
    debt; an isolated position's margin has only the fund behind it. Their top-ups go into
    `funding_payments.cover`; the fund's, bad debt's and receivables' legs into `system`.
    """
    fund = system_account(AccountKind.INSURANCE_FUND).pk
    bad_debt = system_account(AccountKind.BAD_DEBT).pk
    with connection.cursor() as cursor:
        current = balances_lock(account_ids=[*system, fund, bad_debt], asset=asset)  # (the table is ours: reads them)
        cursor.execute(SHORT_SQL, [asset.pk])
        short = cursor.fetchall()
    wallets = {user_id: account for user_id, account, _, _, _ in short}
    delta: dict[int, Decimal] = defaultdict(Decimal, {account: amount for _, account, _, amount, _ in short})
    current.update((account, balance) for _, account, balance, _, _ in short)
    delta[fund] = system.get(fund, Decimal(0))
    delta[bad_debt] = system.get(bad_debt, Decimal(0))
    backed = wallets_backing(wallets={u: a for u, a, _, _, isolated in short if not isolated}, asset=asset,
                             current=current)
    covers = cover_deficits(wallets=wallets, delta=delta, current=current, fund=fund, bad_debt=bad_debt,
                            backing=backed.backing, receivable_for=backed.receivable_for)
    system[fund], system[bad_debt] = delta[fund], delta[bad_debt]
    for receivable in backed.receivables:
        system[receivable] = system.get(receivable, Decimal(0)) + delta[receivable]
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE funding_payments f SET cover = t.cover FROM unnest(%s::bigint[], %s::numeric[]) AS t(account_id, cover)"
            " WHERE f.account_id = t.account_id",
            [[account for _, account, _, _, _ in short], [delta[account] - amount for _, account, _, amount, _ in short]],
        )
    return sum((fund_part + debt for fund_part, debt in covers.values()), Decimal(0))


def _plan(*, run: FundingSettlement, contract: Contract, funding_time: datetime, now: datetime,
          requested_by) -> None:
    """Fix the interval's rate and mark and every open position's payment (the rate goes into the
    history now); book them here when they fit one chunk, otherwise store them as the run's chunks."""
    quote = rate_quote(contract=contract, funding_time=funding_time)
    mark = _mark_at(contract=contract, funding_time=funding_time)
    rate = quote.rate
    positions = _payments(contract=contract, mark=mark, rate=rate)
    FundingRate.objects.create(
        contract=contract, funding_time=funding_time, funding_rate=rate, mark_price=mark,
        policy=quote.policy, premium_index=quote.premium_index if quote.premium_index is not None else 0,
        interest_rate=contract.interest_rate, samples=quote.samples,
    )
    size = settings.FUNDING_CHUNK_POSITIONS
    with connection.cursor() as cursor:
        if positions <= size:
            cursor.execute("ANALYZE funding_payments")  # for the plans of the posting and a cover
            cursor.execute(TOTALS_SQL)
        else:
            cursor.execute(CHUNKS_INSERT_SQL, {"run": run.pk, "size": size})
            run.chunks = cursor.rowcount
            cursor.execute(CHUNKS_TOTALS_SQL, [run.pk])
        paid, received = cursor.fetchone()
    fixed = {"funding_rate": rate, "mark_price": mark, "positions": positions, "paid": paid, "received": received,
             "dust": paid - received}
    for name, value in fixed.items():
        setattr(run, name, value)
    if positions <= size:
        txn_id, covered = _book(run=run, contract=contract, key=idempotency_key(contract=contract, funding_time=funding_time),
                                paid=paid, received=received, requested_by=requested_by)
        FundingSettlement.objects.filter(pk=run.pk).update(
            **fixed, status=SettlementStatus.DONE, covered=covered, ledger_transaction_id=txn_id,
            attempts=F("attempts") + 1, error="", finished_at=now,
            requested_by=requested_by if requested_by is not None else run.requested_by,
        )
    else:
        FundingSettlement.objects.filter(pk=run.pk).update(**fixed, status=SettlementStatus.SETTLING, chunks=run.chunks)
    with connection.cursor() as cursor:  # ON COMMIT DROP, unless an outer transaction goes on (tests)
        cursor.execute("DROP TABLE funding_payments")


def _book(*, run: FundingSettlement, contract: Contract, key: str, paid: Decimal, received: Decimal,
          requested_by, chunk: int | None = None) -> tuple[int | None, Decimal]:
    """Book `funding_payments` (one posting, key `key`) and its income lines; returns (transaction, covered).

    The posting locks each balance as it moves it (`ledger_post_staged(concurrent=True)`): the
    positions' margin accounts in account order, as every poster locks them, then
    FUNDING_CLEARING, which only funding moves, from the end of the move to the commit. So
    several chunks (and contracts) settle side by side, and order entry and the matcher wait
    at most for one chunk, never for a whole settlement.
    """
    asset = contract.settle_asset
    # The posting balances: FUNDING_CLEARING takes −Σ payments, which leaves the rounding dust there.
    system = {system_account(AccountKind.FUNDING_CLEARING).pk: paid - received}
    covered = Decimal(0)
    funding_time, rate, mark = run.funding_time, run.funding_rate, run.mark_price
    reference = {"symbol": contract.symbol, "funding_time": to_ms(funding_time), "rate": str(rate),
                 "mark_price": str(mark), "positions": run.positions}
    if chunk is not None:
        reference["chunk"] = chunk

    def post(legs_sql: str, concurrent: bool) -> int | None:
        txn = ledger_post_staged(
            posting=Posting(
                kind=TransactionKind.FUNDING,
                legs=(),
                idempotency_key=key,
                memo=f"Funding {contract.symbol} {funding_time:%Y-%m-%d %H:%M} UTC rate {rate} mark {mark}"
                     + (f" chunk {chunk}" if chunk is not None else ""),
                reference=reference,
                created_by_id=requested_by.pk if requested_by is not None else None,
            ),
            legs_sql=legs_sql, params=[asset.pk, asset.pk, list(system), list(system.values())],
            concurrent=concurrent, shared=list(system),
            # The income lines first: in a chunk, the shared clearing balance is then locked only
            # from the end of the move to the commit.
            before_move=lambda txn_id: _incomes_insert(symbol=contract.symbol, asset_id=asset.pk,
                                                       transaction_id=txn_id, at=funding_time),
        )
        return txn.pk if txn is not None else None

    try:
        # Optimistic: every payer can pay (the ledger checks it in the statement that books);
        # the posting is refused, and rolled back, otherwise.
        txn_id = post(LEGS_SQL, True)
    except InsufficientBalance:
        # Rare: the cover reads balances first, so the balance table is locked (the refused
        # posting's row locks went with it; this waits for the postings under way).
        balances_lock_all()
        covered = _cover_short(system=system, asset=asset)
        txn_id = post(LEGS_COVERED_SQL, False)
    return txn_id, covered


# -- chunks: a settlement larger than FUNDING_CHUNK_POSITIONS ---------------------------------------

# The payments as planned, cut into chunks of `size` positions in the order the table holds them:
# user order, so a chunk's users are neighbours in the indexes its lines and entries go to
# (booking an arbitrary partition took ~1 s longer at 1M). A chunk is put in account order
# when it is booked.
CHUNKS_INSERT_SQL = f"""
INSERT INTO {FundingChunk._meta.db_table} (run_id, number, positions, paid, received, covered,
                                           user_ids, isolated, account_ids, amounts)
SELECT %(run)s, n, count(*), COALESCE(-sum(amount) FILTER (WHERE amount < 0), 0),
       COALESCE(sum(amount) FILTER (WHERE amount > 0), 0), 0,
       array_agg(user_id), array_agg(isolated), array_agg(account_id), array_agg(amount)
FROM (SELECT f.*, (row_number() OVER () - 1) / %(size)s AS n FROM funding_payments f) t
GROUP BY n
"""
# One chunk's payments back in `funding_payments`, in account order (the order its posting locks them).
CHUNK_PAYMENTS_SQL = f"""
CREATE TEMP TABLE funding_payments ON COMMIT DROP AS
SELECT t.user_id, t.isolated, t.account_id, t.amount, 0::numeric AS cover
FROM {FundingChunk._meta.db_table} c,
     unnest(c.user_ids, c.isolated, c.account_ids, c.amounts) AS t(user_id, isolated, account_id, amount)
WHERE c.id = %s
ORDER BY t.account_id
"""
def funding_chunks_book(*, run: FundingSettlement, contract: Contract, requested_by=None) -> int:
    """Book the run's chunks not booked yet (`chunks.chunks_book`, `FUNDING_SETTLE_WORKERS` at a
    time); returns how many this call booked."""
    return chunks_book(chunks=FundingChunk.objects.filter(run_id=run.pk), fields=("id", "number", "paid", "received"),
                       book=lambda chunk: _chunk_book(run=run, contract=contract, chunk=chunk,
                                                      requested_by=requested_by),
                       workers=settings.FUNDING_SETTLE_WORKERS, name="funding")


def _chunk_book(*, run: FundingSettlement, contract: Contract, chunk: FundingChunk, requested_by) -> None:
    with connection.cursor() as cursor:
        cursor.execute(STAGED_SETTINGS_SQL, [SETTLE_WORK_MEM])
        # The commit does not wait for its WAL to reach the disk (the WAL writer flushes it within
        # a few hundred ms). Nobody is answered on a chunk's commit, a server crash that loses one
        # loses all of it (the chunk is then booked again), and any later commit that could depend
        # on it (a trade against the new balance) flushes the WAL up to and past it first.
        cursor.execute("SET LOCAL synchronous_commit = off")
        cursor.execute(CHUNK_PAYMENTS_SQL, [chunk.pk])
    key = f"{idempotency_key(contract=contract, funding_time=run.funding_time)}:{chunk.number}"
    txn_id, covered = _book(run=run, contract=contract, key=key, paid=chunk.paid, received=chunk.received,
                            requested_by=requested_by, chunk=chunk.number)
    FundingChunk.objects.filter(pk=chunk.pk).update(
        ledger_transaction_id=txn_id, covered=covered, booked_at=timezone.now(),
        user_ids=[], isolated=[], account_ids=[], amounts=[],  # the income lines and entries hold them now
    )
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE funding_payments")


def _chunked_done(*, run: FundingSettlement, now: datetime, requested_by) -> None:
    left = run.chunk_set.filter(booked_at__isnull=True).count()
    if left:
        raise FundingError(f"{left} of {run.chunks} chunks of {run} are not booked yet.")
    covered = run.chunk_set.aggregate(total=Sum("covered"))["total"]
    FundingSettlement.objects.filter(pk=run.pk).update(
        status=SettlementStatus.DONE, covered=covered, attempts=F("attempts") + 1, error="", finished_at=now,
        requested_by=requested_by if requested_by is not None else run.requested_by,
    )


INCOME_SQL = f"""
INSERT INTO {Income._meta.db_table} (user_id, symbol, income_type, amount, asset_id, info, trade_id,
                                      transaction_id, created_at)
SELECT f.user_id, %(symbol)s, %(kind)s, f.amount, %(asset)s, %(info)s, NULL, %(txn)s, %(at)s
FROM funding_payments f
WHERE f.amount <> 0
"""


def _incomes_insert(*, symbol: str, asset_id: int, transaction_id: int, at: datetime) -> None:
    """One FUNDING_FEE income line per position with a non-zero payment, one statement (its users
    come from positions: the income trigger need not look each one up)."""
    with INCOME_TURN, connection.cursor() as cursor, settings_local(cursor, **{INCOME_USERS_FROM_POSITIONS: "on"}):
        cursor.execute(INCOME_SQL, {
            "symbol": symbol, "kind": IncomeType.FUNDING_FEE, "asset": asset_id, "info": "FUNDING_FEE",
            "txn": transaction_id, "at": at,
        })


def funding_settle_due(*, now: datetime | None = None) -> list[FundingSettlement]:
    """Settle every due funding time of every funding perpetual, oldest first per contract.

    A contract whose settlement fails is left for the next call (its later times wait:
    the EMA needs the earlier rate); the others go on.
    """
    now = now or timezone.now()
    done: list[FundingSettlement] = []
    for contract in funding_contracts():
        for funding_time in funding_times_due(contract=contract, now=now):
            try:
                done.append(funding_settle(contract=contract, funding_time=funding_time, now=now))
            except Exception:
                logger.exception("funding settlement of %s at %s failed", contract.symbol, funding_time)
                break
    return done

