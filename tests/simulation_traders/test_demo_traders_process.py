"""The demo traders against a real exchange: every process a real OS process on the test database.

The database is seeded as `make run` seeds it; the web server (scripts/web.py, as the Procfile
starts it), the matcher, the pricefeed (simulated venues, fixed seed) and the stream
relay run as children whose logs go to files and who die with the test. Then
`manage.py run_demo_traders --seed 7` trades; midway the web server is stopped and
started again on the same port (the traders must wait and carry on), then the traders
get SIGTERM and must exit 0 with a summary of what the API acknowledged.

Checks: trades happened; every order in the database belongs to a demo trader, carries
a demo client order id, and was acknowledged to the traders by the API (except at most
the requests whose answer the web restart swallowed); both sides of the book rest; the
traders read the market and their user data streams over websockets; each trader's API
key was used; every ledger invariant holds.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from apps.accounts.models import ApiKey
from apps.ops.demo import seed_demo
from apps.ops.invariants import run_all_invariants
from apps.simulation.traders.provision import KEY_LABEL
from apps.trading.models import CommandStatus, Order, OrderCommand, OrderStatus, OrderType, Trade
from tests.database import database_url
from tests.procfile import die_with_parent, procfile_env, web_command

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Children of this test: started with logs to files, stopped (killed if need be) at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.env = {
            **os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings.test", "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": database_url(),
            # Rate-limit counters and replay markers of this run only (the limits stay the defaults).
            "API_REDIS_PREFIX": f"demotraders:{uuid.uuid4().hex}:",
        }
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str], **env) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**self.env, **env},
                                       stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.running[name] = process
        return process

    def stop(self, name: str, timeout: float = 30) -> int:
        process = self.running.pop(name)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-2500:]}"
                         for p in sorted(self.log_dir.glob("*.log")))

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.running.items():
                if process.poll() is not None:
                    raise AssertionError(f"{name} exited with {process.returncode} while waiting for {what}\n"
                                         + self.logs())
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")


def _demo_orders():
    return Order.objects.exclude(order_type=OrderType.LIQUIDATION)


def test_demo_traders_trade_through_the_api_and_survive_a_web_restart(tmp_path):
    seed_demo()  # contracts, insurance fund and demo users, as `make run` seeds them
    procs = Processes(tmp_path)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    web_args = web_command(port)[1:]  # Processes.start runs its arguments with this Python
    summary_path = tmp_path / "summary.json"
    try:
        procs.start("web", web_args, **procfile_env("web"))
        procs.start("matcher", ["manage.py", "run_matcher", "--poll", "0.05"], **procfile_env("matcher"))
        procs.start("pricefeed", ["manage.py", "run_pricefeed", "--seed", "5", "--interval", "0.5",
                                  "--metrics-port", "0"])
        procs.start("relay", ["manage.py", "run_stream_relay"])
        # Started with the rest, as honcho does: the traders wait for the web server and the marks.
        traders = procs.start("traders", ["manage.py", "run_demo_traders", "--base-url", base, "--seed", "7",
                                          "--summary", str(summary_path)])
        procs.wait_for(lambda: Trade.objects.count() >= 5, 180, "the first trades")

        # The web server goes away under the traders and comes back on the same port.
        procs.stop("web")
        procs.wait_for(lambda: "web server unreachable" in (tmp_path / "traders.log").read_text(errors="replace"),
                       60, "the traders to notice the web server is gone")
        last_before = _demo_orders().order_by("-id").values_list("id", flat=True).first()
        procs.start("web", web_args, **procfile_env("web"))
        procs.wait_for(lambda: _demo_orders().filter(id__gt=last_before).count() >= 5, 120,
                       "orders after the web server restarted")

        traders.send_signal(signal.SIGTERM)
        assert traders.wait(timeout=60) == 0, procs.logs()
        procs.running.pop("traders")
        procs.wait_for(lambda: not OrderCommand.objects.filter(status=CommandStatus.PENDING).exists(), 60,
                       "the matcher to finish the journal")
    finally:
        procs.stop_all()

    summary = json.loads(summary_path.read_text())
    participants = {p["name"]: p for p in summary["participants"]}
    assert sorted(p["role"] for p in participants.values()) == ["maker", "maker", "taker", "taker", "trend", "trend"]
    trader_ids = {p["user_id"] for p in participants.values()}
    acked = {order_id for p in participants.values() for order_id in p["acked_order_ids"]}
    swallowed = sum(p["errors"].get("unavailable", 0) for p in participants.values())

    # Every order came through the API from a demo trader.
    orders = list(_demo_orders().values("id", "user_id", "client_order_id"))
    assert orders and Trade.objects.exists()
    assert {o["user_id"] for o in orders} <= trader_ids
    assert all(o["client_order_id"].startswith("dt") for o in orders)
    in_db = {o["id"] for o in orders}
    assert acked <= in_db
    assert len(in_db - acked) <= swallowed  # accepted, but the answer was lost in the restart
    for trade in Trade.objects.select_related("taker_order", "maker_order"):
        assert {trade.taker_order.user_id, trade.maker_order.user_id} <= trader_ids
    assert all(p["orders_acked"] > 0 for p in participants.values() if p["role"] in ("maker", "taker"))

    # A live book: the makers' quotes rest on both sides.
    resting = Order.objects.filter(status__in=(OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED))
    assert resting.filter(side="BUY").exists() and resting.filter(side="SELL").exists()

    # Over websockets: market data and each maker's own order events.
    assert summary["market"]["ws_messages"] > 0
    assert all(p["user_events"] > 0 for p in participants.values() if p["role"] == "maker")

    # Each trader used its own API key.
    for user_id in trader_ids:
        key = ApiKey.objects.get(user_id=user_id, label=KEY_LABEL, revoked_at__isnull=True)
        assert key.last_used_at is not None

    assert run_all_invariants() == []
