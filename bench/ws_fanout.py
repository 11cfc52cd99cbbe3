"""Websocket fan-out benchmark: N clients on one stream, M updates, delivered messages/s and latency.

    .venv/bin/python bench/ws_fanout.py [--clients 200 500] [--updates 150] [--rate 5] [--baseline-clients 1]

Starts the real serving path as OS processes on a free loopback port, against a
throw-away database (`bench_ws_fanout`) and the test Redis database: daphne
(`exchange.asgi:application`) and the stream relay (`manage.py run_stream_relay`).
N websocket clients (the `websockets` client, in this process) SUBSCRIBE to
`fanoutusdt@aggTrade` (a copy of BTCUSDT that only this bench trades) on `/ws` and
wait for the reply (so every subscription is in place); then M matcher events with
one trade each are published on `events:FANOUTUSDT` at `--rate` per second (0: as
fast as Redis takes them), as the matcher does after a batch. The relay turns each
into an aggTrade (and the kline candles) published once on its `ws:` channel;
daphne's fan-out hub writes the frame to each client (apps.marketdata.fanout).
Each round also prints the CPU seconds daphne, the relay and this process used.

Each client count in `--clients` is one round, after a baseline round with
`--baseline-clients` (default 1) in the same run; every round prints delivered /
expected, messages/s, latency p50/p99/max, the machine load at its end, and its
ratios against the baseline (messages/s against the ideal N x, latency p50/p99).

Delivery latency is publish -> client receive, on this process's monotonic clock
(publisher and clients share it), matched by the aggTrade id. Delivered messages/s
is the count received divided by the time from the first publish to the last
receipt. A run ends when every message has arrived or nothing has arrived for
`--idle` seconds (a saturated run reports losses instead of hanging). Processes
are stopped in `finally`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import ensure_services, machine_line, peak_rss_mb  # noqa: E402

DB_NAME = "bench_ws_fanout"
# A contract of the bench's own (a copy of BTCUSDT): pub/sub channels such as the matcher's
# events:<symbol> are shared by every database of the Redis server, and another stack running
# on this machine would otherwise add its BTCUSDT trades to the measured stream.
SYMBOL = "FANOUTUSDT"
STREAM = f"{SYMBOL.lower()}@aggTrade"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--baseline-clients", type=int, default=1)
    parser.add_argument("--updates", type=int, default=150)
    parser.add_argument("--rate", type=float, default=5.0, help="updates per second (0: unpaced)")
    parser.add_argument("--idle", type=float, default=10.0, help="end a run after this long without a message")
    args = parser.parse_args()
    if min(args.clients) < 1 or args.baseline_clients < 1 or args.updates < 1:
        parser.error("--clients, --baseline-clients and --updates must be at least 1")

    try:
        import websockets.asyncio.client  # noqa: F401  (>= 13)
    except ImportError:
        raise SystemExit("bench/ws_fanout.py needs the websockets client: pip install websockets==17.4") from None
    ensure_services()
    os.environ["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    os.environ["TEST_DATABASE_NAME"] = DB_NAME
    import django

    django.setup()
    from django.db import connection

    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    try:
        from apps.ops.demo import seed_demo

        seed_demo()
        from apps.contracts.models import Contract

        contract = Contract.objects.get(symbol="BTCUSDT")
        contract.pk, contract.symbol = None, SYMBOL
        contract.save()
        connection.close()  # the servers are the only users of the database from here
        run(args, database=connection.settings_dict)
    finally:
        connection.creation.destroy_test_db(DB_NAME, verbosity=0)


def run(args, *, database: dict) -> None:
    import redis
    import websockets
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    env = dict(os.environ)
    env["DATABASE_URL"] = (f"postgres://{database['USER']}@{database['HOST'] or '127.0.0.1'}:"
                           f"{database['PORT'] or 5432}/{database['NAME']}")
    env["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client.delete("ops:heartbeat:stream_relay")
    logs = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    processes = [
        subprocess.Popen([sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port),
                          "exchange.asgi:application"], cwd=ROOT, env=env, stdout=logs[0], stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "manage.py", "run_stream_relay"], cwd=ROOT, env=env, stdout=logs[1],
                         stderr=subprocess.STDOUT),
    ]
    try:
        _wait(lambda: _accepts(port), 60, "daphne", processes)
        _wait(lambda: client.get("ops:heartbeat:stream_relay"), 60, "the relay", processes)
        print(f"ws fan-out bench: {STREAM} on ws://127.0.0.1:{port}/ws (daphne + stream relay processes), "
              f"{args.updates} updates at {'unpaced' if not args.rate else f'{args.rate:g}/s'}, client: websockets "
              f"{websockets.__version__} (one process)")
        next_id = [1_000_000]
        def timed_round(clients: int) -> dict:
            before = _cpu_seconds(processes)
            result = asyncio.run(_round(port, client, clients, args, next_id))
            result["cpu"] = [b - a for a, b in zip(before, _cpu_seconds(processes), strict=True)]
            return result

        base = timed_round(args.baseline_clients)
        _report(f"baseline: {args.baseline_clients} client(s)", base)
        for clients in args.clients:
            result = timed_round(clients)
            _report(f"{clients} clients", result)
            print(f"    ratios against the baseline ({args.baseline_clients} client(s)): delivered msgs/s "
                  f"{result['rate'] / base['rate']:.1f}x (ideal {clients / args.baseline_clients:g}x), "
                  f"latency p50 {result['p50'] / base['p50']:.1f}x, p99 {result['p99'] / base['p99']:.1f}x")
        for process in processes:
            if process.poll() is not None:
                raise SystemExit(f"{process.args} exited early with {process.returncode}")
    except BaseException:
        for name, log in zip(("daphne", "relay"), logs):
            log.seek(0)
            sys.stderr.write(f"--- {name} output ---\n{log.read().decode(errors='replace')[-3000:]}\n")
        raise
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
        for log in logs:
            log.close()
    print(f"  peak RSS (this process: clients and publisher) {peak_rss_mb():.0f} MiB")
    print(machine_line())


async def _round(port: int, redis_client, clients: int, args, next_id: list[int]) -> dict:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from apps.trading.matching import EVENTS_CHANNEL

    sent: dict[int, int] = {}  # trade id -> publish time (ns)
    latencies: list[int] = []
    state = {"last": 0, "received": 0, "first_publish": 0}
    progress = asyncio.Event()

    async def read(conn) -> None:
        try:
            async for payload in conn:
                now = time.perf_counter_ns()
                when = sent.get(json.loads(payload).get("a"))
                if when is not None:
                    latencies.append(now - when)
                    state["received"] += 1
                    state["last"] = now
                    progress.set()
        except ConnectionClosed:
            pass

    conns, readers = [], []
    for _ in range(clients):
        conn = await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=30, close_timeout=5, max_queue=None)
        await conn.send(json.dumps({"method": "SUBSCRIBE", "params": [STREAM], "id": 1}))
        reply = json.loads(await asyncio.wait_for(conn.recv(), 30))
        if reply != {"result": None, "id": 1}:
            raise SystemExit(f"SUBSCRIBE refused: {reply}")
        conns.append(conn)
        readers.append(asyncio.create_task(read(conn)))

    async def publish(count: int, rate: float) -> None:
        start = time.perf_counter()
        for i in range(count):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            trade_id = next_id[0]
            next_id[0] += 1
            now_ms = time.time_ns() // 1_000_000
            event = json.dumps({"symbol": SYMBOL, "time": now_ms, "last_seq": trade_id, "orders": [],
                                "trades": [{"id": trade_id, "price": "50000", "qty": "0.001", "taker_side": "BUY",
                                            "taker_order_id": trade_id, "maker_order_id": 1, "time": now_ms}]})
            sent[trade_id] = time.perf_counter_ns()
            if not state["first_publish"]:
                state["first_publish"] = sent[trade_id]
            await asyncio.to_thread(redis_client.publish, EVENTS_CHANNEL.format(symbol=SYMBOL), event)

    async def drain(expected: int) -> None:
        while state["received"] < expected:
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), args.idle)
            except TimeoutError:
                return

    # Warm-up (not counted): the relay loads the contract and seeds its candles.
    await publish(3, 0)
    await drain(3 * clients)
    sent.clear()
    latencies.clear()
    state.update(last=0, received=0, first_publish=0)

    publisher = asyncio.create_task(publish(args.updates, args.rate))
    await drain(args.updates * clients)
    await publisher
    await asyncio.gather(*(conn.close() for conn in conns))
    await asyncio.gather(*readers)

    expected = args.updates * clients
    elapsed = (state["last"] - state["first_publish"]) / 1e9 if state["last"] else float("nan")
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1e6 if ordered else float("nan")

    return {"clients": clients, "expected": expected, "received": state["received"], "elapsed": elapsed,
            "rate": state["received"] / elapsed if elapsed else float("nan"), "p50": pct(0.50), "p99": pct(0.99),
            "max": ordered[-1] / 1e6 if ordered else float("nan"), "load": os.getloadavg()}


def _report(label: str, r: dict) -> None:
    lost = r["expected"] - r["received"]
    print(f"  {label}")
    print(f"    delivered {r['received']:,} of {r['expected']:,} messages ({lost:,} lost) in {r['elapsed']:.2f} s: "
          f"{r['rate']:,.0f} msgs/s")
    print(f"    delivery latency ms: p50 {r['p50']:.2f}  p99 {r['p99']:.2f}  max {r['max']:.2f}")
    daphne, relay, bench = r["cpu"]
    print(f"    CPU seconds in the round (connect, warm-up, run): daphne {daphne:.1f}, relay {relay:.1f}, "
          f"clients + publisher {bench:.1f}")
    print(f"    load average at the end of the round: {r['load'][0]:.2f} {r['load'][1]:.2f} {r['load'][2]:.2f}")


def _cpu_seconds(processes) -> list[float]:
    """User + system CPU seconds of the server processes (from /proc) and of this process."""
    out = []
    tick = os.sysconf("SC_CLK_TCK")
    for process in processes:
        try:
            with open(f"/proc/{process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)
        except OSError:
            out.append(float("nan"))
    own = os.times()
    return [*out, own.user + own.system]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(predicate, timeout: float, what: str, processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise SystemExit(f"{process.args} exited with {process.returncode} before {what} was ready")
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


if __name__ == "__main__":
    main()
