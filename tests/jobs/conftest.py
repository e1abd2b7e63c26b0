from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from django.db import connection
from django.utils import timezone

from jobs.selectors import METRIC_KEY_TABLE, metric_key_table_ready

KeyRow = Callable[..., None]


@pytest.fixture
def metric_key(db) -> Iterator[KeyRow]:
    """Store a named key's running stats, as the metrics write path keeps them.

    Raw SQL with the contract's columns (notes: metrics.MetricKey): the jobs app reads the
    table by name. Until metrics' migration creates it, the test creates it (rolled back with
    the test's transaction).
    """
    if METRIC_KEY_TABLE not in connection.introspection.table_names():
        primary_key = (
            "bigserial PRIMARY KEY"
            if connection.vendor == "postgresql"
            else "integer PRIMARY KEY AUTOINCREMENT"
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE {METRIC_KEY_TABLE} (id {primary_key}, job_id bigint NOT NULL, "
                "name varchar(250) NOT NULL, created_at timestamp NOT NULL, count bigint NOT NULL, "
                "first_step bigint NULL, last_step bigint NULL, last_value double precision NULL, "
                "last_reported_at timestamp NULL, min_value double precision NULL, "
                "max_value double precision NULL)"
            )
    metric_key_table_ready.cache_clear()

    def add(job, name: str, *, last: float | None, low: float | None, count: int = 10) -> None:
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {METRIC_KEY_TABLE} (job_id, name, created_at, count, first_step, "
                "last_step, last_value, last_reported_at, min_value, max_value) "
                "VALUES (%s, %s, %s, %s, 0, %s, %s, %s, %s, %s)",
                [job.pk, name, now, count, count - 1, last, now, low, last],
            )

    yield add
    metric_key_table_ready.cache_clear()
