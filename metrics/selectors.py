"""Reads of metric points for charts: the live poll and the downsampled series."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import connection

from jobs.models import TrainingJob
from metrics.models import TrainingMetric
from metrics.summary import summary_series

# A chart is at most a few thousand pixels wide: more points than this add nothing visible.
SERIES_MAX_POINTS = 2000
# A poll answers with at most this many points; a client further behind gets a catch-up.
POLL_MAX_POINTS = 2000
# A downsampled bucket keeps its lowest loss, its highest loss and its last step, and the
# series keeps its first step: max_points = POINTS_PER_BUCKET * buckets + 1.
POINTS_PER_BUCKET = 3
MIN_DOWNSAMPLED_POINTS = POINTS_PER_BUCKET + 1


@dataclass(frozen=True)
class Series:
    """Column lists of metric points in step order; None where accuracy / lr was not reported.

    `total` is how many points are stored in the range asked for and `shown` how many these
    lists hold; `shown < total` means the range was downsampled.
    """

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float | None] = field(default_factory=list)
    learning_rate: list[float | None] = field(default_factory=list)
    total: int = 0

    @property
    def shown(self) -> int:
        return len(self.steps)

    @property
    def downsampled(self) -> bool:
        return self.shown < self.total

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @classmethod
    def from_rows(cls, rows: list[tuple], total: int | None = None) -> Series:
        """From (step, loss, accuracy, learning_rate) rows in step order."""
        if not rows:
            return cls(total=total or 0)
        steps, loss, accuracy, learning_rate = (list(column) for column in zip(*rows, strict=True))
        total = len(rows) if total is None else total
        return cls(steps, loss, accuracy, learning_rate, total=total)


def metrics_after(job: TrainingJob, after_step: int, limit: int = POLL_MAX_POINTS) -> Series:
    """The job's points with step > `after_step`, in step order, at most `limit` of them.

    A client more than `limit` points behind gets the whole range downsampled to `limit`
    points (`Series.downsampled` is true), so its chart keeps the right shape. One query in
    either case: the job's `current_step` (last step + 1) says beforehand whether the range
    can exceed `limit`; only if it is out of date does a second query follow.
    """
    _check_max_points(limit)
    if job.current_step - 1 - after_step > limit:
        return _downsampled_range(job.pk, after_step, limit)
    rows = list(
        TrainingMetric.objects.filter(job_id=job.pk, step__gt=after_step)
        .order_by("step")
        .values_list("step", "loss", "accuracy", "learning_rate")[: limit + 1]
    )
    if len(rows) > limit:
        return _downsampled_range(job.pk, after_step, limit)
    return Series.from_rows(rows)


def series_downsampled(job: TrainingJob, max_points: int = SERIES_MAX_POINTS) -> Series:
    """All of the job's points, or at most `max_points` of them chosen so the shape survives.

    The step range is cut into equal-width buckets (bucket = (step - first) // width); each
    bucket keeps its lowest-loss point, its highest-loss point and its last point, and the
    first point of the series is always kept. Loss spikes and dips therefore stay visible,
    the last point is the latest one, and the same data always gives the same points (ties
    go to the lowest step for the minimum, the highest for the maximum). A series of at most
    `max_points` points is returned whole. `total` is the number of points stored.

    Long series are answered from the pre-aggregated summary (`metrics.summary`), which reads
    about a thousand bucket rows instead of the job's raw points; short ones from the points.
    """
    _check_max_points(max_points)
    summarised = summary_series(job, max_points)
    if summarised is not None:
        return summarised
    return _downsampled_range(job.pk, -1, max_points)


def _check_max_points(max_points: int) -> None:
    if max_points < MIN_DOWNSAMPLED_POINTS:
        raise ValueError(f"max_points must be at least {MIN_DOWNSAMPLED_POINTS}, got {max_points}")


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
