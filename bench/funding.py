"""Funding settlement and ledger posting benchmark: positions/s at several sizes, in one run.

    .venv/bin/python bench/funding.py [--sizes 1000,100000,1000000] [--small 1000] [--profile FILE]

Creates a throw-away database (`<DATABASE_URL's database>_bench_funding`) with the demo contracts and one more
perpetual, max(sizes) users with wallets funded by ONE ledger posting (a leg per wallet:
the large-posting case of the ledger, timed), and for each size one perpetual with that
many open positions (pairs of a long and a short of the same size, so open interest is
balanced; the smallest size is the baseline). Stores an interval of premium samples and a
mark, then times `funding_settle` (rate, payments of every position, ONE ledger posting,
income lines, history row) per contract, smallest first, and prints each one's
positions/s and its ratio to the baseline of the same run. Also times small postings
(a 2-leg transfer, and a 20-leg posting like a matcher batch), one call each, the second
run of a settled funding time (the idempotent no-op) and checks the ledger and funding
invariants. While the largest settlement runs, another connection keeps posting 2-leg
transfers between the settled users' wallets (`WriterProbe`): their longest wait is how long
order entry stalls behind the settlement (FUNDING_CHUNK_POSITIONS larger than the size: the
whole settlement in one transaction, for comparison). --profile writes cProfile stats of the largest settlement and prints the top.
"""
import argparse
import cProfile
import io
import os
from contextlib import nullcontext
import pstats
import sys
import time
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
# Contracts by size, smallest first: the demo perpetuals plus one made here.
SYMBOLS = ("ETHUSDT", "SOLUSDT", "BTCUSDT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000",
                        help="comma-separated position counts, one contract each (at most 3; smallest = baseline)")
    parser.add_argument("--small", type=int, default=1000, help="small postings timed (each kind)")
    parser.add_argument("--profile", help="write cProfile stats of the largest settlement to this file")
    parser.add_argument("--keep", action="store_true", help="keep the throw-away database (to look into it)")
    parser.add_argument("--trace", help="write each statement's time and the EXPLAIN ANALYZE of the slow ones "
                                        "of the largest settlement to this file (slows that run down)")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    if not 1 <= len(sizes) <= len(SYMBOLS) or sizes[0] < 2:
        parser.error(f"need 1 to {len(SYMBOLS)} sizes, each >= 2")

    ensure_services()
    DB_NAME = bench_database_name("funding")
    os.environ["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    os.environ["TEST_DATABASE_NAME"] = DB_NAME
    import django

    django.setup()
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False, serialize=False)
    try:
        run(args, sizes)
    finally:
        connection.close()
        if not args.keep:
            connection.creation.destroy_test_db(DB_NAME, verbosity=0)


def create_users(n: int) -> list[int]:
    """n users and their wallets, in SQL (setup, not what is measured)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO auth_user (username, password, is_superuser, is_staff, is_active, first_name, last_name,
                                   email, date_joined)
            SELECT 'bench' || i, '!', false, false, true, '', '', '', now() FROM generate_series(1, %s) AS i
            RETURNING id
            """,
            [n],
        )
        user_ids = sorted(row[0] for row in cursor.fetchall())
        cursor.execute(
            "INSERT INTO ledger_account (kind, user_id, created_at)"
            " SELECT 'WALLET', u, now() FROM unnest(%s::bigint[]) u",
            [user_ids],
        )
    return user_ids


def wallets_of(user_ids: list[int]) -> list[int]:
    from apps.ledger.models import AccountKind
    from apps.ledger.services import accounts_for_users

    wallets = accounts_for_users(kind=AccountKind.WALLET, user_ids=user_ids)
    return [wallets[u] for u in user_ids]


def fund_wallets(wallets: list[int]) -> float:
    """ONE deposit posting with a leg per wallet (the ledger's large-posting case); seconds."""
    from apps.ledger.models import AccountKind, TransactionKind
    from apps.ledger.services import Leg, Posting, ledger_post_many, system_account

    external = system_account(AccountKind.EXTERNAL).pk
    t0 = time.perf_counter()
    legs = [Leg(a, "USDT", D("10000")) for a in wallets] + [Leg(external, "USDT", D("-10000") * len(wallets))]
    ledger_post_many(postings=[Posting(kind=TransactionKind.DEPOSIT, legs=legs)])
    return time.perf_counter() - t0


def small_postings(wallets: list[int], count: int) -> tuple[float, float]:
    """Seconds per call: a 2-leg transfer (an order hold), a 20-leg posting (a matcher batch)."""
    from apps.ledger.models import TransactionKind
    from apps.ledger.services import Leg, Posting, ledger_post_many

    unit = D("0.01")
    t0 = time.perf_counter()
    for i in range(count):
        a, b = wallets[(2 * i) % len(wallets)], wallets[(2 * i + 1) % len(wallets)]
        ledger_post_many(postings=[Posting(kind=TransactionKind.TRANSFER, legs=[Leg(a, "USDT", -unit),
                                                                               Leg(b, "USDT", unit)])])
    two = (time.perf_counter() - t0) / count
    t0 = time.perf_counter()
    for i in range(count):
        accounts = [wallets[(20 * i + k) % len(wallets)] for k in range(20)]
        legs = [Leg(a, "USDT", unit if k % 2 else -unit) for k, a in enumerate(accounts)]
        ledger_post_many(postings=[Posting(kind=TransactionKind.TRADE, legs=legs)])
    twenty = (time.perf_counter() - t0) / count
    return two, twenty


class WriterProbe:
    """While the largest settlement runs: 2-leg postings (an order's margin hold) between wallets
    of users it settles, one after another on their own connection; how long each waited is
    how long order entry would stall behind the settlement's balance locks."""

    def __init__(self, wallets: list[int]):
        import threading

        self.wallets, self.latencies = wallets, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        from django.db import connection

        from apps.ledger.models import TransactionKind
        from apps.ledger.services import Leg, Posting, ledger_post_many

        unit, i, n = D("0.01"), 0, len(self.wallets)
        try:
            while not self.stop.is_set():
                a, b = self.wallets[(7919 * i) % n], self.wallets[(7919 * i + 1) % n]
                t0 = time.perf_counter()
                ledger_post_many(postings=[Posting(kind=TransactionKind.TRANSFER, legs=[Leg(a, "USDT", -unit),
                                                                                       Leg(b, "USDT", unit)])])
                self.latencies.append(time.perf_counter() - t0)
                i += 1
                time.sleep(0.005)
        finally:
            connection.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def summary(self) -> str:
        if not self.latencies:
            return "no posting finished"
        ordered = sorted(self.latencies)
        return (f"{len(ordered)} postings, p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, "
                f"p99 {ordered[int(len(ordered) * 0.99)] * 1000:.1f} ms, longest wait {ordered[-1] * 1000:.0f} ms")


def extra_perpetual():
    from apps.contracts.models import Contract, ContractStatus, ContractType
    from apps.contracts.services import contract_create, tiers_from_brackets
    from apps.ledger.models import Asset
    from apps.ops.demo import BTC_BRACKETS

    usdt = Asset.objects.get(code="USDT")
    sol, _ = Asset.objects.get_or_create(code="SOL", defaults={"name": "Solana"})
    if not Contract.objects.filter(symbol="SOLUSDT").exists():
        contract_create(tiers=tiers_from_brackets(BTC_BRACKETS), symbol="SOLUSDT",
                        contract_type=ContractType.PERPETUAL, status=ContractStatus.TRADING, base_asset=sol,
                        quote_asset=usdt, settle_asset=usdt, impact_notional=D("25000"))


def open_positions(contract, user_ids: list[int]) -> None:
    """Pairs of users: a long and a short of the same size (0.001 .. 0.997, whole lots of 0.001),
    so OI is balanced. Many distinct sizes, as a real book holds: with a handful, PostgreSQL
    may compute each payment once per size (Memoize) rather than once per position."""
    from django.db import connection

    n = len(user_ids) - len(user_ids) % 2
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO positions_position (user_id, contract_id, size, entry_price, leverage, margin_type,
                                            realized_pnl, updated_at)
            SELECT t.user_id, %s, (CASE WHEN t.i %% 2 = 0 THEN 1 ELSE -1 END) * 0.001 * (1 + ((t.i - 1) / 2) %% 997),
                   50000, 20, 'CROSS', 0, now()
            FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(user_id, i)
            """,
            [contract.pk, user_ids[:n]],
        )


def prepare_prices(contract, funding_time) -> None:
    from apps.marketdata.models import PriceSample
    from apps.settlement.models import PremiumSample

    PriceSample.objects.create(contract=contract, at=funding_time - timedelta(seconds=1), index_price=D("50010.1"),
                               mark_price=D("50023.7"), basis=D("13.6"))
    start = funding_time - timedelta(hours=contract.funding_interval_hours)
    PremiumSample.objects.bulk_create([
        PremiumSample(contract=contract, funding_time=funding_time, slot=i, at=start + timedelta(seconds=5 * (i - 1)),
                      policy=contract.funding_policy, premium=D("0.00001") * (i % 13 - 4))
        for i in range(1, 5761)  # a full 8 h interval of 5 s samples
    ])


def run(args, sizes: list[int]) -> None:
    from django.db import connection
    from django.utils import timezone

    from apps.contracts.models import Contract
    from apps.ledger.invariants import LEDGER_CHECKS
    from apps.marketdata.selectors import funding_time_next
    from apps.ops.demo import seed_demo
    from apps.settlement import services
    from apps.settlement.invariants import check_funding_clearing_is_dust

    seed_demo()
    extra_perpetual()
    contracts = [Contract.objects.select_related("settle_asset").get(symbol=s) for s in SYMBOLS[:len(sizes)]]
    now = timezone.now()
    funding_time = funding_time_next(contract=contracts[0], now=now) - timedelta(hours=8)

    started = time.perf_counter()
    user_ids = create_users(sizes[-1])
    wallets = wallets_of(user_ids)
    setup_s = time.perf_counter() - started
    deposit_s = fund_wallets(wallets)
    for contract, size in zip(contracts, sizes):
        open_positions(contract, user_ids[:size])
        prepare_prices(contract, funding_time)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")  # as autovacuum would have after the setup's bulk writes
    two_s, twenty_s = small_postings(wallets, args.small)
    setup_s = time.perf_counter() - started - deposit_s

    # Where the time goes: wrap the steps `funding_settle` calls (module attributes, looked up per
    # call): planning (the payments, then stored as chunks or booked at once) and booking the chunks.
    spent = clock_steps(services, ("_payments", "_plan", "funding_chunks_book", "_chunked_done"))

    results = []
    for contract, size in zip(contracts, sizes):
        spent.clear()
        profiler = cProfile.Profile() if args.profile and size == sizes[-1] else None
        largest = size == sizes[-1]
        trace = open(args.trace, "w") if args.trace and largest else None
        cpu0 = cpu_seconds(connection)
        server0 = server_cpu_seconds()
        checkpoints0 = checkpoints(connection)
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        probe = WriterProbe(wallets[:size]) if largest else nullcontext()
        with statements_traced(connection, trace) if trace else nullcontext(), probe:
            result = services.funding_settle(contract=contract, funding_time=funding_time)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - t0
        cpu1 = cpu_seconds(connection)
        server1 = server_cpu_seconds()
        cpu = (None if server0 is None else server1 - server0, cpu1[1] - cpu0[1], checkpoints(connection) - checkpoints0)
        results.append((contract, result, seconds, dict(spent), os.getloadavg()[0], cpu))
        if largest:
            writers = probe.summary()
        if profiler:
            profiler.dump_stats(args.profile)
    t0 = time.perf_counter()
    services.funding_settle(contract=contracts[-1], funding_time=funding_time)
    again_s = time.perf_counter() - t0
    violations = [str(v) for check in (*LEDGER_CHECKS, check_funding_clearing_is_dust) for v in check()]

    print(f"funding bench: one settlement per contract, funding time {funding_time:%Y-%m-%d %H:%M} UTC "
          f"(setup {setup_s:.1f} s)")
    print(f"  ledger, one deposit posting of {len(wallets) + 1:,d} legs: {deposit_s:.2f} s "
          f"= {(len(wallets) + 1) / deposit_s:,.0f} legs/s")
    print(f"  ledger, small postings ({args.small} calls each): 2 legs {two_s * 1000:.2f} ms/call, "
          f"20 legs {twenty_s * 1000:.2f} ms/call")
    base_rate = results[0][1].positions / results[0][2]
    for contract, result, seconds, parts, load, (server_cpu, client_cpu, checkpoints_run) in results:
        rate = result.positions / seconds
        print(f"  {contract.symbol:8s} {result.positions:>9,d} positions in {seconds:7.2f} s = "
              f"{rate:10,.0f} positions/s"
              f"  ratio {rate / base_rate:6.2f}x the baseline  load {load:.2f}  (rate "
              f"{result.funding_rate.normalize():f}, dust {result.dust.normalize():f}, covered {result.covered})")
        breakdown = ", ".join(f"{name} {s:.2f}" + (" (in _plan)" if name == "_payments" else "")
                              for name, s in parts.items())
        outside = seconds - sum(s for name, s in parts.items() if name != "_payments")
        print(f"           steps (s): {breakdown}; rest {outside:.2f}")
        server = f"{server_cpu:.2f} s" if server_cpu is not None else "n/a (remote server)"
        print(f"           CPU: PostgreSQL {server} (all its processes: every connection, parallel and "
              f"background workers), this process "
              f"{client_cpu:.2f} s; server checkpoints meanwhile: {checkpoints_run}")
    print(f"  a concurrent writer meanwhile (2-leg postings on the settled users' wallets): {writers}")
    print(f"  second run of the same funding time (no-op): {again_s * 1000:.1f} ms")
    print(f"  invariants: {'ok' if not violations else violations}")
    print(f"  peak RSS {peak_rss_mb():.0f} MiB")
    print(machine_line())
    print(server_line(connection))
    if args.profile:
        out = io.StringIO()
        pstats.Stats(args.profile, stream=out).sort_stats("cumulative").print_stats(18)
        print(out.getvalue())


def checkpoints(connection) -> int:
    """Checkpoints the server has started (a page's first change after one writes its whole image to the WAL)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter")
        return cursor.fetchone()[0]


SERVER_SETTINGS = ("shared_buffers", "wal_buffers", "max_wal_size", "checkpoint_timeout", "synchronous_commit",
                   "full_page_writes", "wal_compression", "autovacuum", "max_parallel_workers_per_gather")


def server_line(connection) -> str:
    """The server settings the figures depend on (the buffer cache, the WAL and its checkpoints, parallelism)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
                       [list(SERVER_SETTINGS)])
        return "server: " + " ".join(f"{name}={value}" for name, value in cursor.fetchall())


if __name__ == "__main__":
    main()
