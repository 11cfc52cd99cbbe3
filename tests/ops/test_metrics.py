"""Metrics: latency histograms and their p95 (Prometheus-style), the SLA rule, the web
process's database collector, /metrics, the matcher's samples and the dashboard feed."""
import os
import subprocess
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from prometheus_client import REGISTRY, Histogram
from prometheus_client.core import CollectorRegistry

from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.services import Leg, ledger_post, system_account, wallet_deposit
from apps.marketdata.models import PriceSample
from apps.ops import metrics
from apps.ops.alerts import alert_raise, rules_evaluate
from apps.ops.metrics import (
    LATENCY_BUCKETS,
    OPERATION_LATENCY,
    SLA_SECONDS,
    HistogramWindow,
    histogram_quantile,
    latency_publish,
    measure_latency,
    observe_latency,
    series_append,
)
from apps.ops.models import Alert, AlertRule, AlertStatus
from apps.ops.sources import metric_read, source_read
from apps.trading.engine import SymbolEngine
from apps.trading.matching import batch_process
from apps.trading.services import order_place

D = Decimal


def sample(name, labels=None):
    return REGISTRY.get_sample_value(name, labels or {})


def count_of(operation):
    return sample("exchange_operation_latency_seconds_count", {"operation": operation}) or 0.0


# -- quantiles --------------------------------------------------------------------------

def test_quantile_interpolates_inside_the_bucket_like_prometheus():
    # 100 observations: 50 in (0, 1], 40 in (1, 2], 10 in (2, 4].
    buckets = [(1.0, 50), (2.0, 90), (4.0, 100), (float("inf"), 100)]
    assert histogram_quantile(0.5, buckets) == 1.0
    assert histogram_quantile(0.7, buckets) == pytest.approx(1.5)  # rank 70: 20 of 40 into (1, 2]
    assert histogram_quantile(0.95, buckets) == pytest.approx(3.0)  # rank 95: 5 of 10 into (2, 4]
    assert histogram_quantile(0.95, [(1.0, 0), (float("inf"), 0)]) is None
    # Rank in +Inf: the highest finite bound is all that is known.
    assert histogram_quantile(0.95, [(1.0, 10), (float("inf"), 100)]) == 1.0


@pytest.mark.parametrize("operation", sorted(SLA_SECONDS))
def test_each_sla_is_a_bucket_edge_so_p95_over_sla_is_exact(operation):
    sla = SLA_SECONDS[operation]
    assert sla in LATENCY_BUCKETS
    registry = CollectorRegistry()
    h = Histogram("t_seconds", "t", buckets=LATENCY_BUCKETS, registry=registry)
    window = HistogramWindow(h, 60, now=0.0)
    h.observe(sla * 0.9)
    for _ in range(95):
        h.observe(sla * 0.9)
    for _ in range(4):
        h.observe(sla * 3)  # 4 of 100 slow: p95 is within the SLA
    (buckets,) = window.advance(1.0).values()
    assert histogram_quantile(0.95, buckets) <= sla
    for _ in range(4):
        h.observe(sla * 3)  # 8 of 104 slow: p95 above the SLA
    (buckets,) = window.advance(2.0).values()
    assert histogram_quantile(0.95, buckets) > sla


def test_window_forgets_observations_older_than_the_window():
    registry = CollectorRegistry()
    h = Histogram("w_seconds", "w", buckets=LATENCY_BUCKETS, registry=registry)
    window = HistogramWindow(h, 60, now=0.0)
    for _ in range(100):
        h.observe(0.01)  # slow, at t≈0
    (buckets,) = window.advance(10.0).values()
    assert buckets[-1][1] == 100 and histogram_quantile(0.95, buckets) > 0.001
    for _ in range(100):
        h.observe(0.00001)  # fast, at t≈70
    (buckets,) = window.advance(70.0).values()  # the window now starts at the t=10 snapshot
    assert buckets[-1][1] == 100 and histogram_quantile(0.95, buckets) <= 0.00001


# -- the latency API --------------------------------------------------------------------

def test_observe_latency_with_a_count_equals_that_many_observations():
    before = metrics.histogram_buckets(OPERATION_LATENCY).get(("position_update",), [])
    observe_latency("position_update", 0.00015, count=1000)
    observe_latency("position_update", 0.0003)
    after = metrics.histogram_buckets(OPERATION_LATENCY)[("position_update",)]
    delta = dict(metrics.buckets_delta(after, before))
    assert delta[0.0001] == 0 and delta[0.0002] == 1000 and delta[0.0005] == 1001 and delta[float("inf")] == 1001
    total = sample("exchange_operation_latency_seconds_sum", {"operation": "position_update"})
    assert total >= 0.00015 * 1000 + 0.0003


def test_measure_latency_as_context_manager_and_decorator_and_unknown_names():
    before = count_of("risk_check")
    with measure_latency("risk_check"):
        pass

    @measure_latency("risk_check")
    def check():
        return 42

    assert check() == 42
    assert count_of("risk_check") == before + 2
    with pytest.raises(ValueError, match="unknown operation"):
        observe_latency("risk-check", 0.1)
    with pytest.raises(ValueError, match="unknown operation"):
        measure_latency("order")


def test_publish_writes_each_operations_p95_and_the_order_latency_metric(db):
    window = HistogramWindow(OPERATION_LATENCY, 60, from_now=True)
    observe_latency("order_processing", 0.0004, count=99)
    observe_latency("order_processing", 0.002, count=3)  # 3 of 102 slow: p95 still ≤ 1 ms
    written = latency_publish(window)
    assert written["order_processing"]["count"] == 102
    assert 200 < written["order_processing"]["p95_us"] <= 500
    assert metric_read("order_latency_p95_us") == D(str(written["order_processing"]["p95_us"]))
    (entry,) = metrics.latency_read("order_processing").values()
    assert entry["role"] == "web" and entry["p95_us"] == written["order_processing"]["p95_us"]
    # Nothing processed in the next window: it reports 0 (no traffic, no violation).
    written = latency_publish(window, now=window.snapshots[-1][0] + 61)
    assert written["order_processing"] == {**written["order_processing"], "count": 0, "p95_us": 0.0}


# -- SLA alert rule ---------------------------------------------------------------------

def test_latency_sla_rule_fires_when_p95_stays_above_sla_and_resolves(db):
    rule = AlertRule.objects.get(key="ops.latency_sla_ratio")
    assert (rule.comparison, rule.threshold, rule.for_seconds) == ("gt", D("1"), 60)
    window = HistogramWindow(OPERATION_LATENCY, 60, from_now=True)
    observe_latency("risk_check", 0.0004, count=80)
    observe_latency("risk_check", 0.002, count=20)  # p95 in (1 ms, 2.5 ms]: ratio > 2
    latency_publish(window)
    reading = source_read("ops.latency_sla_ratio")
    # No position update in the window (earlier tests in this process may have booked
    # fills before it opened: then it reads 0, not None).
    assert reading["risk_check"] > 2 and not reading["position_update"]
    t0 = timezone.now()
    rules_evaluate(now=t0)
    alert = Alert.objects.get(rule=rule, label="risk_check")
    assert alert.status == AlertStatus.PENDING  # held for a minute before it fires
    rules_evaluate(now=t0 + timedelta(seconds=61))
    alert.refresh_from_db()
    assert alert.status == AlertStatus.FIRING and "risk_check" in alert.message
    # A minute later the window holds only fast checks: resolved.
    observe_latency("risk_check", 0.0001, count=50)
    latency_publish(window, now=window.snapshots[-1][0] + 61)
    assert source_read("ops.latency_sla_ratio")["risk_check"] <= 1
    rules_evaluate(now=t0 + timedelta(seconds=120))
    alert.refresh_from_db()
    assert alert.status == AlertStatus.RESOLVED


# -- the web process: database collector and /metrics -----------------------------------

@pytest.fixture
def traded(make_user, usdt, btcusdt):
    """Two users with opposite 0.2 BTC positions at 50,000, mark 51,000, fund 1,500,000."""
    seller, buyer = make_user("seller"), make_user("buyer")
    for user in (seller, buyer):
        wallet_deposit(user=user, asset=usdt, amount=D("100000"))
    ledger_post(kind=TransactionKind.INSURANCE, legs=[
        Leg(system_account(AccountKind.INSURANCE_FUND), usdt, D("1500000")),
        Leg(system_account(AccountKind.EXTERNAL), usdt, D("-1500000")),
    ])
    order_place(user=seller, contract=btcusdt, side="SELL", quantity=D("0.2"), price=D("50000"))
    order_place(user=buyer, contract=btcusdt, side="BUY", quantity=D("0.2"), price=D("50000"))
    batch_process(SymbolEngine(btcusdt))
    PriceSample.objects.create(contract=btcusdt, at=timezone.now(), index_price=D("50900"), mark_price=D("51000"),
                               basis=D("100"), valid_venues=3)
    return btcusdt


def test_database_collector_reports_positions_exposure_utilization_and_fund(traded):
    assert sample("exchange_active_positions", {"symbol": "BTCUSDT"}) == 2
    assert sample("exchange_open_interest", {"symbol": "BTCUSDT"}) == pytest.approx(0.2)
    assert sample("exchange_total_exposure", {"symbol": "BTCUSDT"}) == pytest.approx(2 * 0.2 * 51000)
    assert sample("exchange_insurance_fund_balance", {"asset": "USDT"}) == pytest.approx(1500000)
    # Initial margin at mark (leverage 20) over users' balances (deposits less fees paid).
    snap = metrics.DATABASE_COLLECTOR._cached[1]
    utilization = next(f for f in snap if f.name == "exchange_margin_utilization_ratio").samples[0].value
    assert utilization == pytest.approx(2 * 0.2 * 51000 / 20 / 200000, rel=1e-3)


def test_database_collector_runs_only_in_the_web_process(traded):
    metrics.process_role_set("matcher")
    assert sample("exchange_active_positions", {"symbol": "BTCUSDT"}) is None
    assert sample("exchange_process_info", {"role": "matcher", "pid": str(__import__("os").getpid())}) == 1


def test_web_metrics_endpoint_has_http_database_system_and_risk_metrics(client, traded):
    body = client.get("/metrics").content.decode()
    for name in ("django_http_requests_total_by_method_total", "django_db_execute_total", "process_cpu_seconds_total",
                 "exchange_gc_pause_seconds", "exchange_host_cpu_seconds_total", "exchange_host_network_sent_bytes_total",
                 "exchange_process_io_read_bytes_total", 'exchange_active_positions{symbol="BTCUSDT"} 2.0',
                 "exchange_insurance_fund_balance", "exchange_margin_utilization_ratio", 'role="web"'):
        assert name in body, name


def test_risk_and_funding_metrics_are_defined_for_the_code_that_sets_them():
    metrics.LIQUIDATIONS.labels(symbol="BTCUSDT").inc()
    metrics.ADL_EVENTS.labels(symbol="BTCUSDT").inc(2)
    metrics.FUNDING_RATE.labels(symbol="BTCUSDT").set(0.0001)
    metrics.PREMIUM_INDEX.labels(symbol="BTCUSDT").set(-0.0002)
    metrics.FUNDING_PAYMENTS.labels(symbol="BTCUSDT").inc(12.5)
    assert sample("exchange_liquidations_total", {"symbol": "BTCUSDT"}) >= 1
    assert sample("exchange_adl_events_total", {"symbol": "BTCUSDT"}) >= 2
    assert sample("exchange_funding_rate", {"symbol": "BTCUSDT"}) == 0.0001
    assert sample("exchange_premium_index", {"symbol": "BTCUSDT"}) == -0.0002
    assert sample("exchange_funding_payments_total", {"symbol": "BTCUSDT"}) >= 12.5


# -- the matcher's samples ------------------------------------------------------------

def test_matcher_step_observes_per_command_latency_and_sample_writes_depth_and_a_point(
    make_user, usdt, btcusdt, transactional_db
):
    from apps.trading.matcher import Matcher

    seller, buyer = make_user("s"), make_user("b")
    for user in (seller, buyer):
        wallet_deposit(user=user, asset=usdt, amount=D("100000"))
    matcher = Matcher(["BTCUSDT"])
    try:
        matcher.acquire_leases()
        order_place(user=seller, contract=btcusdt, side="SELL", quantity=D("0.5"), price=D("50010"))
        order_place(user=seller, contract=btcusdt, side="SELL", quantity=D("0.3"), price=D("50000"))
        order_place(user=buyer, contract=btcusdt, side="BUY", quantity=D("0.1"), price=D("50000"))
        order_place(user=buyer, contract=btcusdt, side="BUY", quantity=D("0.4"), price=D("49990"))
        before = count_of("order_processing")
        assert matcher.step() == 4
        assert count_of("order_processing") == before + 4
        matcher.sample(elapsed=2.0)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_all()")
    assert sample("matcher_book_orders", {"symbol": "BTCUSDT"}) == 3
    assert sample("matcher_book_depth_quantity", {"symbol": "BTCUSDT", "side": "ask"}) == pytest.approx(0.7)
    assert sample("matcher_book_depth_quantity", {"symbol": "BTCUSDT", "side": "bid"}) == pytest.approx(0.4)
    assert sample("matcher_book_best_price", {"symbol": "BTCUSDT", "side": "ask"}) == 50000
    assert sample("matcher_book_levels", {"symbol": "BTCUSDT", "side": "ask"}) == 2
    (point,) = metrics.series_read("matcher:BTCUSDT")
    assert point["orders_per_s"] == 2.0 and point["trades_per_s"] == 0.5 and point["batch_p95_ms"] > 0


# -- the dashboard feed ---------------------------------------------------------------

@pytest.fixture
def staff_client(client, make_user):
    client.force_login(make_user("operator", is_staff=True))
    return client


def test_dashboard_feed_has_series_prices_fund_latency_alerts_and_health(staff_client, traded):
    now = timezone.now().timestamp()
    series_append("matcher:BTCUSDT", {"t": now - 10, "orders_per_s": 12.0, "trades_per_s": 3.0, "batch_p95_ms": 1.5})
    series_append("matcher:BTCUSDT", {"t": now - 5, "orders_per_s": 8.0, "trades_per_s": 2.0, "batch_p95_ms": 1.1})
    series_append("matcher:BTCUSDT", {"t": now - 3600, "orders_per_s": 1, "trades_per_s": 1, "batch_p95_ms": 1})
    alert_raise(key="job_failure:funding:BTCUSDT", level="CRITICAL", message="funding job failed")
    response = staff_client.get(reverse("ops:dashboard-data"))
    assert response.status_code == 200 and response["Cache-Control"].startswith("max-age=0")
    feed = response.json()
    assert feed["symbols"] == ["BTCUSDT"]
    assert feed["matcher"]["BTCUSDT"]["orders_per_s"] == [12.0, 8.0]  # the hour-old point is out of range
    assert feed["prices"]["BTCUSDT"]["mark"] == [51000.0] and feed["prices"]["BTCUSDT"]["index"] == [50900.0]
    assert feed["insurance_fund"]["balance"][-2:] == [1500000.0, 1500000.0]
    assert feed["latency"]["market_data"]["sla_us"] == 100
    (alert,) = feed["alerts"]
    assert alert["level"] == "CRITICAL" and alert["status"] == "FIRING" and alert["message"] == "funding job failed"
    assert set(feed["health"]["checks"]) == {"database", "redis", "beat", "matchers", "pricefeed"}


def test_dashboard_feed_and_page_are_refused_to_non_staff(client, make_user, db):
    url = reverse("ops:dashboard-data")
    assert client.get(url).status_code == 403
    client.force_login(make_user("trader"))
    assert client.get(url).status_code == 403
    page = client.get(reverse("ops:dashboard"))
    assert page.status_code == 302 and "/admin/login/" in page["Location"]


def test_dashboard_page_loads_the_vendored_chart_library(staff_client, db):
    body = staff_client.get(reverse("ops:dashboard")).content.decode()
    assert "ops/uplot/uPlot.iife.min.js" in body and "ops/dashboard.js" in body and 'id="chart-rates"' in body
    assert "cdn" not in body.lower()


# -- GC pauses --------------------------------------------------------------------------

def test_a_gc_pause_is_queued_by_the_callback_and_recorded_at_the_scrape(monkeypatch, db):
    """The GC callback touches no metric (see test_gc_inside_a_metric_update_does_not_hang);
    the scrape records what it queued. (Generation 9: no real collection reports it.)"""
    assert sample("exchange_gc_pause_seconds_count", {"generation": "9"}) is None

    class Untouchable:
        def labels(self, *args, **kwargs):
            raise AssertionError("a GC callback touched a metric")

    with monkeypatch.context() as patched:
        patched.setattr(metrics, "GC_PAUSE", Untouchable())
        metrics._gc_callback("start", {"generation": 9})
        metrics._gc_callback("stop", {"generation": 9})
    assert (9, ) == tuple(generation for generation, _ in metrics._gc_pauses if generation == 9)
    assert sample("exchange_gc_pause_seconds_count", {"generation": "9"}) == 1  # the scrape recorded it
    assert all(generation != 9 for generation, _ in metrics._gc_pauses)


GC_IN_A_METRIC_UPDATE = """
import gc, django
django.setup()
import prometheus_client.values as values
from apps.ops import metrics
assert metrics._gc_callback in gc.callbacks
init = values.ValueClass.__init__  # multiprocess mode: every value shares this one lock
lock = dict(zip(init.__code__.co_freevars, init.__closure__))["lock"].cell_contents
with lock:  # as while a labelled child is created, which allocates
    gc.collect()
print("collected")
"""


def test_gc_inside_a_metric_update_does_not_hang(tmp_path):
    """A web worker (multiprocess metrics) once stopped answering /metrics: a collection started
    while its thread held the metrics lock, and the GC callback waited for that lock. A real
    process, as the web workers run (PROMETHEUS_MULTIPROC_DIR set before the import)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "exchange.settings.test"}
    done = subprocess.run([sys.executable, "-c", GC_IN_A_METRIC_UPDATE], env=env, capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and "collected" in done.stdout, done.stderr[-2000:]
