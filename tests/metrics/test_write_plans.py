"""A write's joins of its staged rows to the keys and jobs tables (the key ids, the key
stats UPDATE, the progress UPDATE) read only the rows the write is about, however many
others the tables hold: their cost follows the batch, not the database.

Measured on PostgreSQL: the UPDATE a write sent is run again under EXPLAIN (ANALYZE, FORMAT
JSON) in a savepoint that is rolled back, with the write's temporary staging rows still in
place (the test's transaction never commits, so ON COMMIT DELETE ROWS has not run), and the
rows its plan took from the keys table are added up. It used to hash-join its staging table
against every key, since a staging table has no statistics and PostgreSQL guesses ~1,000
rows: 36,000 keys read for a chunk of 500 jobs, on every tick. The key ids' lookup (staged
as a JSON parameter, guessed at 100 rows) and the progress UPDATE did the same with the
keys and the jobs whenever the tables' statistics made a scan look cheaper. Each now names
the ids it wants (trainmon.bulk.only_ids).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from jobs.models import TrainingJob
from metrics.models import MetricKey
from metrics.services import simulation_advance
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import named_write
from tests.support.plans import plan_nodes, rows_taken

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

OTHER_JOBS = 1_000
KEYS_PER_JOB = 3
KEYS_TABLE = MetricKey._meta.db_table


class _RolledBack(Exception):
    pass


def keys_read(statements: list[str], *, starting: str, table: str = KEYS_TABLE) -> int:
    """Rows of the keys table (or `table`) that the statements starting with `starting`
    took (see `rows_taken`)."""
    read = 0
    for sql in statements:
        if not sql.lstrip().startswith(starting):
            continue
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
                [plan] = cursor.fetchone()[0]
                raise _RolledBack
        except _RolledBack:
            pass
        read += sum(
            rows_taken(node)
            for node in plan_nodes(plan["Plan"])
            if node.get("Relation Name") == table and node["Node Type"] != "ModifyTable"
        )
    return read


@pytest.fixture
def crowded(user):
    """OTHER_JOBS running simulated jobs with KEYS_PER_JOB keys each, analyzed: a server that
    has run for a while."""
    others = TrainingJobFactory.create_batch(OTHER_JOBS, owner=user)
    MetricKey.objects.bulk_create(
        MetricKey(job=job, name=f"key/{n}", count=1) for job in others for n in range(KEYS_PER_JOB)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {KEYS_TABLE}")
    return others


def written_statements(write: Any) -> list[str]:
    with CaptureQueriesContext(connection) as captured:
        write()
    return [query["sql"] for query in captured.captured_queries]


UPDATE_KEYS = f"UPDATE {KEYS_TABLE} "


def test_the_measure_sees_a_scan_of_every_key(crowded):
    statement = f"UPDATE {KEYS_TABLE} SET count = count + 1"
    assert keys_read([statement], starting=UPDATE_KEYS) == OTHER_JOBS * KEYS_PER_JOB


def test_an_api_write_updates_its_keys_stats_reading_only_them(crowded, user):
    job = TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL)
    steps = np.arange(3)
    named_write(job, {"train/loss": (steps, 1.0), "val/loss": (steps, 2.0)})

    statements = written_statements(
        lambda: named_write(job, {"train/loss": (steps + 3, 1.0), "val/loss": (steps + 3, 2.0)})
    )

    assert keys_read(statements, starting=UPDATE_KEYS) == 2
    assert MetricKey.objects.get(job=job, name="val/loss").count == 6


def test_a_tick_updates_its_keys_stats_reading_only_them(crowded):
    advanced = [job.pk for job in crowded[:5]]
    simulation_advance(job_ids=advanced, tick=1)  # creates their keys

    statements = written_statements(lambda: simulation_advance(job_ids=advanced, tick=2))

    assert TrainingJob.objects.filter(pk__in=advanced, last_tick=2).count() == len(advanced)
    written = MetricKey.objects.filter(job_id__in=advanced).exclude(name__startswith="key/")
    assert 0 < keys_read(statements, starting=UPDATE_KEYS) <= written.count()


JOBS_TABLE = TrainingJob._meta.db_table


def test_a_tick_looks_up_its_keys_and_updates_its_jobs_reading_only_them(crowded):
    advanced = [job.pk for job in crowded[:5]]
    simulation_advance(job_ids=advanced, tick=1)  # creates their keys

    statements = written_statements(lambda: simulation_advance(job_ids=advanced, tick=2))

    # The advanced jobs' keys (theirs and the fixture's), none of the other jobs'.
    theirs = MetricKey.objects.filter(job_id__in=advanced).count()
    assert 0 < keys_read(statements, starting="SELECT w.job_id") <= theirs
    progress = f"UPDATE {JOBS_TABLE} SET current_step"
    assert keys_read(statements, starting=progress, table=JOBS_TABLE) == len(advanced)
    assert TrainingJob.objects.filter(pk__in=advanced, current_step=20).count() == len(advanced)


def test_a_key_reaching_a_summary_level_reads_only_its_own_buckets(user, every_key_summarised):
    from metrics.models import KeySummary

    summary_table = KeySummary._meta.db_table
    for job in TrainingJobFactory.create_batch(10, owner=user, source=TrainingJob.Source.EXTERNAL):
        named_write(job, {f"other/{n}": ([0], 1.0) for n in range(100)})
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {summary_table}")
    job = TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL)
    named_write(job, {"loss": (np.arange(100), 1.0)})  # one level: 64 steps a bucket

    # 300 points: the 256-step level is built from the 64-step one.
    statements = written_statements(lambda: named_write(job, {"loss": (np.arange(100, 300), 1.0)}))

    key = MetricKey.objects.get(job=job, name="loss")
    read = keys_read(statements, starting="SELECT s.key_id", table=summary_table)
    assert 0 < read <= KeySummary.objects.filter(key=key).count()  # its own rows, no other's
    assert KeySummary.objects.filter(key=key, width=256).exists()
