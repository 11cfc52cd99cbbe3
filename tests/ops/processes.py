"""Real OS processes for the ops tests: started against the test database and Redis,
output to a file per process (never an unread pipe), killed by the kernel if the test
process dies (PR_SET_PDEATHSIG) and stopped at the end of the test; their /metrics
read back as samples."""
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tests.database import database_url
from tests.procfile import die_with_parent

ROOT = Path(__file__).resolve().parents[2]


def free_ports(count: int = 1) -> int:
    """A port p with p … p+count-1 all free (for a worker and its prefork children)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            for p in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return base
    raise AssertionError("no free ports")


@pytest.fixture
def spawn(tmp_path):
    started: list[tuple[subprocess.Popen, object]] = []

    def start(name: str, args: list[str], **env) -> subprocess.Popen:
        full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings.test",
                    "DATABASE_URL": database_url(),
                    **{k: str(v) for k, v in env.items()}}
        log = open(tmp_path / f"{name}.log", "wb")
        process = subprocess.Popen(args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=die_with_parent)
        process.log_path = tmp_path / f"{name}.log"
        started.append((process, log))
        return process

    try:
        yield start
    finally:
        for process, log in started:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()


def wait_for(predicate, what: str, process: subprocess.Popen | None = None, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.1)
    log = process.log_path.read_text()[-3000:] if process is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def scrape(port: int) -> dict[tuple, float] | None:
    """name + sorted labels → value, or None while the exporter is not up."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def value(samples: dict | None, name: str, **labels) -> float | None:
    if samples is None:
        return None
    return samples.get((name, tuple(sorted(labels.items()))))


def role_of(samples: dict | None) -> str | None:
    if samples is None:
        return None
    return next((dict(labels)["role"] for name, labels in samples if name == "exchange_process_info"), None)
