"""Structured logs (exchange/logs.py): a record rendered as JSON carries time, level,
logger, process role, message, the log context and extra fields; the request id goes
into the X-Request-Id header and into the request's log lines; LOG_FORMAT picks the
format (json by default in production); a real process writes JSON lines."""
import io
import json
import logging
import os
import re
import subprocess
import sys

import pytest
from django.http import HttpResponse
from django.test import RequestFactory

from apps.ops import metrics
from exchange.logs import ContextFilter, JsonFormatter, RequestIdMiddleware, TextFormatter, log_context
from tests.database import database_url

from .processes import ROOT

HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def capture():
    """A logger whose lines land in a buffer, through the project's filter and a formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.ops.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def use(formatter):
        handler.setFormatter(formatter)
        return logger, stream

    yield use
    logger.removeHandler(handler)


def lines(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_carries_time_level_logger_role_message_context_and_extras(capture):
    logger, stream = capture(JsonFormatter())
    metrics.process_role_set("matcher")
    with log_context(request_id="req-0001", symbol="ETHUSDT"):
        logger.warning("order %s accepted", 42, extra={"symbol": "BTCUSDT", "order_id": 42})
    logger.info("outside")
    (inside, outside) = lines(stream)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", inside["timestamp"])
    assert {k: inside[k] for k in ("level", "logger", "role", "pid", "message")} == {
        "level": "WARNING", "logger": "tests.ops.logs", "role": "matcher", "pid": os.getpid(),
        "message": "order 42 accepted"}
    # extra= wins over the context for the same key; the context adds the rest.
    assert (inside["symbol"], inside["order_id"], inside["request_id"]) == ("BTCUSDT", 42, "req-0001")
    assert "request_id" not in outside and "symbol" not in outside and outside["message"] == "outside"


def test_an_exception_is_one_json_line_with_its_traceback(capture):
    logger, stream = capture(JsonFormatter())
    try:
        {}["missing"]
    except KeyError:
        logger.exception("lookup failed")
    (line,) = lines(stream)
    assert line["level"] == "ERROR" and line["message"] == "lookup failed"
    assert "Traceback" in line["exc_info"] and "KeyError: 'missing'" in line["exc_info"]


def test_the_text_line_shows_the_fields_after_the_message(capture):
    logger, stream = capture(TextFormatter())
    with log_context(request_id="req-0002"):
        logger.warning("hello", extra={"symbol": "BTCUSDT"})
    assert stream.getvalue().rstrip().endswith("WARNING tests.ops.logs: hello (symbol=BTCUSDT, request_id=req-0002)")


def test_the_request_id_header_round_trips(client, db):
    given = client.get("/healthz", HTTP_X_REQUEST_ID="edge-7f3a9c21")
    assert given["X-Request-Id"] == "edge-7f3a9c21"
    made = client.get("/healthz")["X-Request-Id"]
    assert HEX32.match(made) and made != client.get("/healthz")["X-Request-Id"]
    # Something that is not an id (spaces, quotes: log injection) is replaced, not echoed.
    replaced = client.get("/healthz", HTTP_X_REQUEST_ID='x" level="CRITICAL')["X-Request-Id"]
    assert HEX32.match(replaced)


def test_every_log_line_of_a_request_carries_its_id(capture):
    logger, stream = capture(JsonFormatter())

    def view(request):
        logger.info("placing order", extra={"order_id": 7})
        return HttpResponse("ok")

    response = RequestIdMiddleware(view)(RequestFactory().get("/fapi/v1/order", HTTP_X_REQUEST_ID="edge-00000001"))
    logger.info("after the request")
    (during, after) = lines(stream)
    assert response["X-Request-Id"] == during["request_id"] == "edge-00000001" and during["order_id"] == 7
    assert "request_id" not in after


def test_django_logs_a_404_after_the_middleware_and_still_with_the_request_id(client, db, capture):
    _, stream = capture(JsonFormatter())
    handler = logging.getLogger("tests.ops.logs").handlers[-1]
    django_request = logging.getLogger("django.request")
    django_request.addHandler(handler)
    try:
        response = client.get("/no-such-page")
    finally:
        django_request.removeHandler(handler)
    (line,) = [entry for entry in lines(stream) if entry["logger"] == "django.request"]
    assert response.status_code == 404 and line["request_id"] == response["X-Request-Id"]
    assert line["status_code"] == 404 and "request" not in line


def _log_format(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("LOG_FORMAT", "EXCHANGE_PRODUCTION")}
    result = subprocess.run(
        [sys.executable, "-c", "from exchange.settings import logging as s; print(s.LOG_FORMAT)"],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_log_format_is_text_by_default_json_in_production_and_as_set():
    assert _log_format(DJANGO_SETTINGS_MODULE="exchange.settings.base") == "text"
    assert _log_format(DJANGO_SETTINGS_MODULE="exchange.settings.production") == "json"
    assert _log_format(DJANGO_SETTINGS_MODULE="exchange.settings.base", EXCHANGE_PRODUCTION="1") == "json"
    assert _log_format(DJANGO_SETTINGS_MODULE="exchange.settings.production", LOG_FORMAT="text") == "text"
    assert _log_format(DJANGO_SETTINGS_MODULE="exchange.settings.base", LOG_FORMAT="JSON") == "json"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_process_writes_json_lines_with_its_role(btcusdt, tmp_path, settings):
    """The pricefeed under the base settings (INFO) with LOG_FORMAT=json: every line is JSON."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings.base", "LOG_FORMAT": "json",
           "LOG_LEVEL": "INFO", "REDIS_URL": settings.REDIS_URL,
           "DATABASE_URL": database_url()}
    log = tmp_path / "pricefeed.log"
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "manage.py", "run_pricefeed", "--symbols", "BTCUSDT", "--max-ticks", "3",
                        "--interval", "0.1", "--seed", "1", "--metrics-port", "0"],
                       cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120, check=True)
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    started = [e for e in entries if e["message"].startswith("pricefeed started")]
    assert started and started[0]["role"] == "pricefeed" and started[0]["logger"] == "apps.marketdata.feed"
    assert any(e["message"].startswith("pricefeed lease acquired") for e in entries)
