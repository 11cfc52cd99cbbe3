"""exchange.pgbulk: COPY text and array literals round-trip through PostgreSQL exactly."""
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection

from exchange.pgbulk import array_literal, copy_value, ids_reserve, rows_copy

AWKWARD = ["plain", "tab\there", "new\nline", "cr\rx", "back\\slash", 'quote"d', "{brace},comma", "", "NULL", "\\N"]


@pytest.mark.django_db
def test_rows_copy_round_trips_awkward_text_numbers_nulls_and_times():
    at = datetime(2026, 11, 26, 1, 2, 3, 456789, tzinfo=UTC)
    rows = [(i, text, Decimal("-12345678901234.123456789012345678") if i % 2 else Decimal("1E+2"), None if i % 3 else at,
             i % 2 == 0) for i, text in enumerate(AWKWARD)]
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE copy_probe (n int, t text, d numeric, at timestamptz, b boolean)")
        assert rows_copy(cursor, "copy_probe", ("n", "t", "d", "at", "b"), rows) == len(rows)
        cursor.execute("SELECT n, t, d, at, b FROM copy_probe ORDER BY n")
        assert cursor.fetchall() == rows


@pytest.mark.django_db
def test_array_literal_round_trips_text_numbers_and_nulls():
    numbers = [Decimal("0.00000001"), Decimal("-5E+3"), None, 7]
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s::text[], %s::numeric[]", [array_literal(AWKWARD + [None]), array_literal(numbers)])
        texts, decimals = cursor.fetchone()
    assert texts == AWKWARD + [None]
    assert decimals == numbers


@pytest.mark.django_db
def test_ids_reserve_gives_fresh_ascending_ids():
    with connection.cursor() as cursor:
        first = ids_reserve(cursor, "trading_trade", 5)
        second = ids_reserve(cursor, "trading_trade", 3)
    assert first == sorted(first) and len(set(first + second)) == 8 and min(second) > max(first)
    assert ids_reserve(connection.cursor(), "trading_trade", 0) == []


def test_copy_value_formats_nulls_booleans_and_decimals():
    assert copy_value(None) == "\\N" and copy_value(True) == "t" and copy_value(Decimal("1.50")) == "1.50"
