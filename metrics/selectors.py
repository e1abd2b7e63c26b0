"""Reads of metric points for charts: the live poll and the downsampled series."""

from __future__ import annotations

from django.db import connection

from jobs.models import TrainingJob
from metrics.models import TrainingMetric
from metrics.series import (
    POINTS_PER_BUCKET,
    POLL_MAX_POINTS,
    SERIES_MAX_POINTS,
    Series,
    check_max_points,
)
from metrics.summary import summary_series


def metrics_after(job: TrainingJob, after_step: int, limit: int = POLL_MAX_POINTS) -> Series:
    """The job's points with step > `after_step`, in step order, at most `limit` of them.

    A client more than `limit` points behind gets the whole range downsampled to `limit`
    points (`Series.downsampled` is true), so its chart keeps the right shape. One query in
    either case: the job's `current_step` (last step + 1) says beforehand whether the range
    can exceed `limit`; only if it is out of date does a second query follow.
    """
    check_max_points(limit)
    if job.current_step - 1 - after_step > limit:
        return series_downsampled(job, limit, after_step=after_step)
    rows = list(
        TrainingMetric.objects.filter(job_id=job.pk, step__gt=after_step)
        .order_by("step")
        .values_list("step", "loss", "accuracy", "learning_rate")[: limit + 1]
    )
    if len(rows) > limit:
        return series_downsampled(job, limit, after_step=after_step)
    return Series.from_rows(rows)


def series_downsampled(
    job: TrainingJob, max_points: int = SERIES_MAX_POINTS, *, after_step: int = -1
) -> Series:
    """The job's points after `after_step` (all of them by default), or at most `max_points`
    of them chosen so the shape survives.

    The step range is cut into equal-width buckets (bucket = (step - first) // width); each
    bucket keeps its lowest-loss point, its highest-loss point and its last point, and the
    first point of the series is always kept. Loss spikes and dips therefore stay visible,
    the last point is the latest one, and the same data always gives the same points (ties
    go to the lowest step for the minimum, the highest for the maximum). A series of at most
    `max_points` points is returned whole. `total` is the number of points stored.

    Long series are answered from the pre-aggregated summary (`metrics.summary`), which reads
    about a thousand bucket rows instead of the job's raw points, however far back the range
    starts; short ones from the points.
    """
    check_max_points(max_points)
    summarised = summary_series(job, max_points, after_step=after_step)
    if summarised is not None:
        return summarised
    return _downsampled_range(job.pk, after_step, max_points)


def _downsampled_range(job_id: int, after_step: int, max_points: int) -> Series:
    buckets = (max_points - 1) // POINTS_PER_BUCKET
    table = TrainingMetric._meta.db_table
    # Integer division on both SQLite and PostgreSQL. The width makes the highest bucket
    # index (hi - lo) // width at most buckets - 1. One window sort, shared by all three
    # window functions (same partition; the partition-only ones need no order).
    sql = f"""
        WITH points AS (
            SELECT step, loss, accuracy, learning_rate
            FROM {table} WHERE job_id = %s AND step > %s
        ),
        bounds AS (SELECT MIN(step) AS lo, MAX(step) AS hi, COUNT(*) AS total FROM points),
        bucketed AS (
            SELECT p.step, p.loss, p.accuracy, p.learning_rate, b.lo, b.total,
                   (p.step - b.lo) / ((b.hi - b.lo) / %s + 1) AS bucket
            FROM points p CROSS JOIN bounds b
        ),
        ranked AS (
            SELECT step, loss, accuracy, learning_rate, lo, total,
                   ROW_NUMBER() OVER by_loss AS loss_rank,
                   COUNT(*) OVER in_bucket AS bucket_size,
                   MAX(step) OVER in_bucket AS bucket_last
            FROM bucketed
            WINDOW in_bucket AS (PARTITION BY bucket),
                   by_loss AS (PARTITION BY bucket ORDER BY loss, step)
        )
        SELECT step, loss, accuracy, learning_rate, total FROM ranked
        WHERE total <= %s OR step = lo OR step = bucket_last
              OR loss_rank = 1 OR loss_rank = bucket_size
        ORDER BY step
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [job_id, after_step, buckets, max_points])
        rows = cursor.fetchall()
    if not rows:
        return Series()
    total = rows[0][4]
    return Series.from_rows([row[:4] for row in rows], total=total)
