"""Benchmark: Monte Carlo VaR 95/99 for a whole book of accounts.

One command: `.venv/bin/python bench/var.py [--accounts 100000] [--symbols 20]
[--paths 10000] [--workers 1,2]`. Builds a synthetic book (each account holds a few
correlated crypto perpetuals, long or short), simulates one shared scenario matrix
(paths × symbols) and computes VaR/ES per account with `batch_var`, once per worker
count (plus one float32 run with the faster worker count). Prints wall time,
per-worker compute time, peak memory, the machine load, and the same-run
comparison with two baselines over a subset of accounts, extrapolated to the whole
book: a per-account NumPy loop (one matrix-vector product
and one full sort per account) and the seed's per-path pure-Python loop. Target:
100,000 accounts × 20 symbols × 10,000 paths in ≤ 10 s on the 2-core machine.

`--assess-accounts N` also times `apps.risk.market.assess_matrix` (what each beat-job
chunk computes: the batch VaR plus historical VaR, stress tests, score, level and
recommendations per account) on N accounts of the same book. `--service N` (needs the
database: DATABASE_URL/REDIS_URL, or the project-local servers) times the service path
end to end inside a transaction that is rolled back: N synthetic accounts with
positions in the seeded contracts, `risk_run_start` (market model from price history),
`risk_assess_chunk` per chunk (reads, maths, bulk insert), and `risk_pretrade_evaluate`
per call (µs), split into its database reads and its maths.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from apps.risk.analytics.portfolio import (  # noqa: E402
    DEFAULT_SEED,
    batch_var,
    monte_carlo_var,
    notional_matrix,
    order_statistic_index,
    simulate_scenarios,
)
from bench.common import machine_line, peak_rss_mb  # noqa: E402


def synthetic_market(n_symbols: int, rng: np.random.Generator):
    """One-factor crypto market: daily vols 3–8%, correlations about 0.4–0.8."""
    vols = rng.uniform(0.03, 0.08, n_symbols)
    loadings = rng.uniform(0.6, 0.9, n_symbols)
    corr = np.outer(loadings, loadings)
    np.fill_diagonal(corr, 1.0)
    cov = corr * np.outer(vols, vols)
    prices = np.exp(rng.uniform(np.log(0.1), np.log(60_000), n_symbols))
    return cov, prices


def synthetic_book(n_accounts: int, n_symbols: int, prices: np.ndarray, rng: np.random.Generator):
    """Quantities (accounts × symbols): 1–5 symbols per account, signed, notional
    lognormal around 20,000 USDT per position."""
    quantities = np.zeros((n_accounts, n_symbols))
    held = rng.integers(1, 6, n_accounts)
    for k in range(1, 6):
        rows = np.flatnonzero(held == k)
        cols = np.argsort(rng.random((rows.size, n_symbols)), axis=1)[:, :k]
        notional = rng.lognormal(np.log(20_000), 1.0, (rows.size, k)) * rng.choice([-1.0, 1.0], (rows.size, k))
        quantities[rows[:, None], cols] = notional / prices[cols]
    return quantities


def children_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def seed_style_var(notional_row: np.ndarray, vols: np.ndarray, paths: int, rng: np.random.Generator):
    """The seed's VaRModel.calculate_var: a Python loop over paths and positions,
    one independent normal draw per position per path (no correlation)."""
    held = [(float(w), float(v)) for w, v in zip(notional_row, vols) if w != 0.0]
    results = []
    for _ in range(paths):
        total = 0.0
        for w, v in held:
            total += w * rng.normal(0.0, v)
        results.append(total)
    results.sort()
    return -results[int(0.05 * paths)], -results[int(0.01 * paths)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--paths", type=int, default=10_000)
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to run")
    ap.add_argument("--chunk", type=int, default=64, help="accounts per P&L chunk")
    ap.add_argument("--baseline-accounts", type=int, default=500, help="subset for the per-account NumPy loop")
    ap.add_argument("--seed-style-accounts", type=int, default=2, help="subset for the seed's per-path Python loop")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--no-float32", action="store_true", help="skip the extra float32 run")
    ap.add_argument("--assess-accounts", type=int, default=10_000,
                    help="accounts for the full per-account assessment (assess_matrix); 0 skips it")
    ap.add_argument("--service", type=int, default=0, metavar="N",
                    help="time the Django service path with N synthetic accounts (rolled back); 0 skips it")
    args = ap.parse_args(argv)
    if args.service:
        return service_bench(args.service)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    dtype = np.dtype(args.dtype).type

    print(machine_line())
    print(
        f"book: {args.accounts:,} accounts x {args.symbols} symbols, {args.paths:,} paths, "
        f"confidences 95%/99%, chunk {args.chunk} accounts, {args.dtype}"
    )
    rng = np.random.default_rng(7)
    cov, prices = synthetic_market(args.symbols, rng)
    quantities = synthetic_book(args.accounts, args.symbols, prices, rng)
    notional = notional_matrix(quantities, prices)

    t0 = time.perf_counter()
    scenarios = simulate_scenarios(cov, paths=args.paths, seed=DEFAULT_SEED)
    t_scen = time.perf_counter() - t0
    print(f"scenario matrix {scenarios.shape[0]:,}x{scenarios.shape[1]} (Cholesky + draws): {t_scen * 1000:.1f} ms")
    chunk_mib = args.chunk * args.paths * np.dtype(dtype).itemsize / 2**20
    print(f"memory bound per worker: P&L chunk {chunk_mib:.1f} MiB (chunk x paths), "
          f"not accounts x paths ({args.accounts * args.paths * 8 / 2**30:.1f} GiB)")

    results = {}
    for w in workers:
        res = batch_var(notional, scenarios=scenarios, workers=w, chunk_size=args.chunk, dtype=dtype)
        results[w] = res
        per_worker = ", ".join(f"{s:.2f}" for s in res.worker_seconds)
        overhead = res.wall_seconds - max(res.worker_seconds)
        print(
            f"workers={w}: wall {res.wall_seconds:.2f} s, per-worker compute [{per_worker}] s, "
            f"start-up/transfer {overhead:.2f} s, "
            f"{args.accounts / res.wall_seconds:,.0f} accounts/s, "
            f"peak RSS main {peak_rss_mb():.0f} MiB, children {children_peak_rss_mb():.0f} MiB"
        )
    if len(results) > 1:
        base_w = min(results)
        for w in sorted(results):
            if w == base_w:
                continue
            speedup = results[base_w].wall_seconds / results[w].wall_seconds
            print(f"speed-up {base_w} -> {w} workers: {speedup:.2f}x wall "
                  f"(ideal {w / base_w:.0f}x; includes process start-up and result transfer)")

    best = min(results.values(), key=lambda r: r.wall_seconds)
    best_workers = next(w for w, r in results.items() if r is best)

    if args.dtype == "float64" and not args.no_float32:
        r32 = batch_var(notional, scenarios=scenarios, workers=best_workers, chunk_size=args.chunk, dtype=np.float32)
        rel = np.max(np.abs(r32.var - best.var) / np.maximum(1.0, best.var))
        print(
            f"option dtype=float32, workers={best_workers}: wall {r32.wall_seconds:.2f} s "
            f"({best.wall_seconds / r32.wall_seconds:.2f}x vs float64), max relative VaR difference {rel:.1e}"
        )

    # Baseline 1: per-account NumPy loop on the same scenarios (sort per account).
    n_sub = min(args.baseline_accounts, args.accounts)
    k95 = order_statistic_index(0.95, args.paths)
    k99 = order_statistic_index(0.99, args.paths)
    t0 = time.perf_counter()
    loop = np.empty((n_sub, 2))
    for i in range(n_sub):
        pnl = np.sort(scenarios @ notional[i])
        loop[i] = (-pnl[k95], -pnl[k99])
    t_loop = time.perf_counter() - t0
    extrapolated = t_loop / n_sub * args.accounts
    agree = np.max(np.abs(np.maximum(loop, 0) - best.var[:n_sub]) / np.maximum(1.0, best.var[:n_sub]))
    print(
        f"baseline per-account NumPy loop (mat-vec + np.sort per account): {n_sub} accounts in {t_loop:.2f} s -> "
        f"{extrapolated:.1f} s extrapolated to {args.accounts:,}; batch is {extrapolated / best.wall_seconds:.1f}x faster "
        f"(max relative difference of the VaRs {agree:.1e})"
    )
    # Check one account against the single-account API as well.
    single = monte_carlo_var(notional[0], scenarios=scenarios)
    assert math.isclose(single.var_99, best.var_99[0], rel_tol=1e-6, abs_tol=1e-6)

    # Baseline 2: the seed's per-path Python loop (independent draws), a couple of accounts.
    n_seed = min(args.seed_style_accounts, args.accounts)
    if n_seed > 0:
        vols = np.sqrt(np.diag(cov))
        srng = np.random.default_rng(1)
        t0 = time.perf_counter()
        for i in range(n_seed):
            seed_style_var(notional[i], vols, args.paths, srng)
        t_seed = time.perf_counter() - t0
        extrapolated_seed = t_seed / n_seed * args.accounts
        print(
            f"baseline seed-style per-path Python loop: {n_seed} accounts in {t_seed:.2f} s -> "
            f"{extrapolated_seed / 3600:.1f} h extrapolated; batch is {extrapolated_seed / best.wall_seconds:,.0f}x faster"
        )

    if args.assess_accounts:
        assess_bench(cov, notional[: args.assess_accounts], args.paths, best.wall_seconds, args.accounts)

    target = 10.0
    verdict = "met" if best.wall_seconds <= target else "MISSED"
    print(f"target <= {target:.0f} s for the full book: {verdict} (best wall {best.wall_seconds:.2f} s)")
    print(machine_line())
    return 0


def assess_bench(cov, notional, paths, batch_wall, n_book):
    """The whole per-account assessment a beat-job chunk runs, on part of the book."""
    from apps.risk.analytics import RISK_LEVEL_THRESHOLDS, ScoreCalibration
    from apps.risk.market import MarketModel, assess_matrix

    n = notional.shape[0]
    vols = np.sqrt(np.diag(cov))
    model = MarketModel(symbols=tuple(f"S{i}" for i in range(len(vols))), daily_vols=vols,
                        correlation=cov / np.outer(vols, vols), vol_sources=("garch",) * len(vols))
    equity = np.abs(notional).sum(axis=1) / 10.0  # 10x effective leverage
    t0 = time.perf_counter()
    model.scenarios(paths=paths, seed=DEFAULT_SEED)
    t_scen = time.perf_counter() - t0
    t0 = time.perf_counter()
    risks = assess_matrix(model, notional, equity, paths=paths, seed=DEFAULT_SEED,
                          calibration=ScoreCalibration(5.0, 20.0), thresholds=RISK_LEVEL_THRESHOLDS)
    t_all = time.perf_counter() - t0
    levels = np.bincount([int(r.level) for r in risks], minlength=4)
    per = t_all / n
    print(f"assess_matrix (batch VaR + stress/score/level/recommendations per account), {n:,} accounts: "
          f"{t_all:.2f} s ({per * 1e6:.0f} us/account; scenarios {t_scen * 1000:.0f} ms once) -> "
          f"{per * n_book:.1f} s for {n_book:,} in one process, of which batch VaR "
          f"{batch_wall / n_book * 1e6:.0f} us/account; levels L/M/H/C {levels.tolist()}")


def service_bench(n_accounts: int) -> int:
    """The Django service path on the database, rolled back at the end."""
    from bench.common import ensure_services

    ensure_services()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.base")
    import django

    django.setup()
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.conf import settings
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from apps.contracts.models import Contract
    from apps.ledger.models import Asset
    from apps.ledger.services import wallet_deposit
    from apps.marketdata.services import _announce, price_cache_clear, price_publish
    from apps.positions.models import Position
    from apps.risk import services
    from apps.risk.conf import risk_setting

    settings.DEBUG = False  # no query log growing over thousands of queries
    print(machine_line())
    contracts = list(Contract.objects.order_by("symbol"))
    if not contracts:
        print("no contracts: run `manage.py seed_demo` first")
        return 1
    rng = np.random.default_rng(5)
    marks = {"BTCUSDT": 50_000, "ETHUSDT": 3_000}
    with transaction.atomic():
        now = timezone.now()
        published = []
        for c in contracts:
            price = marks.get(c.symbol.split("_")[0], 100)
            published.append((c, price_publish(contract=c, index_price=Decimal(price), mark_price=Decimal(price),
                                               at=now)))
        _announce(published)  # marks in Redis now, as after a commit (the hot path reads them there)
        usdt = Asset.objects.get(code="USDT")
        User = get_user_model()
        t0 = time.perf_counter()
        users = User.objects.bulk_create([User(username=f"riskbench-{i}-{now.timestamp():.0f}")
                                          for i in range(n_accounts)])
        for u in users:
            wallet_deposit(user=u, asset=usdt, amount=Decimal(10_000))
        rows = []
        for u in users:
            for c in rng.choice(contracts, size=rng.integers(1, len(contracts) + 1), replace=False):
                price = marks.get(c.symbol.split("_")[0], 100)
                size = Decimal(str(round(float(rng.normal(0, 5 * 10_000 / price)), 3))) or Decimal("0.001")
                rows.append(Position(user=u, contract=c, size=size, entry_price=Decimal(price)))
        Position.objects.bulk_create(rows)
        print(f"setup: {n_accounts:,} accounts, {len(rows):,} positions in {len(contracts)} contracts "
              f"({time.perf_counter() - t0:.1f} s, rolled back at the end)")

        t0 = time.perf_counter()
        plan = services.risk_run_start(now=now)
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        for chunk in plan.chunks:
            services.risk_assess_chunk(run_id=plan.run.pk, user_ids=chunk, now=now)
        t_chunks = time.perf_counter() - t0
        plan.run.refresh_from_db()
        per = t_chunks / max(1, plan.run.accounts)
        print(f"risk_run_start (market model from price history, account list): {t_start * 1000:.0f} ms; "
              f"{len(plan.chunks)} chunks of <= {risk_setting('RISK_ASSESS_CHUNK')}: {t_chunks:.2f} s "
              f"({per * 1e6:.0f} us/account incl. reads and bulk insert) -> status {plan.run.status}, "
              f"{plan.run.accounts:,} accounts")

        user, contract = users[0], contracts[0]
        calls = 2_000
        kwargs = dict(user=user, contract=contract, side="BUY", quantity=Decimal("0.01"),
                      price=Decimal(marks.get(contract.symbol.split("_")[0], 100)))
        services.risk_pretrade_evaluate(**kwargs)  # warm the model cache
        with CaptureQueriesContext(connection) as queries:
            services.risk_pretrade_evaluate(**kwargs)
        t0 = time.perf_counter()
        for _ in range(calls):
            services.risk_pretrade_check(**kwargs)
        t_check = (time.perf_counter() - t0) / calls
        t0 = time.perf_counter()
        for _ in range(calls):
            services._exposure_for_pretrade(user=user, contract=contract)
        t_reads = (time.perf_counter() - t0) / calls
        print(f"risk_pretrade_check: {t_check * 1e6:.0f} us/call over {calls:,} calls "
              f"(reads, {len(queries)} SQL round trip + 1 Redis MGET: {t_reads * 1e6:.0f} us; parametric maths "
              f"{(t_check - t_reads) * 1e6:.0f} us)")
        transaction.set_rollback(True)
    price_cache_clear(symbols=[c.symbol for c in contracts])
    services.risk_caches_clear()
    print(machine_line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
