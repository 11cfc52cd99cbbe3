"""Delivery settlement benchmark: settle a delivery contract with N open positions, positions/s.

    .venv/bin/python bench/delivery.py [--positions 1000000] [--baseline 1000]

Creates a throw-away database (`<DATABASE_URL's database>_bench_delivery`) with the demo contracts, N users with
funded wallets and one open position each in the demo's quarterly BTC contract (half
long, half short, equal open interest, cross margin), and a baseline quarterly ETH
contract with `--baseline` positions held by the first users. Both contracts are put
at their delivery time (SETTLING) with an hour of per-minute venue prices, then
`delivery_settle` (price with audit; the plan; the positions closed with their postings and
income lines, in chunks of DELIVERY_CHUNK_POSITIONS booked DELIVERY_SETTLE_WORKERS at a time,
or in the plan's one transaction when they fit one chunk: run with
DELIVERY_CHUNK_POSITIONS=2000000 to compare; contract SETTLED) is timed for the baseline and
for the N positions in the same run, followed by the idempotent second call. Prints where
the time went, the ratio to the baseline, how long a concurrent 2-leg posting on settled
users' wallets waited, the invariants and the open interest left. The setup ends with
VACUUM ANALYZE, as autovacuum would have run long before a contract delivers (as in
bench/funding.py), and a CHECKPOINT: the positions of a real delivery were opened over weeks,
not written a second before it, so the checkpointer is not still flushing them meanwhile (skipped,
with a note, for a role that may not checkpoint). --statements N prints the N slowest statements of the N-position
settlement, summed per statement over every connection that ran it (the chunks' threads
included), with the PostgreSQL backends' CPU seconds (a figure other load on a shared
machine does not stretch); --trace adds the plans of the settling connection's statements
(auto_explain) to a file.
"""
import argparse
import os
import sys
import time
from contextlib import nullcontext
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import (  # noqa: E402
    bench_database_name,
    clock_steps,
    cpu_seconds,
    ensure_services,
    machine_line,
    peak_rss_mb,
    server_cpu_seconds,
    statements_traced,
)

D = Decimal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=1_000_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--keep", action="store_true", help="keep the throw-away database (to look into it)")
    parser.add_argument("--trace", help="write each statement's time and the EXPLAIN ANALYZE of the slow ones "
                                        "of the N-position settlement to this file (slows that run down)")
    parser.add_argument("--statements", type=int, default=0, metavar="N",
                        help="print the N slowest statements of the N-position settlement (wall and backend CPU)")
    args = parser.parse_args()
    if args.positions < 2 or args.baseline < 2 or args.baseline > args.positions:
        parser.error("need 2 <= baseline <= positions")

    ensure_services()
    DB_NAME = bench_database_name("delivery")
    os.environ["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    os.environ["TEST_DATABASE_NAME"] = DB_NAME
    import django

    django.setup()
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        run(args)
    finally:
        connection.close()
        if not args.keep:
            connection.creation.destroy_test_db(DB_NAME, verbosity=0)


def due_now(contract, now) -> None:
    """Put a contract at its delivery time with an hour of minute prices from its index venues."""
    from apps.contracts.models import Contract, ContractStatus
    from apps.marketdata.models import PriceMinute
    from apps.marketdata.services import constituents_ensure_default

    delivery = now.replace(second=0, microsecond=0) - timedelta(minutes=1)
    Contract.objects.filter(pk=contract.pk).update(delivery_time=delivery, status=ContractStatus.SETTLING)
    contract.refresh_from_db()
    venues = [c.venue for c in constituents_ensure_default(contract=contract) if c.enabled]
    PriceMinute.objects.bulk_create(
        PriceMinute(contract=contract, minute=delivery - timedelta(minutes=60 - i), index_price=D("50000"),
                    mark_price=D("50000"),
                    venues={v: {"price": str(D("50000") + 7 * i + 3 * k), "volume": str(10 + k), "quotes": 1,
                                "last_ts": 0} for k, v in enumerate(venues)})
        for i in range(60)
    )


def run(args) -> None:
    from django.db import connection
    from django.utils import timezone

    from apps.contracts.models import Contract, ContractType
    from apps.ledger.invariants import LEDGER_CHECKS
    from apps.settlement.invariants import SETTLEMENT_CHECKS
    from apps.ops.demo import seed_demo
    from apps.settlement import delivery
    from django.conf import settings

    from bench.funding import WriterProbe, create_users, fund_wallets, open_positions, wallets_of

    seed_demo()
    now = timezone.now()
    btc = Contract.objects.get(contract_type=ContractType.DELIVERY, symbol__startswith="BTCUSDT_")
    eth = delivery.delivery_list(base_symbol="ETHUSDT", delivery_time=btc.delivery_time, now=now)

    started = time.perf_counter()
    user_ids = create_users(args.positions)
    wallets = wallets_of(user_ids)
    fund_wallets(wallets)
    open_positions(btc, user_ids)
    open_positions(eth, user_ids[: args.baseline])
    for contract in (btc, eth):
        due_now(contract, now)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")  # as autovacuum would have after the setup's bulk writes
    checkpoint()
    setup_s = time.perf_counter() - started

    # Where the time goes: the steps `delivery_settle` calls (module attributes, looked up per call):
    # the plan (`_settle`: its rows, then booked at once or stored as chunks) and booking the chunks.
    spent = clock_steps(delivery, ("settlement_price_compute", "_rows_stage", "_plan_stage", "_settle",
                                   "delivery_chunks_book", "_chunked_done"))

    cpus: list[tuple[float | None, float]] = []  # (PostgreSQL backend, this process) CPU seconds per call

    statements: list[tuple[float, float | None, str]] = []  # (wall s, backend CPU s, SQL) of the N-position run
    chunk_book = delivery._chunk_book

    def chunk_book_clocked(**kwargs):
        with connection.execute_wrapper(statement_clock(connection, statements)):
            return chunk_book(**kwargs)

    def timed(contract, trace=None, per_statement=False, probe=None):
        spent.clear()
        contract = Contract.objects.select_related("settle_asset").get(pk=contract.pk)
        clock = connection.execute_wrapper(statement_clock(connection, statements)) if per_statement else nullcontext()
        if per_statement:  # and each chunk's, on the connection of the thread that books it
            delivery._chunk_book = chunk_book_clocked
        cpu0, server0 = cpu_seconds(connection), server_cpu_seconds()
        t0 = time.perf_counter()
        try:
            with statements_traced(connection, trace) if trace else nullcontext(), clock, probe or nullcontext():
                result = delivery.delivery_settle(contract=contract, now=timezone.now())
        finally:
            delivery._chunk_book = chunk_book
        seconds = time.perf_counter() - t0
        cpu1, server1 = cpu_seconds(connection), server_cpu_seconds()
        cpus.append((None if server0 is None else server1 - server0, cpu1[1] - cpu0[1]))
        return result, seconds, dict(spent)

    base, base_s, _ = timed(eth)
    # Transfers between wallets of users the delivery settles (BTC holders only): what an order's
    # margin hold would do meanwhile, and how long it waits for the delivery's balance locks.
    probe = WriterProbe(wallets[args.baseline:])
    main_run, main_s, parts = timed(btc, open(args.trace, "w") if args.trace else None, bool(args.statements),
                                    probe)
    _, again_s, _ = timed(btc)
    violations = [str(v) for check in (*LEDGER_CHECKS, *SETTLEMENT_CHECKS) for v in check()]
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM positions_position WHERE contract_id IN (%s, %s) AND size <> 0",
                       [btc.pk, eth.pk])
        still_open = cursor.fetchone()[0]

    print(f"delivery bench: settle one delivery contract (setup {setup_s:.1f} s)")
    for label, result, seconds in (("baseline ETH", base, base_s), ("BTC quarterly", main_run, main_s)):
        print(f"  {label:14s} {result.positions:>9,d} positions in {seconds:7.2f} s = "
              f"{result.positions / seconds:10,.0f} positions/s  (price {result.settlement_price.normalize():f}, "
              f"status {result.status}, fees {result.fees.normalize():f})")
    mode = (f"{main_run.chunks} chunks, {settings.DELIVERY_SETTLE_WORKERS} at a time" if main_run.chunks
            else "one transaction")
    inner = {"_rows_stage": " (in _settle; in a chunked plan, of its isolated positions)",
             "_plan_stage": " (in _settle)"}
    breakdown = ", ".join(f"{name} {seconds:.2f} s{inner.get(name, '')}" for name, seconds in parts.items())
    outside = main_s - sum(seconds for name, seconds in parts.items() if name not in inner)
    print(f"  BTC ({mode}) steps: {breakdown}; rest (run rows, commits) {outside:.2f} s")
    server_cpu, client_cpu = cpus[1]
    server = f"{server_cpu:.2f} s" if server_cpu is not None else "n/a (remote server)"
    print(f"  BTC CPU: PostgreSQL {server} (all its processes), this process {client_cpu:.2f} s")
    print(f"  a concurrent writer meanwhile (2-leg postings between settled users' wallets): {probe.summary()}")
    print(f"  ratio: {main_run.positions / main_s / (base.positions / base_s):.2f}x the baseline's positions/s")
    print(f"  second call (no-op): {again_s * 1000:.1f} ms")
    print(f"  open positions left: {still_open}; ledger invariants: {'ok' if not violations else violations}")
    print(f"  peak RSS {peak_rss_mb():.0f} MiB")
    if args.statements:
        # Summed per statement text (each chunk runs the same ones; wall times of parallel chunks add up).
        totals: dict[str, list] = {}
        for wall, cpu, sql in statements:
            total = totals.setdefault(sql[:110], [0.0, 0.0, 0])
            total[0] += wall
            total[1] = None if cpu is None or total[1] is None else total[1] + cpu
            total[2] += 1
        print(f"  BTC slowest statements (of {len(statements)}, summed over the connections that ran them):")
        for sql, (wall, cpu, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:args.statements]:
            cpu_text = f"{cpu:6.2f}" if cpu is not None else "   n/a"
            print(f"    {wall:6.2f} s wall {cpu_text} s cpu {count:4d}x  {sql}")
    print(machine_line())


def checkpoint() -> None:
    """Flush the setup's writes (superuser or pg_checkpoint only; otherwise say so)."""
    from django.db import DatabaseError, connection, transaction

    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
    except DatabaseError as exc:
        print(f"  (no CHECKPOINT after the setup: {str(exc).strip()})")


def statement_clock(connection, into: list):
    """An execute wrapper adding (wall seconds, backend CPU seconds or None, SQL) of each statement to `into`.

    The backend's CPU is read from /proc (a server on this machine, as `cpu_seconds`; None otherwise)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    tick = os.sysconf("SC_CLK_TCK")

    def backend_cpu() -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            return None

    def wrapper(execute, sql, params, many, context):
        cpu0, t0 = backend_cpu(), time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            cpu1 = backend_cpu()
            cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
            into.append((time.perf_counter() - t0, cpu, " ".join(sql.split())))
    return wrapper


if __name__ == "__main__":
    main()
