"""Benchmark of the C order book (matching_native).

    .venv/bin/python bench/matcher.py [--commands N] [--seed S] [--ref-commands M]
    .venv/bin/python bench/matcher.py --rest N      # rest N orders, print peak memory

A seeded workload (about 60% limit adds around a random-walk mid, 25% cancels of
live orders, 10% IOC/market orders that cross, 5% amends) is generated first (not
timed) and replayed through
  (a) Book.execute, in batches of --chunk commands, events moved after each batch
      into a preallocated EVENT_DTYPE array with Book.read_events;
  (b) Book.submit, one call per command, events moved out the same way every
      --chunk commands;
  (c) the pure-Python ReferenceBook, one call per command.
Only the replay is timed (for (a)/(b) including moving the events out of the book;
for (c) excluding the conversion of the reference's Python event tuples to bytes).
Garbage collection is disabled during the replays.
A checksum over all fill events must be identical for the three; if the reference
runs on a prefix (--ref-commands), (a) and (b) are also run on that prefix and the
checksums compared there.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_line, peak_rss_mb  # noqa: E402
from matching_native import COMMAND_DTYPE, EVENT_DTYPE, Book, EventKind, Op  # noqa: E402
from matching_native.reference import ReferenceBook  # noqa: E402

MIN_TICK, MAX_TICK, MID0 = 1, 200_000, 100_000
_K = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x27D4EB2F165667C5],
              dtype=np.uint64)


def generate(n: int, seed: int) -> np.ndarray:
    """Seeded workload; a scratch C book tracks which orders are live."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    sides = rng.integers(1, 3, n)
    offs = np.minimum(rng.geometric(0.15, n) - 1, 60)
    qtys = rng.integers(1, 101, n)
    owners = rng.integers(1, 1001, n)
    steps = rng.integers(-1, 2, n)
    picks = rng.random(n)
    amend_price = rng.random(n)
    taker_op = rng.random(n)
    cmds = np.zeros(n, COMMAND_DTYPE)
    op_a, side_a, oid_a = cmds["op"], cmds["side"], cmds["oid"]
    owner_a, price_a, qty_a = cmds["owner"], cmds["price"], cmds["qty"]
    scratch = Book(MIN_TICK, MAX_TICK, capacity=1 << 18)
    submit, get = scratch.submit, scratch.get
    live: list[int] = []
    mid, next_oid = MID0, 1
    for i in range(n):
        if i % 8 == 0:
            mid = min(max(mid + int(steps[i]), MIN_TICK + 1000), MAX_TICK - 1000)
        x = u[i]
        side, qty, owner = int(sides[i]), int(qtys[i]), int(owners[i])
        if x < 0.60 or (x < 0.85 and not live) or (x >= 0.95 and not live):
            op, oid = Op.LIMIT, next_oid
            next_oid += 1
            price = mid - 1 - int(offs[i]) if side == 1 else mid + 1 + int(offs[i])
        elif x < 0.85:
            op, price, qty, owner, side = Op.CANCEL, 0, 0, 0, 0
            while True:
                j = int(picks[i] * len(live))
                oid = live[j]
                live[j] = live[-1]
                live.pop()
                if get(oid) is not None or not live:
                    break
        elif x < 0.95:
            op, oid = (Op.IOC if taker_op[i] < 0.5 else Op.MARKET), next_oid
            next_oid += 1
            price = mid + 20 if side == 1 else mid - 20
            qty = qty * 2
        else:
            op, side, owner = Op.AMEND, 0, 0
            oid = live[int(picks[i] * len(live))]
            cur = get(oid)
            if cur is None:
                price = 0
            elif amend_price[i] < 0.7:
                price = 0
                qty = max(1, cur[2] - 1 - int(offs[i])) if amend_price[i] < 0.35 else qty
            else:
                price = mid - 1 - int(offs[i]) if cur[0] == 1 else mid + 1 + int(offs[i])
        op_a[i], side_a[i], oid_a[i], owner_a[i], price_a[i], qty_a[i] = op, side, oid, owner, price, qty
        submit(op, side, oid, owner, price, qty, 0)
        scratch.clear_events()
        if op == Op.LIMIT and get(oid) is not None:
            live.append(oid)
    return cmds


class FillChecksum:
    """Order-sensitive uint64 checksum of the fill events (taker, maker, price, qty)."""

    def __init__(self):
        self.value = np.uint64(0)
        self.fills = 0
        self.events = 0

    def add(self, raw) -> None:
        ev = raw if isinstance(raw, np.ndarray) else np.frombuffer(raw, EVENT_DTYPE)
        self.events += len(ev)
        f = ev[ev["kind"] == EventKind.FILL]
        if not len(f):
            return
        with np.errstate(over="ignore"):
            h = (f["oid"].astype(np.uint64) * _K[0]) ^ (f["maker_oid"].astype(np.uint64) * _K[1])
            h ^= (f["price"].astype(np.uint64) * _K[2]) ^ (f["qty"].astype(np.uint64) * _K[3])
            h ^= h >> np.uint64(29)
            idx = np.arange(self.fills + 1, self.fills + 1 + len(f), dtype=np.uint64)
            self.value = np.uint64(self.value + np.sum(h * idx, dtype=np.uint64))
        self.fills += len(f)

    def __str__(self):
        return f"{int(self.value):016x} ({self.fills} fills, {self.events} events)"


def run_batch(cmds: np.ndarray, chunk: int):
    """(a): execute() per chunk of commands, events moved out with read_events()."""
    book = Book(MIN_TICK, MAX_TICK, capacity=1 << 19)
    out = np.zeros(chunk * 16, EVENT_DTYPE)        # preallocated, touched once
    ck = FillChecksum()
    elapsed = 0.0
    execute, read = book.execute, book.read_events
    gc.disable()
    for s in range(0, len(cmds), chunk):
        part = cmds[s:s + chunk]
        t0 = time.perf_counter()
        execute(part)
        k = read(out)
        elapsed += time.perf_counter() - t0
        while True:   # (more than 16 events per command on average never happens here)
            ck.add(out[:k])
            if not book.pending_events:
                break
            k = read(out)
    gc.enable()
    return elapsed, ck, book


def run_single(rows: list, chunk: int, book):
    """(b)/(c): one submit() per command; events drained every `chunk` commands."""
    ck = FillChecksum()
    elapsed = 0.0
    submit = book.submit
    is_c = isinstance(book, Book)
    out = np.zeros(chunk * 16, EVENT_DTYPE)
    gc.disable()
    for s in range(0, len(rows), chunk):
        part = rows[s:s + chunk]
        t0 = time.perf_counter()
        for op, side, stp, _flags, oid, owner, price, qty in part:
            submit(op, side, oid, owner, price, qty, stp)
        if is_c:
            k = book.read_events(out)
            elapsed += time.perf_counter() - t0
            ck.add(out[:k])
            while book.pending_events:
                ck.add(out[:book.read_events(out)])
        else:  # the reference builds its bytes from Python tuples: keep that out of the timing
            elapsed += time.perf_counter() - t0
            ck.add(book.events())
    gc.enable()
    return elapsed, ck, book


def rest_mode(n: int, seed: int, chunk: int = 65536) -> None:
    """Rest n non-crossing limit orders (generated chunk by chunk) and report memory."""
    rng = np.random.default_rng(seed)
    before = peak_rss_mb()
    book = Book(MIN_TICK, MAX_TICK, capacity=n)
    elapsed = 0.0
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        cmds = np.zeros(m, COMMAND_DTYPE)
        cmds["op"] = Op.LIMIT
        cmds["side"] = rng.integers(1, 3, m)
        depth = rng.integers(0, 50_000, m)
        cmds["price"] = np.where(cmds["side"] == 1, MID0 - 1 - depth, MID0 + 1 + depth)
        cmds["oid"] = np.arange(s + 1, s + m + 1)
        cmds["owner"] = rng.integers(1, 10_001, m)
        cmds["qty"] = rng.integers(1, 1001, m)
        t0 = time.perf_counter()
        book.execute(cmds)
        book.clear_events()
        elapsed += time.perf_counter() - t0
    book.validate()
    print(machine_line())
    print(f"rest mode: {len(book):,} resting orders in {elapsed:.3f}s ({n / elapsed:,.0f} orders/s), "
          f"{len(book.depth(10**6)[0]) + len(book.depth(10**6)[1]):,} price levels")
    print(f"book.memory_bytes(): {book.memory_bytes() / 2**20:.1f} MiB; "
          f"peak RSS of the process: {before:.1f} MiB before the book, {peak_rss_mb():.1f} MiB after")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ref-commands", type=int, default=None,
                    help="replay only this prefix through the reference (default: all)")
    ap.add_argument("--chunk", type=int, default=4096, help="commands per batch / per event read")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of (a) and (b); the best is reported")
    ap.add_argument("--rest", type=int, default=None, metavar="N",
                    help="only rest N orders and report peak memory")
    args = ap.parse_args(argv)
    if args.rest:
        rest_mode(args.rest, args.seed)
        return 0

    n = args.commands
    t0 = time.perf_counter()
    cmds = generate(n, args.seed)
    rows = cmds.tolist()
    gen_s = time.perf_counter() - t0
    counts = {op.name: int((cmds["op"] == op).sum()) for op in Op}
    print(machine_line())
    print(f"workload: {n:,} commands, seed {args.seed}, generated in {gen_s:.1f}s (not timed); "
          + ", ".join(f"{k} {v / n:.1%}" for k, v in counts.items() if v))

    runs_a, runs_b = [], []
    for _ in range(args.repeat):   # best of --repeat (the machine may be shared); checksums must agree
        runs_a.append(run_batch(cmds, args.chunk))
        runs_b.append(run_single(rows, args.chunk, Book(MIN_TICK, MAX_TICK, capacity=1 << 19)))
    assert len({int(r[1].value) for r in runs_a + runs_b}) == 1, "checksum differs between repeats"
    ta, cka, book_a = min(runs_a, key=lambda r: r[0])
    tb, ckb, book_b = min(runs_b, key=lambda r: r[0])
    same_ab = (cka.value == ckb.value and book_a.state_hash() == book_b.state_hash())
    rn = n if args.ref_commands is None else min(args.ref_commands, n)
    tc, ckc, book_c = run_single(rows[:rn], args.chunk, ReferenceBook(MIN_TICK, MAX_TICK))
    if rn == n:
        pa, pb = cka, ckb
        same_c = ckc.value == cka.value and book_c.state_hash() == book_a.state_hash()
    else:
        _, pa, bpa = run_batch(cmds[:rn], args.chunk)
        _, pb, bpb = run_single(rows[:rn], args.chunk, Book(MIN_TICK, MAX_TICK, capacity=1 << 19))
        same_c = (pa.value == pb.value == ckc.value
                  and bpa.state_hash() == bpb.state_hash() == book_c.state_hash())

    ra, rb, rc = n / ta, n / tb, rn / tc
    every = lambda runs: ", ".join(f"{n / r[0] / 1e6:.1f}M" for r in runs)  # noqa: E731
    print(f"(a) batch execute     : {ra:>14,.0f} commands/s  ({1e9 / ra:6.1f} ns/command, {ta:.3f}s; "
          f"best of {args.repeat}: {every(runs_a)})")
    print(f"(b) one call/command  : {rb:>14,.0f} commands/s  ({1e9 / rb:6.1f} ns/command, {tb:.3f}s; "
          f"best of {args.repeat}: {every(runs_b)})")
    print(f"(c) Python reference  : {rc:>14,.0f} commands/s  ({1e9 / rc:6.1f} ns/command, {tc:.3f}s"
          + (f", on the first {rn:,} commands)" if rn != n else ")"))
    print(f"ratios: batch/per-call {ra / rb:.1f}x, batch/reference {ra / rc:.0f}x, "
          f"per-call/reference {rb / rc:.0f}x")
    print(f"checksum (a) {cka}")
    print(f"checksum (b) {ckb}")
    if rn == n:
        print(f"checksum (c) {ckc}")
    else:
        print(f"checksum on the {rn:,}-command prefix: (a) {pa}  (b) {pb}  (c) {ckc}")
    print(f"resting orders at the end: {len(book_a):,}; state hash {book_a.state_hash():016x}")
    print(f"checksums and final books identical: a==b {'yes' if same_ab else 'NO'}, "
          f"reference {'yes' if same_c else 'NO'}")
    print(f"peak RSS: {peak_rss_mb():.1f} MiB (whole process: workload, three books, events)")
    return 0 if same_ab and same_c else 1


if __name__ == "__main__":
    sys.exit(main())
