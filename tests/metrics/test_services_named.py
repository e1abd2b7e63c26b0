"""The write path for named series: storage, duplicates, NaN/inf, the key limit, stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from jobs.models import TrainingJob
from metrics.models import IngestLog, KeySummary, MetricKey, NamedMetric, TrainingMetric
from metrics.points import JobsPoints, MetricBatch, NamedBatch
from metrics.services import KeyLimitExceeded, WriteResult
from tests.support.factories import TrainingJobFactory, reload
from tests.support.metric_points import batches_write, metric_batch, named_batch, named_write

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


def stored(job, name):
    return list(
        NamedMetric.objects.filter(key__job=job, key__name=name)
        .order_by("step")
        .values_list("step", "value")
    )


def test_named_points_round_trip_with_their_times(job):
    batch = named_batch({"val/loss": ([9, 19], [0.5, 0.4]), "train/grad_norm": ([0, 1], 1.5)})
    result = named_write(job, batch)
    assert result == WriteResult(created=0, duplicates=0, named_created=4, named_duplicates=0)
    assert stored(job, "val/loss") == [(9, 0.5), (19, 0.4)]
    assert stored(job, "train/grad_norm") == [(0, 1.5), (1, 1.5)]
    point = NamedMetric.objects.get(key__name="val/loss", step=9)
    assert point.reported_at.timestamp() == pytest.approx(1.8e9, abs=1e-3)
    job = reload(job)
    # Steps done follow every series, and the write moved the ingest position once.
    assert (job.current_step, job.ingest_seq, job.last_loss) == (20, 1, None)


def test_a_first_write_and_a_fallback_store_the_same_times(job):
    # On PostgreSQL a write without duplicates is copied straight into the table and one
    # with duplicates goes through the staging table: both store to_timestamp()'s value.
    moment = 1_712_345_678.123_456_7
    named_write(job, named_batch({"a": ([0], 0.5)}, time=moment))
    named_write(job, named_batch({"a": ([0, 1], 0.5)}, time=moment))
    times = NamedMetric.objects.filter(key__job=job).order_by("step")
    first, fallback = times.values_list("reported_at", flat=True)
    assert first == fallback
    # Microseconds on PostgreSQL; SQLite's strftime keeps milliseconds.
    precision = 1e-6 if connection.vendor == "postgresql" else 1e-3
    assert first.timestamp() == pytest.approx(moment, abs=precision)


def test_resent_points_are_counted_as_duplicates_and_keep_the_stored_value(job):
    named_write(job, {"acc": ([0, 1], [0.1, 0.2])})
    result = named_write(job, {"acc": ([1, 2, 2], [0.9, 0.3, 0.8])})
    # Step 1 exists; step 2 given twice is stored once, from its first occurrence.
    assert (result.named_created, result.named_duplicates) == (1, 2)
    assert stored(job, "acc") == [(0, 0.1), (1, 0.2), (2, 0.3)]
    key = MetricKey.objects.get(job=job, name="acc")
    assert key.count == 3
    assert reload(job).ingest_seq == 2


def test_a_write_of_only_duplicates_does_not_move_the_ingest_position(job):
    named_write(job, {"acc": ([0, 1], 0.5)})
    assert named_write(job, {"acc": ([0, 1], 0.5)}).named_duplicates == 2
    assert reload(job).ingest_seq == 1
    assert IngestLog.objects.filter(job=job).count() == 1


def test_nan_and_infinity_are_stored_read_back_and_never_fail_the_job(job, every_key_summarised):
    values = [1.0, math.nan, math.inf, -math.inf, 2.0]
    named_write(job, {"grad": (range(5), values)})
    rows = stored(job, "grad")
    assert [step for step, _ in rows] == [0, 1, 2, 3, 4]
    assert rows[1][1] is None  # NaN is NULL
    assert rows[2][1] == math.inf and rows[3][1] == -math.inf
    job = reload(job)
    assert job.status == Status.RUNNING
    key = MetricKey.objects.get(job=job, name="grad")
    # Stats over finite values only; the last value is the stored one.
    assert (key.count, key.min_value, key.max_value, key.last_value) == (5, 1.0, 2.0, 2.0)
    summary = KeySummary.objects.get(key=key, width=64)
    assert (summary.count, summary.sum_value) == (2, 3.0)
    assert (summary.last_step, summary.last_value) == (4, 2.0)


def test_a_nan_last_value_is_stored_as_null(job):
    named_write(job, {"grad": ([0, 1], [1.0, math.nan])})
    key = MetricKey.objects.get(job=job, name="grad")
    assert (key.last_step, key.last_value, key.first_step) == (1, None, 0)


def test_a_non_finite_headline_loss_still_fails_the_job(job):
    headline = metric_batch([0, 1], steps_per_epoch=20, losses=[1.0, math.nan])
    named_write(job, {"grad": ([0, 1], [1.0, math.nan])}, headline=headline)
    job = reload(job)
    assert job.status == Status.FAILED
    assert "diverged at step 1" in job.failure_reason
    assert TrainingMetric.objects.filter(job=job).count() == 1
    assert len(stored(job, "grad")) == 2


@override_settings(TRAINMON_MAX_KEYS_PER_JOB=3)
def test_the_key_limit_refuses_the_whole_batch_before_writing(job):
    named_write(job, {"a": ([0], 1.0), "b": ([0], 1.0)})
    headline = metric_batch([5], steps_per_epoch=20)
    with pytest.raises(KeyLimitExceeded) as refused:
        named_write(job, {"a": ([1], 1.0), "c": ([1], 1.0), "d": ([1], 1.0)}, headline=headline)
    assert refused.value.limit == 3
    assert refused.value.new_names == ["c", "d"]
    assert "at most 3" in str(refused.value)
    assert sorted(MetricKey.objects.filter(job=job).values_list("name", flat=True)) == ["a", "b"]
    assert NamedMetric.objects.count() == 2
    assert not TrainingMetric.objects.filter(job=job).exists()
    assert reload(job).ingest_seq == 1
    # Up to the limit is fine, and existing keys never count as new.
    assert named_write(job, {"a": ([1], 1.0), "c": ([1], 1.0)}).named_created == 2


def test_key_stats_follow_late_points(job):
    named_write(job, {"loss": ([10, 11], [0.5, 0.4])})
    named_write(job, {"loss": ([3], [9.0])})  # late: before what is stored
    key = MetricKey.objects.get(job=job, name="loss")
    assert (key.first_step, key.last_step, key.last_value) == (3, 11, 0.4)
    assert (key.min_value, key.max_value, key.count) == (0.4, 9.0, 3)
    assert reload(job).current_step == 12


def test_headline_and_named_points_share_one_write(job):
    headline = metric_batch([0, 1, 2], steps_per_epoch=20, losses=[2.0, 1.0, 1.5])
    result = named_write(job, {"val/loss": ([2], 1.7)}, headline=headline)
    assert (result.created, result.named_created) == (3, 1)
    job = reload(job)
    assert (job.current_step, job.last_loss, job.ingest_seq) == (3, 1.5, 1)
    logged = set(
        IngestLog.objects.filter(job=job).values_list("seq", "key__name", "min_step", "max_step")
    )
    assert logged == {(1, None, 0, 2), (1, "val/loss", 2, 2)}


def test_each_job_s_log_row_spans_its_own_lowest_to_highest_step(user):
    # Steps out of order, jobs of different batch sizes, one with no points, in one write.
    jobs = TrainingJobFactory.create_batch(3, owner=user, total_epochs=100)
    steps = {jobs[0].pk: [7, 2, 9, 4], jobs[1].pk: [30], jobs[2].pk: []}
    batches_write(*((job, metric_batch(steps[job.pk], steps_per_epoch=20)) for job in jobs))
    logged = set(IngestLog.objects.values_list("job", "min_step", "max_step"))
    assert logged == {(jobs[0].pk, 2, 9), (jobs[1].pk, 30, 30)}


def test_a_write_costs_the_same_statements_for_any_number_of_jobs_keys_and_points(user):
    from django.db import transaction

    from jobs.services import jobs_lock
    from metrics.services import metric_batches_write

    def write(jobs, keys, points):
        named = {
            job.pk: named_batch({f"k{k}": (range(points), np.arange(points)) for k in range(keys)})
            for job in jobs
        }
        with transaction.atomic():
            locked = jobs_lock([job.pk for job in jobs])
            batches = [(job, metric_batch(range(points), steps_per_epoch=20)) for job in locked]
            with CaptureQueriesContext(connection) as queries:
                metric_batches_write(batches, named=named)
        return len(queries)

    small = write([TrainingJobFactory(owner=user)], 1, 1)
    jobs = [TrainingJobFactory(owner=user) for _ in range(5)]
    assert write(jobs, 20, 30) == small
    # A second write, some keys new, some points duplicates: still the same statements,
    # plus each series kind's duplicate fallback (roll back to the savepoint, insert again;
    # on PostgreSQL the failed COPY's rows are then staged: two more).
    fallback = 4 if connection.vendor == "postgresql" else 2
    assert write(jobs, 25, 40) == small + 2 * fallback


def test_the_primary_metric_is_loss_if_logged_else_the_first_key(user):
    with_loss = TrainingJobFactory(owner=user)
    named_write(with_loss, {"acc": ([0], 0.5), "loss": ([0], 1.0)})
    assert reload(with_loss).primary_metric == "loss"
    without = TrainingJobFactory(owner=user)
    named_write(without, {"val/acc": ([0], 0.5), "grad": ([0], 1.0)})
    named_write(without, {"loss": ([1], 1.0)})  # set once: later keys do not move it
    assert reload(without).primary_metric == "val/acc"
    chosen = TrainingJobFactory(owner=user, primary_metric="grad")
    named_write(chosen, {"loss": ([0], 1.0), "grad": ([0], 1.0)})
    assert reload(chosen).primary_metric == "grad"


def test_deleting_a_job_deletes_its_keys_points_summaries_and_log(user, every_key_summarised):
    doomed, kept = TrainingJobFactory(owner=user), TrainingJobFactory(owner=user)
    for job in (doomed, kept):
        named_write(job, {"a": (range(50), 1.0), "b": ([3], 2.0)})
    doomed.delete()
    assert set(MetricKey.objects.values_list("job_id", flat=True)) == {kept.pk}
    assert NamedMetric.objects.count() == 51
    assert set(KeySummary.objects.values_list("key__job_id", flat=True)) == {kept.pk}
    assert set(IngestLog.objects.values_list("job_id", flat=True)) == {kept.pk}


def test_many_jobs_points_as_one_set_of_columns_store_what_batches_per_job_store(user):
    from django.db import transaction

    from jobs.services import jobs_lock
    from metrics.services import jobs_points_write, metric_batches_write

    names = ("val/acc", "loss")
    # Per job: headline (steps, losses), named (key index, step, value). The second job's
    # loss diverges at step 2, the third job has no points at all.
    headline = [([0, 1, 2], [2.0, 1.5, 1.2]), ([0, 1, 2, 3], [2.0, 1.0, math.inf, 0.5]), ([], [])]
    named = [[(1, 0, 1.0), (1, 1, 0.9), (0, 1, 0.5)], [(0, 4, 0.25)], []]
    headline_batches = [
        metric_batch(steps, steps_per_epoch=10, losses=losses) for steps, losses in headline
    ]
    named_batches = [
        NamedBatch(names, *np.array(rows, dtype=float).reshape(-1, 3).T, np.full(len(rows), 9.0))
        for rows in named
    ]

    def write(jobs, as_columns):
        with transaction.atomic():
            locked = jobs_lock([job.pk for job in jobs])
            if not as_columns:
                by_job = {job.pk: batch for job, batch in zip(locked, named_batches, strict=True)}
                pairs = list(zip(locked, headline_batches, strict=True))
                return metric_batches_write(pairs, named=by_job)
            points = JobsPoints(
                MetricBatch(
                    *(
                        np.concatenate([getattr(b, name) for b in headline_batches])
                        for name in ("steps", "epochs", "losses", "accuracies", "learning_rates")
                    )
                ),
                np.cumsum([len(b) for b in headline_batches]).tolist(),
                NamedBatch(
                    names,
                    *(
                        np.concatenate([getattr(b, name) for b in named_batches])
                        for name in ("key_index", "steps", "values", "times")
                    ),
                ),
                np.cumsum([len(b) for b in named_batches]).tolist(),
            )
            return jobs_points_write(locked, points)

    def stored(jobs):
        return [
            (
                list(
                    TrainingMetric.objects.filter(job=job)
                    .order_by("step")
                    .values_list("step", "loss")
                ),
                sorted(
                    NamedMetric.objects.filter(key__job=job).values_list(
                        "key__name", "step", "value"
                    )
                ),
                reload(job).status,
                reload(job).current_step,
                reload(job).primary_metric,
            )
            for job in jobs
        ]

    by_job = TrainingJobFactory.create_batch(3, owner=user, total_epochs=10)
    as_columns = TrainingJobFactory.create_batch(3, owner=user, total_epochs=10)
    assert write(as_columns, True) == write(by_job, False)
    assert stored(as_columns) == stored(by_job)
    healthy, diverged, idle = stored(as_columns)
    assert healthy == (
        [(0, 2.0), (1, 1.5), (2, 1.2)],
        [("loss", 0, 1.0), ("loss", 1, 0.9), ("val/acc", 1, 0.5)],
        Status.RUNNING,
        3,
        "loss",
    )
    assert diverged[0] == [(0, 2.0), (1, 1.0)]
    assert diverged[2] == Status.FAILED
    assert idle == ([], [], Status.RUNNING, 0, "")
    assert write(as_columns, True)[0] == WriteResult(0, 3, named_created=0, named_duplicates=3)


def test_many_jobs_points_need_one_job_each():
    from metrics.services import jobs_points_write

    points = JobsPoints(MetricBatch.empty(), [0, 0], NamedBatch.empty(), [0, 0])
    with pytest.raises(ValueError, match="points of 2 jobs for 1 jobs"):
        jobs_points_write([TrainingJob()], points)
