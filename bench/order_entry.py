"""Order entry's CPU per order by group size, against the CPU of one PostgreSQL round trip.

    .venv/bin/python bench/order_entry.py [--orders 1200] [--groups 1,2,4,8,32,100] [--users 400]

What the web process's group commit costs in CPU, its own (`time.process_time`: time spent
waiting for PostgreSQL or Redis does not count, and the machine's load stretches it less than
wall time) and its PostgreSQL backend's: `orders_place_many` of 1, 2, ... orders at a time on a throw-away database
(`bench_order_entry`), with the web's server-side binding (DB_SERVER_SIDE_BINDING=1). Per
group size: CPU and wall ms per order, then, for the smallest and the largest group, where
a group's CPU goes. The baseline, measured in the same run: one empty transaction with one
`SELECT 1` (three round trips: BEGIN, the statement, COMMIT), through the same Django
connection. A group's fixed cost is what the orders of a small group share: on a machine where
a round trip costs the client tens of microseconds of CPU, the group size decides much of the
cost of an order. The orders rest (priced away from each other, no matcher runs) and stay open:
an account collects about (--rounds x --orders x the number of group sizes) / --users of them,
with the open-order limit lifted (`bench.common.bench_market`).
"""
import argparse
import gc
import os
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import (  # noqa: E402
    bench_database_name,
    bench_market,
    clock_steps,
    cpu_seconds,
    ensure_services,
    machine_line,
)

STEPS = ("_draft", "entry_lock_many", "_entry_states", "_admit", "_orders_insert", "_holds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=1200, help="orders per group size")
    parser.add_argument("--groups", default="1,2,4,8,32,100")
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3, help="runs per group size; the one with least CPU counts")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    if not groups or min(groups) < 1:
        parser.error("--groups: positive group sizes, comma-separated")

    ensure_services()
    os.environ["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    os.environ["DB_SERVER_SIDE_BINDING"] = "1"  # as the Procfile runs `web`
    name = bench_database_name("order_entry")
    os.environ["TEST_DATABASE_NAME"] = name
    import django

    django.setup()
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        run(args, groups)
    finally:
        connection.creation.destroy_test_db(name, verbosity=0)


def run(args, groups: list[int]) -> None:
    from django.db import connection, transaction

    from apps.trading import services as entry
    from apps.trading.services import OrderRequest, orders_place_many

    contract, users = bench_market(users=args.users, prefix="entry")  # every group size leaves its orders open
    rng = random.Random(args.seed)

    def request() -> OrderRequest:
        # Bids below 49,900 and asks above 50,100: nothing could cross, whatever the matcher did.
        side = rng.choice(("BUY", "SELL"))
        offset = Decimal(rng.randint(200, 400)) / 2
        price = Decimal(50000) + (-offset if side == "BUY" else offset)
        return OrderRequest(user=rng.choice(users), contract=contract,
                            params={"side": side, "quantity": Decimal("0.001"), "price": price})

    def round_trip() -> None:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT 1")

    # One order per account first: its order-margin account exists before anything is measured.
    for start in range(0, len(users), 100):
        orders_place_many([OrderRequest(user=u, contract=contract, params={
            "side": "BUY", "quantity": Decimal("0.001"), "price": Decimal(49000)}) for u in users[start:start + 100]])
    # The setup's objects (the migrations' state, the demo) out of the collector's way: a full
    # collection over them (~0.1 s here) would otherwise land in one measured run.
    gc.collect()
    gc.freeze()
    for _ in range(50):
        round_trip()
    baseline = min(_cpu(round_trip, 2000) for _ in range(3)) * 1e6
    print(f"order entry bench: BTCUSDT, {args.users} users, {args.orders} orders per group size, seed {args.seed}")
    print(f"  baseline: one transaction of one SELECT 1 (3 round trips): {baseline:.0f} us CPU")

    spent = clock_steps(entry, STEPS, clock=time.process_time)
    first = None
    breakdowns = {}
    for group in groups:
        best = None
        for _ in range(args.rounds):
            batches = [[request() for _ in range(group)] for _ in range(-(-args.orders // group))]
            placed = sum(len(b) for b in batches)
            spent.clear()
            backend = cpu_seconds(connection)[0]
            cpu, wall = time.process_time(), time.perf_counter()
            for batch in batches:
                refused = [r for r in orders_place_many(batch) if isinstance(r, Exception)]
                if refused:
                    raise refused[0]
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            after = cpu_seconds(connection)[0]
            backend = after - backend if backend is not None and after is not None else None
            if best is None or cpu < best[0]:
                best = (cpu, wall, placed, len(batches), dict(spent), backend)
        cpu, wall, placed, count, steps, backend = best
        per_order = 1000 * cpu / placed
        first = first or per_order
        breakdowns[group] = (cpu, count, steps)
        server = f"  PostgreSQL {1000 * backend / placed:6.3f}" if backend is not None else ""
        print(f"  groups of {group:4d}: CPU {per_order:6.3f} ms/order ({1000 * cpu / count:6.2f} ms/group, "
              f"{1000 * per_order / baseline:5.1f} baselines/order){server}  wall {1000 * wall / placed:6.3f} "
              f"ms/order  ratio to groups of {groups[0]}: {first / per_order:4.1f}x")
    for group in sorted({groups[0], groups[-1]}):
        cpu, count, steps = breakdowns[group]
        rest = cpu - sum(steps.values())
        print(f"  CPU ms per group of {group}: " + "  ".join(
            f"{name.lstrip('_')} {1000 * steps.get(name, 0.0) / count:.2f}" for name in STEPS)
            + f"  rest (commit, Redis, group) {1000 * rest / count:.2f}")
    print(machine_line())


def _cpu(function, times: int) -> float:
    started = time.process_time()
    for _ in range(times):
        function()
    return (time.process_time() - started) / times


if __name__ == "__main__":
    main()
