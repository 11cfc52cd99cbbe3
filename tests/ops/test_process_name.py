"""PostgreSQL's application_name says which process of the exchange a connection serves."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exchange.settings.process import process_name

ROOT = Path(__file__).resolve().parents[2]
UVICORN_MAIN = "/srv/x/.venv/lib/python3.11/site-packages/uvicorn/__main__.py"


@pytest.mark.parametrize("argv, name", [
    (["manage.py", "run_matcher", "--symbols", "BTCUSDT"], "exchange run_matcher"),
    (["/srv/x/manage.py", "run_pricefeed"], "exchange run_pricefeed"),
    (["manage.py"], "exchange manage.py"),
    ([UVICORN_MAIN, "--fd", "3", "exchange.asgi:application"], "exchange web"),
    ([".venv/bin/uvicorn", "exchange.asgi:application"], "exchange web"),
    ([".venv/bin/celery", "-A", "exchange", "worker", "--concurrency", "2"], "exchange celery worker"),
    ([".venv/bin/celery", "-A", "exchange", "beat"], "exchange celery beat"),
    (["/srv/x/.venv/lib/python3.11/site-packages/pytest/__main__.py", "-q"], "exchange pytest"),
    (["bench/api_orders.py"], "exchange api_orders.py"),
    ([""], "exchange python"),
    ([], "exchange python"),
])
def test_the_name_comes_from_the_command_line(argv, name):
    assert process_name(argv) == name


def test_a_name_is_cut_to_what_postgresql_keeps():
    assert len(process_name(["manage.py", "x" * 100])) == 63


def test_a_management_command_connects_under_its_name():
    """A real process, as the Procfile starts them: its connection carries the name."""
    script = ("from django.db import connection\n"
              "with connection.cursor() as c:\n"
              "    c.execute('SHOW application_name'); print(c.fetchone()[0])")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings.test"}
    env.pop("DB_APPLICATION_NAME", None)
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "exchange shell"
    env["DB_APPLICATION_NAME"] = "exchange shell on ops-2"
    out = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "exchange shell on ops-2"
