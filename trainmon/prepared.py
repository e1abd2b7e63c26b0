"""A cursor whose statements PostgreSQL plans once per connection, for the job page's poll.

Django's psycopg cursors bind parameters client-side, so PostgreSQL parses and plans each
statement anew: for the poll's news statement (metrics.selectors) that was 0.2-0.3 ms of a
~2.4 ms request, sent every two seconds by every open job page. prepared_cursor() binds
server-side and prepares each statement on its first run on a connection; connections
persist (CONN_MAX_AGE). The settings have PostgreSQL run the generic plan of each
(plan_cache_mode=force_generic_plan). Left to choose, it went on planning the news
statement anew on the benchmark's data (the generic plan, expecting a third of a job's log
rows, looked dearer), which saved only the parsing; and where it does switch, the first
polls on a connection decide. Django prepares nothing, so the setting touches nothing else but
PostgreSQL's own foreign-key checks, which are lookups by key either way.

A generic plan is made without the parameters' values, so only a statement whose plan
cannot go wrong for any of them belongs here: tests/metrics/test_raw_reads.py counts the
rows the poll's generic plans read. On SQLite it is the ordinary cursor.

Behind a pooler in transaction mode (PgBouncer before 1.21) a prepared statement may be
missing on the next transaction's server connection: why Django leaves preparing off.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import psycopg
from django.db import connection
from django.db.backends.postgresql.base import CursorDebugWrapper
from django.db.backends.utils import CursorWrapper
from django.utils.asyncio import async_unsafe
from psycopg.types.numeric import Int8


@async_unsafe
def prepared_cursor() -> CursorWrapper:
    """A cursor of the default connection, wrapped as connection.cursor() wraps its own (health
    check, error wrapping, query logging and counting), whose statements are prepared on
    PostgreSQL.

    Every int goes as a bigint (all ids, steps and ingest positions are): the type of each
    parameter is part of what is prepared, so one text is prepared once, whatever its numbers.
    """
    if connection.vendor != "postgresql":
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = _PreparingCursor(connection.connection)
        connection.validate_thread_sharing()
        if connection.queries_logged:
            return _PreparedDebugWrapper(cursor, connection)
        return connection.make_cursor(cursor)  # type: ignore[arg-type]  # stubs: a wrapper


class _PreparingCursor(psycopg.Cursor[Any]):
    """Prepares every statement it runs, whatever `prepare` says.

    Django turns psycopg's preparing off for the connection (prepare_threshold None), which
    also keeps psycopg from counting every other statement's text to decide whether to
    prepare it: preparing is switched on for this cursor's statements alone.
    """

    def execute(
        self,
        query: Any,
        params: Any = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Any:
        threshold = self.connection.prepare_threshold
        self.connection.prepare_threshold = sys.maxsize  # only prepare=True prepares
        try:
            return super().execute(query, _as_bigint(params), prepare=True, binary=binary)
        finally:
            self.connection.prepare_threshold = threshold


def _as_bigint(params: Sequence[Any] | None) -> list[Any] | None:
    if params is None:
        return None
    return [Int8(value) if type(value) is int else value for value in params]


class _PreparedDebugWrapper(CursorDebugWrapper):
    def execute(self, sql: Any, params: Any = None) -> Any:
        # Logged with the values in place, as Django logs its own cursors' statements (not in
        # psycopg's $1 form), so a logged statement runs as it is: the EXPLAIN tests replay them.
        with self.debug_sql(self.db.ops.compose_sql(sql, params), params):
            return CursorWrapper.execute(self, sql, params)
