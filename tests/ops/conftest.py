"""Ops fixtures: a loopback HTTP receiver, eager Celery, a settable check source, clean Redis keys."""
import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps.ops import sources
from exchange.celery import app as celery_app
from exchange.redis import get_redis


class Receiver:
    """Records every POST; answers with the queued status codes, then `default_status`."""

    def __init__(self):
        self.requests: list[dict] = []
        self.responses: list[int] = []
        self.default_status = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "raw": raw, "json": json.loads(raw)}
                    )
                    status = receiver.responses.pop(0) if receiver.responses else receiver.default_status
                body = b"ok" if status < 400 else b"server says no"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def posts(self, path: str) -> list[dict]:
        return [r["json"] for r in self.requests if r["path"] == path]


@pytest.fixture
def receiver():
    rx = Receiver()
    rx.thread.start()
    yield rx
    rx.server.shutdown()
    rx.server.server_close()


@pytest.fixture(autouse=True)
def eager_celery():
    """Tasks run in the calling thread; a retry is applied at once (no countdown wait)."""
    # The app reads Django settings with the CELERY_ namespace, so the key carries it too.
    old = celery_app.conf.task_always_eager
    celery_app.conf.CELERY_TASK_ALWAYS_EAGER = True
    assert celery_app.conf.task_always_eager
    yield
    celery_app.conf.CELERY_TASK_ALWAYS_EAGER = old


@pytest.fixture(autouse=True)
def clean_ops_keys():
    redis = get_redis()
    for pattern in ("ops:*", "matcher:leader:*"):
        keys = list(redis.scan_iter(pattern))
        if keys:
            redis.delete(*keys)
    yield


class SettableSource:
    def __init__(self, key: str):
        self.key = key
        self.value: Decimal | dict | None = None
        self.reads = 0
        self.hook = None

    def read(self):
        self.reads += 1
        if self.hook:
            self.hook()
        return self.value


@pytest.fixture
def test_source():
    source = SettableSource("test.value")
    sources.source_register(source.key, description="Test value", unit="u")(source.read)
    yield source
    sources.SOURCES.pop(source.key, None)


@pytest.fixture(autouse=True)
def metrics_process():
    """The test process is a web process, and no latency publisher thread writes behind
    the tests' back (they call latency_publish themselves)."""
    from apps.ops import metrics

    metrics.publisher_stop()
    metrics.process_role_set("web")
    metrics.DATABASE_COLLECTOR._cached = None
    yield
    metrics.process_role_set("web")
