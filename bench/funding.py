"""Funding settlement benchmark: one settlement of N open positions, positions/s.

    .venv/bin/python bench/funding.py [--positions 100000] [--baseline 1000]

Creates a throw-away database (`bench_funding`) with the demo contracts, N users with
funded wallets (one ledger posting per 50,000 wallets) and one open BTCUSDT position
each (half long, half short, equal open interest), plus a baseline of `--baseline`
ETHUSDT positions held by the first users; stores an interval of premium samples and a
mark, then times `funding_settle` (rate, positions, ONE ledger posting, income lines,
history row) for the baseline and for the N positions, in the same run. Then times a
second run of the same funding time (the idempotent no-op) and checks the ledger and
funding invariants.
"""
import argparse
import os
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import ensure_services, machine_line, peak_rss_mb  # noqa: E402

D = Decimal
DB_NAME = "bench_funding"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    args = parser.parse_args()
    if args.positions < 2 or args.baseline < 2 or args.baseline > args.positions:
        parser.error("need 2 <= baseline <= positions")

    ensure_services()
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
        connection.creation.destroy_test_db(DB_NAME, verbosity=0)


def setup(n_users: int):
    from django.db import connection

    from apps.ledger.models import AccountKind
    from apps.ledger.services import Leg, Posting, accounts_for_users, ledger_post_many, system_account
    from apps.ledger.models import TransactionKind

    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO auth_user (username, password, is_superuser, is_staff, is_active, first_name, last_name,
                                   email, date_joined)
            SELECT 'bench' || i, '!', false, false, true, '', '', '', now() FROM generate_series(1, %s) AS i
            RETURNING id
            """,
            [n_users],
        )
        user_ids = sorted(row[0] for row in cursor.fetchall())
    wallets = accounts_for_users(kind=AccountKind.WALLET, user_ids=user_ids)
    external = system_account(AccountKind.EXTERNAL).pk
    chunk = 50_000
    ids = [wallets[u] for u in user_ids]
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        legs = [Leg(a, "USDT", D("10000")) for a in part] + [Leg(external, "USDT", D("-10000") * len(part))]
        ledger_post_many(postings=[Posting(kind=TransactionKind.DEPOSIT, legs=legs)])
    return user_ids


def open_positions(contract, user_ids: list[int]) -> None:
    """Pairs of users: a long and a short of the same size (0.001 .. 0.007), so OI is balanced."""
    from django.db import connection

    n = len(user_ids) - len(user_ids) % 2
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO positions_position (user_id, contract_id, size, entry_price, leverage, margin_type,
                                            realized_pnl, updated_at)
            SELECT t.user_id, %s, (CASE WHEN t.i %% 2 = 0 THEN 1 ELSE -1 END) * 0.001 * (1 + ((t.i - 1) / 2) %% 7),
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


def run(args) -> None:
    from django.utils import timezone

    from apps.contracts.models import Contract
    from apps.ledger.invariants import LEDGER_CHECKS
    from apps.marketdata.selectors import funding_time_next
    from apps.ops.demo import seed_demo
    from apps.settlement.invariants import check_funding_clearing_is_dust
    from apps.settlement.services import funding_settle

    seed_demo()
    btc = Contract.objects.select_related("settle_asset").get(symbol="BTCUSDT")
    eth = Contract.objects.select_related("settle_asset").get(symbol="ETHUSDT")
    now = timezone.now()
    funding_time = funding_time_next(contract=btc, now=now) - timedelta(hours=btc.funding_interval_hours)

    started = time.perf_counter()
    user_ids = setup(args.positions)
    open_positions(btc, user_ids)
    open_positions(eth, user_ids[: args.baseline])
    for contract in (btc, eth):
        prepare_prices(contract, funding_time)
    setup_s = time.perf_counter() - started

    # Where the time goes: wrap the steps `_settle` calls (module attributes, looked up per call).
    from apps.settlement import services

    spent: dict[str, float] = {}

    def clocked(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    for name in ("ledger_post_many", "_incomes_insert", "_open_positions", "balances_lock", "rate_quote"):
        setattr(services, name, clocked(name, getattr(services, name)))

    def timed(contract):
        spent.clear()
        t0 = time.perf_counter()
        result = funding_settle(contract=contract, funding_time=funding_time)
        return result, time.perf_counter() - t0, dict(spent)

    base, base_s, _ = timed(eth)
    main_run, main_s, main_parts = timed(btc)
    _, again_s, _ = timed(btc)
    violations = [str(v) for check in (*LEDGER_CHECKS, check_funding_clearing_is_dust) for v in check()]

    print(f"funding bench: one settlement per contract, funding time {funding_time:%Y-%m-%d %H:%M} UTC "
          f"(setup {setup_s:.1f} s)")
    for label, result, seconds in (("baseline ETHUSDT", base, base_s), ("BTCUSDT", main_run, main_s)):
        print(f"  {label:17s} {result.positions:>9,d} positions in {seconds:7.2f} s = "
              f"{result.positions / seconds:10,.0f} positions/s  (rate {result.funding_rate.normalize():f}, "
              f"dust {result.dust.normalize():f})")
    parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in main_parts.items())
    print(f"  BTCUSDT breakdown: {parts}; rest (payments in Decimal, cover, history, commit) "
          f"{main_s - sum(main_parts.values()):.2f} s")
    print(f"  ratio: {main_run.positions / main_s / (base.positions / base_s):.2f}x the baseline's positions/s")
    print(f"  second run of the same funding time (no-op): {again_s * 1000:.1f} ms")
    print(f"  invariants: {'ok' if not violations else violations}")
    print(f"  peak RSS {peak_rss_mb():.0f} MiB")
    print(machine_line())


if __name__ == "__main__":
    main()
