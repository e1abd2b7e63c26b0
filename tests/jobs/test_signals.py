"""Deleting a job never leaves points behind, though the points, summary and ingest-log
tables have no database FK."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction

from jobs.models import TrainingJob
from jobs.services import job_delete, jobs_lock
from metrics.models import (
    IngestLog,
    KeySummary,
    MetricKey,
    MetricSummary,
    NamedMetric,
    TrainingMetric,
)
from metrics.services import metric_batches_write, simulator_for
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import batches_write, named_batch, named_write

LOCK_WAIT_TIMEOUT_S = 10


def first_points(job: TrainingJob, count: int):
    return simulator_for(job).generate_metrics_batch(0, count, job.total_steps, job.steps_per_epoch)


# Each table without a database FK, the column naming its owner, and the owner's table.
_WITHOUT_FK = [
    (TrainingMetric, "job_id", TrainingJob),
    (MetricSummary, "job_id", TrainingJob),
    (IngestLog, "job_id", TrainingJob),
    (NamedMetric, "key_id", MetricKey),
    (KeySummary, "key_id", MetricKey),
]


def orphans() -> int:
    """Rows of the tables without a database FK whose owner is gone."""
    found = 0
    with connection.cursor() as cursor:
        for model, column, owner in _WITHOUT_FK:
            cursor.execute(
                f"SELECT count(*) FROM {model._meta.db_table} m WHERE NOT EXISTS"
                f" (SELECT 1 FROM {owner._meta.db_table} o WHERE o.id = m.{column})"
            )
            found += cursor.fetchone()[0]
    return found


@pytest.mark.django_db
def test_deleting_a_user_deletes_their_jobs_points(user):
    job = TrainingJobFactory(owner=user, total_epochs=5, steps_per_epoch=100)
    batches_write((job, first_points(job, 300)))
    named_write(job, {"val/loss": (range(300), 0.5)})
    assert TrainingMetric.objects.filter(job=job).count() == 300
    user.delete()
    assert orphans() == 0
    assert not MetricSummary.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_job_deleted_while_its_points_are_written_leaves_no_orphans(user):
    """The writer holds the job's row until the deletion is queued behind it, then commits."""
    job = TrainingJobFactory(owner=user, total_epochs=5, steps_per_epoch=100)
    points = first_points(job, 200)
    # Named points too, of a key this write creates and one an earlier write did.
    named_write(job, {"grad": ([0], 1.0)})
    named = named_batch({"grad": (range(1, 200), 1.0), "val/loss": ([199], 0.5)})
    writer_locked = threading.Event()
    errors: list[BaseException] = []

    def write_while_a_delete_waits() -> None:
        try:
            with transaction.atomic():
                [locked] = jobs_lock([job.pk])
                writer_locked.set()
                _wait_for_a_blocked_backend()
                metric_batches_write([(locked, points)], named={locked.pk: named})
        except BaseException as error:  # re-raised in the test thread
            errors.append(error)
        finally:
            connections.close_all()

    writer = threading.Thread(target=write_while_a_delete_waits)
    writer.start()
    assert writer_locked.wait(LOCK_WAIT_TIMEOUT_S)
    job_delete(job=TrainingJob.objects.get(pk=job.pk))
    writer.join(LOCK_WAIT_TIMEOUT_S)
    assert not errors, errors
    assert not TrainingJob.objects.filter(pk=job.pk).exists()
    assert orphans() == 0
    assert not MetricSummary.objects.filter(job_id=job.pk).exists()


def _wait_for_a_blocked_backend() -> None:
    deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_S
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the deletion never waited for the writer's lock")
