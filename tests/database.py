"""The test run's database as a DATABASE_URL, for the real processes and extra connections tests open."""
from django.db import connection


def database_url() -> str:
    """pytest-django's test database (server, role and name of the default connection) as a DATABASE_URL."""
    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
