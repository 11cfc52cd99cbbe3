"""Soak benchmark: what one event of the invariant soak costs, per kind of event.

    .venv/bin/python bench/soak.py [--events 3000] [--seed 20261126]

Runs the first N events of the soak (`apps.simulation.soak`, the same seed as the full
1,000,000-event run) on a throw-away database (`<DATABASE_URL's database>_bench_soak`)
and prints, per kind of event, its calls, wall ms per call, SQL statements per call and
share of the time; then events/s, the CPU seconds of this process and of its PostgreSQL
backend (figures the machine's load does not stretch), and, as the baseline of the same
run, the round trip of `SELECT 1` on the same connection: the ratio says how far an event
is from its statements' bare round trips. Ends with the soak's own invariant checks.
"""
import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import bench_database_name, cpu_seconds, ensure_services, machine_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--window", type=int, default=0,
                        help="also print ms per call of the main kinds for each window of this many events")
    args = parser.parse_args()

    ensure_services()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exchange.settings.base")
    import django

    django.setup()
    from django.db import connection

    from apps.simulation import soak
    from apps.simulation.database import database_recreate_and_use

    database_recreate_and_use(bench_database_name("soak"))
    stats: dict[str, list] = defaultdict(lambda: [0, 0.0, 0])
    windows: list[dict[str, list]] = []  # per window: kind -> [calls, seconds, statements]
    statements = [0]

    def count(execute, sql, params, many, context):
        statements[0] += 1
        return execute(sql, params, many, context)

    def event(self) -> str:  # Soak.event, timed and counted per kind
        kind = self.rng.choices(self._kinds, self._weights)[0]
        before, started = statements[0], time.perf_counter()
        getattr(self, f"do_{kind}")()
        spent, stmts = time.perf_counter() - started, statements[0] - before
        rows = [stats[kind]]
        if args.window:
            if not windows or sum(r[0] for r in windows[-1].values()) >= args.window:
                windows.append(defaultdict(lambda: [0, 0.0, 0]))
            rows.append(windows[-1][kind])
        for row in rows:
            row[0] += 1
            row[1] += spent
            row[2] += stmts
        return kind

    soak.Soak.event = event
    round_trip = _select_one_ms(connection)
    pg_before, py_before = cpu_seconds(connection)
    started = time.perf_counter()
    with connection.execute_wrapper(count):
        result = soak.soak_run(seed=args.seed, events=args.events, check_every=args.events, out=open(os.devnull, "w"))
    seconds = time.perf_counter() - started
    pg_after, py_after = cpu_seconds(connection)

    total = sum(row[1] for row in stats.values())
    print(f"soak bench: seed {args.seed}, {args.events} events")
    for kind, (calls, spent, stmts) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
        print(f"  {kind:11s} {calls:6d} calls  {spent / calls * 1000:7.2f} ms/call  {stmts / calls:5.1f} statements/call"
              f"  {spent / total * 100:5.1f}% of the time")
    per_event_ms = total / args.events * 1000
    per_event_statements = sum(row[2] for row in stats.values()) / args.events
    print(f"  {args.events / total:.1f} events/s over the events ({per_event_ms:.2f} ms and {per_event_statements:.1f}"
          f" statements per event); {args.events / seconds:.1f} events/s with the set-up and the checks")
    pg = f"{pg_after - pg_before:.1f} s" if pg_before is not None and pg_after is not None else "n/a"
    print(f"  CPU: this process {py_after - py_before:.1f} s, its PostgreSQL backend {pg}")
    floor = per_event_statements * round_trip
    print(f"  baseline: SELECT 1 round trip {round_trip:.3f} ms; an event's statements as bare round trips "
          f"{floor:.2f} ms; ratio event / round-trip floor {per_event_ms / floor:.1f}x")
    if windows:
        kinds = ("limit", "match", "tick", "sweep", "cancel", "amend")
        print("  per window of %d events: events/s, then ms per call (statements per call)" % args.window)
        for number, window in enumerate(windows):
            spent = sum(r[1] for r in window.values())
            cells = "  ".join(f"{k} {window[k][1] / window[k][0] * 1000:5.2f} ({window[k][2] / window[k][0]:4.1f})"
                              for k in kinds if window[k][0])
            print(f"    {number * args.window:>8,d}+ {sum(r[0] for r in window.values()) / spent:6.1f}/s  {cells}")
    print(f"  invariants: {result.checks_passed} checks passed in {result.rounds} rounds"
          + ("" if result.ok else f"; FAILED: {result.failure}"))
    print(machine_line())
    if not result.ok:
        sys.exit(1)


def _select_one_ms(connection, n: int = 2000) -> float:
    with connection.cursor() as cursor:
        started = time.perf_counter()
        for _ in range(n):
            cursor.execute("SELECT 1")
            cursor.fetchone()
    return (time.perf_counter() - started) / n * 1000


if __name__ == "__main__":
    main()
