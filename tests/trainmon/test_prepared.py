"""trainmon.prepared: a cursor that prepares on PostgreSQL and is otherwise Django's own (its
statements counted and logged with their values, its errors Django's)."""

from __future__ import annotations

import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext

from trainmon.prepared import prepared_cursor

pytestmark = pytest.mark.django_db

STATEMENT = "SELECT CAST(%s AS bigint) + 1, %s"


def test_a_statement_answers_and_is_logged_with_its_values():
    with CaptureQueriesContext(connection) as captured, prepared_cursor() as cursor:
        cursor.execute(STATEMENT, [41, "forty-one"])
        assert cursor.fetchone() == (42, "forty-one")
    [logged] = captured.captured_queries
    # As Django logs its own cursors' statements: one that runs as it is (tests replay them).
    assert "41" in logged["sql"]
    assert "'forty-one'" in logged["sql"]


@pytest.mark.postgres
def test_a_statement_is_prepared_once_whatever_its_numbers():
    for number in (1, 40_000, 2**40):
        with prepared_cursor() as cursor:
            cursor.execute(STATEMENT, [number, "x"])
            assert cursor.fetchone() == (number + 1, "x")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT parameter_types, generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement = %s",
            [STATEMENT % ("$1", "$2")],
        )
        # Every int goes as a bigint, and the generic plan runs from the first time on.
        assert cursor.fetchall() == [(["bigint", "text"], 3, 0)]


@pytest.mark.postgres
def test_an_error_is_djangos_and_leaves_the_connection_usable():
    with pytest.raises(DataError), transaction.atomic(), prepared_cursor() as cursor:
        cursor.execute("SELECT 1 / %s", [0])
    with prepared_cursor() as cursor:
        cursor.execute(STATEMENT, [1, "x"])
        assert cursor.fetchone() == (2, "x")
