"""`bound_cursor` borrows two internals (Django's cursor wrapping, django-prometheus's cursor
class): if an upgrade changes either, these fail rather than order entry silently losing its
server-side binding, its query log or its database metrics."""
from django.db import connection
from django.db.backends.postgresql.base import ServerBindingCursor
from django.test.utils import CaptureQueriesContext
from django_prometheus.db.metrics import execute_total

from apps.ledger.services import bound_cursor


def _executed() -> float:
    return execute_total.labels(connection.alias, connection.vendor)._value.get()


def test_binds_server_side_and_is_logged_and_counted_like_a_django_cursor(db):
    before = _executed()
    with CaptureQueriesContext(connection) as queries, bound_cursor() as cursor:
        assert isinstance(cursor.cursor, ServerBindingCursor)
        cursor.execute("SELECT %s::bigint + 1, pg_typeof(%s::numeric)::text", [41, "1.50"])
        assert cursor.fetchone() == (42, "numeric")
    # Logged as sent: the parameters travel apart from the text (a client-side cursor would
    # have quoted 41 and '1.50' into it).
    assert [q["sql"] for q in queries.captured_queries] == ["SELECT $1::bigint + 1, pg_typeof($2::numeric)::text"]
    assert _executed() == before + 1
