"""The `web` process of the Procfile: N uvicorn workers sharing one listening socket.

    .venv/bin/python scripts/web.py [--workers N] [-b 127.0.0.1] [-p 8000] [uvicorn options...]

One Python process serves requests one GIL at a time, so a second core needs a second
process. This launcher binds the port once and starts N `uvicorn --fd` children on the
inherited socket; the kernel hands each new connection to whichever child accepts it
first. Nothing a request relies on lives in one worker only: rate limits, bans and
replay markers are in Redis, the journal and the ledger in PostgreSQL, websocket streams
through each worker's own Redis pub/sub subscription (apps.marketdata.fanout),
Prometheus metrics in one multiprocess directory (summed over the workers by /metrics,
apps.ops.views.metrics), and the in-process caches (API keys, contracts, accounts)
expire within seconds (API key changes and revocations reach every worker at once
through the limiter's Redis round trip, `apps.accounts.limits`).

Each worker is uvicorn on uvloop with the httptools (C) HTTP parser and the websockets
library's sans-I/O protocol (`UVICORN_OPTIONS`). Why uvicorn and not Daphne, which
served until 2026-11-27: Daphne parses HTTP in Python (Twisted). `bench/api_orders.py`
at 8 clients, interleaved runs: pings 1,543-1,779 -> 2,237-2,274 req/s, signed orders'
p99 135-142 -> 58-80 ms (their rate within the machine's noise). The listening socket
has TCP_NODELAY, which accepted connections inherit: uvicorn writes a response's head
and body separately, and with Nagle's algorithm the body would wait for the client's
delayed ACK (40 ms per request).

SIGTERM/SIGINT are passed to every worker (uvicorn stops accepting, finishes requests
in flight and closes websockets with 1012 within `--timeout-graceful-shutdown`); one
still running 20 s later is killed. If one worker exits the others are stopped and the
launcher exits with its status, so the supervisor (honcho) sees the failure as it would
a lone server's. `--workers 1` runs one uvicorn under the same supervision.
"""
import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# A worker still running this long after SIGTERM is killed (its own graceful shutdown is bounded at 10 s).
STOP_TIMEOUT_SECONDS = 20

UVICORN_OPTIONS = [
    "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
    "--lifespan", "off",  # Django's ASGI application has no lifespan events
    # The client address is the socket's peer: a proxy's header is trusted only where the
    # settings say so (API_CLIENT_IP_META), not by the server for any loopback client.
    "--no-proxy-headers",
    # Frames are serialised once for every subscriber of a stream (apps.marketdata.fanout):
    # compressing them per connection would multiply that work by the subscribers.
    "--ws-per-message-deflate", "false",
    # A client's message larger than this closes its connection (1009): requests are small (a
    # SUBSCRIBE of the 200 streams a connection may hold is ~6 KB), and the default is 16 MiB.
    "--ws-max-size", "65536",
    # Keep-alive connections of API clients (connection pools) stay open between requests.
    "--timeout-keep-alive", "75",
    "--timeout-graceful-shutdown", "10",
]


def _stop_with_launcher() -> None:
    """In the worker before it starts: SIGTERM when the launcher dies, even by SIGKILL, so that
    no worker is left serving the port that a restarted web process must bind again."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _metrics_dir(port: int) -> str:
    """An empty directory where the workers' Prometheus metrics live (prometheus_client's
    multiprocess mode), so that /metrics, whichever worker answers it, reports the sum of
    all of them instead of one worker's counters (which would jump between scrapes)."""
    path = Path(__file__).resolve().parent.parent / "var" / f"web-metrics-{port}"
    shutil.rmtree(path, ignore_errors=True)  # a previous run's counters must not carry over
    path.mkdir(parents=True)
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_WORKERS", "2")))
    parser.add_argument("-b", "--bind", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=8000)
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--application", default="exchange.asgi:application")
    args, server_args = parser.parse_known_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by every accepted connection
    listener.bind((args.bind, args.port))
    listener.listen(args.backlog)
    listener.set_inheritable(True)
    fd = listener.fileno()

    command = [sys.executable, "-m", "uvicorn", "--fd", str(fd), *UVICORN_OPTIONS, *server_args, args.application]
    # PYTHONFAULTHANDLER: `kill -ABRT <worker>` prints every thread's stack on its stderr before
    # it dies (how to see where a stuck worker is stuck).
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": _metrics_dir(args.port), "PYTHONFAULTHANDLER": "1"}
    workers = [subprocess.Popen(command, pass_fds=(fd,), env=env, preexec_fn=_stop_with_launcher)
               for _ in range(args.workers)]
    listener.close()  # the workers hold it now

    stopping_since: float | None = None

    def stop(signum, _frame):
        nonlocal stopping_since
        stopping_since = stopping_since or time.monotonic()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while True:
        exited = [w for w in workers if w.poll() is not None]
        if len(exited) == len(workers):
            break
        if exited and stopping_since is None:
            status = exited[0].returncode or 1
            stop(signal.SIGTERM, None)
        if stopping_since is not None and time.monotonic() - stopping_since > STOP_TIMEOUT_SECONDS:
            for worker in workers:
                if worker.poll() is None:
                    print(f"web worker {worker.pid} did not stop in {STOP_TIMEOUT_SECONDS} s; killed", file=sys.stderr)
                    worker.kill()
        time.sleep(0.2)
    return status


if __name__ == "__main__":
    sys.exit(main())
