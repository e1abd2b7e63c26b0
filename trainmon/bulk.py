"""Many rows as one statement parameter, on PostgreSQL and SQLite alike.

Bulk writes (progress of every job in a tick, the tick's job ids, points on SQLite) send
their rows as one JSON array of arrays and read it back as a table, so a statement is the
same, and costs one round trip, however many rows there are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from django.db import connection


def json_rows(
    columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
) -> tuple[str, list[Any]]:
    """A parenthesised SELECT yielding `rows`, with `columns`' names, and its one parameter.

    `columns` are (name, PostgreSQL type) pairs; row[i] fills columns[i]; None is NULL. A
    non-finite float raises ValueError: JSON has no NaN, and neither database would store it
    through this path.
    """
    payload = json.dumps(rows, allow_nan=False)
    if connection.vendor == "postgresql":
        select = ", ".join(
            f"(value->>{index})::{sql_type} AS {name}"
            for index, (name, sql_type) in enumerate(columns)
        )
        return f"(SELECT {select} FROM jsonb_array_elements(%s::jsonb) AS r(value))", [payload]
    select = ", ".join(
        f"json_extract(value, '$[{index}]') AS {name}" for index, (name, _) in enumerate(columns)
    )
    return f"(SELECT {select} FROM json_each(%s))", [payload]
