"""Hand numpy columns to the database as a table the next statement can read from.

PostgreSQL gets them by binary COPY into a temporary table (metrics.pgcopy); SQLite as one
JSON parameter (trainmon.bulk). Either way one statement reads every row, however many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from django.db import connection
from django.db.backends.utils import CursorWrapper

from metrics import pgcopy
from trainmon.bulk import json_rows


def staged_rows(
    cursor: CursorWrapper,
    table: str,
    columns: Sequence[tuple[str, str]],
    values: Sequence[np.ndarray],
) -> tuple[str, list[Any]]:
    """A FROM clause yielding the rows, with `columns`' names, and its parameters.

    `columns` are (name, PostgreSQL type) pairs; `values[i]` fills columns[i]. NaN in a float
    column arrives as NULL. On PostgreSQL `table` names the temporary staging table.
    """
    if connection.vendor == "postgresql":
        pgcopy.stage_rows(cursor, table, columns, values)
        return f"FROM {table}", []
    select, params = json_columns(columns, values)
    return f"FROM {select}", params


def json_columns(
    columns: Sequence[tuple[str, str]], values: Sequence[np.ndarray]
) -> tuple[str, list[Any]]:
    """`trainmon.bulk.json_rows` of numpy columns (NaN as NULL): a parenthesised SELECT
    yielding the rows, with `columns`' names, and its one parameter."""
    rows = [
        [None if isinstance(value, float) and math.isnan(value) else value for value in row]
        for row in zip(*(column.tolist() for column in values), strict=True)
    ]
    return json_rows(columns, rows)
