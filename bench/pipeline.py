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
profiled run are not comparable). `--floor` ends with the persistence floor: the rows the main
phase wrote for its orders (journal commands, orders, trades, income lines) written again
straight from memory by COPY, a batch per transaction, with one write of each balance and
position row a batch touched, and the PostgreSQL and client CPU per order of both (the ratio
says how far the pipeline is from what its rows alone cost).
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
    parser.add_argument("--floor", action="store_true",
                        help="end with the persistence floor of the main phase's rows (COPY, see above)")
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
    from apps.trading.models import Order
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
    accept_cpu = cpu_seconds(connection)
    first_order = Order.objects.order_by("-id").values_list("id", flat=True).first() or 0
    if args.profile_accept:
        main_accept = profiled(accept, args.orders, args.accept_batch, sort=args.profile_sort, lines=45)
    else:
        main_accept = accept(args.orders, args.accept_batch)
    accept_cpu = [None if a is None or b is None else a - b for a, b in zip(cpu_seconds(connection), accept_cpu)]
    main_orders = (first_order, Order.objects.order_by("-id").values_list("id", flat=True).first())
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
    if args.floor:  # last: its rows are copies that no ledger or position reflects
        floor(args, main_orders, accept_cpu, drained[4])
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


def floor(args, main_orders: tuple[int, int], accept_cpu: tuple, drain_cpu: tuple) -> None:
    """The main phase's rows for its orders (ids in `main_orders`: after the first, up to the
    second) written again by COPY,
    `--batch` orders per transaction: their journal commands, the orders as they ended, the
    trades they took part in as takers and those trades' income lines, plus per batch one
    write of every balance and position row its trades touched (what a matcher that nets a
    batch's money per account in memory would write; the ledger entries of those netted
    amounts, one per balance per batch, are left out: tens of rows per thousands of orders).
    New ids and client order ids; the rows the trades, commands and income lines point to
    follow the copies. Prints PostgreSQL's and this process's CPU per order against the main
    phase's (accept + match and book)."""
    from django.db import connection, transaction

    from apps.ledger.models import Balance, Income
    from apps.positions.models import Position
    from apps.trading.models import Order, OrderCommand, Trade
    from exchange.pgbulk import ids_reserve

    def read(cursor, model, where: str, params) -> tuple[list[str], list[list]]:
        """The rows, as lists of their columns, the primary key first."""
        pk = model._meta.pk.column
        cols = [pk, *(f.column for f in model._meta.concrete_fields if f.column != pk)]
        cursor.execute(f"SELECT {', '.join(cols)} FROM {model._meta.db_table} WHERE {where} ORDER BY 1", params)
        return cols, [list(row) for row in cursor.fetchall()]

    with connection.cursor() as cursor:
        order_cols, orders = read(cursor, Order, "id > %s AND id <= %s", list(main_orders))
        ids = [row[0] for row in orders]
        command_cols, commands = read(cursor, OrderCommand, "order_id = ANY(%s)", [ids])
        trade_cols, trades = read(cursor, Trade, "taker_order_id = ANY(%s)", [ids])
        income_cols, incomes = read(cursor, Income, "trade_id = ANY(%s)", [[row[0] for row in trades]])
        cursor.execute("SELECT b.id, a.user_id FROM ledger_balance b JOIN ledger_account a ON a.id = b.account_id"
                       " WHERE a.user_id IS NOT NULL")
        balances_of: dict[int, list[int]] = {}
        for balance_id, user_id in cursor.fetchall():
            balances_of.setdefault(user_id, []).append(balance_id)
        cursor.execute("SELECT id, user_id FROM positions_position")
        positions_of = {user_id: pid for pid, user_id in cursor.fetchall()}
        cursor.execute("SELECT id, user_id FROM trading_order WHERE id = ANY(%s)",
                       [[row[trade_cols.index("maker_order_id")] for row in trades]])
        user_of = dict(cursor.fetchall())  # the makers' users: some of their orders rested before the phase
    user_of.update((row[0], row[order_cols.index("user_id")]) for row in orders)
    at = {name: {c: i for i, c in enumerate(cols)} for name, cols in
          (("order", order_cols), ("command", command_cols), ("trade", trade_cols), ("income", income_cols))}
    commands_of, trades_of, incomes_of = {}, {}, {}
    for row in commands:
        commands_of.setdefault(row[at["command"]["order_id"]], []).append(row)
    for row in trades:
        trades_of.setdefault(row[at["trade"]["taker_order_id"]], []).append(row)
    for row in incomes:
        incomes_of.setdefault(row[at["income"]["trade_id"]], []).append(row)

    spent: dict[str, float] = {}  # wall seconds per table

    def copy(cursor, table: str, cols: list[str], rows) -> None:
        started = time.perf_counter()
        with cursor.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as out:
            for row in rows:
                out.write_row(row)
        spent[table] = spent.get(table, 0.0) + time.perf_counter() - started

    written = {"commands": 0, "trades": 0, "income lines": 0}
    before, started = cpu_seconds(connection), time.perf_counter()
    for start in range(0, len(orders), args.batch):
        batch = orders[start:start + args.batch]
        with transaction.atomic(), connection.cursor() as django_cursor:
            cursor = django_cursor.cursor  # psycopg's own: COPY with rows adapted in C
            new_ids = dict(zip([row[0] for row in batch], ids_reserve(django_cursor, Order._meta.db_table, len(batch))))
            batch_trades = [t for row in batch for t in trades_of.get(row[0], [])]
            new_trades = dict(zip([t[0] for t in batch_trades],
                                  ids_reserve(django_cursor, Trade._meta.db_table, len(batch_trades))))
            o, c, t, i = at["order"], at["command"], at["trade"], at["income"]
            copy(cursor, Order._meta.db_table, order_cols,
                 ([new_ids[r[0]], *r[1:o["client_order_id"]], r[o["client_order_id"]] + "f",
                   *r[o["client_order_id"] + 1:]] for r in batch))
            batch_commands = [r for row in batch for r in commands_of.get(row[0], [])]
            copy(cursor, OrderCommand._meta.db_table, command_cols[1:],
                 ([new_ids.get(v, v) if k == c["order_id"] else v for k, v in enumerate(r)][1:] for r in batch_commands))
            copy(cursor, Trade._meta.db_table, trade_cols,
                 ([new_trades[r[0]] if k == 0 else new_ids.get(v, v) if k in (t["taker_order_id"], t["maker_order_id"])
                   else v for k, v in enumerate(r)] for r in batch_trades))
            batch_incomes = [r for tr in batch_trades for r in incomes_of.get(tr[0], [])]
            copy(cursor, Income._meta.db_table, income_cols[1:],
                 ([new_trades[v] if k == i["trade_id"] else v for k, v in enumerate(r)][1:] for r in batch_incomes))
            users = {user_of[tr[k]] for tr in batch_trades for k in (t["taker_order_id"], t["maker_order_id"])}
            django_cursor.execute(f"UPDATE {Balance._meta.db_table} SET amount = amount WHERE id = ANY(%s)",
                                  [[b for u in users for b in balances_of.get(u, [])]])
            django_cursor.execute(f"UPDATE {Position._meta.db_table} SET size = size WHERE id = ANY(%s)",
                                  [[positions_of[u] for u in users if u in positions_of]])
            written["commands"] += len(batch_commands)
            written["trades"] += len(batch_trades)
            written["income lines"] += len(batch_incomes)
    elapsed = time.perf_counter() - started
    backend, own = [a - b if a is not None and b is not None else None for a, b in zip(cpu_seconds(connection), before)]
    count = len(orders)
    product_pg = None if None in (accept_cpu[0], drain_cpu[0]) else accept_cpu[0] + drain_cpu[0]
    product_own = accept_cpu[1] + drain_cpu[1]
    print(f"  persistence floor: the main phase's {count} orders again by COPY, {args.batch} per transaction "
          f"({', '.join(f'{v} {k}' for k, v in written.items())}; balances and positions written once per batch)")
    print(f"    {count / elapsed:10.0f} orders/s  ({elapsed:.2f} s; COPY us per order: "
          + ", ".join(f"{table} {1e6 * seconds / count:.0f}" for table, seconds in spent.items()) + ")")
    if backend is not None and product_pg is not None:
        print(f"    PostgreSQL CPU per order: floor {1e6 * backend / count:.0f} us, the pipeline (accept + match "
              f"and book) {1e6 * product_pg / count:.0f} us: {product_pg / backend:.1f}x")
    print(f"    this process's CPU per order: floor {1e6 * own / count:.0f} us, the pipeline "
          f"{1e6 * product_own / count:.0f} us: {product_own / own:.1f}x")


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
