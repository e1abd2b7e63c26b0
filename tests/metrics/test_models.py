from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from jobs.models import TrainingJob
from metrics.models import TrainingMetric
from tests.support.factories import TrainingJobFactory, TrainingMetricFactory

pytestmark = pytest.mark.django_db


def test_deleting_a_job_deletes_its_points(job):
    TrainingMetricFactory.create_batch(5, job=job)
    other = TrainingMetricFactory(job=TrainingJobFactory(owner=job.owner), step=0)
    job.delete()
    assert list(TrainingMetric.objects.values_list("pk", flat=True)) == [other.pk]


def test_a_step_is_stored_once_per_job(job):
    TrainingMetricFactory(job=job, step=7)
    TrainingMetricFactory(job=TrainingJobFactory(owner=job.owner), step=7)  # other job: fine
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingMetricFactory(job=job, step=7)


@pytest.mark.parametrize(
    "fields",
    [{"epoch": 0}, {"accuracy": 1.5}, {"accuracy": -0.1}, {"learning_rate": -1e-4}],
)
def test_the_database_rejects_out_of_range_points(job, fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingMetricFactory(job=job, step=0, **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"total_epochs": 0},
        {"steps_per_epoch": 0},
        {"steps_per_tick": 0},
        {"initial_loss": 0.1, "final_loss": 0.2},
        {"name": ""},
        {"status": "exploded"},
        {"current_step": 61},  # 3 epochs x 20 steps
    ],
)
def test_the_database_rejects_inconsistent_jobs(user, fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingJobFactory(owner=user, **fields)


def test_the_job_step_index_serves_points_after_a_step():
    """The unique (job, step) index is the only index the lookup needs."""
    indexes = {
        name: info
        for name, info in connection.introspection.get_constraints(
            connection.cursor(), TrainingMetric._meta.db_table
        ).items()
        if info["index"] or info["unique"]
    }
    columns = sorted(tuple(info["columns"]) for info in indexes.values() if not info["primary_key"])
    assert columns == [("job_id", "step")]


def test_progress_properties(user):
    job = TrainingJobFactory(owner=user, total_epochs=4, steps_per_epoch=25, current_step=30)
    assert job.total_steps == 100
    assert job.progress_percent == 30.0
    assert job.current_epoch == 2
    assert TrainingJob.objects.get(pk=job.pk).is_active
