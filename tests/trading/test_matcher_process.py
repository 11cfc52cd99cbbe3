"""The matcher as a real OS process: SIGKILL mid-run and failover lose and double nothing.

The orders go through the real order-entry service into the journal; matcher
processes (`manage.py run_matcher`) are started against the test database, killed
with SIGKILL while they work, and restarted (or replaced by a standby). The trades
must equal an uninterrupted replay of the same commands through a fresh C book, every
command must be processed exactly once, and every ledger invariant must hold.
"""
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from apps.ops.invariants import run_all_invariants
from apps.trading.engine import OP_FOR_TIME_IN_FORCE, SIDE_CODES, STP_CODES
from apps.trading.matcher import LEADER_KEY
from apps.trading.models import CommandStatus, OrderCommand, OrderStatus, Trade
from apps.trading.services import order_place
from exchange.redis import get_redis
from matching_native import COMMAND_DTYPE, EVENT_DTYPE, Book, EventKind
from tests.database import database_url
from tests.procfile import die_with_parent, procfile_env

ROOT = Path(__file__).resolve().parents[2]
D = Decimal
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


_LOGS: list[Path] = []


def start_matcher(symbols: str = "BTCUSDT", batch_size: int = 100) -> subprocess.Popen:
    env = {**os.environ, **procfile_env("matcher")}  # its prepared statements, as in production
    env["DATABASE_URL"] = database_url()
    env["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    # Its log goes to a file (an unread pipe blocks the child once full) that a timeout prints.
    log_path = Path(tempfile.mkstemp(prefix="matcher-", suffix=".log")[1])
    _LOGS.append(log_path)
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "manage.py", "run_matcher", "--symbols", symbols, "--batch-size", str(batch_size),
             "--poll", "0.05"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent,
        )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    logs = "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-1500:]}" for p in _LOGS[-2:])
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


def done_count() -> int:
    return OrderCommand.objects.filter(status=CommandStatus.DONE).count()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def place_random_orders(users, contract, count: int, seed: int) -> None:
    # Thousands of resting orders from a handful of users: lift the per-account open-order
    # limit (200 by default), which is not what these tests are about.
    contract.max_open_orders = 1_000_000
    contract.save(update_fields=["max_open_orders"])
    rng = random.Random(seed)
    for _ in range(count):
        side = rng.choice(("BUY", "SELL"))
        offset = rng.randint(-20, 20)  # around 50,000 so about half the orders cross
        price = D(50000) + (offset if side == "BUY" else -offset) * D("0.5")
        order_place(user=rng.choice(users), contract=contract, side=side, quantity=D(rng.randint(1, 20)) / 1000,
                    price=price, time_in_force=rng.choice(("GTC", "GTC", "GTC", "IOC")))


def replay_fills(contract) -> list[tuple]:
    """Fills of an uninterrupted run: every journal command, in seq order, through a fresh book."""
    commands = list(OrderCommand.objects.filter(contract=contract).select_related("order").order_by("seq"))
    grid_tick, grid_lot = contract.tick_size, contract.lot_size
    records = np.zeros(len(commands), COMMAND_DTYPE)
    for i, command in enumerate(commands):
        order = command.order
        assert command.kind == "NEW"
        records[i] = (OP_FOR_TIME_IN_FORCE[order.time_in_force], SIDE_CODES[order.side], STP_CODES[order.stp_mode],
                      0, order.pk, order.user_id, int(order.price / grid_tick), int(order.quantity / grid_lot))
    book = Book(int(contract.min_price / grid_tick), int(contract.max_price / grid_tick))
    book.execute(records)
    events = np.frombuffer(book.events(), dtype=EVENT_DTYPE)
    fills = events[events["kind"] == EventKind.FILL]
    return [(int(e["oid"]), int(e["maker_oid"]), D(int(e["price"])) * grid_tick, D(int(e["qty"])) * grid_lot)
            for e in fills]


def booked_fills() -> list[tuple]:
    return [(t.taker_order_id, t.maker_order_id, t.price, t.quantity) for t in Trade.objects.order_by("id")]


def assert_everything_exactly_once(contract) -> None:
    assert OrderCommand.objects.exclude(status=CommandStatus.DONE).count() == 0
    assert booked_fills() == replay_fills(contract)
    assert not contract.orders.filter(status=OrderStatus.PENDING_NEW).exists()
    assert run_all_invariants() == []


def test_sigkill_mid_run_then_restart_loses_and_doubles_nothing(funded, btcusdt):
    users = [funded(f"trader{i}") for i in range(20)]
    total = 10_000
    place_random_orders(users, btcusdt, total, seed=7)
    matcher = start_matcher(batch_size=100)
    try:
        wait_for(lambda: done_count() >= total // 3, 240, "a third of the commands")
        matcher.send_signal(signal.SIGKILL)
        matcher.wait(timeout=10)
        processed_before_kill = done_count()
        assert 0 < processed_before_kill < total, "the kill must land mid-run"
    finally:
        stop(matcher)
    restarted = start_matcher(batch_size=100)
    try:
        wait_for(lambda: done_count() == total, 300, "all commands after restart")
    finally:
        stop(restarted)
    assert Trade.objects.exists()
    assert_everything_exactly_once(btcusdt)


def test_standby_takes_over_when_the_leader_dies(funded, btcusdt):
    users = [funded(f"trader{i}") for i in range(6)]
    redis = get_redis()
    redis.delete(LEADER_KEY.format(symbol="BTCUSDT"))
    first, second = start_matcher(), start_matcher()
    processes = {first.pid: first, second.pid: second}
    try:
        leader_pid = int(wait_for(lambda: redis.get(LEADER_KEY.format(symbol="BTCUSDT")), 120, "a leader"))
        place_random_orders(users, btcusdt, 400, seed=11)
        wait_for(lambda: done_count() == 400, 120, "the leader to process phase 1")
        processes[leader_pid].send_signal(signal.SIGKILL)
        processes[leader_pid].wait(timeout=10)
        standby = next(p for pid, p in processes.items() if pid != leader_pid)
        place_random_orders(users, btcusdt, 400, seed=12)
        wait_for(lambda: int(redis.get(LEADER_KEY.format(symbol="BTCUSDT")) or 0) == standby.pid, 60,
                 "the standby to take the lease")
        wait_for(lambda: done_count() == 800, 120, "the standby to process phase 2")
        assert standby.poll() is None
    finally:
        for process in processes.values():
            stop(process)
    assert_everything_exactly_once(btcusdt)
