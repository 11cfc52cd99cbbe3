"""The `web` process of the Procfile: N Daphne workers sharing one listening socket.

    .venv/bin/python scripts/web.py [--workers N] [-b 127.0.0.1] [-p 8000] [daphne options...]

One Python process serves requests one GIL at a time (a signed order costs ~8 ms of
Python CPU), so a second core needs a second process. This launcher binds the port
once and starts N `daphne --fd` children on the inherited socket; the kernel hands each
new connection to whichever child accepts it first. Nothing a request relies on lives
in one worker only: rate limits, bans and replay markers are in Redis, the journal and
the ledger in PostgreSQL, websocket streams through each worker's own Redis pub/sub
subscription (apps.marketdata.fanout), Prometheus metrics in one multiprocess directory
(summed over the workers by /metrics, apps.ops.views.metrics), and the
in-process caches (API keys, contracts, accounts) expire within seconds (API key
changes and revocations reach every worker at once through the limiter's Redis
round trip, `apps.accounts.limits`).

SIGTERM/SIGINT are passed to every worker; one still running 20 s later is killed (a
Daphne stopped while a pool thread is sending a response waits at exit for that
thread, whose send needs the event loop that has just stopped: it never ends). If one
worker exits the others are stopped and the launcher exits with its status, so the
supervisor (honcho) sees the failure as it saw a lone Daphne's. `--workers 1` runs one
Daphne under the same supervision.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# A worker still running this long after SIGTERM is killed (Daphne's own close timeout is 10 s).
STOP_TIMEOUT_SECONDS = 20


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
    args, daphne_args = parser.parse_known_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.bind, args.port))
    listener.listen(args.backlog)
    listener.set_inheritable(True)
    fd = listener.fileno()

    command = [sys.executable, "-m", "daphne", "--fd", str(fd), *daphne_args, args.application]
    # PYTHONFAULTHANDLER: `kill -ABRT <worker>` prints every thread's stack on its stderr before
    # it dies (how to see where a stuck worker is stuck).
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": _metrics_dir(args.port), "PYTHONFAULTHANDLER": "1"}
    workers = [subprocess.Popen(command, pass_fds=(fd,), env=env) for _ in range(args.workers)]
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
