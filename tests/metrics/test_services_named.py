"""The write path for named series: storage, duplicates, NaN/inf, the key limit, stats."""

from __future__ import annotations

import math

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_settings

from jobs.models import TrainingJob
from metrics.models import IngestLog, KeySummary, MetricKey, NamedMetric, TrainingMetric
from metrics.points import JobsNamedBatch, MetricBatch, NamedBatch
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


def test_one_batch_for_many_jobs_stores_what_per_job_batches_store(user):
    from django.db import transaction

    from jobs.services import jobs_lock
    from metrics.services import metric_batches_write

    names = ("loss", "val/acc")
    # Per job: key index, step, value. The second job has no points.
    per_job = [[(0, 0, 1.0), (0, 1, 0.9), (1, 1, 0.5)], [], [(1, 4, 0.25), (0, 5, 2.0)]]

    def write(jobs, as_one_batch):
        batches = [
            NamedBatch(
                names, *np.array(rows, dtype=float).reshape(-1, 3).T, np.full(len(rows), 9.0)
            )
            for rows in per_job
        ]
        with transaction.atomic():
            locked = jobs_lock([job.pk for job in jobs])
            if as_one_batch:
                ends = np.cumsum([len(rows) for rows in per_job]).tolist()
                whole = NamedBatch(
                    names,
                    *(
                        np.concatenate([getattr(b, c) for b in batches])
                        for c in ("key_index", "steps", "values", "times")
                    ),
                )
                named = JobsNamedBatch([job.pk for job in locked], whole, ends)
            else:
                named = {job.pk: batch for job, batch in zip(locked, batches, strict=True)}
            return metric_batches_write([(job, MetricBatch.empty()) for job in locked], named=named)

    def what_is_stored(jobs):
        return [
            (
                sorted(
                    NamedMetric.objects.filter(key__job=job).values_list(
                        "key__name", "step", "value"
                    )
                ),
                reload(job).primary_metric,
                reload(job).current_step,
            )
            for job in jobs
        ]

    by_job = TrainingJobFactory.create_batch(3, owner=user)
    as_one = TrainingJobFactory.create_batch(3, owner=user)
    assert write(as_one, True) == write(by_job, False)
    assert what_is_stored(as_one) == what_is_stored(by_job)
    assert what_is_stored(as_one)[0] == (
        [("loss", 0, 1.0), ("loss", 1, 0.9), ("val/acc", 1, 0.5)],
        "loss",
        2,
    )
    assert write(as_one, True)[2] == WriteResult(0, 0, named_created=0, named_duplicates=2)


def test_one_batch_for_many_jobs_refuses_points_of_a_job_the_write_does_not_hold(user):
    from django.db import transaction

    from jobs.services import jobs_lock
    from metrics.services import metric_batches_write

    held, other = TrainingJobFactory.create_batch(2, owner=user)
    batch = named_batch({"loss": ([0], 1.0)})
    with pytest.raises(ValueError, match="does not hold"), transaction.atomic():
        [locked] = jobs_lock([held.pk])
        metric_batches_write(
            [(locked, MetricBatch.empty())], named=JobsNamedBatch([other.pk], batch, [1])
        )
    assert not NamedMetric.objects.exists()
