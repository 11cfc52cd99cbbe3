"""Every process serves its own /metrics: the matcher, the pricefeed, a Celery worker
(main process and each prefork child) and beat, started as real OS processes against
the test database and Redis. Their stderr goes to files and they die with the test."""
import json
import sys
import uuid
from decimal import Decimal

import pytest

from apps.ledger.services import wallet_deposit
from apps.ops import metrics
from apps.ops.sources import metric_read
from apps.trading.models import CommandStatus, OrderCommand
from apps.trading.services import order_place
from exchange.celery import app as celery_app
from tests.procfile import procfile_env

from .processes import ROOT, free_ports, role_of, scrape, spawn, value, wait_for  # noqa: F401 (spawn: a fixture)

D = Decimal
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_matcher_exports_order_latency_and_publishes_p95_for_the_alert_rule(spawn, make_user, usdt, btcusdt):
    seller, buyer = make_user("seller"), make_user("buyer")
    for user in (seller, buyer):
        wallet_deposit(user=user, asset=usdt, amount=D("100000"))
    port = free_ports()
    matcher = spawn("matcher", [sys.executable, "manage.py", "run_matcher", "--symbols", "BTCUSDT", "--poll", "0.05",
                                "--metrics-port", str(port)], OPS_LATENCY_PUBLISH_SECONDS=1, **procfile_env("matcher"))
    wait_for(lambda: role_of(scrape(port)) == "matcher", "the matcher's exporter", matcher)
    order_place(user=seller, contract=btcusdt, side="SELL", quantity=D("0.3"), price=D("50000"))
    order_place(user=buyer, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
    wait_for(lambda: OrderCommand.objects.filter(status=CommandStatus.DONE).count() == 2, "the batch", matcher)

    samples = wait_for(
        lambda: (s := scrape(port)) and value(s, "matcher_book_orders", symbol="BTCUSDT") == 1 and s,
        "the book depth sample", matcher, timeout=30,
    )
    assert value(samples, "matcher_commands_total", symbol="BTCUSDT") == 2
    assert value(samples, "matcher_trades_total", symbol="BTCUSDT") == 1
    assert value(samples, "exchange_operation_latency_seconds_count", operation="order_processing") == 2
    assert value(samples, "exchange_operation_latency_seconds_bucket", operation="order_processing", le="0.001") \
        is not None
    assert value(samples, "exchange_active_positions", symbol="BTCUSDT") is None  # the web's job, not the matcher's
    # The p95 reaches Redis: the "Order latency p95 high" rule has data, the SLA rule too.
    wait_for(lambda: metric_read("order_latency_p95_us") is not None, "order_latency_p95_us", matcher, timeout=30)
    (entry,) = wait_for(lambda: list(metrics.latency_read("order_processing").values()), "the p95 report", matcher)
    assert entry["role"] == "matcher" and entry["p95_us"] > 0
    assert wait_for(lambda: metrics.series_read("matcher:BTCUSDT"), "a dashboard point", matcher, timeout=30)


def test_pricefeed_exports_market_data_latency(spawn, btcusdt):
    port = free_ports()
    feed = spawn("pricefeed", [sys.executable, "manage.py", "run_pricefeed", "--symbols", "BTCUSDT", "--interval",
                               "0.1", "--seed", "5", "--metrics-port", str(port)])
    samples = wait_for(
        lambda: (s := scrape(port)) and (value(s, "exchange_operation_latency_seconds_count",
                                               operation="market_data") or 0) >= 3 and s,
        "market data latency observations", feed,
    )
    assert role_of(samples) == "pricefeed"
    assert value(samples, "pricefeed_mark_price", symbol="BTCUSDT") > 0


@pytest.fixture
def not_eager():
    """Send to the broker for real (the ops tests run tasks eagerly otherwise)."""
    celery_app.conf.CELERY_TASK_ALWAYS_EAGER = False
    assert not celery_app.conf.task_always_eager
    yield


def test_celery_worker_main_and_prefork_child_each_serve_metrics_and_log_json_with_the_task_id(spawn, not_eager, db):
    base = free_ports(2)
    queue = f"ops-metrics-{uuid.uuid4().hex[:8]}"
    worker = spawn("worker", [str(ROOT / ".venv" / "bin" / "celery"), "-A", "exchange", "worker", "--pool", "prefork",
                              "--concurrency", "1", "-Q", queue, "--hostname", f"{queue}@%h", "--loglevel", "INFO",
                              "--without-gossip", "--without-mingle", "--without-heartbeat"],
                   OPS_METRICS_PORT_WORKER=base, LOG_FORMAT="json")
    assert wait_for(lambda: role_of(scrape(base)), "the worker's exporter", worker) == "celery-worker"
    assert wait_for(lambda: role_of(scrape(base + 1)), "the child's exporter", worker) == "celery-worker-child"

    sent = celery_app.send_task("apps.ops.tasks.beat_heartbeat", queue=queue)
    samples = wait_for(
        lambda: (s := scrape(base + 1)) and value(s, "celery_tasks_total", task="apps.ops.tasks.beat_heartbeat",
                                                  state="succeeded") == 1 and s,
        "the task counted in the child that ran it", worker,
    )
    assert value(samples, "celery_task_runtime_seconds_count", task="apps.ops.tasks.beat_heartbeat") == 1
    assert value(samples, "process_cpu_seconds_total") is not None
    assert value(scrape(base), "celery_tasks_total", task="apps.ops.tasks.beat_heartbeat", state="succeeded") is None
    # Celery keeps the project's log format (JSON here): the task's lines carry its id and the child's role.
    entries = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    (done,) = [e for e in entries if e.get("task_id") == sent.id and "succeeded" in e["message"]]
    assert done["task"] == "apps.ops.tasks.beat_heartbeat" and done["role"] == "celery-worker-child"


def test_beat_serves_metrics_and_a_second_beat_stands_by_until_the_leader_dies(spawn, tmp_path, db):
    from exchange.redis import get_redis

    first_port, second_port = free_ports(), free_ports()
    args = [str(ROOT / ".venv" / "bin" / "celery"), "-A", "exchange", "beat", "--loglevel", "INFO"]
    first = spawn("beat1", args + ["--schedule", str(tmp_path / "schedule1")], OPS_METRICS_PORT_BEAT=first_port)
    samples = wait_for(lambda: (s := scrape(first_port)) and value(s, "exchange_leader", service="beat") == 1 and s,
                       "the first beat to lead", first)
    assert role_of(samples) == "celery-beat" and value(samples, "exchange_host_memory_total_bytes") > 0
    assert int(get_redis().get("ops:leader:beat")) == first.pid

    second = spawn("beat2", args + ["--schedule", str(tmp_path / "schedule2")], OPS_METRICS_PORT_BEAT=second_port)
    wait_for(lambda: value(scrape(second_port), "exchange_leader", service="beat") == 0, "the standby", second)
    wait_for(lambda: "standing by" in second.log_path.read_text(), "the standby's log line", second)

    first.kill()  # SIGKILL: no goodbye; the server drops its connection and with it the lease
    first.wait()
    wait_for(lambda: value(scrape(second_port), "exchange_leader", service="beat") == 1, "the takeover", second)
    assert int(get_redis().get("ops:leader:beat")) == second.pid
