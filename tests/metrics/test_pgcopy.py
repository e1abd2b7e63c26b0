from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from django.db import connection

from metrics.pgcopy import binary_copy_data, stage_rows, timestamp_micros

COLUMNS = (
    ("n", "bigint"),
    ("small", "integer"),
    ("x", "double precision"),
    ("y", "double precision"),
)


def test_floats_given_for_an_integer_column_must_be_whole():
    with pytest.raises(ValueError, match="non-integer"):
        binary_copy_data(["bigint"], [np.array([1.0, 2.5])])
    assert binary_copy_data(["bigint"], [np.array([1.0, 2.0])])


def test_columns_must_line_up():
    with pytest.raises(ValueError, match="differ in length"):
        binary_copy_data(["bigint", "bigint"], [np.arange(3), np.arange(2)])
    with pytest.raises(ValueError, match="types for"):
        binary_copy_data(["bigint"], [np.arange(3), np.arange(3)])


def test_timestamps_count_microseconds_from_2000():
    assert timestamp_micros(datetime(2000, 1, 1, tzinfo=UTC)) == 0
    assert timestamp_micros(datetime(2000, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


@pytest.mark.postgres
@pytest.mark.django_db
def test_rows_round_trip_through_copy_with_nan_as_null():
    n = np.arange(6, dtype=np.int64) * 2**40  # beyond 32 bits
    x = np.array([0.5, np.nan, -1e300, np.nan, 2.0, 3.0])
    y = np.array([np.nan, np.nan, 1.0, 2.0, 5e-324, 4.0])
    small = np.arange(6, dtype=np.int64) - 3
    with connection.cursor() as cursor:
        stage_rows(cursor, "test_pgcopy_in", COLUMNS, [n, small, x, y])
        cursor.execute("SELECT n, small, x, y FROM test_pgcopy_in ORDER BY n")
        rows = cursor.fetchall()
        # Staging again in the same transaction replaces, never appends.
        stage_rows(cursor, "test_pgcopy_in", COLUMNS, [n[:2], small[:2], x[:2], y[:2]])
        cursor.execute("SELECT COUNT(*) FROM test_pgcopy_in")
        assert cursor.fetchone() == (2,)

    def expected(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    assert rows == [
        (int(a), int(b), expected(c), expected(d))
        for a, b, c, d in zip(n, small, x, y, strict=True)
    ]


@pytest.mark.postgres
@pytest.mark.django_db
def test_an_integer_column_given_as_floats_takes_nan_as_null():
    ids = np.array([np.nan, 3.0, 2.0**53, np.nan])
    steps = np.arange(4, dtype=np.int64)
    columns = (("id", "bigint"), ("step", "bigint"))
    with connection.cursor() as cursor:
        stage_rows(cursor, "test_pgcopy_ids_in", columns, [ids, steps])
        cursor.execute("SELECT id, step FROM test_pgcopy_ids_in ORDER BY step")
        assert cursor.fetchall() == [(None, 0), (3, 1), (2**53, 2), (None, 3)]
    with pytest.raises(ValueError, match="non-integer"):
        binary_copy_data(["bigint"], [np.array([np.nan, 1.5])])


def test_fits_says_whether_integer_columns_fit_their_binary_type():
    from metrics.pgcopy import fits

    types = ["integer", "bigint", "double precision"]
    small = [np.array([1, 2**31 - 1]), np.array([2**40]), np.array([1e300])]
    assert fits(types, small)
    assert not fits(types, [np.array([2**31]), *small[1:]])
    assert not fits(types, [np.array([-(2**31) - 1]), *small[1:]])
    assert fits(types, [np.zeros(0, dtype=np.int64)] * 3)
    # NaN (NULL) fits any column; the numbers beside it are still checked.
    assert fits(types, [np.array([np.nan, 1.0]), *small[1:]])
    assert fits(types, [np.array([np.nan]), *small[1:]])
    assert not fits(types, [np.array([np.nan, 2.0**31]), *small[1:]])
