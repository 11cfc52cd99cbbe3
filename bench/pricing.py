"""Benchmark of the pricing engine: index + anomaly rules + mark per symbol per tick.

Run: `.venv/bin/python -m bench.pricing` (options: --symbols 50 --venues 5
--ticks 300 --step-ms 1000 --repeats 3 --seed 7). Quotes for every tick are
generated up front by `SimulatedVenues` so only the pricing is timed. Each tick
calls `PricingPipeline.update` once per symbol with that symbol's venue quotes and
a contract price. Two variants run in the same process on the same quotes:
the engine as designed (the index is reused for 5 s, so with 1 s ticks one tick
in five does the full work) and a naive baseline that forces the full
recomputation on every tick. The best of `repeats` runs is reported (the usual
timeit convention: the minimum is the least disturbed by other load), with the
machine load line so a number from a busy machine can be recognized.
"""
from __future__ import annotations

import argparse
import sys
import time
from decimal import Decimal
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apps.marketdata.engine import (  # noqa: E402
    AnomalyDetector,
    IndexCalculator,
    MarkCalculator,
    PricingPipeline,
    SimulatedVenues,
    VenueQuote,
)
from bench.common import machine_line, peak_rss_mb  # noqa: E402

Tick = tuple[int, list[tuple[str, list[VenueQuote], Decimal]]]


def make_ticks(sim: SimulatedVenues, n_ticks: int, step_ms: int) -> list[Tick]:
    """Per tick: (now, [(symbol, quotes, contract price)])."""
    ticks: list[Tick] = []
    start = sim.t0 + 10_000  # every venue has quoted by then
    for i in range(n_ticks):
        now = start + i * step_ms
        by_symbol: dict[str, list[VenueQuote]] = {s: [] for s in sim.symbols}
        for quote in sim.quotes_at(now):
            by_symbol[quote.symbol].append(quote)
        rows = []
        for symbol, quotes in by_symbol.items():
            # the contract trades a little above the venues (a small premium)
            contract = quotes[0].price * Decimal("1.0003") if quotes else None
            rows.append((symbol, quotes, contract))
        ticks.append((now, rows))
    return ticks


def make_pipeline(sim: SimulatedVenues) -> PricingPipeline:
    return PricingPipeline(
        IndexCalculator(sim.weights()),
        MarkCalculator(tick=Decimal("0.01")),
        AnomalyDetector(),
    )


def run(sim: SimulatedVenues, ticks: list[Tick], *, force: bool) -> tuple[float, int, int]:
    """(seconds, symbol updates, fresh index computations) for one pass."""
    pipeline = make_pipeline(sim)
    update = pipeline.update
    updates = fresh = 0
    started = time.perf_counter()
    for now, rows in ticks:
        for symbol, quotes, contract in rows:
            result = update(symbol, quotes, now=now, contract_price=contract, force=force)
            updates += 1
            fresh += not result.cached
    return time.perf_counter() - started, updates, fresh


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--venues", type=int, default=5)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--step-ms", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    sim = SimulatedVenues.synthetic(args.symbols, args.venues, seed=args.seed)
    gen_started = time.perf_counter()
    ticks = make_ticks(sim, args.ticks, args.step_ms)
    gen_seconds = time.perf_counter() - gen_started
    n_quotes = sum(len(q) for _, rows in ticks for _, q, _ in rows)

    run(sim, ticks[: min(20, len(ticks))], force=True)  # warm-up: decay tables, imports

    results = {}
    for label, force in (("engine", False), ("naive", True)):
        best = min((run(sim, ticks, force=force) for _ in range(args.repeats)), key=lambda r: r[0])
        results[label] = best

    print(
        f"pricing bench: {args.symbols} symbols x {args.venues} venues, {args.ticks} ticks "
        f"{args.step_ms} ms apart, {n_quotes} quotes (generated in {gen_seconds:.2f} s), "
        f"seed {args.seed}, best of {args.repeats}"
    )
    for label, title in (
        ("engine", "engine (5 s index cache)"),
        ("naive", "naive (full recompute each tick)"),
    ):
        seconds, updates, fresh = results[label]
        print(
            f"  {title:34s} {args.ticks / seconds:10.1f} ticks/s  "
            f"{seconds / updates * 1e6:8.1f} us per symbol update  "
            f"({fresh} of {updates} updates recomputed, {seconds:.3f} s)"
        )
    engine_s, naive_s = results["engine"][0], results["naive"][0]
    naive_fresh_us = naive_s / results["naive"][1] * 1e6
    print(f"  ratio engine/naive throughput: {naive_s / engine_s:.2f}x")
    print(f"  full index+anomaly+mark cost: {naive_fresh_us:.1f} us per symbol update")
    print(f"  peak RSS {peak_rss_mb():.1f} MiB")
    print(machine_line())


if __name__ == "__main__":
    main()
