"""run_pricefeed as a real OS process: it publishes, heartbeats, serves metrics, stops
cleanly on SIGTERM, and a restart continues from the stored prices."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from apps.marketdata.models import PriceSample
from apps.marketdata.snapshot import PRICE_KEY, PriceSnapshot
from apps.ops.health import HEARTBEAT_PREFIX
from tests.database import database_url

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_feed(port: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url()
    env["DJANGO_SETTINGS_MODULE"] = "exchange.settings.test"
    return subprocess.Popen(
        [sys.executable, "manage.py", "run_pricefeed", "--symbols", "BTCUSDT,ETHUSDT", "--interval", "0.1",
         "--seed", "11", "--metrics-port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def metrics(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def terminate(process: subprocess.Popen) -> tuple[int, str]:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("the pricefeed did not stop on SIGTERM") from None
    return process.returncode, stderr


def test_publishes_heartbeats_and_stops_cleanly_then_resumes(btcusdt, ethusdt, clean_redis):
    port = free_port()
    feed = start_feed(port)
    try:
        wait_for(lambda: PriceSample.objects.filter(contract=ethusdt).count() >= 3, 60, "ETH samples")
        wait_for(lambda: clean_redis.get(HEARTBEAT_PREFIX + "pricefeed"), 30, "the heartbeat")
        snapshot, contract_id = PriceSnapshot.from_json(
            wait_for(lambda: clean_redis.get(PRICE_KEY.format(symbol="BTCUSDT")), 30, "the BTC snapshot")
        )
        assert contract_id == btcusdt.pk and abs(snapshot.index_price - 90000) < 900  # the BTC region
        text = wait_for(lambda: (m := metrics(port)) and "pricefeed_ticks_total" in m and m, 30, "metrics")
        assert 'pricefeed_mark_price{symbol="ETHUSDT"}' in text
    finally:
        code, stderr = terminate(feed)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    last = PriceSample.objects.filter(contract=btcusdt).latest("at")

    # A restart continues from the stored index (seeded simulation, restored reference).
    count = PriceSample.objects.filter(contract=btcusdt).count()
    again = start_feed(free_port())
    try:
        wait_for(lambda: PriceSample.objects.filter(contract=btcusdt).count() > count + 2, 60, "new samples")
    finally:
        code, stderr = terminate(again)
    assert code == 0, stderr
    resumed = PriceSample.objects.filter(contract=btcusdt, at__gt=last.at).order_by("at").first()
    assert abs(resumed.index_price - last.index_price) / last.index_price < Decimal("0.01")
