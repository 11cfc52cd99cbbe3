"""Shared helpers for the benchmarks in `bench/`: machine load and peak memory.

Every benchmark prints the machine's load next to its figures so numbers taken on a
busy machine can be told apart from numbers taken on a quiet one.
"""
import os
import platform
from pathlib import Path
import resource


def machine_line() -> str:
    load1, load5, load15 = os.getloadavg()
    return (
        f"machine: {platform.machine()} cpus={os.cpu_count()} "
        f"load={load1:.2f}/{load5:.2f}/{load15:.2f} python={platform.python_version()}"
    )


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def ensure_services() -> None:
    """Use DATABASE_URL/REDIS_URL when set, else start the project-local servers (as `make run` does)."""
    import subprocess
    from pathlib import Path

    if os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"):
        return
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([str(root / "scripts" / "services.sh"), "start"], check=True, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            os.environ[key] = value


def bench_market(*, users: int, prefix: str):
    """(BTCUSDT, the users) on the demo exchange (`seed_demo`) set up for an order-entry bench: the
    contract's open-order limit (200) lifted, so accounts may keep hundreds of resting orders; a
    mark price of 50,000 published as the running pricefeed keeps one in Redis (the price band and
    the risk gate judge orders by it); `users` accounts named prefix0, prefix1, ... funded with
    100,000,000 USDT each; then the tables analysed (`analyze`)."""
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from apps.contracts.models import Contract
    from apps.ledger.services import wallet_deposit
    from apps.marketdata.services import price_publish
    from apps.ops.demo import seed_demo

    seed_demo()
    contract = Contract.objects.select_related("settle_asset").get(symbol="BTCUSDT")
    contract.max_open_orders = 1_000_000
    contract.save(update_fields=["max_open_orders"])
    price_publish(contract=contract, index_price=Decimal(50000), mark_price=Decimal(50000), at=timezone.now())
    accounts = [get_user_model().objects.create_user(f"{prefix}{i}") for i in range(users)]
    for user in accounts:
        wallet_deposit(user=user, asset="USDT", amount=Decimal("100000000"))
    analyze()
    return contract, accounts


def analyze() -> None:
    """Statistics on the freshly seeded tables, as autovacuum keeps them on a live database. Without
    them the web's prepared generic plans (DB_SERVER_SIDE_BINDING) are made for empty tables and
    keep them: order entry's reads scanned every account's balance (0.8 of 1.0 ms per statement
    at 400 accounts, growing with the accounts)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")


def clock_steps(module, names, clock=None) -> dict[str, float]:
    """Wrap the named functions of `module` (looked up per call) to add their seconds to the returned dict.

    The caller clears the dict before each measured run and reads where the time went after it.
    `clock`: wall time (`time.perf_counter`, the default) or, say, `time.process_time` for CPU.
    """
    import time

    clock = clock or time.perf_counter
    spent: dict[str, float] = {}

    def clocked(name, fn):
        def wrapper(*args, **kwargs):
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + clock() - started
        return wrapper

    for name in names:
        if hasattr(module, name):
            setattr(module, name, clocked(name, getattr(module, name)))
    return spent


def procfile_line(name: str) -> str:
    """The command line of the Procfile's process `name`, as honcho runs it (through a shell, from the
    project's root): benches start the web and the matcher the way `make run` does."""
    for line in (Path(__file__).resolve().parent.parent / "Procfile").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"no {name} process in the Procfile")


def database_url(base: str, name: str) -> str:
    """`base` (a DATABASE_URL) naming the database `name` instead (same server, role and password)."""
    return base.rsplit("/", 1)[0] + "/" + name


def bench_database_name(kind: str) -> str:
    """The throw-away database of a benchmark: named after DATABASE_URL's database, so that
    several environments sharing one PostgreSQL server never drop each other's bench database."""
    from urllib.parse import urlparse

    base = urlparse(os.environ.get("DATABASE_URL", "")).path.lstrip("/") or "exchange"
    return f"{base}_bench_{kind}"


def statements_traced(connection, out, *, min_ms: int = 100):
    """Trace the statements run on `connection` into the text file `out` while the returned
    context is open: each statement's wall time, and PostgreSQL's EXPLAIN (ANALYZE, BUFFERS, WAL)
    with I/O timing of every statement (trigger statements included) that took `min_ms` or more
    (auto_explain, loaded for this session only, its log sent to this client; needs a superuser
    connection, as the benches' throw-away databases are). Returns a context manager.

    Per-node timing is off (it doubles the time of a plan that loops a million times): the
    plans show rows, buffers and WAL; the statement times are the wall clock's.
    """
    import contextlib
    import time

    @contextlib.contextmanager
    def traced():
        with connection.cursor() as cursor:
            cursor.execute("LOAD 'auto_explain'")
            for name, value in (("auto_explain.log_min_duration", f"{min_ms}ms"), ("auto_explain.log_analyze", "on"),
                                ("auto_explain.log_buffers", "on"), ("auto_explain.log_nested_statements", "on"),
                                ("auto_explain.log_timing", "off"), ("auto_explain.log_wal", "on"),
                                ("track_io_timing", "on"), ("client_min_messages", "log")):
                cursor.execute("SELECT set_config(%s, %s, false)", [name, value])
        raw = connection.connection
        raw.add_notice_handler(lambda diag: out.write(f"-- EXPLAIN\n{diag.message_primary}\n"))

        def wrapper(execute, sql, params, many, context):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                out.write(f"-- {(time.perf_counter() - started) * 1000:9.1f} ms  {' '.join(sql.split())[:300]}\n")

        try:
            with connection.execute_wrapper(wrapper):
                yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('client_min_messages', 'notice', false),"
                               " set_config('auto_explain.log_min_duration', '-1', false)")
            out.flush()

    return traced()


def server_cpu_seconds() -> float | None:
    """CPU seconds of every PostgreSQL process on this machine so far: the live ones (backends,
    parallel workers, WAL writer, checkpointer) and the children the postmaster has reaped
    (its cutime). For work spread over several connections; None when none is readable."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}  # pid -> (parent pid, own seconds, reaped children's seconds)
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat_path.read_text().split(" (", 1)[1].rsplit(")", 1)
            fields = rest.split()
            if name == "postgres":
                procs[int(stat_path.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick,
                                                     (int(fields[13]) + int(fields[14])) / tick)
        except (OSError, IndexError, ValueError):
            continue
    if not procs:
        return None
    # The postmaster is the one whose parent is not PostgreSQL: its children's time counts once reaped.
    return sum(own + (reaped if parent not in procs else 0.0) for parent, own, reaped in procs.values())


def cpu_seconds(connection) -> tuple[float | None, float]:
    """(CPU seconds of the PostgreSQL backend serving `connection`, CPU seconds of this process) so far.

    The backend's are read from /proc (a server on this machine, readable by this user;
    None otherwise). Differences of two readings give the CPU a measured step used on
    each side: on a shared machine, a figure the other processes' load does not stretch.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        backend = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    except (OSError, IndexError, ValueError):
        backend = None
    own = resource.getrusage(resource.RUSAGE_SELF)
    return backend, own.ru_utime + own.ru_stime
