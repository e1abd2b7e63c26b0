"""Reads of metric points for charts: the live poll and the downsampled series."""

from __future__ import annotations

import operator
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

from jobs.models import TrainingJob
from metrics.models import IngestLog, MetricKey, NamedMetric
from metrics.series import (
    POINTS_PER_BUCKET,
    POLL_MAX_POINTS,
    SERIES_MAX_POINTS,
    NamedSeries,
    Series,
    check_max_points,
    epoch_seconds_sql,
    step_param,
)
from metrics.summary import (
    HEADLINE,
    KEYS,
    SummarySpec,
    kept_widths,
    key_is_summarised,
    summary_points,
    summary_points_many,
    summary_series,
    summary_width_for,
)
from trainmon.prepared import prepared_cursor


def metrics_after(
    job: TrainingJob, after_step: int, limit: int = POLL_MAX_POINTS, *, times: bool = True
) -> Series:
    """The job's points with step > `after_step`, in step order, at most `limit` of them.

    A client more than `limit` points behind gets the whole range downsampled to `limit`
    points (`Series.downsampled` is true), so its chart keeps the right shape. One query in
    either case: the job's `current_step` (last step + 1) says beforehand whether the range
    can exceed `limit`; only if it is out of date does a second query follow. `times=False`:
    a caller that does not show the times lets a downsampled answer leave them None.
    """
    check_max_points(limit)
    if job.current_step - 1 - after_step > limit:
        return series_downsampled(job, limit, after_step=after_step, times=times)
    rows = _raw_rows(HEADLINE, job.pk, after_step=after_step, limit=limit + 1)
    if len(rows) > limit:
        return series_downsampled(job, limit, after_step=after_step, times=times)
    return Series.from_rows(rows)


def _raw_rows(
    spec: SummarySpec,
    owner_id: int,
    *,
    after_step: int = -1,
    through_step: int | None = None,
    limit: int | None = None,
) -> list[tuple[Any, ...]]:
    """(step, value, *carried, unix time) rows of one series in step order, after
    `after_step` and up to `through_step`, at most `limit` of them."""
    columns = ", ".join(("step", spec.value, *spec.carried, epoch_seconds_sql(spec.time)))
    sql = (
        f"SELECT {columns} FROM {spec.points._meta.db_table} WHERE {spec.owner} = %s AND step > %s"
    )
    params: list[int] = [owner_id, step_param(after_step)]
    if through_step is not None:
        sql += " AND step <= %s"
        params.append(step_param(through_step))
    sql += " ORDER BY step"
    if limit is not None:
        sql += " LIMIT %s"
        params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows


def series_downsampled(
    job: TrainingJob,
    max_points: int = SERIES_MAX_POINTS,
    *,
    after_step: int = -1,
    times: bool = True,
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
    starts; short ones from the points. `times=False`: the summary's answer leaves the
    times None (see `summary_points`).
    """
    check_max_points(max_points)
    summarised = summary_series(job, max_points, after_step=after_step, times=times)
    if summarised is not None:
        return summarised
    rows, total = _downsampled_range(HEADLINE, job.pk, after_step, max_points)
    return Series.from_rows(rows, total=total)


def _downsampled_range(
    spec: SummarySpec, owner_id: int, after_step: int, max_points: int
) -> tuple[list[tuple[Any, ...]], int]:
    """Raw rows (step, value, *carried, unix time) of one series, downsampled as
    `series_downsampled` says, and the total. NULL values (NaN) rank above every other
    value and are never picked as a bucket's minimum or maximum."""
    buckets = (max_points - 1) // POINTS_PER_BUCKET
    table = spec.points._meta.db_table
    value = spec.value
    carried = "".join(f", {name}" for name in spec.carried)
    # Integer division on both SQLite and PostgreSQL. The width makes the highest bucket
    # index (hi - lo) // width at most buckets - 1. One window sort, shared by all three
    # window functions (same partition; the partition-only ones need no order).
    sql = f"""
        WITH points AS (
            SELECT step, {value}{carried}, {spec.time}
            FROM {table} WHERE {spec.owner} = %s AND step > %s
        ),
        bounds AS (SELECT MIN(step) AS lo, MAX(step) AS hi, COUNT(*) AS total FROM points),
        bucketed AS (
            SELECT p.*, b.lo, b.total,
                   (p.step - b.lo) / ((b.hi - b.lo) / %s + 1) AS bucket
            FROM points p CROSS JOIN bounds b
        ),
        ranked AS (
            SELECT bucketed.*,
                   ROW_NUMBER() OVER by_value AS value_rank,
                   COUNT({value}) OVER in_bucket AS bucket_size,
                   MAX(step) OVER in_bucket AS bucket_last
            FROM bucketed
            WINDOW in_bucket AS (PARTITION BY bucket),
                   by_value AS (
                       PARTITION BY bucket
                       ORDER BY CASE WHEN {value} IS NULL THEN 1 ELSE 0 END, {value}, step
                   )
        )
        SELECT step, {value}{carried}, {epoch_seconds_sql(spec.time)}, total FROM ranked
        WHERE total <= %s OR step = lo OR step = bucket_last
              OR value_rank = 1 OR value_rank = bucket_size
        ORDER BY step
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [owner_id, step_param(after_step), buckets, max_points])
        rows = cursor.fetchall()
    if not rows:
        return [], 0
    return [row[:-1] for row in rows], int(rows[0][-1])


# --- named series -----------------------------------------------------------------------------


def metric_key_list(*, job: TrainingJob, names: Collection[str] | None = None) -> list[MetricKey]:
    """The job's named keys (only those in `names`, if given), by name, with their stats."""
    keys = MetricKey.objects.filter(job_id=job.pk)
    if names is not None:
        keys = keys.filter(name__in=list(names))
    return list(keys.order_by("name"))


def named_series_downsampled(
    *,
    key: MetricKey,
    max_points: int = SERIES_MAX_POINTS,
    after_step: int = -1,
    times: bool = True,
) -> NamedSeries:
    """The key's points after `after_step`, or at most `max_points` of them chosen so the
    shape survives, as `series_downsampled` does for the headline loss (spikes and dips stay).

    Long series are read from the key's summary, which holds finite values only: there a
    NaN or infinite point shows no gap, and `total` counts the finite points, except for
    the whole series, whose total is the key's count of stored points. A key with at most
    KEY_SUMMARY_FROM points has no summary and is read from its raw rows. `times=False` as
    for `series_downsampled`.
    """
    check_max_points(max_points)
    end_step = -1 if key.last_step is None else key.last_step + 1
    found = None
    if key_is_summarised(key.count):
        found = summary_points(
            KEYS,
            key.pk,
            end_step,
            max_points,
            kept=kept_widths(key.count),
            after_step=after_step,
            times=times,
        )
    if found is None:
        found = _downsampled_range(KEYS, key.pk, after_step, max_points)
    elif after_step < 0:
        found = (found[0], max(found[1], key.count))
    rows, total = found
    return NamedSeries.from_rows(rows, total=total)


def named_series_many(
    keys: Sequence[MetricKey], max_points: int = SERIES_MAX_POINTS
) -> dict[int, NamedSeries]:
    """`named_series_downsampled` of each key's whole series, by key id, in a fixed
    number of queries however many keys (the job page asks for a screenful at once): one
    reads every long key from its summary, one every short key's raw points (all shown).
    Only a key the summary cannot serve (too few points to be summarised, too few steps for
    its finest level, or mostly non-finite points) takes a query of its own, as it would
    alone."""
    check_max_points(max_points)
    groups = (max_points - 1) // POINTS_PER_BUCKET
    found: dict[int, NamedSeries] = {}
    short: list[MetricKey] = []
    widths: dict[int, int] = {}
    alone: list[MetricKey] = []
    for key in keys:
        if key.last_step is None or key.count <= max_points:
            short.append(key)
        elif not key_is_summarised(key.count):
            alone.append(key)
        elif (
            width := summary_width_for(key.last_step + 1, groups, kept_widths(key.count))
        ) is not None:
            widths[key.pk] = width
        else:
            alone.append(key)
    by_id = {key.pk: key for key in keys}
    for key_id, summarised in summary_points_many(KEYS, widths, max_points).items():
        if summarised is None:
            alone.append(by_id[key_id])
        else:
            rows, total = summarised
            found[key_id] = NamedSeries.from_rows(rows, total=max(total, by_id[key_id].count))
    found.update(_whole_series([key.pk for key in short]))
    for key in alone:
        rows, total = _downsampled_range(KEYS, key.pk, -1, max_points)
        found[key.pk] = NamedSeries.from_rows(rows, total=total)
    return found


def _whole_series(key_ids: list[int]) -> dict[int, NamedSeries]:
    """Every point of these keys, one query."""
    if not key_ids:
        return {}
    table = NamedMetric._meta.db_table
    marks = ", ".join(["%s"] * len(key_ids))
    sql = (
        f"SELECT key_id, step, value, {epoch_seconds_sql('reported_at')} FROM {table}"
        f" WHERE key_id IN ({marks}) ORDER BY key_id, step"
    )
    by_key: dict[int, list[tuple[Any, ...]]] = {key_id: [] for key_id in key_ids}
    with connection.cursor() as cursor:
        cursor.execute(sql, key_ids)
        for key_id, *point in cursor.fetchall():
            by_key[key_id].append(tuple(point))
    return {key_id: NamedSeries.from_rows(rows) for key_id, rows in by_key.items()}


# --- the live poll ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Poll:
    """What changed in a job's series since a poll cursor (a `TrainingJob.ingest_seq`).

    `headline` and `named` hold the points of every step range written since the cursor,
    late (out-of-order) points included, in step order; a client merges them by step.
    `reload` says the client must refetch its series instead: the cursor is older than the
    ingest log keeps, or a changed range holds more than the poll's limit. `new_keys` are
    the keys created since the cursor.
    """

    cursor: int
    headline: Series = field(default_factory=Series)
    named: dict[str, NamedSeries] = field(default_factory=dict)
    reload: bool = False
    new_keys: list[str] = field(default_factory=list)


def job_poll(
    *,
    job: TrainingJob,
    cursor: int,
    keys: Collection[str] | None = None,
    limit: int = POLL_MAX_POINTS,
) -> Poll:
    """The points written to `job` since `cursor`, for the headline and the named `keys`
    (None: every key). Up to date: no query. Otherwise one statement, however many keys:
    the ingest log since the cursor and the points of the step ranges it names."""
    check_max_points(limit)
    now = job.ingest_seq
    if cursor == now:
        return Poll(cursor=now)
    if cursor > now or cursor < 0:
        return Poll(cursor=now, reload=True)
    news = _news_since(job.pk, cursor, now, keys, limit)
    # The log no longer holds the write right after the cursor (pruned): what came between
    # is unknown, and the points read with the rest are not enough.
    if news.first_seq != cursor + 1:
        return Poll(cursor=now, reload=True)
    if news.too_many:
        return Poll(cursor=now, reload=True, new_keys=news.new_keys)
    named = {name: NamedSeries.from_rows(news.named.get(key_id, [])) for key_id, name in news.asked}
    headline = Series.from_rows(news.headline)
    return Poll(cursor=now, headline=headline, named=named, new_keys=news.new_keys)


@dataclass
class _News:
    """What _news_since read: the first write after the cursor (None: none logged), the new
    keys, the (key id, name) of each asked key that changed, and their points."""

    first_seq: int | None = None
    new_keys: list[str] = field(default_factory=list)
    asked: list[tuple[int, str]] = field(default_factory=list)
    headline: list[tuple[Any, ...]] = field(default_factory=list)
    named: dict[int, list[tuple[Any, ...]]] = field(default_factory=dict)
    too_many: bool = False  # a range holds more points than the poll's limit


# The parts of _news_since's answer, in its first column. Its columns: part, key id, then a
# range's key name, first write and whether it created the key; a point's step, figures
# (value, or loss, accuracy and learning rate) and time.
_RANGE, _NAMED_POINT, _HEADLINE_POINT = 0, 1, 2
_NO_FIGURE = "CAST(NULL AS double precision)"  # typed: PostgreSQL resolves a UNION pairwise


def _news_since(
    job_id: int, cursor: int, through: int, keys: Collection[str] | None, limit: int
) -> _News:
    """The step range of every series written after `cursor`, up to `through` (the job's
    ingest position, read with the job), from the ingest log and, in the same statement,
    the points of those ranges: the headline's and the asked keys', at most limit + 1 per
    range. A poll with news then costs one round trip, and the statement is planned once
    per connection (trainmon.prepared).
    """
    sql, params = _news_statement(job_id, cursor, through, keys, limit)
    with prepared_cursor() as cursor_:
        cursor_.execute(sql, params)
        rows = cursor_.fetchall()
    return _news_of(rows, keys, limit)


def _news_statement(
    job_id: int, cursor: int, through: int, keys: Collection[str] | None, limit: int
) -> tuple[str, list[Any]]:
    """_news_since's statement and its parameters.

    A key is new when a write after the cursor created it: the write that creates a key
    stamps the key and its log row with the same time.
    """
    log = IngestLog._meta.db_table
    key_table = MetricKey._meta.db_table
    # Up to `through`: a write after the job was read is the next poll's (whose cursor is
    # `through`). The bound also gives the generic plan, made without the values, a range's
    # estimate of the log rows rather than a third of a job's, which keeps its cost below
    # jit_above_cost: past it, every poll compiled the plan (13 ms at 40,000 rows a job).
    params: list[Any] = [job_id, cursor, through, cursor + 1]
    # Whether a range is one the poll asks the points of, decided with the ranges: a filter
    # of their scan, so no other key's points are ever read, whatever the plan.
    asked = "TRUE"
    if keys:
        asked = f"k.name IN ({', '.join(['%s'] * len(keys))})"  # at most MAX_KEYS_PER_REQUEST
        params += keys
    # The ranges' keys are the job's: saying so bounds the keys read to the job's, whatever
    # the plan. A plan that expects many log rows (generic or not) hashes the keys:
    # unbounded, that read every job's (17 ms a poll at 100,000 keys).
    params.append(job_id)
    parts = [
        f"""SELECT {_RANGE} AS part, key_id, name, first_seq, is_new, CAST(NULL AS bigint),
               {_NO_FIGURE}, {_NO_FIGURE}, {_NO_FIGURE}, {_NO_FIGURE}
        FROM ranges"""
    ]
    if keys is None or keys:
        parts.append(_range_points(KEYS, _NAMED_POINT, "r.key_id IS NOT NULL AND r.asked"))
        params.append(limit + 1)
    parts.append(_range_points(HEADLINE, _HEADLINE_POINT, "r.key_id IS NULL"))
    params += [job_id, limit + 1]
    sql = f"""
        WITH since AS (
            SELECT key_id, min_step, max_step, seq, created_at FROM {log}
            WHERE job_id = %s AND seq > %s AND seq <= %s
        ),
        first_write AS (SELECT MIN(created_at) AS created_at FROM since WHERE seq = %s),
        ranges AS (
            SELECT s.key_id, k.name, MIN(s.min_step) AS lo, MAX(s.max_step) AS hi,
                   MIN(s.seq) AS first_seq,
                   MAX(CASE WHEN k.created_at >= f.created_at THEN 1 ELSE 0 END) AS is_new,
                   {asked} AS asked
            FROM since s CROSS JOIN first_write f
            LEFT JOIN {key_table} k ON k.id = s.key_id AND k.job_id = %s
            GROUP BY s.key_id, k.name
        )
        {" UNION ALL ".join(parts)}
    """
    return sql, params


def _range_points(spec: SummarySpec, part: int, ranges_filter: str) -> str:
    """The SELECT of one kind of points (the headline's or the named keys') in the ranges
    `ranges_filter` keeps, in _news_since's columns. Its parameters: for the headline the
    job's id, then the most points a range may return."""
    table = spec.points._meta.db_table
    values = [spec.value, *spec.carried]
    figures = [f"p.{column}" for column in values] + ["NULL"] * (3 - len(values))
    if spec is KEYS:
        key_id, owner = "r.key_id", "p.key_id = r.key_id"
    else:
        key_id, owner = "NULL", "p.job_id = %s"
    time = epoch_seconds_sql(f"p.{spec.time}")
    if connection.vendor == "postgresql":
        # Per range, an index scan on (owner, step) that stops after the limit. A plain join
        # of the ranges to the points is planned as a scan of all the owner's points (the
        # planner cannot see how few rows the ranges select). Unordered: a range past the
        # limit is only counted (the poll then says reload), and _news_of sorts the rest.
        return f"""
            SELECT {part}, {key_id}, NULL, NULL, NULL, p.step, {", ".join(figures)}, {time}
            FROM ranges r CROSS JOIN LATERAL (
                SELECT step, {", ".join(values)}, {spec.time} FROM {table} p
                WHERE {owner} AND p.step BETWEEN r.lo AND r.hi
                LIMIT %s
            ) AS p
            WHERE {ranges_filter}
        """
    # SQLite has no LATERAL; it walks the (owner, step) index per range anyway.
    aliased = ", ".join(f"{figure} AS v{index}" for index, figure in enumerate(figures))
    return f"""
        SELECT {part}, key_id, NULL, NULL, NULL, step, v0, v1, v2, time FROM (
            SELECT {key_id} AS key_id, p.step, {aliased}, {time} AS time,
                   ROW_NUMBER() OVER (PARTITION BY r.key_id) AS n
            FROM ranges r JOIN {table} p ON {owner} AND p.step BETWEEN r.lo AND r.hi
            WHERE {ranges_filter}
        ) ranged
        WHERE n <= %s
    """


_step_of = operator.itemgetter(0)  # steps are unique per series: the rest never compares


def _news_of(rows: list[tuple[Any, ...]], keys: Collection[str] | None, limit: int) -> _News:
    news = _News()
    wanted = None if keys is None else set(keys)
    for part, key_id, name, first_seq, is_new, step, *point in rows:
        if part == _RANGE:
            news.first_seq = first_seq if news.first_seq is None else min(news.first_seq, first_seq)
            if key_id is None or name is None:
                continue
            if is_new:
                news.new_keys.append(name)
            if wanted is None or name in wanted:
                news.asked.append((key_id, name))
        elif part == _NAMED_POINT:
            news.named.setdefault(key_id, []).append((step, point[0], point[3]))
        else:
            news.headline.append((step, *point))
    # The statement sorts nothing (a sort per range, and of the whole answer, cost it more
    # than sorting here: each range's points mostly come in step order already).
    news.headline.sort(key=_step_of)
    for points in news.named.values():
        points.sort(key=_step_of)
    news.new_keys.sort()
    news.asked.sort(key=lambda ref: ref[1])
    news.too_many = len(news.headline) > limit or any(
        len(points) > limit for points in news.named.values()
    )
    return news
