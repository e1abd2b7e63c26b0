"""Migrations 0005 and 0006 (composite primary keys for the points and summary tables) keep
every stored row, forwards and backwards, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from metrics.models import KeySummary, MetricSummary, NamedMetric, TrainingMetric
from tests.support.factories import TrainingJobFactory

BEFORE = ("metrics", "0004_named_series")
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
BUCKET = {"width": 64, "bucket": 0, "count": 2, "min_step": 0, "max_step": 1, "last_step": 1}


def migrate(targets: list[tuple[str, str]]):
    """Migrate to `targets`; the apps (historical models) of the state reached."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def latest() -> list[tuple[str, str]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def primary_key(table: str) -> list[str]:
    """The primary key's columns in key order (Django's introspection gives SQLite's in
    table order)."""
    if connection.vendor == "postgresql":
        sql = (
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary"
            " ORDER BY array_position(i.indkey::int2[], a.attnum)"
        )
    else:
        sql = "SELECT name FROM pragma_table_info(%s) WHERE pk > 0 ORDER BY pk"
    with connection.cursor() as cursor:
        cursor.execute(sql, [table])
        return [name for (name,) in cursor.fetchall()]


def stored_rows():
    return (
        sorted(TrainingMetric.objects.values_list("job_id", "step", "loss", "created_at")),
        sorted(NamedMetric.objects.values_list("key__name", "step", "value")),
        sorted(MetricSummary.objects.values_list("job_id", "width", "bucket", "sum_loss")),
        sorted(KeySummary.objects.values_list("key__name", "width", "bucket", "sum_value")),
    )


@pytest.mark.django_db(transaction=True)
def test_the_composite_keys_keep_every_row_both_ways(user):
    job = TrainingJobFactory(owner=user)
    try:
        old = migrate([BEFORE])
        old_point = old.get_model("metrics", "TrainingMetric")
        for step, loss in ((0, 2.5), (1, 2.25)):
            old_point.objects.create(job_id=job.pk, epoch=1, step=step, loss=loss, created_at=WHEN)
        key = old.get_model("metrics", "MetricKey").objects.create(job_id=job.pk, name="val/loss")
        old.get_model("metrics", "NamedMetric").objects.create(
            key=key, step=7, value=0.5, reported_at=WHEN
        )
        old.get_model("metrics", "MetricSummary").objects.create(
            job_id=job.pk, sum_loss=4.75, min_loss=2.25, max_loss=2.5, last_loss=2.25, **BUCKET
        )
        old.get_model("metrics", "KeySummary").objects.create(
            key=key, sum_value=0.5, min_value=0.5, max_value=0.5, last_value=0.5, **BUCKET
        )

        migrate(latest())
        rows = stored_rows()
        assert rows == (
            [(job.pk, 0, 2.5, WHEN), (job.pk, 1, 2.25, WHEN)],
            [("val/loss", 7, 0.5)],
            [(job.pk, 64, 0, 4.75)],
            [("val/loss", 64, 0, 0.5)],
        )
        assert primary_key(TrainingMetric._meta.db_table) == ["job_id", "step"]
        assert primary_key(NamedMetric._meta.db_table) == ["key_id", "step"]
        assert primary_key(MetricSummary._meta.db_table) == ["job_id", "width", "bucket"]
        assert primary_key(KeySummary._meta.db_table) == ["key_id", "width", "bucket"]
        # The keys are what the unique constraints were: a step is stored once.
        with pytest.raises(IntegrityError), transaction.atomic():
            TrainingMetric.objects.create(job=job, epoch=1, step=1, loss=9.0)

        old = migrate([BEFORE])
        assert primary_key(TrainingMetric._meta.db_table) == ["id"]
        ids = old.get_model("metrics", "TrainingMetric").objects.values_list("id", flat=True)
        assert len(set(ids)) == 2 and None not in ids
        migrate(latest())
        assert stored_rows() == rows
    finally:
        migrate(latest())
