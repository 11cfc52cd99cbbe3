"""The ops dashboard in a real browser: headless Chromium (Debian's chromium and
chromium-driver packages, driven by Selenium) logs in through the admin login form,
opens /ops/dashboard/, and sees the charts drawn with data, a price chart that grows
when a new price is stored, and the alert and liquidation panels; a screenshot is saved
to var/test-artifacts/. Served by the real web process (scripts/web.py) the page's data comes over the
websocket (no poll at all); served by Django's live server, which has no websocket, the
page falls back to polling. A non-staff user is refused. Skipped when no Chromium is
installed (apt-get install chromium chromium-driver)."""
import shutil
import socket
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from apps.ledger.models import AccountKind, TransactionKind
from apps.ledger.services import Leg, ledger_post, system_account
from apps.liquidation.models import Liquidation, Scope
from apps.marketdata.models import PriceSample
from apps.ops.alerts import alert_raise
from apps.ops.metrics import series_append

from tests.procfile import die_with_parent, web_command

from .processes import free_ports, spawn, wait_for as process_wait_for  # noqa: F401 (spawn: a fixture)

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

webdriver = pytest.importorskip("selenium.webdriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs chromium and chromedriver"),
]


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1800", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    # Driver log to a file (never an unread pipe); the driver dies with the test.
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"),
                      popen_kw={"preexec_fn": die_with_parent})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def login(driver, base: str, username: str, password: str, next_path: str = "/ops/dashboard/") -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/admin/login/?next={next_path}")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()


def wait_until(driver, predicate, what: str, timeout: float = 30):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(d))
    except TimeoutException:
        logs = driver.get_log("browser") if hasattr(driver, "get_log") else []
        raise AssertionError(f"timed out waiting for {what}; browser log: {logs}") from None


def points(driver, element_id: str) -> int:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    value = found[0].get_attribute("data-points") if found else None
    return int(value) if value else 0


@pytest.fixture
def market(usdt, btcusdt, make_user):
    """Ten seconds of prices, matcher points, a funded insurance fund, a firing alert and a liquidation."""
    now = timezone.now().replace(microsecond=0)
    for k in range(10, 0, -1):
        PriceSample.objects.create(contract=btcusdt, at=now - timezone.timedelta(seconds=k),
                                   index_price=D(50000 + k), mark_price=D(50010 + k), basis=D(10), valid_venues=3)
    for k in range(6, 0, -1):
        series_append("matcher:BTCUSDT", {"t": now.timestamp() - 5 * k, "orders_per_s": 10.0 + k,
                                          "trades_per_s": 2.0 + k / 2, "batch_p95_ms": 0.8 + k / 10})
    ledger_post(kind=TransactionKind.INSURANCE, legs=[
        Leg(system_account(AccountKind.INSURANCE_FUND), usdt, D("1200000")),
        Leg(system_account(AccountKind.EXTERNAL), usdt, D("-1200000")),
    ])
    alert_raise(key="job_failure:funding:BTCUSDT", level="CRITICAL", message="funding job for BTCUSDT failed")
    Liquidation.objects.create(user=make_user("margin-caller"), asset=usdt, scope=Scope.CROSS, ratio=D("0.97"),
                               equity=D("970"), maintenance=D("1000"))
    return btcusdt


def new_price(contract) -> None:
    at = timezone.now().replace(microsecond=0) + timezone.timedelta(seconds=1)
    PriceSample.objects.create(contract=contract, at=at, index_price=D(50100), mark_price=D(50120), basis=D(20),
                               valid_venues=3)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def web(spawn):
    """The web process as it runs in production (scripts/web.py: HTTP and websockets), on a free port."""
    port = free_ports()
    process = spawn("web", web_command(port))
    process_wait_for(lambda: _accepts(port), "the web process to listen", process)
    return f"http://127.0.0.1:{port}"


def test_staff_sees_live_charts_fed_over_the_websocket(browser, web, make_user, market):
    from selenium.webdriver.common.by import By

    make_user("operator", is_staff=True)
    login(browser, web, "operator", "pw-operator")
    wait_until(browser, lambda d: d.find_elements(By.ID, "chart-rates"), "the dashboard page")
    live = browser.find_element(By.ID, "live")
    wait_until(browser, lambda d: live.get_attribute("data-transport") == "websocket", "the websocket snapshot")

    wait_until(browser, lambda d: points(d, "chart-price-BTCUSDT") >= 10, "the price chart's data")
    assert points(browser, "chart-rates") == 6 and points(browser, "chart-latency") == 6
    assert points(browser, "chart-fund") >= 2
    for chart in ("chart-rates", "chart-latency", "chart-fund", "chart-sla", "chart-price-BTCUSDT"):
        assert browser.find_elements(By.CSS_SELECTOR, f"#{chart} canvas"), f"{chart} drew no canvas"
    legend = browser.find_element(By.ID, "chart-rates").text
    assert "BTCUSDT orders/s" in legend and "BTCUSDT trades/s" in legend
    assert "market_data p95 µs" in browser.find_element(By.ID, "chart-sla").text

    alerts = browser.find_element(By.ID, "alerts-table").text
    assert "funding job for BTCUSDT failed" in alerts and "CRITICAL" in alerts and "FIRING" in alerts
    liquidations = browser.find_element(By.ID, "liquidations-table").text
    assert "margin-caller" in liquidations and "ACTIVE" in liquidations and "cross" in liquidations
    health = browser.find_element(By.ID, "health-table").text
    assert "database" in health and "matcher BTCUSDT" in health and "pricefeed" in health

    # A new price is stored: the next websocket update carries it to the chart.
    before, messages = points(browser, "chart-price-BTCUSDT"), int(live.get_attribute("data-ws-messages"))
    new_price(market)
    wait_until(browser, lambda d: points(d, "chart-price-BTCUSDT") > before, "the new price on the chart")
    assert int(live.get_attribute("data-ws-messages")) > messages
    assert live.get_attribute("data-transport") == "websocket" and live.get_attribute("data-polls") is None

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "ops_dashboard.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_without_a_websocket_the_page_polls(browser, live_server, make_user, market):
    """Django's live server speaks no websocket: the socket fails and the page polls the JSON feed."""
    from selenium.webdriver.common.by import By

    make_user("operator", is_staff=True)
    login(browser, live_server.url, "operator", "pw-operator")
    wait_until(browser, lambda d: d.find_elements(By.ID, "chart-rates"), "the dashboard page")
    live = browser.find_element(By.ID, "live")
    wait_until(browser, lambda d: points(d, "chart-price-BTCUSDT") >= 10, "the price chart's data")
    assert live.get_attribute("data-transport") == "polling" and int(live.get_attribute("data-polls")) >= 1
    assert live.get_attribute("data-ws-messages") is None
    assert "funding job for BTCUSDT failed" in browser.find_element(By.ID, "alerts-table").text

    before = points(browser, "chart-price-BTCUSDT")
    new_price(market)
    wait_until(browser, lambda d: points(d, "chart-price-BTCUSDT") > before, "the new price on the chart")


def test_non_staff_user_is_refused(browser, web, make_user, client, db):
    from django.conf import settings
    from selenium.webdriver.common.by import By

    trader = make_user("trader")
    # The admin login form refuses a non-staff account outright...
    login(browser, web, "trader", "pw-trader")
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".errornote"), "the login error")
    assert "staff account" in browser.find_element(By.CSS_SELECTOR, ".errornote").text
    # ...and a user signed in elsewhere (a session of their own) gets neither page, data nor socket.
    client.force_login(trader)
    browser.get(f"{web}/healthz")
    browser.add_cookie({"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                        "path": "/"})
    browser.get(f"{web}/ops/dashboard/")
    assert "/admin/login/" in browser.current_url and not browser.find_elements(By.ID, "chart-rates")
    status = browser.execute_async_script(
        "var done = arguments[0]; fetch('/ops/dashboard/data.json').then(function (r) { done(r.status); });"
    )
    assert status == 403
    close = browser.execute_async_script(
        "var done = arguments[0], ws = new WebSocket('ws://' + location.host + '/ws/ops/dashboard');"
        "var got = []; ws.onmessage = function (e) { got.push(e.data); };"
        "ws.onclose = function (e) { done({code: e.code, messages: got.length}); };"
    )
    assert close == {"code": 4003, "messages": 0}
