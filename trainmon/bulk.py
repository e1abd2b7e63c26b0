"""Many rows as one statement parameter, on PostgreSQL and SQLite alike.

Bulk writes (progress of every job in a tick, the tick's job ids, points on SQLite) send
their rows as one JSON array of arrays and read it back as a table, so a statement is the
same, and costs one round trip, however many rows there are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.db import connection
from django.db.models import Lookup


class InArray(Lookup):
    """`InArray(F("pk"), ids)`: the column is one of `ids`, sent as one array parameter
    (`= ANY(%s)`) on PostgreSQL, as IN on SQLite.

    Django's `__in` sends one parameter per value: for a tick's 1,000 job ids, building,
    splitting and parsing that statement took a fifth of the claim's time.
    """

    lookup_name = "in_array"
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        values = list(self.rhs)
        if not values:
            raise EmptyResultSet
        lhs, lhs_params = self.process_lhs(compiler, connection)
        if connection.vendor == "postgresql":
            return f"{lhs} = ANY(%s)", [*lhs_params, values]
        return f"{lhs} IN ({', '.join(['%s'] * len(values))})", [*lhs_params, *values]


def only_ids(column: str, ids: Sequence[int]) -> tuple[str, list[Any]]:
    """`AND column = ANY(%s)` and its parameter on PostgreSQL, nothing on SQLite.

    A join of staged rows (which have no statistics) to a big table was planned by hashing
    every row of that table, so its cost grew with every job or key kept; naming the ids it
    wants lets PostgreSQL read just those through the index.
    """
    if connection.vendor != "postgresql":
        return "", []
    return f" AND {column} = ANY(%s)", [list(ids)]


def json_rows(
    columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
) -> tuple[str, list[Any]]:
    """A parenthesised SELECT yielding `rows`, with `columns`' names, and its one parameter.

    `columns` are (name, PostgreSQL type) pairs; row[i] fills columns[i]; None is NULL.
    +-Infinity arrives as such (JSON has no Infinity: SQLite reads the literal 1e999 as
    infinity, PostgreSQL casts the text "Infinity"). NaN raises ValueError: neither
    database would store it through this path; pass None.
    """
    payload = json.dumps(rows, allow_nan=True)
    if "NaN" in payload or "Infinity" in payload:
        payload = _INFINITY.sub(_infinity_literal(connection.vendor), payload)
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


# A JSON string (kept as it is), or a bare NaN / Infinity token that json.dumps wrote.
_INFINITY = re.compile(r'"(?:[^"\\]|\\.)*"|(-?)Infinity|NaN')


def _infinity_literal(vendor: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.startswith('"'):
            return token
        if token == "NaN":
            raise ValueError("NaN cannot be sent as a bulk row value; use None")
        sign = match.group(1)
        return f'"{sign}Infinity"' if vendor == "postgresql" else f"{sign}1e999"

    return replace
