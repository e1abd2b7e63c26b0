"""The multi-resolution summary of each job's points, kept so charts never scan raw rows.

Every point stored through `metric_batches_write` is also counted into one bucket per level,
in the same transaction: at level width w, step s falls in bucket s // w. The widths grow by
a factor of 4 from 64 to 262,144 steps (7 levels). A chart asking for G buckets reads the
coarsest level that has at least G of them, so it reads between G and 4G summary rows: a
2,000-point chart of a million-point job reads 977 rows (width 1,024), not a million points.
Jobs under 64 * G steps (about 42,000 for that chart) have no level that fine; their raw rows
are read instead, which at that size is cheap. Finer or more levels would make small-job
charts cheaper and every write dearer: a 100-step tick touches about 9 summary rows per job.

A bucket keeps what a min/max downsampled chart needs, all of it exact: the number of
points, the loss sum (for the mean), the lowest-loss point (lowest step on ties), the
highest-loss point (highest step on ties) and the last point, each with its accuracy and
learning rate. Points only ever arrive (a job's points go only with the job), so combining a
bucket's stored row with the new points' row (min of mins, max of maxes, sum of sums, later
last) keeps it equal to an aggregate over the raw rows. Only points actually created are
counted: duplicates that the write ignored never reach `summary_add`, and non-finite losses
are never stored, so never summarised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from django.db import connection

from metrics.models import MetricSummary, TrainingMetric
from metrics.points import MetricBatch
from metrics.series import POINTS_PER_BUCKET, Series, check_max_points
from metrics.staging import staged_rows

if TYPE_CHECKING:
    from jobs.models import TrainingJob

# Steps per bucket, finest first; each divides the next (a bucket lies inside one bucket of
# every coarser level), which lets each level be computed from the one below it.
SUMMARY_WIDTHS = (64, 256, 1024, 4096, 16384, 65536, 262144)

# Column -> PostgreSQL type, in the order rows are staged and stored.
_KEY_COLUMNS = (("job_id", "bigint"), ("width", "bigint"), ("bucket", "bigint"))
_VALUE_COLUMNS = (
    ("count", "bigint"),
    ("sum_loss", "double precision"),
    ("min_loss", "double precision"),
    ("min_step", "bigint"),
    ("min_accuracy", "double precision"),
    ("min_learning_rate", "double precision"),
    ("max_loss", "double precision"),
    ("max_step", "bigint"),
    ("max_accuracy", "double precision"),
    ("max_learning_rate", "double precision"),
    ("last_step", "bigint"),
    ("last_loss", "double precision"),
    ("last_accuracy", "double precision"),
    ("last_learning_rate", "double precision"),
)
_COLUMNS = _KEY_COLUMNS + _VALUE_COLUMNS
_STAGING_TABLE = "trainmon_summary_in"


# --- maintenance ------------------------------------------------------------------------------


def summary_add(created: Sequence[tuple[int, MetricBatch]]) -> None:
    """Count newly stored points into their jobs' summary buckets: one upsert for everything.

    `created` holds, per job id, exactly the points the write created (never duplicates it
    ignored), with finite losses. Call in the transaction that stored them.
    """
    rows = summary_rows(created)
    if not len(rows["job_id"]):
        return
    table = MetricSummary._meta.db_table
    names = [name for name, _ in _COLUMNS]
    update = _upsert_assignments()
    conflict = "ON CONFLICT (job_id, width, bucket) DO UPDATE SET"
    with connection.cursor() as cursor:
        source, params = staged_rows(
            cursor, _STAGING_TABLE, _COLUMNS, [rows[name] for name in names]
        )
        # "WHERE true" tells SQLite's parser that ON CONFLICT belongs to the INSERT.
        cursor.execute(
            f"INSERT INTO {table} AS s ({', '.join(names)})"
            f" SELECT {', '.join(names)} {source} WHERE true {conflict} {update}",
            params,
        )


def _upsert_assignments() -> str:
    # Every right-hand side reads the row as it was before the update (both databases), so
    # the same comparison picks all four columns of the winning point.
    new_min = "(excluded.min_loss, excluded.min_step) < (s.min_loss, s.min_step)"
    new_max = "(excluded.max_loss, excluded.max_step) > (s.max_loss, s.max_step)"
    new_last = "excluded.last_step > s.last_step"
    parts = ["count = s.count + excluded.count", "sum_loss = s.sum_loss + excluded.sum_loss"]
    for prefix, condition in (("min", new_min), ("max", new_max), ("last", new_last)):
        for name in ("loss", "step", "accuracy", "learning_rate"):
            column = f"{prefix}_{name}"
            parts.append(
                f"{column} = CASE WHEN {condition} THEN excluded.{column} ELSE s.{column} END"
            )
    return ", ".join(parts)


def summary_rows(created: Sequence[tuple[int, MetricBatch]]) -> dict[str, np.ndarray]:
    """The bucket rows (one per job, width and bucket touched) of a set of new points.

    Vectorised: points are sorted by (job, step) once, each level is reduced from the level
    below with `ufunc.reduceat` over runs of equal (job, bucket).
    """
    created = [(job_id, batch) for job_id, batch in created if len(batch)]
    if not created:
        return {name: np.empty(0) for name, _ in _COLUMNS}
    job_ids = np.concatenate([np.full(len(b), job_id, dtype=np.int64) for job_id, b in created])
    steps = np.concatenate([b.steps for _, b in created]).astype(np.int64, copy=False)
    losses = np.concatenate([b.losses for _, b in created]).astype(np.float64, copy=False)
    accuracies = np.concatenate([b.accuracies for _, b in created]).astype(np.float64)
    learning_rates = np.concatenate([b.learning_rates for _, b in created]).astype(np.float64)
    if not _sorted_by_job_and_step(job_ids, steps):
        order = np.lexsort((steps, job_ids))
        job_ids, steps, losses = job_ids[order], steps[order], losses[order]
        accuracies, learning_rates = accuracies[order], learning_rates[order]
    # Level "width 1": every point is a bucket of its own.
    level = {"job_id": job_ids, "count": np.ones(len(steps), dtype=np.int64), "sum_loss": losses}
    for prefix in ("min", "max", "last"):
        level |= {
            f"{prefix}_loss": losses,
            f"{prefix}_step": steps,
            f"{prefix}_accuracy": accuracies,
            f"{prefix}_learning_rate": learning_rates,
        }
    levels = []
    for width in SUMMARY_WIDTHS:
        level = _coarsen(level, width)
        levels.append(level)
    return {name: np.concatenate([lv[name] for lv in levels]) for name, _ in _COLUMNS}


def _sorted_by_job_and_step(job_ids: np.ndarray, steps: np.ndarray) -> bool:
    job_step = np.diff(job_ids)
    return bool(np.all((job_step > 0) | ((job_step == 0) & (np.diff(steps) > 0))))


def _coarsen(level: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Merge runs of rows (in job, step order) that share a job and a bucket of `width`."""
    job_ids = level["job_id"]
    buckets = level["last_step"] // width
    size = len(job_ids)
    new_run = np.empty(size, dtype=bool)
    new_run[0] = True
    new_run[1:] = (job_ids[1:] != job_ids[:-1]) | (buckets[1:] != buckets[:-1])
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], size)
    run_of_row = np.cumsum(new_run) - 1
    positions = np.arange(size)
    # Rows are in step order, so the first row holding the run's minimum has the lowest step
    # and the last row holding its maximum the highest: the tie rules of the upsert.
    lowest = np.minimum.reduceat(level["min_loss"], starts)
    at_min = np.where(level["min_loss"] == lowest[run_of_row], positions, size)
    pick_min = np.minimum.reduceat(at_min, starts)
    highest = np.maximum.reduceat(level["max_loss"], starts)
    at_max = np.where(level["max_loss"] == highest[run_of_row], positions, -1)
    pick_max = np.maximum.reduceat(at_max, starts)
    pick = {"min": pick_min, "max": pick_max, "last": ends - 1}
    merged = {
        "job_id": job_ids[starts],
        "width": np.full(len(starts), width, dtype=np.int64),
        "bucket": buckets[starts],
        "count": np.add.reduceat(level["count"], starts),
        "sum_loss": np.add.reduceat(level["sum_loss"], starts),
    }
    for prefix, rows in pick.items():
        for name in ("loss", "step", "accuracy", "learning_rate"):
            merged[f"{prefix}_{name}"] = level[f"{prefix}_{name}"][rows]
    return merged


def summary_rebuild(job_ids: Sequence[int] | None = None) -> None:
    """Recompute the summaries of these jobs (None: all jobs) from their raw rows.

    For points loaded around the write path (a bulk COPY, a restore) and for the migration
    that introduced the summary. Two statements for any number of jobs, but it sorts every
    point of the jobs once per level: a bulk tool, not part of the write path.
    """
    table = MetricSummary._meta.db_table
    metric_table = TrainingMetric._meta.db_table
    if job_ids is None:
        where, params = "", []
    else:
        params = [int(job_id) for job_id in job_ids]
        if not params:
            return
        where = f"WHERE job_id IN ({', '.join(['%s'] * len(params))})"
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} {where}", params)
        cursor.execute(
            rebuild_sql(table, metric_table, where.replace("job_id", "m.job_id")), params
        )


def rebuild_sql(summary_table: str, metric_table: str, where: str = "") -> str:
    """INSERT ... SELECT of the summary rows of the points `where` selects (alias m)."""
    widths = " UNION ALL ".join(f"SELECT {width} AS width" for width in SUMMARY_WIDTHS)
    partition = "PARTITION BY m.job_id, w.width, m.step / w.width"
    picks = ", ".join(
        f"MAX(CASE WHEN {column.split('_', 1)[0]}_rank = 1 THEN {column.split('_', 1)[1]} END)"
        for column, _ in _VALUE_COLUMNS[2:]
    )
    names = ", ".join(name for name, _ in _COLUMNS)
    return f"""
        INSERT INTO {summary_table} ({names})
        SELECT job_id, width, bucket, COUNT(*), SUM(loss), {picks}
        FROM (
            SELECT m.job_id, w.width, m.step / w.width AS bucket, m.step, m.loss,
                   m.accuracy, m.learning_rate,
                   ROW_NUMBER() OVER ({partition} ORDER BY m.loss, m.step) AS min_rank,
                   ROW_NUMBER() OVER ({partition} ORDER BY m.loss DESC, m.step DESC) AS max_rank,
                   ROW_NUMBER() OVER ({partition} ORDER BY m.step DESC) AS last_rank
            FROM {metric_table} m CROSS JOIN ({widths}) w
            {where}
        ) ranked
        GROUP BY job_id, width, bucket
    """


# --- reading ----------------------------------------------------------------------------------


def summary_width_for(current_step: int, buckets: int) -> int | None:
    """The coarsest level with at least `buckets` buckets over steps 0..current_step-1.

    None when even the finest level has fewer: the job is small enough (under
    buckets * 64 steps) that its raw rows are the cheaper answer.
    """
    fitting = [w for w in SUMMARY_WIDTHS if -(-current_step // w) >= buckets]
    return max(fitting) if fitting else None


def summary_series(job: TrainingJob, max_points: int, *, after_step: int = -1) -> Series | None:
    """The job's points after `after_step`, downsampled from the summary, or None where raw
    rows should answer.

    Same shape as `metrics.selectors.series_downsampled`: the steps are cut into
    (max_points - 1) // 3 groups; each keeps its lowest-loss point (lowest step on ties),
    its highest-loss point (highest step on ties) and its last point, and the series keeps
    its first point; `total` is the number of points stored after `after_step`. The groups
    are runs of consecutive buckets of the coarsest level that still has at least that many
    buckets over the range, so a million-point range reads ~1,000 summary rows. The bucket
    that `after_step` cuts in two is read as raw rows (fewer than one bucket's width), so a
    catch-up from any step costs the same as the whole series. Every point returned is a
    stored point, with its own accuracy and learning rate.

    None means the summary cannot give a better answer than the raw rows: the range has at
    most `max_points` points (they are all shown), or fewer steps than the finest level
    can split into enough buckets, or no summary rows (points loaded around the write
    path). One query; after a None the caller's raw read is a second one.
    """
    check_max_points(max_points)
    groups = (max_points - 1) // POINTS_PER_BUCKET
    width = summary_width_for(job.current_step - (after_step + 1), groups)
    if width is None:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            _series_sql(MetricSummary._meta.db_table, TrainingMetric._meta.db_table),
            {
                "job": job.pk,
                "width": width,
                "groups": groups,
                "max_points": max_points,
                "after": after_step,
                # The first bucket whose steps all lie after `after_step`.
                "first_bucket": -(-(after_step + 1) // width),
            },
        )
        rows = cursor.fetchall()
    total = max((row[4] or 0 for row in rows), default=0)
    if total <= max_points:
        return None
    points = sorted({row[0]: row[:4] for row in rows}.values())
    return Series.from_rows(points, total=int(total))


def _series_sql(summary_table: str, metric_table: str) -> str:
    # Groups split the range of slots evenly: group = (slot - lo) * groups // span, which
    # yields exactly min(groups, span) groups. A slot is a bucket of the level; the raw rows
    # of the bucket `after` cuts in two share the slot before the first whole bucket. If the
    # range turns out to hold at most max_points points, only the total comes back and the
    # caller reads raw rows instead.
    picked = ", ".join(
        f"{prefix}_{name}"
        for prefix in ("min", "max", "last")
        for name in ("loss", "step", "accuracy", "learning_rate")
    )
    raw_as_bucket = ", ".join(
        name
        for _ in ("min", "max", "last")
        for name in ("loss", "step", "accuracy", "learning_rate")
    )
    ranked = f"""
        WITH level AS (
            SELECT bucket AS slot, count, {picked}
            FROM {summary_table}
            WHERE job_id = %(job)s AND width = %(width)s AND bucket >= %(first_bucket)s
            UNION ALL
            SELECT CAST(%(first_bucket)s AS BIGINT) - 1, 1, {raw_as_bucket}
            FROM {metric_table}
            WHERE job_id = %(job)s AND step > %(after)s
              AND step < CAST(%(first_bucket)s AS BIGINT) * %(width)s
        ),
        bounds AS (
            SELECT MIN(slot) AS lo, MAX(slot) AS hi, CAST(SUM(count) AS BIGINT) AS total
            FROM level
        ),
        grouped AS (
            SELECT level.*, bounds.total,
                   (slot - bounds.lo) * %(groups)s / (bounds.hi - bounds.lo + 1) AS grp
            FROM level CROSS JOIN bounds
            WHERE bounds.total > %(max_points)s
        ),
        ranked AS (
            SELECT *,
                   ROW_NUMBER() OVER (PARTITION BY grp ORDER BY min_loss, min_step) AS min_rank,
                   ROW_NUMBER() OVER (
                       PARTITION BY grp ORDER BY max_loss DESC, max_step DESC
                   ) AS max_rank,
                   ROW_NUMBER() OVER (PARTITION BY grp ORDER BY last_step DESC) AS last_rank
            FROM grouped
        )
    """
    picks = " UNION ALL ".join(
        f"SELECT {prefix}_step, {prefix}_loss, {prefix}_accuracy, {prefix}_learning_rate,"
        f" total FROM ranked WHERE {prefix}_rank = 1"
        for prefix in ("min", "max", "last")
    )
    first = f"""
        SELECT * FROM (
            SELECT step, loss, accuracy, learning_rate, CAST(NULL AS BIGINT)
            FROM {metric_table}
            WHERE job_id = %(job)s AND step > %(after)s AND EXISTS (SELECT 1 FROM grouped)
            ORDER BY step LIMIT 1
        ) first_point
    """
    total_only = """
        SELECT NULL, NULL, NULL, NULL, total FROM bounds WHERE total <= %(max_points)s
    """
    return f"{ranked} {picks} UNION ALL {first} UNION ALL {total_only}"
