from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from metrics.models import TrainingMetric
from tests.support.factories import (
    MetricKeyFactory,
    NamedMetricFactory,
    TrainingJobFactory,
    TrainingMetricFactory,
)

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


def test_a_key_name_is_unique_per_job_and_a_step_per_key(job):
    key = MetricKeyFactory(job=job, name="val/loss")
    MetricKeyFactory(name="val/loss")  # another job may use the name
    with pytest.raises(IntegrityError), transaction.atomic():
        MetricKeyFactory(job=job, name="val/loss")
    NamedMetricFactory(key=key, step=3, value=None)  # NaN is stored as NULL
    with pytest.raises(IntegrityError), transaction.atomic():
        NamedMetricFactory(key=key, step=3)
    assert str(key) == f"{job.pk}: val/loss"
