from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from metrics.models import NamedMetric, TrainingMetric
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


@pytest.mark.parametrize(("model", "owner"), [(TrainingMetric, "job_id"), (NamedMetric, "key_id")])
def test_the_owner_step_primary_key_is_the_only_index(model, owner):
    """(owner, step) is the primary key: the idempotency guarantee and the index every
    read by step uses. No surrogate id, so no second index for each stored point."""
    # Sorted: SQLite's introspection lists a primary key's columns in table order.
    indexes = [
        (tuple(sorted(info["columns"])), info["primary_key"])
        for info in connection.introspection.get_constraints(
            connection.cursor(), model._meta.db_table
        ).values()
        if info["index"] or info["unique"] or info["primary_key"]
    ]
    assert indexes == [(tuple(sorted((owner, "step"))), True)]
    assert [field.name for field in model._meta.concrete_fields].count("id") == 0


def test_a_key_name_is_unique_per_job_and_a_step_per_key(job):
    key = MetricKeyFactory(job=job, name="val/loss")
    MetricKeyFactory(name="val/loss")  # another job may use the name
    with pytest.raises(IntegrityError), transaction.atomic():
        MetricKeyFactory(job=job, name="val/loss")
    NamedMetricFactory(key=key, step=3, value=None)  # NaN is stored as NULL
    with pytest.raises(IntegrityError), transaction.atomic():
        NamedMetricFactory(key=key, step=3)
    assert str(key) == f"{job.pk}: val/loss"
