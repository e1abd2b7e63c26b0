"""The multi-resolution summary of each job's points, kept so charts never scan raw rows.

Every point stored through `metric_batches_write` is also counted into one bucket per level,
in the same transaction: at level width w, step s falls in bucket s // w. The widths grow by
a factor of 4 from 64 to 262,144 steps (7 levels). A chart asking for G buckets reads the
coarsest level that has at least G of them, so it reads between G and 4G summary rows: a
2,000-point chart of a million-point job reads 977 rows (width 1,024), not a million points.
Jobs under 64 * G steps (about 42,000 for that chart) have no level that fine; their raw rows
are read instead, which at that size is cheap. A read asking for more than a chart's points
(the API allows 10,000) gets the finest level's from 42,624 steps on (`summary_width_for`),
so no read scans more raw rows than that. Finer or more levels would make small-job charts
cheaper and every write dearer: a 100-step tick touches about 9 summary rows per job of
a long run.

A bucket keeps what a min/max downsampled chart needs, all of it exact: the number of
points, the loss sum (for the mean), the lowest-loss point (lowest step on ties), the
highest-loss point (highest step on ties) and the last point, each with its accuracy and
learning rate. Points only ever arrive (a job's points go only with the job), so combining a
bucket's stored row with the new points' row (min of mins, max of maxes, sum of sums, later
last) keeps it equal to an aggregate over the raw rows. Only points actually created are
counted: duplicates that the write ignored never reach `summary_add`, and non-finite losses
are never stored, so never summarised.

A job's headline keeps only the levels a read can use (`kept_widths`): the finest, and each
level with at least two buckets over the steps the job has reached (its current_step), so a
600-step job keeps 2 levels, not 7, and each write to it upserts 2 rows, not 7. The write
that takes a job to a new level builds that level from the coarsest one it kept, which
already holds every point (`summary_add`); readers never pick a level the job does not keep
(`summary_points`). A summarised key keeps its levels the same way, by its point count.

Two series kinds are summarised by this one mechanism, each described by a `SummarySpec`:
the headline series (`HEADLINE`: MetricSummary over TrainingMetric, per job, ranked by loss
and carrying accuracy and learning rate) and every named key (`KEYS`: KeySummary over
NamedMetric, per key, ranked by value, over finite values only: NaN and +-inf are stored
as points but drawn as gaps, so they are left out of counts, sums, minima and maxima).

A key is summarised only once it holds more than `KEY_SUMMARY_FROM` points (its
`MetricKey.count`, NaN included): below that, any read of it reads at most that many raw
rows, and most keys of a real run (validation and evaluation metrics, one point an epoch)
never get there. The write that takes a key past it counts all the key's raw rows into its
buckets (`key_points_add`), in its transaction; later points are counted as the headline's
are. Summarising each such point into 7 buckets of its own was over half of the summary rows
a tick wrote, and most of an MLflow `log_batch` of one point for each of 1,000 keys.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connection, models

from jobs.models import TrainingJob
from metrics.models import KeySummary, MetricKey, MetricSummary, NamedMetric, TrainingMetric
from metrics.points import MetricBatch
from metrics.series import (
    POINTS_PER_BUCKET,
    SERIES_MAX_POINTS,
    Series,
    check_max_points,
    epoch_seconds_sql,
)
from metrics.staging import staged_rows
from trainmon.bulk import json_rows, only_ids

# Steps per bucket, finest first; each divides the next (a bucket lies inside one bucket of
# every coarser level), which lets each level be computed from the one below it.
SUMMARY_WIDTHS = (64, 256, 1024, 4096, 16384, 65536, 262144)
FINEST_WIDTH = SUMMARY_WIDTHS[0]
# A key is summarised once it holds more points than a full chart shows: readers of a key
# with at most this many (MetricKey.count) read its raw rows, and its writes skip the summary.
KEY_SUMMARY_FROM = SERIES_MAX_POINTS
# A chart's groups: a range with this many buckets of the finest level is always read from
# the summary, however many points are asked for; shorter ranges from their raw rows (at
# most 64 * CHART_GROUPS = 42,624 of them).
CHART_GROUPS = (SERIES_MAX_POINTS - 1) // POINTS_PER_BUCKET
# The points a bucket keeps: its lowest value, its highest value and its last step.
PICKS = ("min", "max", "last")
# Finite float8 values: NULL (NaN) and +-Infinity fall outside.
_FINITE = "BETWEEN -1.7976931348623157e308 AND 1.7976931348623157e308"


@dataclass(frozen=True)
class SummarySpec:
    """One summarised series kind: which table holds the buckets of which points.

    `owner` is the column naming the series (a job's headline, or a key), `value` the
    column summed and ranked, `carried` the columns kept with each picked point, `time`
    the points' timestamp column (read back for the picked points).
    """

    summary: type[models.Model]
    points: type[models.Model]
    owner: str
    value: str
    carried: tuple[str, ...]
    time: str
    staging_table: str
    finite_only: bool

    @property
    def picked(self) -> tuple[str, ...]:
        """The columns of each picked point: value, step, carried."""
        return (self.value, "step", *self.carried)

    @property
    def key_columns(self) -> tuple[tuple[str, str], ...]:
        return ((self.owner, "bigint"), ("width", "bigint"), ("bucket", "bigint"))

    @property
    def value_columns(self) -> tuple[tuple[str, str], ...]:
        """Column -> PostgreSQL type, in the order rows are staged and stored."""
        picked = tuple(
            (f"{prefix}_{name}", "bigint" if name == "step" else "double precision")
            for prefix in PICKS
            for name in self.picked
        )
        return (("count", "bigint"), (f"sum_{self.value}", "double precision"), *picked)

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        return self.key_columns + self.value_columns

    def finite(self, column: str) -> str:
        """An SQL condition (with a leading AND) keeping rows this summary counts."""
        return f" AND {column} {_FINITE}" if self.finite_only else ""


HEADLINE = SummarySpec(
    summary=MetricSummary,
    points=TrainingMetric,
    owner="job_id",
    value="loss",
    carried=("accuracy", "learning_rate"),
    time="created_at",
    staging_table="trainmon_summary_in",
    finite_only=False,  # non-finite losses are never stored
)
KEYS = SummarySpec(
    summary=KeySummary,
    points=NamedMetric,
    owner="key_id",
    value="value",
    carried=(),
    time="reported_at",
    staging_table="trainmon_key_summary_in",
    finite_only=True,
)


# --- maintenance ------------------------------------------------------------------------------


def kept_widths(span: int) -> tuple[int, ...]:
    """The levels kept for a series of `span`: the finest, and every level that has at
    least two buckets over steps 0..span-1.

    A job's headline is measured by its current_step, a key by its point count
    (MetricKey.count): each is known before and after every write, so a write knows which
    levels it takes a series to. For a key with a point every step the two agree; a sparse
    key keeps fewer levels, which its few points make cheap to read from the finer ones.
    A coarser level would hold one bucket, which no read needs (the coarsest kept level
    answers it in at most 4 rows); keeping it would cost every write an upsert for each.
    A 600-step job keeps 2 levels, not 7; a level is built when the series first reaches it
    (`summary_add`, `key_points_add`).
    """
    return tuple(width for width in SUMMARY_WIDTHS if width == FINEST_WIDTH or width < span)


def summary_add(points: Mapping[str, np.ndarray], spans: Mapping[int, tuple[int, int]]) -> None:
    """Count newly stored headline points into their jobs' summary buckets.

    `points` holds exactly the points the write created (never duplicates it ignored), with
    finite losses, as columns (job_id, step, loss, accuracy, learning_rate; empty, or
    none, for a write that created none). `spans` holds every written job's current_step before
    and after the write (named points move it too). The new points go into the levels
    each job kept before (`kept_widths`); a level the job reaches with this write is then
    built whole from the coarsest of those, which already holds every point: at most a few
    rows a job, and two more statements for the write. A job's first write (nothing stored
    before) has all its points here, so its levels come straight from them. Call in the
    transaction that stored the points.
    """
    # The span whose levels each job's new points go into: before the write, or after it
    # for a job's first write.
    counted_in = {
        job_id: after if before == 0 else before for job_id, (before, after) in spans.items()
    }
    _levels_add(HEADLINE, points, counted_in)
    _levels_build(HEADLINE, spans)


def _levels_add(
    spec: SummarySpec, points: Mapping[str, np.ndarray], counted_in: Mapping[int, int]
) -> None:
    """Count points into the levels their series keeps at the span `counted_in` gives it
    ({owner: span}, every owner of the points): one upsert for everything."""
    widest = kept_widths(max(counted_in.values(), default=0))[-1]
    rows = level_rows(spec, points, upto=widest)
    if len(rows[spec.owner]):
        kept = (rows["width"] == FINEST_WIDTH) | (
            rows["width"] < _per_row(rows[spec.owner], counted_in)
        )
        _upsert(spec, {name: column[kept] for name, column in rows.items()})


def _levels_kept(span: int) -> int:
    """len(kept_widths(span)), without building it: this runs twice for every job written."""
    return bisect_left(SUMMARY_WIDTHS, span, lo=1)


def _per_row(job_ids: np.ndarray, spans: Mapping[int, int]) -> np.ndarray:
    """Each row's job's span, from {job id: span}."""
    jobs = np.array(sorted(spans), dtype=np.int64)
    values = np.array([spans[job_id] for job_id in jobs.tolist()], dtype=np.int64)
    return values[np.searchsorted(jobs, job_ids)]


def _levels_build(spec: SummarySpec, spans: Mapping[int, tuple[int, int]]) -> None:
    """Build the levels that series reach with this write ({owner: (span before, span
    after)}): from the coarsest level each kept before, which holds every point already,
    coarsened in numpy, replacing any rows such a level has. Two statements when some
    series reaches a level, none otherwise. A series with nothing before (span 0) had all
    its points in this write, which counted them into every level it reaches."""
    reached = {
        owner: (before, after)
        for owner, (before, after) in spans.items()
        if before and _levels_kept(after) > _levels_kept(before)
    }
    if not reached:
        return
    sources = [(owner, kept_widths(before)[-1]) for owner, (before, _) in reached.items()]
    source, params = json_rows(((spec.owner, "bigint"), ("width", "bigint")), sources)
    names = [name for name, _ in spec.columns]
    table, owner = spec.summary._meta.db_table, spec.owner
    # Without the owners, the key summary was read whole (see only_ids).
    these, these_params = only_ids(f"s.{owner}", sorted(reached))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(f's.{name}' for name in names)} FROM {table} s"
            f" JOIN {source} AS w ON s.{owner} = w.{owner} AND s.width = w.width{these}"
            f" ORDER BY s.{owner}, s.bucket",
            [*params, *these_params],
        )
        fetched = cursor.fetchall()
    if not fetched:
        return  # no rows to build from: a job with named points only, a key never finite
    finer = {
        name: np.array(
            [row[index] for row in fetched],
            dtype=np.float64 if sql_type == "double precision" else np.int64,
        )
        for index, (name, sql_type) in enumerate(spec.columns)
    }
    built = []
    for width in SUMMARY_WIDTHS[1:]:
        needed = [
            owner_id
            for owner_id, (before, after) in reached.items()
            if width in kept_widths(after) and width not in kept_widths(before)
        ]
        rows = np.isin(finer[owner], needed)
        if rows.any():
            built.append(_coarsen(spec, {n: c[rows] for n, c in finer.items()}, width))
    if built:
        _upsert(
            spec,
            {name: np.concatenate([level[name] for level in built]) for name in names},
            replace=True,
        )


def _upsert(spec: SummarySpec, rows: Mapping[str, np.ndarray], *, replace: bool = False) -> None:
    """Add bucket rows into `spec`'s table (or, with `replace`, overwrite the rows there):
    one statement."""
    if not len(rows[spec.owner]):
        return
    # In index order, so the upsert walks the unique index forwards instead of once per level.
    order = np.lexsort((rows["bucket"], rows["width"], rows[spec.owner]))
    rows = {name: column[order] for name, column in rows.items()}
    table = spec.summary._meta.db_table
    names = [name for name, _ in spec.columns]
    assignments = (
        ", ".join(f"{name} = excluded.{name}" for name, _ in spec.value_columns)
        if replace
        else _upsert_assignments(spec)
    )
    conflict = f"ON CONFLICT ({spec.owner}, width, bucket) DO UPDATE SET"
    with connection.cursor() as cursor:
        source, params = staged_rows(
            cursor, spec.staging_table, spec.columns, [rows[name] for name in names]
        )
        # "WHERE true" tells SQLite's parser that ON CONFLICT belongs to the INSERT.
        cursor.execute(
            f"INSERT INTO {table} AS s ({', '.join(names)})"
            f" SELECT {', '.join(names)} {source} WHERE true {conflict} {assignments}",
            params,
        )


def key_is_summarised(count: int) -> bool:
    """Whether a key with `count` points (MetricKey.count) has its buckets kept."""
    return count > KEY_SUMMARY_FROM


def key_points_add(points: Mapping[str, np.ndarray], counts: np.ndarray) -> None:
    """Count a write's new named points (columns key_id, step, value; in key order, one run
    per key) into the buckets of the keys that are summarised (`KEY_SUMMARY_FROM`), at the
    levels each keeps for its point count (`kept_widths`).

    `counts` holds each run's key's point count after the write. A key the write takes past
    the threshold gets all its raw rows counted instead, the new ones among them: one read
    for all such keys, then the same single upsert. A level a summarised key reaches is
    built as the headline's are (`summary_add`).
    """
    key_ids = points["key_id"]
    if not len(key_ids):
        return
    starts = np.flatnonzero(np.r_[True, key_ids[1:] != key_ids[:-1]])
    created = np.diff(np.r_[starts, len(key_ids)])
    before = counts - created
    summarised = before > KEY_SUMMARY_FROM  # key_is_summarised, for every key
    keep = np.repeat(summarised, created)
    columns = {name: points[name][keep] for name in ("key_id", "step", "value")}
    owners = key_ids[starts]
    counted_in = dict(zip(owners[summarised].tolist(), before[summarised].tolist(), strict=True))
    starting = ~summarised & (counts > KEY_SUMMARY_FROM)
    if starting.any():
        whole = _key_raw_points(owners[starting].tolist())
        columns = {name: np.concatenate([columns[name], whole[name]]) for name in columns}
        counted_in |= dict(zip(owners[starting].tolist(), counts[starting].tolist(), strict=True))
    if not counted_in:
        return
    _levels_add(KEYS, columns, counted_in)
    spans = zip(
        owners[summarised].tolist(),
        before[summarised].tolist(),
        counts[summarised].tolist(),
        strict=True,
    )
    _levels_build(KEYS, {key_id: (was, now) for key_id, was, now in spans})


def _key_raw_points(key_ids: list[int]) -> dict[str, np.ndarray]:
    """Every stored point of these keys, as columns, after removing any buckets they have
    (only from before keys were summarised from a threshold on: those stopped being kept)."""
    summary, table = KeySummary._meta.db_table, NamedMetric._meta.db_table
    marks = ", ".join(["%s"] * len(key_ids))
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {summary} WHERE key_id IN ({marks})", key_ids)
        cursor.execute(
            f"SELECT key_id, step, value FROM {table} WHERE key_id IN ({marks})"
            f" ORDER BY key_id, step",
            key_ids,
        )
        rows = cursor.fetchall()
    return {
        "key_id": np.array([row[0] for row in rows], dtype=np.int64),
        "step": np.array([row[1] for row in rows], dtype=np.int64),
        "value": np.array([row[2] for row in rows], dtype=np.float64),  # NULL (NaN): nan
    }


def _upsert_assignments(spec: SummarySpec) -> str:
    # Every right-hand side reads the row as it was before the update (both databases), so
    # the same comparison picks all columns of the winning point.
    value = spec.value
    conditions = {
        "min": f"(excluded.min_{value}, excluded.min_step) < (s.min_{value}, s.min_step)",
        "max": f"(excluded.max_{value}, excluded.max_step) > (s.max_{value}, s.max_step)",
        "last": "excluded.last_step > s.last_step",
    }
    parts = [
        "count = s.count + excluded.count",
        f"sum_{value} = s.sum_{value} + excluded.sum_{value}",
    ]
    for prefix in PICKS:
        for name in spec.picked:
            column = f"{prefix}_{name}"
            parts.append(
                f"{column} = CASE WHEN {conditions[prefix]} THEN excluded.{column}"
                f" ELSE s.{column} END"
            )
    return ", ".join(parts)


def summary_rows(created: Sequence[tuple[int, MetricBatch]]) -> dict[str, np.ndarray]:
    """The headline bucket rows (one per job, width and bucket touched) of new points."""
    return level_rows(HEADLINE, _headline_points(created))


def _headline_points(created: Sequence[tuple[int, MetricBatch]]) -> dict[str, np.ndarray]:
    created = [(job_id, batch) for job_id, batch in created if len(batch)]
    if not created:
        return {}
    return {
        "job_id": np.concatenate(
            [np.full(len(b), job_id, dtype=np.int64) for job_id, b in created]
        ),
        "step": np.concatenate([b.steps for _, b in created]),
        "loss": np.concatenate([b.losses for _, b in created]),
        "accuracy": np.concatenate([b.accuracies for _, b in created]),
        "learning_rate": np.concatenate([b.learning_rates for _, b in created]),
    }


def level_rows(
    spec: SummarySpec, points: Mapping[str, np.ndarray], *, upto: int = SUMMARY_WIDTHS[-1]
) -> dict[str, np.ndarray]:
    """The bucket rows (one per owner, width and bucket touched) of a set of new points, at
    every level up to width `upto`.

    Vectorised: points are sorted by (owner, step) once, each level is reduced from the
    level below with `ufunc.reduceat` over runs of equal (owner, bucket).
    """
    if points and spec.finite_only:
        keep = np.isfinite(points[spec.value])
        points = {name: column[keep] for name, column in points.items()}
    if not points or not len(points[spec.owner]):
        return {name: np.empty(0) for name, _ in spec.columns}
    owners = points[spec.owner].astype(np.int64, copy=False)
    steps = points["step"].astype(np.int64, copy=False)
    picked: dict[str, np.ndarray] = {
        name: steps if name == "step" else points[name].astype(np.float64, copy=False)
        for name in spec.picked
    }
    if not _sorted_by_owner_and_step(owners, steps):
        order = np.lexsort((steps, owners))
        owners = owners[order]
        picked = {name: column[order] for name, column in picked.items()}
    # Level "width 1": every point is a bucket of its own.
    level = {
        spec.owner: owners,
        "count": np.ones(len(owners), dtype=np.int64),
        f"sum_{spec.value}": picked[spec.value],
    }
    for prefix in PICKS:
        level |= {f"{prefix}_{name}": column for name, column in picked.items()}
    levels = []
    for width in SUMMARY_WIDTHS:
        if width > upto:
            break
        level = _coarsen(spec, level, width)
        levels.append(level)
    return {name: np.concatenate([lv[name] for lv in levels]) for name, _ in spec.columns}


def _sorted_by_owner_and_step(owners: np.ndarray, steps: np.ndarray) -> bool:
    owner_step = np.diff(owners)
    return bool(np.all((owner_step > 0) | ((owner_step == 0) & (np.diff(steps) > 0))))


def _coarsen(spec: SummarySpec, level: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """Merge runs of rows (in owner, step order) that share an owner and a bucket of `width`."""
    owners = level[spec.owner]
    value = spec.value
    buckets = level["last_step"] // width
    size = len(owners)
    new_run = np.empty(size, dtype=bool)
    new_run[0] = True
    new_run[1:] = (owners[1:] != owners[:-1]) | (buckets[1:] != buckets[:-1])
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], size)
    run_of_row = np.cumsum(new_run) - 1
    positions = np.arange(size)
    # Rows are in step order, so the first row holding the run's minimum has the lowest step
    # and the last row holding its maximum the highest: the tie rules of the upsert.
    lowest = np.minimum.reduceat(level[f"min_{value}"], starts)
    at_min = np.where(level[f"min_{value}"] == lowest[run_of_row], positions, size)
    pick_min = np.minimum.reduceat(at_min, starts)
    highest = np.maximum.reduceat(level[f"max_{value}"], starts)
    at_max = np.where(level[f"max_{value}"] == highest[run_of_row], positions, -1)
    pick_max = np.maximum.reduceat(at_max, starts)
    pick = {"min": pick_min, "max": pick_max, "last": ends - 1}
    merged = {
        spec.owner: owners[starts],
        "width": np.full(len(starts), width, dtype=np.int64),
        "bucket": buckets[starts],
        "count": np.add.reduceat(level["count"], starts),
        f"sum_{value}": np.add.reduceat(level[f"sum_{value}"], starts),
    }
    for prefix, rows in pick.items():
        for name in spec.picked:
            merged[f"{prefix}_{name}"] = level[f"{prefix}_{name}"][rows]
    return merged


def summary_rebuild(owner_ids: Sequence[int] | None = None, spec: SummarySpec = HEADLINE) -> None:
    """Recompute the summaries of these jobs (or keys, for `KEYS`; None: all) from their
    raw rows.

    For points loaded around the write path (a bulk COPY, a restore) and for the migration
    that introduced the summary. Two statements for any number of owners, but it sorts every
    point of them once per level: a bulk tool, not part of the write path.
    """
    table = spec.summary._meta.db_table
    metric_table = spec.points._meta.db_table
    if owner_ids is None:
        where, params = "", []
    else:
        params = [int(owner_id) for owner_id in owner_ids]
        if not params:
            return
        where = f"WHERE {spec.owner} IN ({', '.join(['%s'] * len(params))})"
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} {where}", params)
        cursor.execute(
            rebuild_sql(
                table, metric_table, where.replace(spec.owner, f"m.{spec.owner}"), spec=spec
            ),
            params,
        )


def rebuild_sql(
    summary_table: str, metric_table: str, where: str = "", *, spec: SummarySpec = HEADLINE
) -> str:
    """INSERT ... SELECT of the summary rows of the points `where` selects (alias m)."""
    widths = " UNION ALL ".join(f"SELECT {width} AS width" for width in SUMMARY_WIDTHS)
    owner, value = spec.owner, spec.value
    partition = f"PARTITION BY m.{owner}, w.width, m.step / w.width"
    picks = ", ".join(
        f"MAX(CASE WHEN {prefix}_rank = 1 THEN {name} END)"
        for prefix in PICKS
        for name in spec.picked
    )
    names = ", ".join(name for name, _ in spec.columns)
    finite = spec.finite(f"m.{value}")
    if finite:
        where = f"{where}{finite}" if where else f"WHERE {finite.removeprefix(' AND ')}"
    # The levels each series keeps (`kept_widths`): by its job's current_step, its key's count.
    owners, span = (
        (TrainingJob._meta.db_table, "current_step")
        if spec is HEADLINE
        else (MetricKey._meta.db_table, "count")
    )
    levels = (
        f"JOIN {owners} o ON o.id = m.{owner} JOIN ({widths}) w"
        f" ON w.width = {FINEST_WIDTH} OR w.width < o.{span}"
    )
    carried = "".join(f", m.{name}" for name in spec.carried)
    return f"""
        INSERT INTO {summary_table} ({names})
        SELECT {owner}, width, bucket, COUNT(*), SUM({value}), {picks}
        FROM (
            SELECT m.{owner}, w.width, m.step / w.width AS bucket, m.step, m.{value}{carried},
                   ROW_NUMBER() OVER ({partition} ORDER BY m.{value}, m.step) AS min_rank,
                   ROW_NUMBER() OVER (
                       {partition} ORDER BY m.{value} DESC, m.step DESC
                   ) AS max_rank,
                   ROW_NUMBER() OVER ({partition} ORDER BY m.step DESC) AS last_rank
            FROM {metric_table} m {levels}
            {where}
        ) ranked
        GROUP BY {owner}, width, bucket
    """


# --- reading ----------------------------------------------------------------------------------


def summary_width_for(
    current_step: int, buckets: int, widths: Sequence[int] = SUMMARY_WIDTHS
) -> int | None:
    """The coarsest level of `widths` (the levels kept for the series) with at least
    `buckets` buckets over steps 0..current_step-1.

    None when even the finest level has fewer: the job is small enough (under
    buckets * 64 steps) that its raw rows are the cheaper answer. Except when that level
    still has a full chart's buckets (`CHART_GROUPS`): a read asking for more points than
    a chart (the API allows 10,000) then gets that level's points, fewer than it asked
    for, rather than a scan of up to 64 * buckets raw rows.
    """
    fitting = [w for w in widths if -(-current_step // w) >= buckets]
    if fitting:
        return max(fitting)
    return FINEST_WIDTH if -(-current_step // FINEST_WIDTH) >= CHART_GROUPS else None


def summary_series(
    job: TrainingJob, max_points: int, *, after_step: int = -1, times: bool = True
) -> Series | None:
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
    stored point, with its own accuracy, learning rate and time.

    None means the summary cannot give a better answer than the raw rows: the range has at
    most `max_points` points (they are all shown), or fewer steps than the finest level
    can split into enough buckets, or no summary rows (points loaded around the write
    path). One query; after a None the caller's raw read is a second one.
    """
    found = summary_points(
        HEADLINE,
        job.pk,
        job.current_step,
        max_points,
        kept=kept_widths(job.current_step),
        after_step=after_step,
        times=times,
    )
    if found is None:
        return None
    points, total = found
    return Series.from_rows(points, total=total)


def summary_points(
    spec: SummarySpec,
    owner_id: int,
    end_step: int,
    max_points: int,
    *,
    kept: Sequence[int],
    after_step: int = -1,
    times: bool = True,
) -> tuple[list[tuple[Any, ...]], int] | None:
    """The downsampled points of one series from `spec`'s summary (see `summary_series`):
    rows of (step, value, *carried, unix time) in step order, and the total; None where raw
    rows should answer. `end_step` is one past the series' last step; `kept` the levels the
    series keeps (`kept_widths`), the only ones read. `times=False` leaves
    the times None: the summary does not hold them, and reading them back costs a lookup
    per point in the raw rows, most of the query's time."""
    check_max_points(max_points)
    groups = (max_points - 1) // POINTS_PER_BUCKET
    width = summary_width_for(end_step - (after_step + 1), groups, kept)
    if width is None:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            _series_sql(spec, times=times),
            {
                "owner": owner_id,
                "width": width,
                "groups": groups,
                "max_points": max_points,
                "after": after_step,
                # The first bucket whose steps all lie after `after_step`.
                "first_bucket": -(-(after_step + 1) // width),
            },
        )
        rows = cursor.fetchall()
    total_at = len(spec.picked)
    total = max((row[total_at] or 0 for row in rows), default=0)
    if total <= max_points:
        return None
    by_step = {row[0]: (*row[:total_at], row[total_at + 1]) for row in rows if row[0] is not None}
    return sorted(by_step.values()), int(total)


def _series_sql(spec: SummarySpec, *, times: bool = True) -> str:
    # Groups split the range of slots evenly: group = (slot - lo) * groups // span, which
    # yields exactly min(groups, span) groups. A slot is a bucket of the level; the raw rows
    # of the bucket `after` cuts in two share the slot before the first whole bucket. If the
    # range turns out to hold at most max_points points, only the total comes back and the
    # caller reads raw rows instead. The picked points' times are read back from their rows.
    # The series' first point lies in the lowest slot: searching only there keeps a plan
    # that sorts the owner's rows (a bitmap scan, on a table not analysed yet) to one
    # bucket's rows rather than all of them. Its last step is written lo * w + (w - 1):
    # (lo + 1) * w overflows a bigint in the top bucket.
    owner, value = spec.owner, spec.value
    summary_table, metric_table = spec.summary._meta.db_table, spec.points._meta.db_table
    picked = ", ".join(f"{prefix}_{name}" for prefix in PICKS for name in spec.picked)
    raw_as_bucket = ", ".join(name for _ in PICKS for name in spec.picked)
    finite = spec.finite(value)
    ranked = f"""
        WITH level AS (
            SELECT bucket AS slot, count, {picked}
            FROM {summary_table}
            WHERE {owner} = %(owner)s AND width = %(width)s AND bucket >= %(first_bucket)s
            UNION ALL
            SELECT CAST(%(first_bucket)s AS BIGINT) - 1, 1, {raw_as_bucket}
            FROM {metric_table}
            WHERE {owner} = %(owner)s AND step > %(after)s
              AND step < CAST(%(first_bucket)s AS BIGINT) * %(width)s{finite}
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
                   ROW_NUMBER() OVER (
                       PARTITION BY grp ORDER BY min_{value}, min_step
                   ) AS min_rank,
                   ROW_NUMBER() OVER (
                       PARTITION BY grp ORDER BY max_{value} DESC, max_step DESC
                   ) AS max_rank,
                   ROW_NUMBER() OVER (PARTITION BY grp ORDER BY last_step DESC) AS last_rank
            FROM grouped
        )
    """
    carried = "".join(f", {name}" for name in spec.carried)
    # Output columns p0 (step), p1 (value), then the carried ones, then the total; the
    # first SELECT of a UNION names them.
    names = ("step", value, *spec.carried)
    columns = [f"p{index}" for index in range(len(names) + 1)]
    picks = " UNION ALL ".join(
        "SELECT "
        + ", ".join(
            f"{prefix}_{name} AS {column}" for name, column in zip(names, columns, strict=False)
        )
        + f", total AS {columns[-1]} FROM ranked WHERE {prefix}_rank = 1"
        for prefix in PICKS
    )
    first = f"""
        SELECT * FROM (
            SELECT step, {value}{carried}, CAST(NULL AS BIGINT)
            FROM {metric_table}
            WHERE {owner} = %(owner)s AND step > %(after)s{finite}
              AND step <= (SELECT lo FROM bounds) * %(width)s + (%(width)s - 1)
              AND EXISTS (SELECT 1 FROM grouped)
            ORDER BY step LIMIT 1
        ) first_point
    """
    nulls = ", NULL" * len(spec.picked)
    total_only = (
        f"SELECT {nulls.removeprefix(', ')}, total FROM bounds WHERE total <= %(max_points)s"
    )
    # A subquery per picked point rather than a join: its LIMIT 1 has PostgreSQL walk the
    # (owner, step) index once per point, where a join was planned as a bitmap scan each
    # (4x slower).
    time = (
        f"(SELECT {epoch_seconds_sql(f'm.{spec.time}')} FROM {metric_table} m"
        f" WHERE m.{owner} = %(owner)s AND m.step = picked.p0 LIMIT 1)"
        if times
        else "NULL"
    )
    return f"""
        {ranked}
        SELECT picked.*, {time}
        FROM ({picks} UNION ALL {first} UNION ALL {total_only}) picked
    """


def summary_points_many(
    spec: SummarySpec, widths: Mapping[int, int], max_points: int
) -> dict[int, tuple[list[tuple[Any, ...]], int] | None]:
    """`summary_points` of whole series (no `after_step`) for many owners in one query:
    `widths` maps each owner to the summary level to read (`summary_width_for`). Per
    owner, the downsampled rows of (step, value, *carried, unix time) and the total, or
    None where raw rows should answer (the summary holds at most `max_points` points)."""
    check_max_points(max_points)
    if not widths:
        return {}
    # Owners grouped by width, as constant lists: the planner then reads each level's
    # buckets through the (owner, width, bucket) index instead of scanning the table.
    by_width: dict[int, list[int]] = {}
    for owner, width in widths.items():
        by_width.setdefault(width, []).append(owner)
    levels = " OR ".join(
        f"(s.width = %s AND s.{spec.owner} IN ({', '.join(['%s'] * len(owners))}))"
        for owners in by_width.values()
    )
    params = [value for width, owners in by_width.items() for value in (width, *owners)]
    groups = (max_points - 1) // POINTS_PER_BUCKET
    with connection.cursor() as cursor:
        cursor.execute(_many_sql(spec, levels), [*params, groups, *[max_points] * 3])
        rows = cursor.fetchall()
    by_owner: dict[int, list[tuple[Any, ...]]] = {owner: [] for owner in widths}
    for row in rows:
        by_owner[row[0]].append(row[1:])
    total_at = len(spec.picked)
    found: dict[int, tuple[list[tuple[Any, ...]], int] | None] = {}
    for owner, owned in by_owner.items():
        total = max((row[total_at] or 0 for row in owned), default=0)
        if total <= max_points:
            found[owner] = None
            continue
        by_step = {
            row[0]: (*row[:total_at], row[total_at + 1]) for row in owned if row[0] is not None
        }
        found[owner] = (sorted(by_step.values()), int(total))
    return found


def _many_sql(spec: SummarySpec, levels: str) -> str:
    # `_series_sql` with every CTE partitioned by owner, for whole series: each owner's
    # level is read from its own width, and its groups split its own range of buckets. The
    # times are read back as there, by a LIMIT 1 subquery per picked point.
    # Parameters: those of `levels` (which buckets to read), groups, then max_points thrice.
    owner, value = spec.owner, spec.value
    summary_table, metric_table = spec.summary._meta.db_table, spec.points._meta.db_table
    picked = ", ".join(f"s.{prefix}_{name}" for prefix in PICKS for name in spec.picked)
    finite = spec.finite(f"f.{value}")
    names = ("step", value, *spec.carried)
    columns = [f"p{index}" for index in range(len(names) + 1)]
    picks = " UNION ALL ".join(
        "SELECT owner, "
        + ", ".join(
            f"{prefix}_{name} AS {column}" for name, column in zip(names, columns, strict=False)
        )
        + f", total AS {columns[-1]} FROM ranked WHERE {prefix}_rank = 1"
        for prefix in PICKS
    )
    carried = "".join(f", v.{name}" for name in spec.carried)
    nulls = ", NULL" * len(spec.picked)
    return f"""
        WITH level AS (
            SELECT s.{owner} AS owner, s.bucket AS slot, s.count, {picked}
            FROM {summary_table} s WHERE {levels}
        ),
        bounds AS (
            SELECT owner, MIN(slot) AS lo, MAX(slot) AS hi, CAST(SUM(count) AS BIGINT) AS total
            FROM level GROUP BY owner
        ),
        grouped AS (
            SELECT level.*, bounds.total,
                   (slot - bounds.lo) * %s / (bounds.hi - bounds.lo + 1) AS grp
            FROM level JOIN bounds ON bounds.owner = level.owner
            WHERE bounds.total > %s
        ),
        ranked AS (
            SELECT *,
                   ROW_NUMBER() OVER (
                       PARTITION BY owner, grp ORDER BY min_{value}, min_step
                   ) AS min_rank,
                   ROW_NUMBER() OVER (
                       PARTITION BY owner, grp ORDER BY max_{value} DESC, max_step DESC
                   ) AS max_rank,
                   ROW_NUMBER() OVER (PARTITION BY owner, grp ORDER BY last_step DESC)
                       AS last_rank
            FROM grouped
        ),
        first_steps AS (
            SELECT owner,
                   (SELECT MIN(f.step) FROM {metric_table} f
                    WHERE f.{owner} = bounds.owner{finite}) AS step
            FROM bounds WHERE total > %s
        )
        SELECT picked.*, (
            SELECT {epoch_seconds_sql(f"m.{spec.time}")} FROM {metric_table} m
            WHERE m.{owner} = picked.owner AND m.step = picked.p0 LIMIT 1
        )
        FROM (
            {picks}
            UNION ALL
            SELECT f.owner, f.step, v.{value}{carried}, NULL
            FROM first_steps f JOIN {metric_table} v ON v.{owner} = f.owner AND v.step = f.step
            UNION ALL
            SELECT owner{nulls}, total FROM bounds WHERE total <= %s
        ) picked
    """
