"""Benchmark: the liquidation screen over a whole book of open positions, one mark tick.

One command: `.venv/bin/python bench/liquidation_screen.py [--positions 100000] [--symbols 20]
[--baseline 20000]`. Builds a synthetic book in memory (positions over `--symbols`
contracts with the BTCUSDT tier table, 1–5 positions per account, ~30% isolated,
leverage 5–50×, wallets sized so a few percent of accounts sit near liquidation),
then moves every mark by −3% and runs `ScreenBook.screen` (NumPy, the production
code) a few times, and `ScreenBook.screen_loop` (the same judgement, one position at
a time in plain Python) over `--baseline` positions extrapolated to the whole book.
Prints screen time, accounts flagged, the ratio and the machine load. The arrays
are loaded from PostgreSQL by the sweep (`ScreenBook.load`); this measures the
per-tick screen that runs after each mark. Target of issue 8: 1,000,000 positions
over 20 symbols in ≤ 200 ms.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.base")

import django  # noqa: E402

django.setup()

import numpy as np  # noqa: E402

from apps.contracts.services import tiers_from_brackets  # noqa: E402
from apps.liquidation.screen import ScreenBook  # noqa: E402
from apps.ops.demo import BTC_BRACKETS  # noqa: E402
from bench.common import machine_line, peak_rss_mb  # noqa: E402


def btc_tiers():
    return [(float(t.notional_cap), float(t.maintenance_rate), float(t.maintenance_amount))
            for t in tiers_from_brackets(BTC_BRACKETS)]


def synthetic_book(n: int, symbols: int, rng: np.random.Generator) -> tuple[ScreenBook, dict[int, float]]:
    tiers = btc_tiers()
    prices = np.exp(rng.uniform(np.log(0.5), np.log(60_000), symbols))
    contracts = [(i + 1, 1.0, tiers) for i in range(symbols)]
    per_account = rng.integers(1, 6, n // 3 + 1)
    user = np.repeat(np.arange(1, len(per_account) + 1), per_account)[:n]
    contract_id = rng.integers(1, symbols + 1, n)
    entry = prices[contract_id - 1] * rng.uniform(0.97, 1.03, n)
    notional = rng.lognormal(np.log(20_000), 1.0, n)
    size = rng.choice([-1.0, 1.0], n) * notional / entry
    leverage = rng.integers(5, 51, n)
    isolated = rng.random(n) < 0.3
    margin = notional / leverage
    wallets = {}
    cross_margin = np.bincount(user, weights=np.where(isolated, 0.0, margin))
    for u in np.unique(user[~isolated]):
        wallets[(int(u), 1)] = float(cross_margin[u] * rng.uniform(0.3, 1.5))
    book = ScreenBook.from_arrays(contracts=contracts, contract_id=contract_id, user_id=user, size=size, entry=entry,
                                  isolated=isolated, isolated_margin=margin * rng.uniform(0.3, 1.2, n),
                                  asset_id=np.ones(n, np.int64), wallets=wallets)
    marks = {i + 1: float(p * 0.97) for i, p in enumerate(prices)}
    return book, marks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=100_000)
    ap.add_argument("--symbols", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--baseline", type=int, default=20_000, help="positions for the per-position Python loop")
    args = ap.parse_args(argv)
    print(machine_line())
    rng = np.random.default_rng(8)
    t0 = time.perf_counter()
    book, marks = synthetic_book(args.positions, args.symbols, rng)
    print(f"book: {book.positions:,} open positions, {len(book.group_user):,} cross accounts, "
          f"{int(book.isolated.sum()):,} isolated, {args.symbols} symbols (built in {time.perf_counter() - t0:.2f} s)")
    times = []
    for _ in range(args.repeat):
        result = book.screen(marks)
        times.append(result.seconds)
    best, median = min(times), float(np.median(times))
    print(f"vectorized screen: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms over {args.repeat} runs; "
          f"flagged {len(result.cross):,} cross accounts + {len(result.isolated):,} isolated positions")
    warn = book.screen(marks, ratio=1.5)
    print(f"  at 150% (margin calls): {warn.count:,} scopes in {warn.seconds * 1000:.1f} ms")

    n_base = min(args.baseline, book.positions)
    sub = _subset(book, n_base)
    loop = sub.screen_loop(marks)
    fast_sub = sub.screen(marks)
    assert sorted(loop.cross) == sorted(fast_sub.cross) and sorted(loop.isolated) == sorted(fast_sub.isolated)
    extrapolated = loop.seconds / n_base * book.positions
    print(f"baseline per-position Python loop: {n_base:,} positions in {loop.seconds * 1000:.0f} ms -> "
          f"{extrapolated * 1000:.0f} ms extrapolated to {book.positions:,}; vectorized is "
          f"{extrapolated / median:.0f}x faster (same flags on the subset)")
    target = 0.2 * book.positions / 1_000_000
    print(f"target <= 200 ms per 1,000,000 positions ({target * 1000:.0f} ms here): "
          f"{'met' if median <= target else 'MISSED'} (median {median * 1000:.1f} ms); peak RSS {peak_rss_mb():.0f} MiB")
    print(machine_line())
    return 0


def _subset(book: ScreenBook, n: int) -> ScreenBook:
    """The first n positions (whole accounts are contiguous, so cross groups stay whole but the last)."""
    keep = slice(0, n)
    contracts = [(int(c), float(book.contract_size[i]),
                  [(float(book.caps[i, j]), float(book.rates[i, j]), float(book.amounts[i, j]))
                   for j in range(book.tier_count[i])]) for i, c in enumerate(book.contract_ids)]
    wallets = {(int(u), int(a)): float(w) for u, a, w in zip(book.group_user, book.group_asset, book.group_wallet)}
    return ScreenBook.from_arrays(contracts=contracts, contract_id=book.contract_ids[book.contract_index[keep]],
                                  user_id=book.user_id[keep], size=book.size[keep], entry=book.entry[keep],
                                  isolated=book.isolated[keep], isolated_margin=book.isolated_margin[keep],
                                  asset_id=book.group_asset[book.group[keep]], wallets=wallets)


if __name__ == "__main__":
    raise SystemExit(main())
