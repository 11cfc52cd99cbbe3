"""Signed order entry over HTTP: concurrent clients against the web process as the Procfile starts it.

    .venv/bin/python bench/api_orders.py [--seconds 15] [--clients 1,8,32] [--procs 2] [--profile]

Creates a throw-away database (`<DATABASE_URL's name>_bench_api`, on the server of
DATABASE_URL; REDIS_URL's database is used as it is), seeds the demo contracts, creates one
funded user with an API key per client, then starts the `web` process (uvicorn, the
Procfile's command line) and the `matcher` on loopback, on a free port, with a
mark price published as the pricefeed would. For each
client count given (comma-separated) it runs the ping phase then the order phase. Each client thread keeps one
HTTP connection and sends `POST /fapi/v1/order` signed the way Binance client
libraries sign (query string, HMAC-SHA256), limit orders around a mid price so about
half of them trade. Prints accepted orders/s, latency p50/p99 and the CPU each order cost
the web workers, the matcher and PostgreSQL (from /proc, over the order phase), with unsigned
`GET /fapi/v1/ping` at the same concurrency as the baseline (the ratio is what order
entry costs over the bare stack), then checks that every acknowledged order is in the
database and that the ledger invariants hold. Rate limits are raised for the run (one
loopback IP). A phase of 20 s or more also prints its rate per 10 s, to show whether it holds
as the tables grow. On a server without autovacuum the bench vacuums the hot tables every
10 s while orders flow (`--vacuum-every`), as a tuned autovacuum would (apps.ops.maintenance).
`--profile` samples the web process with py-spy (where it holds the GIL: its CPU) while
orders flow.
"""
import argparse
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import (  # noqa: E402
    bench_database_name,
    database_url,
    ensure_services,
    machine_line,
    procfile_line,
)

PY = str(ROOT / ".venv" / "bin" / "python")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(env: dict, clients: int) -> list[tuple[str, str]]:
    """Fresh database, migrated and seeded; one funded user with a trade key per client."""
    admin_url = database_url(env["DATABASE_URL"], "postgres")
    db_name = env["DATABASE_URL"].rsplit("/", 1)[1]
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {db_name}")
    run = dict(env=env, cwd=ROOT, check=True, capture_output=True)
    subprocess.run([PY, "manage.py", "migrate", "-v", "0"], **run)
    # The market every order-entry bench uses (bench.common.bench_market), and a trade key per account.
    script = f"""
import json
from apps.accounts.services import api_key_create
from bench.common import bench_market
_, users = bench_market(users={clients}, prefix="bench")
print(json.dumps([(key.key, secret) for key, secret in
                  (api_key_create(user=user, label="bench", can_trade=True) for user in users)]))
"""
    out = subprocess.run([PY, "manage.py", "shell", "-c", script], **run, text=True)
    return [tuple(k) for k in json.loads(out.stdout.strip().splitlines()[-1])]


def start(env: dict, port: int, matcher_port: int) -> list[subprocess.Popen]:
    # The Procfile's web command line as it is (bash expands its ${WEB_PORT:-...} and
    # ${WEB_WORKERS:-...}; one simple command, so bash execs it and signals reach it).
    (ROOT / "var").mkdir(exist_ok=True)  # a fresh clone has none until the exchange first runs
    log = open(ROOT / "var" / "bench_api_web.log", "wb")  # a file: an unread pipe would block the server
    web = subprocess.Popen(["bash", "-c", procfile_line("web")], env={**env, "WEB_PORT": str(port)}, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=log)
    matcher = subprocess.Popen(["bash", "-c", procfile_line("matcher")],
                               env={**env, "MATCHER_SYMBOLS": "BTCUSDT", "MATCHER_METRICS_PORT": str(matcher_port)}, cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return [web, matcher]
        except OSError:
            time.sleep(0.2)
    raise SystemExit("web process did not start; see var/bench_api_web.log")


def client_proc(port: int, keys: list, seconds: float, kind: str, seed: int, tag: str, out) -> None:
    """One client process: a thread per key, each with its own keep-alive connection."""
    results = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(index: int, key: str, secret: str) -> None:
        rng = random.Random(seed * 1000 + index)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies, statuses, done = [], {}, []
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            if kind == "ping":
                method, path, headers = "GET", "/fapi/v1/ping", {}
            else:
                side = rng.choice(("BUY", "SELL"))
                offset = rng.randint(-20, 20)
                price = 50000 + (offset if side == "BUY" else -offset) * 0.5
                query = urlencode({"symbol": "BTCUSDT", "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                   "quantity": f"{rng.randint(1, 50) / 1000:.3f}", "price": f"{price:.1f}",
                                   "newClientOrderId": f"b{tag}-{seed}-{index}-{n}",
                                   "timestamp": int(time.time() * 1000)})
                query += "&signature=" + hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
                method, path, headers = "POST", "/fapi/v1/order?" + query, {"X-MBX-APIKEY": key}
            started = time.perf_counter()
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.status == 200:
                done.append(time.time())
        with lock:
            results.append((latencies, statuses, done))

    threads = [threading.Thread(target=worker, args=(i, k, s)) for i, (k, s) in enumerate(keys)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(results)


def load(port: int, keys: list, seconds: float, procs: int, kind: str) -> dict:
    tag = str(len(keys))  # one run per client count: ids stay unique per account
    queue = multiprocessing.Queue()
    groups = [keys[i::procs] for i in range(procs)]
    workers = [multiprocessing.Process(target=client_proc, args=(port, g, seconds, kind, i, tag, queue))
               for i, g in enumerate(groups)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    results = [r for _ in workers for r in queue.get()]
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    import numpy as np

    latencies = np.array([x for lat, _, _ in results for x in lat]) * 1000
    statuses: dict[int, int] = {}
    for _, st, _ in results:
        for code, count in st.items():
            statuses[code] = statuses.get(code, 0) + count
    done = np.array(sorted(t for _, _, times in results for t in times))
    windows = []  # answered per 10 s of the phase: does the rate hold as the tables grow?
    if len(done) and seconds >= 2 * WINDOW_SECONDS:
        edges = np.arange(done[0], done[0] + seconds + WINDOW_SECONDS / 2, WINDOW_SECONDS)  # whole windows only
        windows = [int(c) / WINDOW_SECONDS for c in np.histogram(done, bins=edges)[0]]
    return {"rate": statuses.get(200, 0) / elapsed, "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)), "statuses": statuses, "ok": statuses.get(200, 0),
            "windows": windows}


def cpu_snapshot(processes: list[subprocess.Popen], dsn: str) -> dict[str, float]:
    """CPU seconds so far of the web workers, the matcher, PostgreSQL's processes (in all, and the
    backends serving the web and the matcher, by their application_name) and the whole machine."""
    import psutil
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        serving = dict(conn.execute("SELECT pid, application_name FROM pg_stat_activity").fetchall())

    def tree(pid: int) -> float:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    postgres = pg_web = pg_matcher = 0.0
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith("postgres"):
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            postgres += times.user + times.system
            client = serving.get(proc.pid)
            if client == "exchange web":
                pg_web += times.user + times.system
            elif client == "exchange run_matcher":
                pg_matcher += times.user + times.system
    machine = psutil.cpu_times()
    return {"web": tree(processes[0].pid), "matcher": tree(processes[1].pid), "postgres": postgres,
            "pg_web": pg_web, "pg_matcher": pg_matcher,
            "machine": machine.user + machine.system + machine.nice + machine.irq + machine.softirq}


WINDOW_SECONDS = 10


class Vacuum(threading.Thread):
    """On a server without autovacuum (this project's CI server), VACUUM (ANALYZE) the hot tables
    every `every` seconds while orders flow, as the autovacuum of a tuned server would
    (apps.ops.maintenance): otherwise a run longer than a few seconds measures their bloat."""

    def __init__(self, dsn: str, every: float):
        super().__init__(daemon=True)
        from apps.ops.maintenance import HOT_TABLES_VACUUM_SQL

        self.dsn, self.every, self.sql = dsn, every, HOT_TABLES_VACUUM_SQL
        self.stopping = threading.Event()
        self.runs, self.seconds = 0, 0.0

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stopping.wait(self.every):
                started = time.perf_counter()
                conn.execute(self.sql)
                self.runs, self.seconds = self.runs + 1, self.seconds + time.perf_counter() - started

    def stop(self) -> str:
        self.stopping.set()
        self.join()
        return f"hot tables vacuumed by the bench {self.runs} times ({self.seconds:.2f} s in all)"


def autovacuum_on(dsn: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SHOW autovacuum").fetchone()[0] == "on"


COUNTED = ("exchange_order_entry_group_orders_sum", "exchange_order_entry_group_orders_count",
           "matcher_batch_seconds_sum", "matcher_batch_seconds_count", "matcher_commands_total",
           "matcher_entry_seconds_sum", "matcher_entry_seconds_count")
ROUTES = ("web", "matcher", "timeout")


def metric_totals(ports: list[int]) -> dict[str, float]:
    """Counters of the web (summed over its workers) and the matcher, from their /metrics: the
    group commits' orders and groups (in the matcher when the web hands its orders over,
    `apps.trading.handover`, else in the web), the matcher's batches, and where the web's new
    orders were placed."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(COUNTED + ROUTES, 0.0)
    for port in ports:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        for family in text_string_to_metric_families(conn.getresponse().read().decode()):
            for sample in family.samples:  # summed over labels (symbol, worker)
                if sample.name in COUNTED:
                    totals[sample.name] += sample.value
                elif sample.name == "exchange_order_entry_route_total":
                    totals[sample.labels["route"]] += sample.value
    return totals


def metric_lines(before: dict[str, float], after: dict[str, float], seconds: float) -> list[str]:
    """`seconds`: the phase's length, for the share of it the matcher was busy."""
    d = {k: after[k] - before[k] for k in before}
    groups, batches = max(d["exchange_order_entry_group_orders_count"], 1), max(d["matcher_batch_seconds_count"], 1)
    entries = max(d["matcher_entry_seconds_count"], 1)
    busy = (d["matcher_batch_seconds_sum"] + d["matcher_entry_seconds_sum"]) / seconds
    return [f"orders per group commit: {d['exchange_order_entry_group_orders_sum'] / groups:.2f} ({groups:.0f} groups)"
            f"; placed by the matcher {d['matcher']:.0f}, by the web {d['web']:.0f}, timed out {d['timeout']:.0f}",
            f"matcher batches: {batches:.0f}, {d['matcher_commands_total'] / batches:.2f} commands and "
            f"{1000 * d['matcher_batch_seconds_sum'] / batches:.2f} ms each; its order entry: {entries:.0f} groups, "
            f"{1000 * d['matcher_entry_seconds_sum'] / entries:.2f} ms each; busy {100 * busy:.0f}% of the phase"]


def cpu_line(before: dict[str, float], after: dict[str, float], orders: int) -> str:
    """CPU milliseconds per order by process over a phase (the rest: clients, Redis, the kernel's idle work)."""
    spent = {k: after[k] - before[k] for k in before}
    spent["rest"] = spent["machine"] - spent["web"] - spent["matcher"] - spent["postgres"]
    per = {k: 1000 * v / max(orders, 1) for k, v in spent.items()}
    return ("CPU ms per order: " + "  ".join(f"{k} {per[k]:.2f}" for k in ("web", "matcher", "postgres", "rest"))
            + f"  (machine {per['machine']:.2f}; postgres for the web {per['pg_web']:.2f}, "
            f"for the matcher {per['pg_matcher']:.2f})")


def profile(pid: int, seconds: int) -> None:
    spy = shutil.which("py-spy") or str(ROOT / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        print("  (--profile needs py-spy: .venv/bin/pip install py-spy)")
        return
    out = ROOT / "var" / "bench_api_profile.txt"
    subprocess.run([spy, "record", "--subprocesses", "-p", str(pid), "-d", str(seconds), "-f", "raw", "-o", str(out), "-r", "200", "--gil"],
                   capture_output=True)
    self_time: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        for frame in set(frames):
            name = frame.split(" (")[0] + " " + frame.split("/")[-1].rstrip(")") if "(" in frame else frame
            self_time[name] = self_time.get(name, 0) + int(count)
    print(f"  profile of the web process ({total} samples, inclusive share), full stacks in {out}:")
    for name, count in sorted(self_time.items(), key=lambda kv: -kv[1])[:25]:
        print(f"    {100 * count / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated: one run each")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--web-workers", type=int, help="WEB_WORKERS for the Procfile's web line (default: its own)")
    parser.add_argument("--vacuum-every", type=float, default=10, metavar="S",
                        help="on a server without autovacuum, vacuum the hot tables every S seconds while orders "
                             "flow, as a tuned autovacuum would (0: never, to see what their bloat costs)")
    args = parser.parse_args()

    ensure_services()
    counts = [int(c) for c in args.clients.split(",")]
    port = args.port or free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings.base",
           "DATABASE_URL": database_url(os.environ["DATABASE_URL"], bench_database_name("api")),
           "DEBUG": "0",
           "API_IP_WEIGHT_LIMIT_1M": "1000000000", "API_KEY_WEIGHT_LIMIT_1M": "1000000000",
           "API_ACCOUNT_ORDER_LIMIT_1M": "1000000000"}
    if args.web_workers:
        env["WEB_WORKERS"] = str(args.web_workers)
    print(f"web: {procfile_line('web')}  (WEB_WORKERS={env.get('WEB_WORKERS', 'default')})")
    print(f"api_orders bench: {args.clients} clients in {args.procs} processes, {args.seconds:.0f} s per phase")
    keys = prepare(env, max(counts))
    server_vacuums = autovacuum_on(env["DATABASE_URL"])
    vacuuming = args.vacuum_every > 0 and not server_vacuums
    print("  server autovacuum: " + ("on" if server_vacuums else
          f"off; the bench vacuums the hot tables every {args.vacuum_every:g} s" if vacuuming else
          "off, and the bench does not vacuum (--vacuum-every 0)"))
    metrics_ports = [port, free_port()]  # the web's, the matcher's
    processes = start(env, port, metrics_ports[1])
    acknowledged = 0
    try:
        for count in counts:
            procs = min(args.procs, count)
            base = load(port, keys[:count], args.seconds, procs, "ping")
            print(f"  {count:3d} clients  GET /fapi/v1/ping:          {base['rate']:8.0f} req/s     "
                  f"p50 {base['p50']:6.2f} ms  p99 {base['p99']:6.2f} ms  statuses {base['statuses']}")
            if args.profile and count == counts[-1]:
                spy = threading.Thread(target=profile, args=(processes[0].pid, int(args.seconds) - 2))
                spy.start()
            cpu_before, counted_before = cpu_snapshot(processes, env["DATABASE_URL"]), metric_totals(metrics_ports)
            vacuum = Vacuum(env["DATABASE_URL"], args.vacuum_every) if vacuuming else None
            if vacuum:
                vacuum.start()
            orders = load(port, keys[:count], args.seconds, procs, "order")
            vacuumed = vacuum.stop() if vacuum else None
            cpu_after, counted_after = cpu_snapshot(processes, env["DATABASE_URL"]), metric_totals(metrics_ports)
            if args.profile and count == counts[-1]:
                spy.join()
            acknowledged += orders["ok"]
            print(f"  {count:3d} clients  POST /fapi/v1/order (signed): {orders['rate']:8.0f} orders/s  "
                  f"p50 {orders['p50']:6.2f} ms  p99 {orders['p99']:6.2f} ms  statuses {orders['statuses']}")
            print(f"  {count:3d} clients  {cpu_line(cpu_before, cpu_after, orders['ok'])}")
            for line in metric_lines(counted_before, counted_after, orders["ok"] / max(orders["rate"], 1e-9)):
                print(f"  {count:3d} clients  {line}")
            if orders["windows"]:
                print(f"  {count:3d} clients  orders/s per {WINDOW_SECONDS} s: "
                      + " ".join(f"{w:.0f}" for w in orders["windows"]) + (f"  ({vacuumed})" if vacuumed else ""))
            elif vacuumed:
                print(f"  {count:3d} clients  {vacuumed}")
            print(f"  {count:3d} clients  ratio orders / ping: {orders['rate'] / base['rate']:.2f}   {machine_line()}")
        time.sleep(2)  # let the matcher drain
    finally:
        for p in processes:
            p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    script = ("from apps.trading.models import Order, Trade, OrderCommand; "
              "print(Order.objects.count(), Trade.objects.count(), OrderCommand.objects.filter(status='PENDING').count())")
    out = subprocess.run([PY, "manage.py", "shell", "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=True)
    stored, trades, pending = map(int, out.stdout.strip().splitlines()[-1].split())
    print(f"  acknowledged {acknowledged}, stored {stored} orders ({trades} trades, {pending} commands pending)")
    ledger = subprocess.run([PY, "manage.py", "check_ledger"], env=env, cwd=ROOT, capture_output=True, text=True)
    print(f"  check_ledger: {'clean' if ledger.returncode == 0 else 'FAILED ' + ledger.stdout[-500:]}")
    print(machine_line())


if __name__ == "__main__":
    main()
