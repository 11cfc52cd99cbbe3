"""Ops dashboard feed benchmark: what one open dashboard costs the web process a second.

    .venv/bin/python bench/ops_dashboard.py [--symbols 5] [--rounds 50]

Creates a throw-away database (`<DATABASE_URL's name>_bench_ops_dashboard`) with
`--symbols` perpetuals, each with ten minutes of price samples (one a second) and of matcher points (one per 5 s),
300 insurance fund entries, 20 alerts and 20 liquidations. Then times, in the same run:
- baseline: one `SELECT 1` and one Redis PING (the least a round can cost);
- snapshot: `dashboard_feed()`, what a socket sends first and what a poll returns;
- update: `dashboard_changes()` after one new price per symbol, what the websocket sends
  every second (latency, health and the contract check ride along every 5th, as live).
Prints ms per call, the ratio to the baseline, and the machine load.
"""
import argparse
import logging
import os
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import bench_database_name, ensure_services, machine_line  # noqa: E402

D = Decimal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=5, help="perpetual contracts on the dashboard")
    parser.add_argument("--rounds", type=int, default=50, help="timed calls of each kind")
    args = parser.parse_args()
    if args.symbols < 1 or args.rounds < 5:
        parser.error("need at least 1 symbol and 5 rounds")

    ensure_services()
    db_name = bench_database_name("ops_dashboard")
    os.environ["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    os.environ["TEST_DATABASE_NAME"] = db_name
    import django

    django.setup()
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False, serialize=False)
    try:
        run(args)
    finally:
        from exchange.redis import get_redis

        redis = get_redis()
        keys = list(redis.scan_iter("ops:series:matcher:BENCH*"))
        if keys:
            redis.delete(*keys)
        connection.creation.destroy_test_db(db_name, verbosity=0)


def populate(symbols: int):
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from apps.contracts.models import ContractStatus, ContractType
    from apps.contracts.services import contract_create, tiers_from_brackets
    from apps.ledger.models import AccountKind, Asset, TransactionKind
    from apps.ledger.services import Leg, ledger_post, system_account
    from apps.liquidation.models import Liquidation, Scope
    from apps.marketdata.models import PriceSample
    from apps.ops.alerts import alert_raise
    from apps.ops.demo import BTC_BRACKETS
    from apps.ops.metrics import series_append

    usdt = Asset.objects.create(code="USDT", name="Tether USD", precision=8)
    now = timezone.now().replace(microsecond=0)
    contracts = []
    for i in range(symbols):
        base = Asset.objects.create(code=f"B{i}", name=f"Base {i}", precision=8)
        contract = contract_create(
            tiers=tiers_from_brackets(BTC_BRACKETS), symbol=f"BENCH{i}USDT", contract_type=ContractType.PERPETUAL,
            status=ContractStatus.TRADING, base_asset=base, quote_asset=usdt, settle_asset=usdt,
        )
        contracts.append(contract)
        PriceSample.objects.bulk_create(
            PriceSample(contract=contract, at=now - timedelta(seconds=k), index_price=D(50000 + k % 50),
                        mark_price=D(50010 + k % 50), basis=D(10), valid_venues=3)
            for k in range(600, 0, -1)
        )
        for k in range(120, 0, -1):
            series_append(f"matcher:{contract.symbol}", {"t": now.timestamp() - 5 * k, "orders_per_s": 10.0,
                                                         "trades_per_s": 3.0, "batch_p95_ms": 0.9})
    fund, external = system_account(AccountKind.INSURANCE_FUND), system_account(AccountKind.EXTERNAL)
    for k in range(300):
        ledger_post(kind=TransactionKind.INSURANCE,
                    legs=[Leg(fund, usdt, D(1000 + k)), Leg(external, usdt, D(-1000 - k))])
    for k in range(20):
        alert_raise(key=f"job_failure:bench:{k}", level="WARNING", message=f"bench alert {k}")
        user = get_user_model().objects.create_user(username=f"liq{k}", password="x")
        Liquidation.objects.create(user=user, asset=usdt, scope=Scope.CROSS, ratio=D("0.95"), equity=D(950),
                                   maintenance=D(1000))
    return contracts, now


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def line(name: str, samples: list[float], baseline: float) -> str:
    median = statistics.median(samples)
    return (f"{name:<9} median {median * 1000:8.2f} ms  p90 {sorted(samples)[int(len(samples) * 0.9)] * 1000:8.2f} ms"
            f"  ratio to baseline {median / baseline:7.1f}x")


def run(args) -> None:
    from django.db import connection
    from django.utils import timezone

    from apps.marketdata.models import PriceSample
    from apps.ops import dashboard
    from exchange.redis import get_redis

    logging.disable(logging.CRITICAL)  # the 20 alerts raised while populating log as errors
    try:
        contracts, now = populate(args.symbols)
    finally:
        logging.disable(logging.NOTSET)
    redis = get_redis()

    def baseline():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        redis.ping()

    base = timed(baseline, args.rounds)
    snapshot = timed(dashboard.dashboard_feed, args.rounds)
    feed = dashboard.dashboard_feed()
    cursor = dashboard.FeedCursor.after(feed)
    at = [now]

    def update():
        at[0] += timedelta(seconds=1)
        PriceSample.objects.bulk_create(
            PriceSample(contract=c, at=at[0], index_price=D(50100), mark_price=D(50110), basis=D(10), valid_venues=3)
            for c in contracts
        )
        started = time.perf_counter()
        changes = dashboard.dashboard_changes(cursor=cursor, now=max(at[0], timezone.now()))
        assert changes is not None and len(changes["prices"]) == len(contracts)
        return time.perf_counter() - started

    updates = []
    for k in range(args.rounds):
        if k % 5 == 0:
            cursor.slow_at = 0.0  # the live cadence: latency, health and the contracts every 5th update
        updates.append(update())
    median_base = statistics.median(base)
    print(f"ops dashboard feed: {args.symbols} symbols, 600 prices + 120 matcher points each, "
          f"300 fund entries, 20 alerts, 20 liquidations; {args.rounds} rounds each")
    print(line("baseline", base, median_base))
    print(line("snapshot", snapshot, median_base))
    print(line("update", updates, median_base))
    print(f"one open dashboard: ~{statistics.median(updates) * 1000:.1f} ms a second of the web process's "
          f"thread-sensitive thread (wall time: mostly database and Redis round trips)")
    print(machine_line())


if __name__ == "__main__":
    main()
