"""The web's pooled PostgreSQL connections (DB_POOL=1) stay instrumented once, however often they are reused.

django-prometheus before 2.5 wrapped a connection's cursor factory in one more metrics layer
each time Django took the connection from the pool: every ORM query went through one more
layer per earlier request, until the web process's ORM queries all failed with RecursionError
(here after a few hundred requests per pooled connection). A real process with the pool, as the
Procfile runs `web`.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.database import database_url

ROOT = Path(__file__).resolve().parents[2]
CHECKOUTS = 1500

SCRIPT = f"""
import json
import django
django.setup()
from django.contrib.auth import get_user_model
from django.db import connection
depths = []
for _ in range({CHECKOUTS}):
    get_user_model().objects.exists()  # takes a connection from the pool
    depths.append(len(connection.connection.cursor_factory.__mro__))
    connection.close()  # the end of a request: back to the pool
print(json.dumps(depths))
"""


def test_a_pooled_connection_keeps_one_metrics_layer(db):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "exchange.settings.test", "DB_POOL": "1",
           "DATABASE_URL": database_url()}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    depths = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(depths) == CHECKOUTS and len(set(depths)) == 1
