"""Websocket fan-out benchmark: N clients on one stream, M updates, delivered messages/s and latency.

    .venv/bin/python bench/ws_fanout.py [--clients 200 500] [--updates 150] [--rate 5] [--baseline-clients 1]
                                        [--client-processes 2] [--client websockets|raw] [--web-workers 1]

Starts the real serving path as OS processes on a free loopback port, against a
throw-away database (`<DATABASE_URL's name>_bench_ws_fanout`) and the test Redis
database: the web process as the Procfile starts it (`scripts/web.py`, with
`--web-workers` uvicorn workers, default 1; each worker fans out to its
own connections) and the stream relay (`manage.py run_stream_relay`).
N websocket clients (the `websockets` client) SUBSCRIBE to `fanoutusdt@aggTrade` (a
copy of BTCUSDT that only this bench trades) on `/ws` and wait for the reply (so
every subscription is in place); then M matcher events with one trade each are
published on `events:FANOUTUSDT` at `--rate` per second (0: as fast as Redis takes
them), as the matcher does after a batch. The relay turns each into an aggTrade (and
the kline candles) published once on its `ws:` channel; the web worker's fan-out hub writes
the frame to each client (apps.marketdata.fanout).

The clients are spread over `--client-processes` processes (default 2, one per core
of the reference machine), apart from the publisher: in one process the clients'
own work on a burst of N frames (frame parsing, JSON, the asyncio loop) is done one
frame after another and is timed as delivery latency. `--client-processes 1` puts
them all in one process (the bench before 2026-11-26). `--client raw` replaces the
websockets library by a minimal client (`_RawWebsocket`: handshake, frames, pong,
close) whose per-frame cost is a fraction of the library's, to tell the clients'
share of the latency from the server's on a machine they share. Each round prints
the CPU seconds the web process, the relay, the client processes and the publisher used.

Each client count in `--clients` is one round, after a baseline round with
`--baseline-clients` (default 1) in the same run; every round prints delivered /
expected, messages/s, latency p50/p99/max, the machine load at its end, and its
ratios against the baseline (messages/s against the ideal N x, latency p50/p99), and
per update the latency to its first client and the spread from its first client to its
last (the burst of N writes and the clients' reading of them).

Delivery latency is publish -> client receive, on the machine's monotonic clock
(`time.perf_counter_ns`, CLOCK_MONOTONIC: one clock for every process), matched by
the aggTrade id. Delivered messages/s is the count received divided by the time from
the first publish to the last receipt. A run ends when every message has arrived or
nothing has arrived for `--idle` seconds (a saturated run reports losses instead of
hanging). Processes are stopped in `finally`.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import bench_database_name, ensure_services, machine_line, peak_rss_mb  # noqa: E402

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
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes the clients are spread over (apart from the publisher)")
    parser.add_argument("--web-workers", type=int, default=1,
                        help="uvicorn processes serving the websockets (scripts/web.py, as the Procfile's WEB_WORKERS)")
    parser.add_argument("--client", choices=("websockets", "raw"), default="websockets",
                        help="websockets: the library's client; raw: a minimal one (the clients' own share)")
    args = parser.parse_args()
    if min(args.clients) < 1 or min(args.baseline_clients, args.updates, args.client_processes, args.web_workers) < 1:
        parser.error("--clients, --baseline-clients, --updates, --client-processes and --web-workers "
                     "must be at least 1")

    try:
        import websockets.asyncio.client  # noqa: F401  (>= 13)
    except ImportError:
        raise SystemExit("bench/ws_fanout.py needs the websockets client: pip install websockets==17.4") from None
    ensure_services()
    db_name = bench_database_name("ws_fanout")
    os.environ["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    os.environ["TEST_DATABASE_NAME"] = db_name
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
        connection.creation.destroy_test_db(db_name, verbosity=0)


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
    # The Procfile's web line (scripts/web.py: `--web-workers` uvicorn processes on one socket).
    processes = [
        subprocess.Popen([sys.executable, "scripts/web.py", "--workers", str(args.web_workers), "-b", "127.0.0.1",
                          "-p", str(port), "--log-level", "warning"], cwd=ROOT, env=env, stdout=logs[0],
                         stderr=subprocess.STDOUT),
        subprocess.Popen([sys.executable, "manage.py", "run_stream_relay"], cwd=ROOT, env=env, stdout=logs[1],
                         stderr=subprocess.STDOUT),
    ]
    try:
        _wait(lambda: _accepts(port), 60, "the web process", processes)
        _wait(lambda: client.get("ops:heartbeat:stream_relay"), 60, "the relay", processes)
        print(f"ws fan-out bench: {STREAM} on ws://127.0.0.1:{port}/ws ({args.web_workers} web worker(s) + "
              f"stream relay process), "
              f"{args.updates} updates at {'unpaced' if not args.rate else f'{args.rate:g}/s'}, client: "
              f"{'websockets ' + websockets.__version__ if args.client == 'websockets' else 'raw'} "
              f"({args.client_processes} client process(es))")
        next_id = [1_000_000]
        def timed_round(clients: int) -> dict:
            before = _cpu_seconds(processes)
            result = asyncio.run(_round(port, client, clients, args, next_id))
            web, relay, publisher = (b - a for a, b in zip(before, _cpu_seconds(processes), strict=True))
            result["cpu"] = [web, relay, result.pop("client_cpu"), publisher]
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
        for name, log in zip(("web", "relay"), logs):
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
    print(f"  peak RSS (this process: the publisher) {peak_rss_mb():.0f} MiB")
    print(machine_line())


async def _round(port: int, redis_client, clients: int, args, next_id: list[int]) -> dict:
    from apps.trading.matching import EVENTS_CHANNEL

    sent: dict[int, int] = {}  # trade id -> publish time (ns)

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
            await asyncio.to_thread(redis_client.publish, EVENTS_CHANNEL.format(symbol=SYMBOL), event)

    # The clients, spread over the worker processes (none gets zero).
    workers = min(args.client_processes, clients)
    shares = [clients // workers + (1 if i < clients % workers else 0) for i in range(workers)]
    context = multiprocessing.get_context("spawn")
    pipes, procs = [], []
    for share in shares:
        mine, theirs = context.Pipe()
        proc = context.Process(target=_client_process, args=(theirs, port, share, args.idle, args.client),
                               daemon=True)
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    try:
        for pipe in pipes:  # every subscription is in place
            await _pipe_get(pipe, "ready", 120)
        async def expect(count: int) -> None:
            ids = list(range(next_id[0], next_id[0] + count))
            for pipe in pipes:
                pipe.send(("expect", ids))
            for pipe in pipes:
                await _pipe_get(pipe, "armed", 60)

        # Warm-up (not counted): the relay loads the contract and seeds its candles.
        await expect(3)
        await publish(3, 0)
        for pipe in pipes:
            await _pipe_get(pipe, "done", 120 + args.idle)
        measured_first = next_id[0]
        await expect(args.updates)
        await publish(args.updates, args.rate)
        received: list[tuple[int, int]] = []
        client_cpu = 0.0
        for pipe in pipes:
            _, times, cpu = await _pipe_get(pipe, "done", 600)
            received.extend(times)
            client_cpu += cpu
        for pipe in pipes:
            pipe.send(("stop", None))
        for proc in procs:
            await asyncio.to_thread(proc.join, 30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()

    latencies = sorted(at - sent[trade_id] for trade_id, at in received if trade_id in sent)
    # Per update: when its first client had it (the path up to the web worker's dispatch) and how long
    # until its last client had it (the burst: the web worker's writes and the clients' reading).
    spans: dict[int, list[int]] = {}
    for trade_id, at in received:
        if trade_id in sent:
            span = spans.setdefault(trade_id, [at, at])
            span[0], span[1] = min(span[0], at), max(span[1], at)
    firsts = sorted(first - sent[trade_id] for trade_id, (first, _) in spans.items())
    widths = sorted(last - first for first, last in spans.values())
    last = max((at for _, at in received), default=0)
    first_publish = sent[measured_first]
    expected = args.updates * clients
    elapsed = (last - first_publish) / 1e9 if last else float("nan")

    def pct(p: float, values: list[int] = latencies) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] / 1e6 if values else float("nan")

    return {"clients": clients, "expected": expected, "received": len(latencies), "elapsed": elapsed,
            "rate": len(latencies) / elapsed if elapsed else float("nan"), "p50": pct(0.50), "p99": pct(0.99),
            "max": latencies[-1] / 1e6 if latencies else float("nan"), "load": os.getloadavg(),
            "client_cpu": client_cpu, "first": (pct(0.5, firsts), pct(0.99, firsts)),
            "width": (pct(0.5, widths), pct(0.99, widths))}


async def _pipe_get(pipe, kind: str, timeout: float):
    """The next message of a client process (it must be `kind`), waited for off the event loop."""
    if not await asyncio.to_thread(pipe.poll, timeout):
        raise SystemExit(f"a client process sent no {kind!r} within {timeout:.0f} s")
    message = pipe.recv()
    if message[0] != kind:
        raise SystemExit(f"a client process sent {message!r}, expected {kind!r}")
    return message


def _client_process(pipe, port: int, count: int, idle: float, kind: str) -> None:
    """A client process: `count` connections subscribed to STREAM; for each ("expect", ids) it
    answers ("armed",), then ("done", [(id, receipt ns), ...], its CPU seconds since the last "done") once every
    connection has each id (or after `idle` s without a frame); ("stop", None) ends it."""
    asyncio.run(_clients(pipe, port, count, idle, kind))


class _Refused(Exception):
    pass


async def _clients(pipe, port: int, count: int, idle: float, kind: str) -> None:
    wanted: set[int] = set()
    times: list[tuple[int, int]] = []
    progress = asyncio.Event()

    def on_message(payload) -> None:
        now = time.perf_counter_ns()
        trade_id = json.loads(payload).get("a")
        if trade_id in wanted:
            times.append((trade_id, now))
            progress.set()

    opener = _open_websockets if kind == "websockets" else _open_raw
    try:
        close = await opener(port, count, on_message)
    except _Refused as exc:
        pipe.send(("refused", exc.args[0]))
        return
    pipe.send(("ready",))
    cpu = os.times()
    while True:
        kind, ids = await asyncio.to_thread(pipe.recv)
        if kind == "stop":
            break
        times.clear()
        wanted.clear()
        wanted.update(ids)
        pipe.send(("armed",))
        target = len(ids) * count
        while len(times) < target:
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), idle)
            except TimeoutError:
                break
        now = os.times()
        pipe.send(("done", list(times), now.user + now.system - cpu.user - cpu.system))
        cpu = now
    await close()


SUBSCRIBE = json.dumps({"method": "SUBSCRIBE", "params": [STREAM], "id": 1})


async def _open_websockets(port: int, count: int, on_message):
    """`count` clients of the websockets library, subscribed; returns their closer."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    conns = []
    for _ in range(count):
        conn = await connect(f"ws://127.0.0.1:{port}/ws", open_timeout=30, close_timeout=5, max_queue=None)
        await conn.send(SUBSCRIBE)
        reply = json.loads(await asyncio.wait_for(conn.recv(), 30))
        if reply != {"result": None, "id": 1}:
            raise _Refused(reply)
        conns.append(conn)

    async def read(conn) -> None:
        try:
            async for payload in conn:
                on_message(payload)
        except ConnectionClosed:
            pass

    readers = [asyncio.create_task(read(conn)) for conn in conns]

    async def close() -> None:
        await asyncio.gather(*(conn.close() for conn in conns))
        await asyncio.gather(*readers)

    return close


async def _open_raw(port: int, count: int, on_message):
    """`count` `_RawWebsocket` clients, subscribed; returns their closer."""
    loop = asyncio.get_running_loop()
    clients = []
    for _ in range(count):
        _, client = await loop.create_connection(lambda: _RawWebsocket(f"127.0.0.1:{port}", "/ws"), "127.0.0.1", port)
        await asyncio.wait_for(client.opened, 30)
        client.send_text(SUBSCRIBE)
        reply = json.loads(await asyncio.wait_for(client.first, 30))
        if reply != {"result": None, "id": 1}:
            raise _Refused(reply)
        client.on_message = on_message
        clients.append(client)

    async def close() -> None:
        for client in clients:
            client.close()
        await asyncio.gather(*(asyncio.wait_for(client.closed, 5) for client in clients), return_exceptions=True)

    return close


class _RawWebsocket(asyncio.Protocol):
    """The least a websocket client does (RFC 6455): the opening handshake, masked frames out,
    whole frames in, a pong for each ping, the close. `--client raw`: a lighter instrument than
    the websockets library (tens of microseconds of Python per frame), so that the clients'
    share of a burst's latency can be told from the server's."""

    def __init__(self, host: str, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.host, self.path = host, path
        self.opened, self.first, self.closed = loop.create_future(), loop.create_future(), loop.create_future()
        self.on_message = None  # after the first message (the SUBSCRIBE reply, for `first`)
        self.buffer = bytearray()
        self.handshaken = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                        .encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:buf.find(b"\r\n")])
            del buf[:end + 4]
            if b" 101 " not in status:
                self.opened.set_exception(ConnectionError(status.decode(errors="replace")))
                self.transport.close()
                return
            self.handshaken = True
            self.opened.set_result(None)
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first, size, head = buf[pos], buf[pos + 1] & 0x7F, 2
            if size == 126:
                head = 4
                if end - pos < head:
                    break
                size = int.from_bytes(buf[pos + 2:pos + 4], "big")
            elif size == 127:
                head = 10
                if end - pos < head:
                    break
                size = int.from_bytes(buf[pos + 2:pos + 10], "big")
            if end - pos < head + size:
                break
            payload = bytes(buf[pos + head:pos + head + size])
            pos += head + size
            opcode = first & 0x0F
            if opcode == 1:
                if not first & 0x80:
                    raise ValueError("a fragmented message: the server sends whole ones")
                if self.on_message is not None:
                    self.on_message(payload)
                elif not self.first.done():
                    self.first.set_result(payload)
            elif opcode == 9:
                self._send(0xA, payload)
            elif opcode == 8:
                self.transport.close()
        del buf[:pos]

    def connection_lost(self, exc) -> None:
        for future in (self.opened, self.first):
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _send(self, opcode: int, payload: bytes) -> None:
        mask, size = os.urandom(4), len(payload)
        head = bytes((0x80 | opcode, 0x80 | size)) if size < 126 else struct.pack("!BBH", 0x80 | opcode, 0xFE, size)
        self.transport.write(head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def close(self) -> None:
        if not self.transport.is_closing():
            self._send(0x8, (1000).to_bytes(2, "big"))  # the server answers and ends the connection


def _report(label: str, r: dict) -> None:
    lost = r["expected"] - r["received"]
    print(f"  {label}")
    print(f"    delivered {r['received']:,} of {r['expected']:,} messages ({lost:,} lost) in {r['elapsed']:.2f} s: "
          f"{r['rate']:,.0f} msgs/s")
    print(f"    delivery latency ms: p50 {r['p50']:.2f}  p99 {r['p99']:.2f}  max {r['max']:.2f}")
    print(f"    per update, ms: to its first client p50 {r['first'][0]:.2f} p99 {r['first'][1]:.2f}; "
          f"first to last client p50 {r['width'][0]:.2f} p99 {r['width'][1]:.2f}")
    web, relay, clients, publisher = r["cpu"]
    print(f"    CPU seconds in the round: web {web:.1f} (connect, warm-up, run), relay {relay:.1f}, "
          f"clients {clients:.1f} (warm-up and run), publisher {publisher:.1f}")
    print(f"    load average at the end of the round: {r['load'][0]:.2f} {r['load'][1]:.2f} {r['load'][2]:.2f}")


def _cpu_seconds(processes) -> list[float]:
    """User + system CPU seconds of the server processes (from /proc) and of this process."""
    out = []
    tick = os.sysconf("SC_CLK_TCK")
    for process in processes:
        try:
            out.append(_tree_ticks(process.pid) / tick)
        except OSError:
            out.append(float("nan"))
    own = os.times()
    return [*out, own.user + own.system]


def _tree_ticks(pid: int) -> int:
    """CPU ticks of a process and of its live descendants (scripts/web.py's uvicorn workers)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            kids = [int(child) for child in children.read().split()]
    except OSError:
        kids = []
    for kid in kids:
        try:
            ticks += _tree_ticks(kid)
        except OSError:
            pass  # ended meanwhile
    return ticks


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
