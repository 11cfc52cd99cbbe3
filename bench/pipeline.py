"""End-to-end pipeline benchmark: order entry into PostgreSQL, then the matcher's batches.

    .venv/bin/python bench/pipeline.py [--orders 20000] [--batch 2000] [--accept-batch 100] [--users 50] [--profile]

Creates a throw-away database (`bench_pipeline`), accepts orders through the real
order-entry service (`order_place`: validation, ledger hold, journal row), then runs
the matcher's `batch_process` until the journal is drained, and prints accepted
orders/s, matched-and-booked orders/s and batch latency percentiles — with batch size 1
in the same run as the baseline (one order accepted per transaction, one command matched
per transaction), so the ratios show what batching buys on each side. The main phase
accepts `--accept-batch` orders per `orders_place_many` call (what the web process's
group commit does with concurrent requests). `--concurrent N` then accepts N more orders while
the matcher runs as its own process, as in production, and prints end to end from the first
acceptance to the last command booked. Ends with `check_ledger`. `--profile` runs the main drain under cProfile
and prints where its time went, `--profile-accept` the main accept phase (the figures of a
profiled run are not comparable).
"""
import argparse
import os
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import (  # noqa: E402
    analyze,
    bench_database_name,
    bench_market,
    clock_steps,
    database_url,
    cpu_seconds,
    ensure_services,
    machine_line,
    peak_rss_mb,
    procfile_line,
    statements_traced,
)

D = Decimal
# Where an accepted group's time goes (`--accept-batch` > 1): the group, then its steps.
GROUP_STEPS = ("_place_group", "entry_lock_many", "_entry_states", "_admit", "_orders_insert", "_holds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=20000)
    parser.add_argument("--baseline-orders", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--accept-batch", type=int, default=100,
                        help="orders per orders_place_many call in the main phase (1: order_place, one each)")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-accept", action="store_true",
                        help="run the main accept phase under cProfile and print where its time went")
    parser.add_argument("--profile-sort", default="cumulative", choices=("cumulative", "tottime"),
                        help="how --profile-accept sorts its listing")
    parser.add_argument("--concurrent", type=int, default=0, metavar="N",
                        help="then N more orders accepted while the matcher runs as its own process (0: skip)")
    parser.add_argument("--trace", help="write each statement of the main drain with its time (and the EXPLAIN "
                                        "ANALYZE of those over 20 ms) to this file")
    args = parser.parse_args()

    ensure_services()
    os.environ["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    name = bench_database_name("pipeline")
    os.environ["TEST_DATABASE_NAME"] = name
    import django

    django.setup()
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        run(args)
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)


def run(args) -> None:
    import numpy as np
    from django.core.management import call_command
    from django.db import connection

    from apps.trading.engine import SymbolEngine
    from apps.trading.matching import batch_process
    from apps.trading.services import OrderRequest, order_place, orders_place_many

    contract, users = bench_market(users=args.users, prefix="bench")  # hundreds of resting orders per account
    rng = random.Random(args.seed)

    def request() -> OrderRequest:
        side = rng.choice(("BUY", "SELL"))
        offset = rng.randint(-30, 30)
        price = D(50000) + (offset if side == "BUY" else -offset) * D("0.5")
        return OrderRequest(user=rng.choice(users), contract=contract,
                            params={"side": side, "quantity": D(rng.randint(1, 50)) / 1000, "price": price})

    def accept(count: int, group: int = 1) -> float:
        """`count` orders: one `order_place` each (group 1), else `orders_place_many` of `group` at a time."""
        requests = [request() for _ in range(count)]
        started = time.perf_counter()
        for start in range(0, count, group):
            if group == 1:
                order_place(user=requests[start].user, contract=contract, **requests[start].params)
                continue
            refused = [r for r in orders_place_many(requests[start:start + group]) if isinstance(r, Exception)]
            if refused:
                raise refused[0]
        return time.perf_counter() - started

    def drain(batch: int) -> tuple[float, list[float], int, int]:
        # The accepted orders analysed, as autovacuum would have them on a live database: on the
        # statistics of the empty table (bench_market's) the batch's statements ran 3x slower,
        # PostgreSQL's CPU 2.81 s instead of 0.43 s for 6,000 orders.
        analyze()
        engine = SymbolEngine(contract)
        engine.rebuild()
        latencies, commands, trades = [], 0, 0
        cpu_before = cpu_seconds(connection)
        started = time.perf_counter()
        while (result := batch_process(engine, limit=batch)) is not None:
            latencies.append(result.seconds)
            commands += result.commands
            trades += len(result.trades)
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(connection)
        cpu = [None if a is None or b is None else a - b for a, b in zip(cpu_after, cpu_before)]
        return elapsed, latencies, commands, trades, cpu

    def report(label: str, how: str, accepted_s: float, drained: tuple, count: int) -> float:
        seconds, latencies, commands, trades, (backend_cpu, own_cpu) = drained
        lat = np.array(latencies) * 1000
        rate = commands / seconds
        print(f"  {label}")
        print(f"    accept ({how:<30}): {count / accepted_s:10.0f} orders/s  ({accepted_s:.2f} s)")
        print(f"    match + book:                    {rate:10.0f} orders/s  ({commands} commands, {trades} trades, "
              f"{len(latencies)} batches, {seconds:.2f} s)")
        print(f"    batch latency ms: p50 {np.percentile(lat, 50):.2f}  p95 {np.percentile(lat, 95):.2f}  "
              f"p99 {np.percentile(lat, 99):.2f}  max {lat.max():.2f}")
        backend = "n/a" if backend_cpu is None else f"{backend_cpu:.2f} s"
        print(f"    match + book CPU: matcher process {own_cpu:.2f} s, its PostgreSQL backend {backend} "
              f"(a figure the machine's load does not stretch: {commands / own_cpu:,.0f} orders per matcher CPU second)")
        print(f"    end to end (accept + match):     {count / (accepted_s + seconds):10.0f} orders/s")
        return rate

    print(f"pipeline bench: BTCUSDT, {args.users} users, seed {args.seed}")
    base_accept = accept(args.baseline_orders)
    base_rate = report(f"baseline: batch size 1, {args.baseline_orders} orders", "order_place, 1 per transaction",
                       base_accept, drain(1), args.baseline_orders)
    from apps.trading import services as entry_services

    # Where a group's time goes (its balance locks are held from the entry lock to the commit).
    spent = clock_steps(entry_services, GROUP_STEPS)
    spent.clear()
    if args.profile_accept:
        main_accept = profiled(accept, args.orders, args.accept_batch, sort=args.profile_sort, lines=45)
    else:
        main_accept = accept(args.orders, args.accept_batch)
    if args.trace:
        with open(args.trace, "w") as out, statements_traced(connection, out, min_ms=20):
            drained = drain(args.batch)
    elif args.profile:
        drained = profiled(drain, args.batch, sort="tottime", lines=30)
    else:
        drained = drain(args.batch)
    how = f"orders_place_many of {args.accept_batch}" if args.accept_batch > 1 else "order_place, 1 per transaction"
    main_rate = report(f"batch size {args.batch}, {args.orders} orders", how, main_accept, drained, args.orders)
    if args.accept_batch > 1:
        groups = -(-args.orders // args.accept_batch)
        print("    accept, ms per group: " + "  ".join(
            f"{name.lstrip('_')} {1000 * spent.get(name, 0.0) / groups:.1f}"
            for name in GROUP_STEPS))
    print(f"  ratio match+book batch {args.batch} / batch 1: {main_rate / base_rate:.1f}x")
    print(f"  ratio accept {how} / one per transaction: "
          f"{(args.orders / main_accept) / (args.baseline_orders / base_accept):.1f}x")
    if args.concurrent:
        analyze()  # the tables as the phases before left them
        concurrent(args, contract, [request() for _ in range(args.concurrent)], args.accept_batch)
    call_command("check_ledger")
    print(f"  peak RSS {peak_rss_mb():.0f} MiB")
    print(machine_line())


def concurrent(args, contract, requests: list, group: int) -> None:
    """The pipeline as it runs: the matcher worker as its own process (the Procfile's
    `run_matcher`) matching and booking while this process accepts `requests` in groups of
    `group`; end to end is the time from the first acceptance to the last command booked."""
    import subprocess

    import psutil
    from django.db import connection

    from apps.trading.matcher import LEASE_NAMESPACE
    from apps.trading.models import CommandStatus, OrderCommand
    from apps.trading.services import orders_place_many

    url = database_url(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "exchange.settings.base", "DEBUG": "0"}
    matcher = subprocess.Popen(["bash", "-c", procfile_line("matcher")], cwd=ROOT,
                               env={**env, "MATCHER_SYMBOLS": contract.symbol, "MATCHER_METRICS_PORT": "0"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with connection.cursor() as cursor:  # the worker holds its lease once its book is rebuilt
            for _ in range(600):
                cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                               " AND classid = %s AND objid = %s", [LEASE_NAMESPACE, contract.pk])
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.1)
            else:
                raise SystemExit("the matcher process did not take its lease")
        worker = psutil.Process(matcher.pid)
        cpu_before, own_before = worker.cpu_times(), time.process_time()
        started = time.perf_counter()
        for start in range(0, len(requests), group):
            refused = [r for r in orders_place_many(requests[start:start + group]) if isinstance(r, Exception)]
            if refused:
                raise refused[0]
        accepted = time.perf_counter()
        pending = OrderCommand.objects.filter(contract=contract, status=CommandStatus.PENDING)
        while pending.exists():
            if matcher.poll() is not None:
                raise SystemExit(f"the matcher process exited ({matcher.returncode})")
            time.sleep(0.005)
        ended = time.perf_counter()
        cpu_after, own_after = worker.cpu_times(), time.process_time()
    finally:
        matcher.terminate()
        matcher.wait(timeout=30)
    count = len(requests)
    matcher_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    print(f"  concurrent: {count} orders accepted in groups of {group} while the matcher process runs")
    print(f"    accept:                          {count / (accepted - started):10.0f} orders/s  "
          f"({accepted - started:.2f} s)")
    print(f"    end to end (first accepted to last booked): {count / (ended - started):6.0f} orders/s  "
          f"({ended - started:.2f} s; the matcher finished {1000 * (ended - accepted):.0f} ms after the last "
          f"acceptance)")
    print(f"    CPU per order: acceptor {1000 * (own_after - own_before) / count:.2f} ms, "
          f"matcher {1000 * matcher_cpu / count:.2f} ms")


def profiled(function, *args, sort: str, lines: int):
    """function(*args) under cProfile; prints the top `lines` by `sort` and returns its result."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    result = profiler.runcall(function, *args)
    pstats.Stats(profiler).sort_stats(sort).print_stats(lines)
    return result


if __name__ == "__main__":
    main()
