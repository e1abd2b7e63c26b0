from __future__ import annotations

import numpy as np
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from jobs.models import TrainingJob
from metrics.models import KeySummary, MetricKey, MetricSummary, NamedMetric, TrainingMetric
from metrics.points import MetricBatch
from metrics.selectors import named_series_downsampled, named_series_many
from metrics.series import MIN_DOWNSAMPLED_POINTS
from metrics.summary import (
    KEYS,
    SUMMARY_WIDTHS,
    kept_widths,
    summary_rebuild,
    summary_rows,
    summary_series,
    summary_width_for,
)
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import batches_write, metric_batch, named_write

pytestmark = pytest.mark.django_db

FINEST = SUMMARY_WIDTHS[0]
# Big enough that a chart of MAX_POINTS points is answered by a summary level.
MAX_POINTS = 100
BIG_JOB_STEPS = 64 * FINEST


def big_job(user, **fields):
    return TrainingJobFactory(owner=user, total_epochs=64, steps_per_epoch=FINEST, **fields)


def points(steps, *, seed=0, losses=None, steps_per_epoch=FINEST):
    rng = np.random.default_rng(seed)
    n = len(steps)
    # Few distinct values, so ties on the minimum and maximum are common.
    loss = rng.integers(1, 6, n) / 4 if losses is None else losses
    accuracy = rng.random(n)
    accuracy[rng.random(n) < 0.2] = np.nan
    return metric_batch(
        steps,
        steps_per_epoch=steps_per_epoch,
        losses=loss,
        accuracies=accuracy,
        learning_rates=rng.random(n) * 1e-3,
    )


def stored_buckets(job):
    fields = [f.name for f in MetricSummary._meta.fields if f.name not in {"id", "job"}]
    return {
        (row["width"], row["bucket"]): row
        for row in MetricSummary.objects.filter(job=job).values(*fields)
    }


def raw_buckets(job):
    """What every bucket the job keeps must hold, from the raw rows: GROUP BY in SQL, points
    in Python."""
    span = TrainingJob.objects.get(pk=job.pk).current_step
    return buckets_from_raw_rows(
        TrainingMetric,
        "job_id",
        job.pk,
        "loss",
        ("accuracy", "learning_rate"),
        widths=kept_widths(span),
    )


# Finite float8 values: the named keys' summary leaves NaN (NULL) and +-inf out.
FINITE = "BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308"


def buckets_from_raw_rows(model, owner, owner_id, value, carried=(), *, widths=SUMMARY_WIDTHS):
    """Every bucket of one series with finite values at `widths`, from the raw rows of
    `model`."""
    table = model._meta.db_table
    expected = {}
    with connection.cursor() as cursor:
        for width in widths:
            cursor.execute(
                f"SELECT step / %s, COUNT(*), MIN({value}), MAX({value}), SUM({value}),"
                f" MAX(step) FROM {table} WHERE {owner} = %s AND {value} {FINITE}"
                f" GROUP BY step / %s",
                [width, owner_id, width],
            )
            for bucket, count, low, high, total, last in cursor.fetchall():
                expected[(width, bucket)] = {
                    "count": count,
                    f"min_{value}": low,
                    f"max_{value}": high,
                    f"sum_{value}": total,
                    "last_step": last,
                }
    rows = [
        row
        for row in model.objects.filter(**{owner: owner_id}).values_list("step", value, *carried)
        if row[1] is not None and np.isfinite(row[1])
    ]
    for width in widths:
        by_bucket: dict[int, list[tuple]] = {}
        for row in rows:
            by_bucket.setdefault(row[0] // width, []).append(row)
        for bucket, members in by_bucket.items():
            lowest = min(members, key=lambda r: (r[1], r[0]))
            highest = max(members, key=lambda r: (r[1], r[0]))
            last = max(members)
            bucket_row = expected[(width, bucket)]
            for prefix, point in (("min", lowest), ("max", highest), ("last", last)):
                names = [f"{prefix}_{n}" for n in ("step", value, *carried)]
                bucket_row |= dict(zip(names, point, strict=True))
    return expected


def assert_summary_exact(job):
    stored = stored_buckets(job)
    expected = raw_buckets(job)
    assert stored.keys() == expected.keys()
    for key, want in expected.items():
        got = stored[key]
        assert got["sum_loss"] == pytest.approx(want.pop("sum_loss"))
        for name, value in want.items():
            assert got[name] == value, (key, name)
        assert got["min_loss"] <= got["sum_loss"] / got["count"] <= got["max_loss"]


class TestMaintenance:
    def test_buckets_equal_an_aggregate_of_the_raw_rows(self, user):
        job = big_job(user)
        batches_write((job, points(range(0, 300), seed=1)))
        batches_write((job, points(range(300, 1500), seed=2)))
        assert TrainingMetric.objects.filter(job=job).count() == 1500
        assert_summary_exact(job)

    def test_batches_straddling_bucket_boundaries(self, user):
        job = big_job(user)
        # Cut points inside buckets of every level, never on a boundary.
        for start, stop in [
            (0, FINEST - 5),
            (FINEST - 5, FINEST + 3),
            (FINEST + 3, 4 * FINEST + 1),
        ]:
            batches_write((job, points(range(start, stop), seed=start)))
        batches_write((job, points(range(4 * FINEST + 1, 20 * FINEST + 7), seed=99)))
        assert_summary_exact(job)

    def test_a_retried_batch_counts_nothing_twice(self, user):
        job = big_job(user)
        batches_write((job, points(range(0, 200), seed=1)))
        before = stored_buckets(job)
        # Same steps, other values: all ignored, the summary must not move.
        batches_write((job, points(range(0, 200), seed=2, losses=np.full(200, 100.0))))
        assert stored_buckets(job) == before
        assert_summary_exact(job)

    def test_a_partly_duplicate_batch_counts_only_the_new_points(self, user):
        job = big_job(user)
        batches_write((job, points(range(0, 100), seed=1)))
        # Overlaps steps 50..99 with extreme losses that must not reach the summary.
        overlap = np.concatenate([np.full(50, 1000.0), np.linspace(2, 1, 100)])
        result = batches_write((job, points(range(50, 200), losses=overlap)))
        assert (result[0].created, result[0].duplicates) == (100, 50)
        assert_summary_exact(job)
        assert max(row["max_loss"] for row in stored_buckets(job).values()) < 1000

    def test_a_step_given_twice_in_one_batch_is_counted_once(self, user):
        job = big_job(user)
        result = batches_write((job, points([5, 6, 5, 7], losses=[1.0, 2.0, 9.0, 3.0])))
        assert (result[0].created, result[0].duplicates) == (3, 1)
        assert_summary_exact(job)
        assert stored_buckets(job)[(FINEST, 0)]["max_loss"] == 3.0

    def test_many_jobs_in_one_write_in_any_order(self, user):
        first, second, third = (big_job(user) for _ in range(3))
        batches_write((first, points(range(0, 130), seed=1)))
        shuffled = np.random.default_rng(5).permutation(np.arange(0, 700))
        batches_write(
            (third, points(shuffled, seed=3)),
            (first, points(range(130, 400), seed=4)),
            (second, points(range(10, 20), seed=5)),
        )
        for job in (first, second, third):
            assert_summary_exact(job)

    def test_divergence_stores_and_summarises_only_finite_points(self, user):
        job = big_job(user)
        losses = np.linspace(2.0, 1.0, 200)
        losses[150] = np.inf
        batches_write((job, points(range(200), losses=losses)))
        job.refresh_from_db()
        assert job.status == TrainingJob.Status.FAILED
        assert_summary_exact(job)
        assert (
            sum(row["count"] for (width, _), row in stored_buckets(job).items() if width == FINEST)
            == 150
        )

    def test_the_write_costs_the_same_queries_for_one_job_or_many(self, user):
        def queries_for(jobs):
            batches = [(job, points(range(0, 100), seed=job.pk)) for job in jobs]
            with CaptureQueriesContext(connection) as context:
                batches_write(*batches)
            return len(context.captured_queries)

        one = queries_for([big_job(user)])
        many = queries_for([big_job(user) for _ in range(25)])
        assert one == many

    def test_deleting_the_job_deletes_its_summary(self, user):
        job = big_job(user)
        batches_write((job, points(range(100))))
        job.delete()
        assert not MetricSummary.objects.exists()

    def test_rebuild_from_raw_rows_gives_the_maintained_summary(self, user):
        job = big_job(user)
        batches_write((job, points(range(0, 700), seed=8)))
        batches_write((job, points(range(650, 1000), seed=9)))
        maintained = stored_buckets(job)
        MetricSummary.objects.all().delete()
        summary_rebuild([job.pk])
        rebuilt = stored_buckets(job)
        assert rebuilt.keys() == maintained.keys()
        for key, row in maintained.items():
            assert rebuilt[key]["sum_loss"] == pytest.approx(row.pop("sum_loss"))
            assert {k: rebuilt[key][k] for k in row} == row


def long_job(user):
    return TrainingJobFactory(owner=user, total_epochs=2000, steps_per_epoch=FINEST)


class TestKeptLevels:
    """A job keeps the finest level and each level with two buckets (`kept_widths`); a level
    is built whole when the job reaches it."""

    def test_the_levels_kept_follow_the_steps_reached(self):
        assert kept_widths(0) == kept_widths(256) == (64,)
        assert kept_widths(257) == (64, 256)
        assert kept_widths(600) == (64, 256)
        assert kept_widths(1_000_000) == SUMMARY_WIDTHS

    def test_levels_are_built_as_the_job_reaches_them(self, user):
        job = long_job(user)
        for start in range(0, 5000, 397):
            batches_write((job, points(range(start, min(start + 397, 5000)), seed=start)))
            job.refresh_from_db()
            assert {width for width, _ in stored_buckets(job)} == set(kept_widths(job.current_step))
            assert_summary_exact(job)

    def test_a_write_reaching_many_levels_at_once(self, user):
        job = long_job(user)
        batches_write((job, points(range(0, 100), seed=1)))
        batches_write((job, points(range(100, 70_000), seed=2)))
        job.refresh_from_db()
        assert {width for width, _ in stored_buckets(job)} == set(SUMMARY_WIDTHS[:-1])
        assert_summary_exact(job)

    def test_named_points_alone_can_take_the_job_to_a_level(self, user):
        job = big_job(user)
        batches_write((job, points(range(0, 200), seed=3)))
        named_write(job, {"val/loss": (range(0, 2000, 100), 1.0)})
        job.refresh_from_db()
        assert job.current_step == 1901
        assert {width for width, _ in stored_buckets(job)} == {64, 256, 1024}
        assert_summary_exact(job)

    def test_rows_of_a_level_not_kept_never_reach_a_read_and_are_replaced_once_kept(self, user):
        job = big_job(user)
        batches_write((job, points(range(0, 600), seed=4)))
        job.refresh_from_db()
        honest = summary_series(job, MIN_DOWNSAMPLED_POINTS)
        assert honest is not None and honest.total == 600
        # Rows such as every level held before levels were kept from two buckets on, since
        # left behind by the writes: they must not be read, and are rebuilt when reached.
        stale = {"count": 1, "sum_loss": 9.0, "last_step": 0, "last_loss": 9.0}
        stale |= {"min_loss": 9.0, "min_step": 0, "max_loss": 9.0, "max_step": 0}
        for width in SUMMARY_WIDTHS[2:]:
            MetricSummary.objects.create(job=job, width=width, bucket=0, **stale)

        assert summary_series(job, MIN_DOWNSAMPLED_POINTS) == honest

        batches_write((job, points(range(600, 1500), seed=5)))
        job.refresh_from_db()
        kept = {b: row for b, row in stored_buckets(job).items() if b[0] in kept_widths(1500)}
        expected = raw_buckets(job)
        assert kept.keys() == expected.keys()
        assert kept[(1024, 0)]["count"] == 1024 and kept[(1024, 1)]["count"] == 476
        assert stored_buckets(job)[(4096, 0)]["count"] == 1  # not kept yet, never read

    def test_a_read_of_one_group_uses_the_coarsest_level_kept(self):
        assert summary_width_for(600, 1, kept_widths(600)) == 256
        assert summary_width_for(600, 1) == SUMMARY_WIDTHS[-1]


class TestSummaryRows:
    def test_each_level_is_coarser_and_counts_every_point(self):
        rows = summary_rows([(1, points(range(0, 1000), seed=3))])
        for width in SUMMARY_WIDTHS:
            level = rows["width"] == width
            assert rows["count"][level].sum() == 1000
            assert level.sum() == -(-1000 // width)

    def test_nothing_in_nothing_out(self):
        assert len(summary_rows([(1, MetricBatch.empty())])["job_id"]) == 0


class TestSeries:
    def test_picks_the_coarsest_level_with_enough_buckets(self):
        assert summary_width_for(1_000_000, 666) == 1024
        assert summary_width_for(FINEST * 666, 666) == FINEST
        assert summary_width_for(FINEST * 665, 666) is None

    def test_a_read_asking_for_more_than_a_chart_gets_the_finest_level_of_a_long_range(self):
        # 10,000 points (3,333 groups) of 100,000 steps: 1,563 finest buckets, not a scan.
        assert summary_width_for(100_000, 3333) == FINEST
        assert summary_width_for(FINEST * 666, 3333) == FINEST
        assert summary_width_for(FINEST * 665, 3333) is None

    def test_a_downsampled_series_keeps_the_extremes_and_the_ends(self, user):
        job = big_job(user)
        losses = np.random.default_rng(4).random(BIG_JOB_STEPS) + 1.0
        losses[777] = 0.01  # a dip
        losses[3000] = 50.0  # a spike
        for start in range(0, BIG_JOB_STEPS, 1000):
            stop = min(start + 1000, BIG_JOB_STEPS)
            batches_write((job, points(range(start, stop), seed=start, losses=losses[start:stop])))
        job.refresh_from_db()

        series = summary_series(job, MAX_POINTS)

        assert series is not None
        assert series.total == BIG_JOB_STEPS
        assert 0 < series.shown <= MAX_POINTS
        assert series.steps == sorted(set(series.steps))
        assert {0, 777, 3000, BIG_JOB_STEPS - 1} <= set(series.steps)
        assert min(series.loss) == 0.01
        assert max(series.loss) == 50.0
        stored = {
            row[0]: row
            for row in TrainingMetric.objects.filter(job=job, step__in=series.steps).values_list(
                "step", "loss", "accuracy", "learning_rate"
            )
        }
        shown = zip(series.steps, series.loss, series.accuracy, series.learning_rate, strict=True)
        assert [stored[row[0]] for row in shown] == list(
            zip(series.steps, series.loss, series.accuracy, series.learning_rate, strict=True)
        )

    def test_every_group_of_buckets_shows_its_lowest_highest_and_last_point(self, user):
        job = big_job(user)
        batches_write((job, points(range(BIG_JOB_STEPS), seed=12)))
        job.refresh_from_db()
        groups = (MAX_POINTS - 1) // 3
        width = summary_width_for(job.current_step, groups)
        series = summary_series(job, MAX_POINTS)
        assert series is not None and width is not None
        buckets = list(MetricSummary.objects.filter(job=job, width=width).order_by("bucket"))
        lo, span = buckets[0].bucket, buckets[-1].bucket - buckets[0].bucket + 1
        by_group: dict[int, list[MetricSummary]] = {}
        for row in buckets:
            by_group.setdefault((row.bucket - lo) * groups // span, []).append(row)
        assert len(by_group) == groups
        expected = {0}
        for rows in by_group.values():
            expected.add(min(rows, key=lambda r: (r.min_loss, r.min_step)).min_step)
            expected.add(max(rows, key=lambda r: (r.max_loss, r.max_step)).max_step)
            expected.add(rows[-1].last_step)
        assert set(series.steps) == expected

    @pytest.mark.parametrize("after", [0, 999, FINEST * 10 - 1, FINEST * 10 + 17])
    def test_a_catch_up_from_any_step_is_read_from_the_summary(self, user, after):
        job = big_job(user)
        losses = np.random.default_rng(5).random(BIG_JOB_STEPS) + 1.0
        losses[3001] = 50.0  # a spike inside the summarised range
        losses[after + 1] = 0.01  # a dip at the first step after the cursor (raw head)
        batches_write((job, points(range(BIG_JOB_STEPS), losses=losses)))
        job.refresh_from_db()
        # Raw rows of whole buckets are dropped (the points table has no FK): only the
        # summary still knows them, so any pick from there proves no raw scan happened.
        groups = (MAX_POINTS - 1) // 3
        width = summary_width_for(BIG_JOB_STEPS - (after + 1), groups)
        assert width is not None
        first_bucket = -(-(after + 1) // width)
        TrainingMetric.objects.filter(
            job=job, step__gte=first_bucket * width + width, step__lt=BIG_JOB_STEPS - width
        ).delete()

        series = summary_series(job, MAX_POINTS, after_step=after)

        assert series is not None
        assert series.total == BIG_JOB_STEPS - (after + 1)  # counted by the summary
        assert 0 < series.shown <= MAX_POINTS
        assert series.steps[0] == after + 1
        assert min(series.steps) > after
        assert series.steps == sorted(set(series.steps))
        assert series.steps[-1] == BIG_JOB_STEPS - 1
        assert 3001 in series.steps and max(series.loss) == 50.0
        assert min(series.loss) == 0.01

    def test_a_catch_up_equals_the_whole_series_when_it_starts_at_the_beginning(self, user):
        job = big_job(user)
        batches_write((job, points(range(BIG_JOB_STEPS), seed=8)))
        job.refresh_from_db()
        assert summary_series(job, MAX_POINTS, after_step=-1) == summary_series(job, MAX_POINTS)

    def test_small_jobs_are_left_to_the_raw_rows(self, user, job):
        batches_write((job, points(range(job.total_steps))))
        job.refresh_from_db()
        assert summary_series(job, MAX_POINTS) is None

    def test_a_sparse_job_with_few_points_is_left_to_the_raw_rows(self, user):
        job = big_job(user)
        batches_write((job, points(range(0, BIG_JOB_STEPS, 100))))
        job.refresh_from_db()
        assert summary_width_for(job.current_step, (MAX_POINTS - 1) // 3) is not None
        assert summary_series(job, MAX_POINTS) is None

    def test_a_job_without_summary_rows_is_left_to_the_raw_rows(self, user):
        job = big_job(user, current_step=BIG_JOB_STEPS)
        assert summary_series(job, MAX_POINTS) is None

    def test_too_few_points_asked_for(self, user):
        job = big_job(user)
        with pytest.raises(ValueError, match="max_points"):
            summary_series(job, 2)

    @pytest.mark.postgres
    def test_two_writes_in_one_transaction_stage_their_own_rows(self, user):
        # The staging tables are reused per connection: rows from the first write of an
        # uncommitted transaction must not be inserted again by the second.
        job = big_job(user)
        with transaction.atomic():
            batches_write((job, points(range(0, 100), seed=1)))
            batches_write((job, points(range(100, 200), seed=2)))
        assert TrainingMetric.objects.filter(job=job).count() == 200
        assert_summary_exact(job)


# --- the same mechanism for named keys ----------------------------------------------------------


def key_buckets_stored(key):
    fields = [f.name for f in KeySummary._meta.fields if f.name not in {"id", "key"}]
    return {
        (row["width"], row["bucket"]): row
        for row in KeySummary.objects.filter(key=key).values(*fields)
    }


def assert_key_buckets_exact(key):
    stored = key_buckets_stored(key)
    count = MetricKey.objects.get(pk=key.pk).count
    expected = buckets_from_raw_rows(
        NamedMetric, "key_id", key.pk, "value", widths=kept_widths(count)
    )
    assert stored.keys() == expected.keys()
    for bucket, want in expected.items():
        got = stored[bucket]
        assert got["sum_value"] == pytest.approx(want.pop("sum_value"))
        assert {name: got[name] for name in want} == want, bucket


class TestKeySummary:
    def test_key_buckets_equal_a_group_by_over_the_finite_raw_rows(self, user):
        job = big_job(user)
        rng = np.random.default_rng(3)
        steps = np.arange(0, 3000)
        values = rng.integers(1, 6, len(steps)) / 4  # ties are common
        values[rng.random(len(steps)) < 0.05] = np.nan
        values[rng.random(len(steps)) < 0.02] = np.inf
        values[rng.random(len(steps)) < 0.02] = -np.inf
        # Out of order, over three writes, with a resent range that must not count twice.
        for part in (slice(1000, 3000), slice(0, 1000), slice(500, 1500)):
            named_write(job, {"val/loss": (steps[part], values[part])})
        key = MetricKey.objects.get(job=job, name="val/loss")
        assert_key_buckets_exact(key)
        assert key.count == 3000

    def test_a_key_gets_buckets_only_past_the_threshold_and_then_exact_ones(
        self, user, monkeypatch
    ):
        monkeypatch.setattr("metrics.summary.KEY_SUMMARY_FROM", 100)
        job = TrainingJobFactory(owner=user, total_epochs=1000, steps_per_epoch=1000)
        rng = np.random.default_rng(5)
        steps = np.arange(0, 40_000, 250)  # a sparse key, like a validation metric
        values = rng.integers(1, 6, len(steps)) / 4
        values[::7] = np.nan
        # 100 points, in two out-of-order writes with a resent range: at the threshold, so
        # no buckets; a dense key in the same writes crosses it at once.
        for part in (slice(60, 100), slice(0, 70)):
            named_write(job, {"val/loss": (steps[part], values[part]), "dense": (range(200), 1.0)})
        sparse = MetricKey.objects.get(job=job, name="val/loss")
        assert sparse.count == 100
        assert not KeySummary.objects.filter(key=sparse).exists()
        assert_key_buckets_exact(MetricKey.objects.get(job=job, name="dense"))
        # The write past it counts every stored point, older ones (and late ones) included.
        named_write(job, {"val/loss": (steps[[100, 130, 99]], values[[100, 130, 99]])})
        sparse.refresh_from_db()
        assert sparse.count == 102
        assert_key_buckets_exact(sparse)
        # Later writes are counted in as they come.
        named_write(job, {"val/loss": (steps[101:130], values[101:130])})
        assert_key_buckets_exact(sparse)

    def test_buckets_left_from_before_the_threshold_never_reach_a_read(self, user, monkeypatch):
        """A key summarised from its first point (before keys had a threshold) keeps stale
        buckets once writes skip them: reads go to its raw rows, and the write that takes it
        past the threshold rebuilds them."""
        job = TrainingJobFactory(owner=user, total_epochs=1000, steps_per_epoch=1000)
        monkeypatch.setattr("metrics.summary.KEY_SUMMARY_FROM", 0)
        named_write(job, {"k": (range(0, 50_000, 100), 1.0)})
        monkeypatch.setattr("metrics.summary.KEY_SUMMARY_FROM", 600)
        named_write(job, {"k": (range(50_000, 55_000, 100), 9.0)})  # not in the buckets
        key = MetricKey.objects.get(job=job, name="k")
        series = named_series_downsampled(key=key, max_points=100)
        assert series.total == 550 and max(series.values) == 9.0
        assert series.steps[-1] == 54_900
        named_write(job, {"k": (range(55_000, 60_100, 100), 5.0)})
        key.refresh_from_db()
        assert key.count == 601
        assert_key_buckets_exact(key)
        series = named_series_downsampled(key=key, max_points=100)
        assert series.total == 601 and series.steps[-1] == 60_000

    def test_a_key_keeps_the_levels_of_its_point_count_and_builds_them_as_it_grows(
        self, user, every_key_summarised
    ):
        job = long_job(user)
        rng = np.random.default_rng(6)
        for start in range(0, 5000, 397):
            steps = np.arange(start, min(start + 397, 5000))
            values = rng.integers(1, 6, len(steps)) / 4
            values[::11] = np.nan  # counted, never summarised
            named_write(job, {"train/grad_norm": (steps, values)})
            key = MetricKey.objects.get(job=job, name="train/grad_norm")
            assert {width for width, _ in key_buckets_stored(key)} == set(kept_widths(key.count))
            assert_key_buckets_exact(key)

    def test_a_sparse_key_keeps_fewer_levels_and_reads_the_same_extremes(self, user):
        job = TrainingJobFactory(owner=user, total_epochs=1000, steps_per_epoch=1000)
        values = np.linspace(1.0, 2.0, 3000)
        values[1234], values[2345] = -5.0, 50.0
        named_write(job, {"val/loss": (range(0, 300_000, 100), values)})
        key = MetricKey.objects.get(job=job, name="val/loss")
        assert {width for width, _ in key_buckets_stored(key)} == {64, 256, 1024}
        assert_key_buckets_exact(key)
        series = named_series_downsampled(key=key, max_points=100)
        assert series.total == 3000
        assert min(series.values) == -5.0 and max(series.values) == 50.0
        assert series.steps[0] == 0 and series.steps[-1] == 299_900
        assert named_series_many([key], max_points=100)[key.pk] == series

    def test_rows_of_a_level_a_key_does_not_keep_never_reach_a_read(
        self, user, every_key_summarised
    ):
        job = long_job(user)
        named_write(job, {"k": (range(600), np.linspace(2.0, 1.0, 600))})
        key = MetricKey.objects.get(job=job, name="k")
        honest = named_series_downsampled(key=key, max_points=MIN_DOWNSAMPLED_POINTS)
        assert honest.total == 600 and 9.0 not in honest.values
        for width in SUMMARY_WIDTHS[2:]:
            KeySummary.objects.create(
                key=key, width=width, bucket=0, count=600, sum_value=9.0,
                min_value=9.0, min_step=0, max_value=9.0, max_step=0,
                last_value=9.0, last_step=0,
            )  # fmt: skip
        assert named_series_downsampled(key=key, max_points=MIN_DOWNSAMPLED_POINTS) == honest
        named_write(job, {"k": (range(600, 1500), 1.0)})
        key.refresh_from_db()
        assert key_buckets_stored(key)[(1024, 0)]["count"] == 1024

    def test_a_rebuild_gives_the_maintained_rows(self, user, every_key_summarised):
        job = big_job(user)
        rng = np.random.default_rng(4)
        values = rng.random(700)
        values[::50] = np.nan
        named_write(job, {"a": (range(700), values), "b": (range(0, 1400, 2), values)})
        keys = list(MetricKey.objects.filter(job=job).order_by("name"))
        maintained = [key_buckets_stored(key) for key in keys]
        summary_rebuild([key.pk for key in keys], spec=KEYS)
        rebuilt = [key_buckets_stored(key) for key in keys]
        # Sums may differ in the last bits: the order of additions differs.
        sums = [{b: row.pop("sum_value") for b, row in key.items()} for key in rebuilt]
        want = [{b: row.pop("sum_value") for b, row in key.items()} for key in maintained]
        assert rebuilt == maintained
        assert [sorted(s.items()) for s in sums] == [
            sorted((b, pytest.approx(v)) for b, v in w.items()) for w in want
        ]

    def test_the_headline_and_a_key_are_two_specs_of_one_summary(self, user, every_key_summarised):
        job = big_job(user)
        losses = np.linspace(3.0, 1.0, 500)
        batches_write((job, points(range(500), losses=losses)))
        named_write(job, {"loss": (range(500), losses)})
        key = MetricKey.objects.get(job=job, name="loss")
        headline = {
            bucket: (row["count"], row["min_loss"], row["min_step"], row["last_step"])
            for bucket, row in stored_buckets(job).items()
        }
        named = {
            bucket: (row["count"], row["min_value"], row["min_step"], row["last_step"])
            for bucket, row in key_buckets_stored(key).items()
        }
        # A point every step: the key's count and the job's current_step keep the same levels.
        assert {width for width, _ in headline} == set(kept_widths(500)) == {64, 256}
        assert named == headline
