"""The figures of `make bench`, each against a baseline measured in the same run.

Runs inside Django set up on the bench's own PostgreSQL database (see bench/__main__.py).
"""

from __future__ import annotations

import gzip
import json
import math
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import numpy as np
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from bench import write_figures
from bench.simulator_baseline import generate_metrics_python
from bench.support import BASE_DIR, Figure, Http, percentile, timed
from jobs.models import TrainingJob
from metrics import summary
from metrics.points import MetricBatch
from metrics.simulator import TrainingSimulator


@dataclass(frozen=True)
class Plan:
    """How much to measure; --quick shrinks it for a smoke run."""

    simulator_points: int = 1_000_000
    simulator_baseline_points: int = 50_000
    simulator_repeats: int = 5
    tick_jobs: int = 1000
    tick_steps: int = 100
    tick_repeats: int = 5
    big_job_points: int = 1_000_000
    seed_batch: int = 10_000
    api_batch: int = 10_000
    api_repeats: int = 10
    chart_points: int = 2000
    chart_repeats: int = 15
    raw_chart_repeats: int = 5
    poll_requests: int = 200
    dashboard_requests: int = 50
    dashboard_few_jobs: int = 10
    export_repeats: int = 3
    page_key_points: int = 10_000
    page_loads: int = 30
    mlflow_batches: int = 20
    mlflow_history_points: int = 200_000
    mlflow_history_repeats: int = 5

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            simulator_repeats=2,
            tick_jobs=200,
            tick_repeats=2,
            big_job_points=100_000,
            api_repeats=3,
            chart_repeats=5,
            raw_chart_repeats=2,
            poll_requests=40,
            dashboard_requests=10,
            export_repeats=1,
            page_key_points=1_000,
            page_loads=10,
            mlflow_batches=5,
            mlflow_history_repeats=2,
        )


WARM_UP_REQUESTS = 5
POLL_BEHIND = 50
CATCH_UP_CLIENTS = 8
EXPORT_LIMIT_MB = 100
BARE_TABLE = "bench_bare_metric"
# The same data columns as metrics_trainingmetric, without its id, indexes or constraints.
BARE_COLUMNS = write_figures.INDEXED_COLUMNS


def running_simulated_jobs(
    owner: Any, count: int, *, steps_per_tick: int, epochs: int, name: str
) -> list[int]:
    """Ids of `count` new running simulated jobs of `epochs` x 100 steps, named
    `name-<index>`, created in bulk (the bench's tick figures advance them)."""
    now = timezone.now()
    steps_per_epoch = 100
    jobs = TrainingJob.objects.bulk_create(
        (
            TrainingJob(
                owner=owner,
                name=f"{name}-{index:05d}",
                model_name="resnet50",
                dataset="imagenet",
                status=TrainingJob.Status.RUNNING,
                total_epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                steps_per_tick=steps_per_tick,
                decay_rate=5.0 / (epochs * steps_per_epoch),
                seed=index,
                warmup_steps=500,
                started_at=now,
                created_at=now,
            )
            for index in range(count)
        ),
        batch_size=2000,
    )
    return sorted(job.pk for job in jobs)


# --- data -------------------------------------------------------------------------------------


class Data:
    """Users and jobs the figures share; created once per run."""

    def __init__(self, plan: Plan) -> None:
        from django.contrib.auth import get_user_model

        users = get_user_model().objects
        self.plan = plan
        self.many_user = users.create_user("bench-many", password=None)
        self.few_user = users.create_user("bench-few", password=None)
        self.big_user = users.create_user("bench-big", password=None)
        self.tick_ids = self._simulated_jobs(self.many_user, plan.tick_jobs)
        self.few_ids = self._simulated_jobs(self.few_user, plan.dashboard_few_jobs)
        self.big_job = self._external_job(self.big_user, "bench-1m", plan.big_job_points)
        self.api_job = self._external_job(
            self.big_user, "bench-api", plan.api_batch * (plan.api_repeats + 1)
        )

    def _simulated_jobs(self, owner: Any, count: int) -> list[int]:
        return running_simulated_jobs(
            owner, count, steps_per_tick=self.plan.tick_steps, epochs=100, name=owner.username
        )

    def _external_job(self, owner: Any, name: str, steps: int) -> TrainingJob:
        steps_per_epoch = 10_000
        return TrainingJob.objects.create(
            owner=owner,
            name=name,
            source=TrainingJob.Source.EXTERNAL,
            status=TrainingJob.Status.RUNNING,
            total_epochs=math.ceil(steps / steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
            decay_rate=5.0 / steps,
            seed=7,
            warmup_steps=1000,
            started_at=timezone.now(),
        )

    def seed_big_job(self) -> Figure:
        """Fill the million-point job through the write path, in 10,000-point batches, the
        last POLL_BEHIND points a write of their own: the news of poll_ms_1m's cursor.

        The write path keeps the summary, so the chart figure reads what production would.
        """
        from jobs.services import jobs_lock
        from metrics.services import metric_batches_write, simulator_for

        figure = Figure("seed_points_per_s", "points/s", "— (setup)")
        job = self.big_job
        simulator = simulator_for(job)
        (total, steps_per_epoch), size = job.simulation_length, self.plan.seed_batch
        last = self.plan.big_job_points - POLL_BEHIND
        starts = [*range(0, last, size), last]
        for start, end in zip(starts, [*starts[1:], self.plan.big_job_points], strict=True):
            batch = simulator.generate_metrics_batch(start, end - start, total, steps_per_epoch)

            def write(batch: MetricBatch = batch) -> None:
                with transaction.atomic():
                    [locked] = jobs_lock([job.pk])
                    metric_batches_write([(locked, batch)])

            seconds, _ = timed(write)
            figure.samples.append(len(batch) / seconds)
        job.refresh_from_db()
        figure.notes.append(f"{job.current_step:,} points written through metric_batches_write")
        return figure


# --- helpers ----------------------------------------------------------------------------------


def _bare_table() -> None:
    """The bare tables the tick's baseline copies into: headline rows and named rows."""
    with connection.cursor() as cursor:
        for table, columns in ((BARE_TABLE, BARE_COLUMNS), (NAMED_BARE_TABLE, NAMED_BARE_COLUMNS)):
            definition = ", ".join(f"{name} {sql_type}" for name, sql_type in columns)
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE TABLE {table} ({definition})")


def _truncate_bare() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {BARE_TABLE}, {NAMED_BARE_TABLE}")


# The named rows of a tick, as the bare named table's columns (key id, step, value).
TickNamed = tuple[np.ndarray, np.ndarray, np.ndarray]


def _tick_named_rows(batches: list[tuple[int, MetricBatch]]) -> TickNamed:
    """The named points the tick writes beside `batches` (the simulator's, with their key
    ids, which the warm-up tick created), as three columns."""
    from metrics.models import MetricKey
    from metrics.services import simulator_for

    jobs = TrainingJob.objects.in_bulk([job_id for job_id, _ in batches])
    key_ids = {
        (job_id, name): key_id
        for job_id, name, key_id in MetricKey.objects.filter(job_id__in=jobs).values_list(
            "job_id", "name", "id"
        )
    }
    keys, steps, values = [], [], []
    moment = timezone.now().timestamp()
    for job_id, batch in batches:
        job = jobs[job_id]
        named = simulator_for(job).generate_named_batch(batch, *job.simulation_length, moment)
        ids = np.array([key_ids.get((job_id, name), 0) for name in named.names], dtype=np.int64)
        keys.append(ids[named.key_index])
        steps.append(named.steps)
        values.append(named.values)
    if not batches:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    return np.concatenate(keys), np.concatenate(steps), np.concatenate(values)


def _named_points_stored(job_ids: list[int]) -> int:
    from django.db.models import Sum

    from metrics.models import MetricKey

    total = MetricKey.objects.filter(job_id__in=job_ids).aggregate(total=Sum("count"))["total"]
    return int(total or 0)


def copy_binary_baseline(
    batches: list[tuple[int, MetricBatch]], now: datetime, named: TickNamed | None = None
) -> float:
    """Seconds to COPY the rows (binary, encoded from the arrays) into the bare table, and
    the `named` rows into the bare named table, + commit."""
    return write_figures.copy_binary_into((BARE_TABLE, NAMED_BARE_TABLE), batches, now, named)


def copy_rows_baseline(
    batches: list[tuple[int, MetricBatch]], now: datetime, named: TickNamed | None = None
) -> float:
    """Seconds for the everyday psycopg COPY: text format, `write_row` per row, + commit;
    the `named` rows too, into the bare named table, in the same transaction."""
    started = time.perf_counter()
    names = ", ".join(name for name, _ in BARE_COLUMNS)
    with transaction.atomic(), connection.cursor() as cursor:
        with cursor.copy(f"COPY {BARE_TABLE} ({names}) FROM STDIN") as copy:
            for job_id, b in batches:
                for step, epoch, loss, accuracy, rate in write_figures.point_rows(b):
                    copy.write_row((job_id, epoch, step, loss, accuracy, rate, now))
        if named is not None:
            named_columns = ", ".join(name for name, _ in NAMED_BARE_COLUMNS)
            with cursor.copy(f"COPY {NAMED_BARE_TABLE} ({named_columns}) FROM STDIN") as copy:
                for key_id, step, value in zip(*(c.tolist() for c in named), strict=True):
                    copy.write_row((key_id, step, value, now))
    return time.perf_counter() - started


def _compare_with_binary_copy(figure: Figure, binary_copy_samples: list[float]) -> None:
    """Also report the ratio to the fastest load PostgreSQL offers, for the record."""
    binary_copy = statistics.median(binary_copy_samples)
    ratio = figure.median / binary_copy if figure.median else None
    figure.extra |= {"baseline_binary_copy": binary_copy, "ratio_vs_binary_copy": ratio}
    figure.notes.append(
        f"a hand-encoded binary COPY into the bare table does {binary_copy:,.0f} points/s: "
        f"ratio {ratio or 0:.3f} against that"
    )


def _tick_profile_extra() -> list[tuple[Any, str, str]]:
    """Functions the tick breakdown times besides statements: point generation."""
    from metrics import services

    return [
        (services, "simulated_batches", "generate headline and named points (numpy)"),
    ]


def _rows_held() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM metrics_trainingmetric")
        (count,) = cursor.fetchone()
    return int(count)


def _next_tick_batches(job_ids: list[int]) -> list[tuple[int, MetricBatch]]:
    from metrics.services import simulator_for

    batches = []
    for job in TrainingJob.objects.filter(pk__in=job_ids).order_by("pk"):
        total_steps, steps_per_epoch = job.simulation_length
        count = min(job.steps_per_tick, total_steps - job.current_step)
        points = simulator_for(job).generate_metrics_batch(
            job.current_step, count, total_steps, steps_per_epoch
        )
        batches.append((job.pk, points))
    return batches


def _below(value: float | None, limit: float, *, inclusive: bool = False) -> bool:
    if value is None:
        return False
    return value <= limit if inclusive else value < limit


def _session_cookie(user: Any) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def _http_p50(client: Http, path: str, count: int) -> tuple[list[float], bytes]:
    body = b""
    for _ in range(WARM_UP_REQUESTS):
        client.request("GET", path)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        status, _, body = client.request("GET", path)
        samples.append((time.perf_counter() - started) * 1000)
        if status not in (200, 286):
            raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
    return samples, body


# --- figures ----------------------------------------------------------------------------------


def simulator_points_per_s(plan: Plan) -> Figure:
    figure = Figure("simulator_points_per_s", "points/s", "ratio >= 15")
    sim = TrainingSimulator(2.5, 0.3, 5.0 / plan.simulator_points, seed=1, warmup_steps=1000)
    total = plan.simulator_points
    for _ in range(plan.simulator_repeats):
        seconds, _ = timed(lambda: sim.generate_metrics_batch(0, total, total, 1000))
        figure.samples.append(total / seconds)
    sample = plan.simulator_baseline_points
    for _ in range(3):
        seconds, _ = timed(lambda: generate_metrics_python(sim, 0, sample, total, 1000))
        figure.baseline_samples.append(sample / seconds)
    figure.met = figure.ratio is not None and figure.ratio >= 15
    figure.notes.append(
        f"trainmon: {total:,} points per call; baseline: bench/simulator_baseline.py, the same "
        f"formulas as a plain-Python loop, timed on {sample:,} points (rate, so no scaling)"
    )
    return figure


def _steps_done(job_ids: list[int]) -> int:
    return int(
        min(TrainingJob.objects.filter(pk__in=job_ids).values_list("current_step", flat=True))
    )


def tick_figures(plan: Plan, data: Data) -> list[Figure]:
    from metrics.services import simulation_advance

    speed = Figure("tick_points_per_s", "points/s", "ratio >= 0.5")
    queries = Figure("tick_queries", "queries", "equal counts")
    ids = data.tick_ids
    _bare_table()
    # Warm-up (first buckets, cached plans, staging tables), and past KEY_SUMMARY_FROM
    # points a key: train/grad_norm (every step) is then summarised as in a long run, and
    # val/loss and val/accuracy (an epoch's end) are not, as in most runs.
    for _ in range(summary.KEY_SUMMARY_FROM // plan.tick_steps + 1):
        simulation_advance(job_ids=ids)
    write_figures.indexed_tables()
    held = write_figures.indexed_seed(ids)
    profile = write_figures.WriteProfile(_tick_profile_extra())
    binary_copy_samples, indexed_samples = [], []
    headline_samples, headline_baseline = [], []
    named_share = 0.0
    for repeat in range(plan.tick_repeats):
        batches = _next_tick_batches(ids)
        named = _tick_named_rows(batches)
        headline = sum(len(b) for _, b in batches)
        points = headline + len(named[0])
        named_share = len(named[0]) / points
        now = timezone.now()
        _truncate_bare()
        headline_seconds = copy_rows_baseline(batches, now)
        headline_baseline.append(headline / headline_seconds)
        _truncate_bare()
        speed.baseline_samples.append(points / copy_rows_baseline(batches, now, named))
        if repeat < 3:
            _truncate_bare()
            binary_copy_samples.append(points / copy_binary_baseline(batches, now, named))
        indexed_samples.append(points / write_figures.copy_indexed_baseline(batches, now, named))
        named_before = _named_points_stored(ids)
        with profile.measure():
            seconds, result = timed(lambda: simulation_advance(job_ids=ids))
        named_written = _named_points_stored(ids) - named_before
        if result.points_written != headline or named_written != len(named[0]):
            raise RuntimeError(
                f"tick wrote {result.points_written} headline and {named_written} named "
                f"points, expected {headline} and {len(named[0])}"
            )
        speed.samples.append(points / seconds)
        headline_samples.append(headline / seconds)
    headline_rate = statistics.median(headline_samples)
    headline_copy = statistics.median(headline_baseline)
    speed.extra |= {
        "named_share": named_share,
        "headline_points_per_s": headline_rate,
        "headline_baseline": headline_copy,
        "headline_ratio": headline_rate / headline_copy,
    }
    speed.notes += [
        f"one simulation_advance over {len(ids):,} running jobs x {plan.tick_steps} steps "
        "(generate, lock, insert, summary, progress, commit); points = every point the tick "
        f"writes: the headline rows and the named ones ({named_share:.0%}: train/grad_norm "
        "every step, val/loss and val/accuracy at epoch ends); the jobs are "
        f"{_steps_done(ids):,} steps in, so grad_norm is summarised and the val keys (one "
        f"point an epoch) are not: they hold fewer than {summary.KEY_SUMMARY_FROM:,} points",
        "baseline: psycopg 3 COPY (cursor.copy, write_row per row) of the same rows, headline "
        "rows into a table with the same 7 data columns and named rows into one with the "
        "same 4 data columns, no id, index or constraint, + commit",
        f"headline view (the figure before named series): {headline_rate:,.0f} headline "
        f"points/s against a COPY of the headline rows alone at {headline_copy:,.0f}: ratio "
        f"{headline_rate / headline_copy:.3f}",
    ]
    _compare_with_binary_copy(speed, binary_copy_samples)
    write_figures.use_indexed_baseline(speed, indexed_samples, 0.5)
    speed.notes.append(
        f"the indexed tables held {held[0]:,} headline and {held[1]:,} named rows before the "
        "first repeat, as trainmon's tables for these jobs; trainmon's tables also hold the "
        f"other bench jobs' rows ({_rows_held():,} headline rows in all)"
    )
    speed.notes += [f"tick breakdown: {line}" for line in profile.lines(points)]
    speed.extra["breakdown"] = profile.as_json()

    for count in (plan.dashboard_few_jobs, len(ids)):
        with CaptureQueriesContext(connection) as context:
            simulation_advance(job_ids=ids[:count])
        (queries.baseline_samples if count < len(ids) else queries.samples).append(
            len(context.captured_queries)
        )
    queries.met = queries.samples == queries.baseline_samples
    queries.notes.append(
        f"median = queries of a tick over {len(ids):,} jobs, baseline = over "
        f"{plan.dashboard_few_jobs} jobs (COPY statements included)"
    )
    return [speed, queries]


def chart_figure(plan: Plan, data: Data) -> Figure:
    from metrics.selectors import series_downsampled
    from metrics.series import POINTS_PER_BUCKET
    from metrics.summary import summary_series, summary_width_for

    figure = Figure("chart_ms_1m", "ms", "ratio <= 0.2")
    job = TrainingJob.objects.get(pk=data.big_job.pk)
    max_points = plan.chart_points
    series = series_downsampled(job, max_points)  # warm-up
    for _ in range(plan.chart_repeats):
        seconds, series = timed(lambda: series_downsampled(job, max_points))
        figure.samples.append(seconds * 1000)
    summary_ms = []
    for _ in range(plan.chart_repeats):
        seconds, _ = timed(lambda: summary_series(job, max_points))
        summary_ms.append(seconds * 1000)
    groups = (max_points - 1) // POINTS_PER_BUCKET
    raw_width, figure.baseline_samples = group_by_baseline(job, max_points, plan.raw_chart_repeats)
    figure.met = figure.ratio is not None and figure.ratio <= 0.2
    width = summary_width_for(job.current_step, groups)
    kept = _extremes_kept(job, summary_series(job, max_points))
    exact = summary_exactness(job.pk, sorted({w for w in (64, width) if w}))
    summary_ratio = statistics.median(summary_ms) / (figure.baseline or math.inf)
    figure.extra |= {
        "shown": series.shown,
        "total": series.total,
        "summary_series_ms": statistics.median(summary_ms),
        "summary_series_ratio": summary_ratio,
        "summary_width": width,
        "summary_exact": exact,
        "summary_keeps_extremes": kept,
    }
    figure.notes += [
        f"series_downsampled(job, {max_points}) of a {job.current_step:,}-point job: "
        f"{series.shown:,} of {series.total:,} points",
        f"summary_series alone: {statistics.median(summary_ms):.2f} ms (level width {width}), "
        f"ratio {summary_ratio:.3f}: what series_downsampled takes once it delegates to it",
        f"baseline: GROUP BY step / {raw_width} (min, max, count, last) over all the job's rows",
        f"summary exact against GROUP BY over the raw rows: {exact}",
        f"summary_series shows the job's first and last point and its global min and max "
        f"loss: {kept}",
    ]
    if series.total != job.current_step:
        figure.notes.append("series_downsampled did not report the job's point count as total")
    return figure


def group_by_baseline(job: TrainingJob, max_points: int, repeats: int) -> tuple[int, list[float]]:
    """The width and the times (ms) of a GROUP BY over all the job's raw rows into as many
    buckets as a `max_points` chart has (min, max, count, last): reading without a summary."""
    from metrics.series import POINTS_PER_BUCKET

    width = -(-job.current_step // ((max_points - 1) // POINTS_PER_BUCKET))
    sql = (
        "SELECT step / %s AS bucket, MIN(loss), MAX(loss), COUNT(*), MAX(step)"
        " FROM metrics_trainingmetric WHERE job_id = %s GROUP BY step / %s ORDER BY bucket"
    )

    def raw() -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(sql, [width, job.pk, width])
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows

    return width, [timed(raw)[0] * 1000 for _ in range(repeats)]


def _extremes_kept(job: TrainingJob, series: Any) -> bool:
    if series is None:
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT MIN(step), MAX(step), MIN(loss), MAX(loss) FROM metrics_trainingmetric"
            " WHERE job_id = %s",
            [job.pk],
        )
        first, last, low, high = cursor.fetchone()
    ends = (series.steps[0], series.steps[-1]) == (first, last)
    return ends and (min(series.loss), max(series.loss)) == (low, high)


def summary_exactness(job_id: int, widths: list[int]) -> dict[str, Any]:
    """Per width: buckets whose count/min/max/last (and argmin/argmax) differ from raw rows."""
    result = {}
    for width in widths:
        sql = """
            WITH raw AS (
                SELECT step / %(w)s AS bucket, COUNT(*) AS count, MIN(loss) AS min_loss,
                       MAX(loss) AS max_loss, MAX(step) AS last_step
                FROM metrics_trainingmetric WHERE job_id = %(job)s GROUP BY step / %(w)s
            ),
            summary AS (
                SELECT * FROM metrics_metricsummary WHERE job_id = %(job)s AND width = %(w)s
            )
            SELECT COUNT(*) FILTER (WHERE s.bucket IS NULL OR raw.bucket IS NULL
                                    OR s.count <> raw.count OR s.min_loss <> raw.min_loss
                                    OR s.max_loss <> raw.max_loss
                                    OR s.last_step <> raw.last_step),
                   COUNT(*),
                   COUNT(*) FILTER (WHERE NOT EXISTS (
                       SELECT 1 FROM metrics_trainingmetric m WHERE m.job_id = %(job)s
                       AND m.step = s.min_step AND m.loss = s.min_loss)
                       OR NOT EXISTS (
                       SELECT 1 FROM metrics_trainingmetric m WHERE m.job_id = %(job)s
                       AND m.step = s.max_step AND m.loss = s.max_loss))
            FROM raw FULL JOIN summary s ON s.bucket = raw.bucket
        """
        with connection.cursor() as cursor:
            cursor.execute(sql, {"w": width, "job": job_id})
            mismatched, buckets, bad_points = cursor.fetchone()
        result[str(width)] = {
            "buckets": buckets,
            "mismatched": mismatched,
            "extreme_points_not_stored": bad_points,
        }
    return result


def poll_figure(plan: Plan, data: Data, port: int) -> Figure:
    from bench.poll_figures import NEWS_POLL_TARGET, http_p50_against_floor
    from metrics.selectors import metrics_after

    figure = Figure("poll_ms_1m", "ms (p50)", f"ratio <= {NEWS_POLL_TARGET} (vs /healthz)")
    job = TrainingJob.objects.get(pk=data.big_job.pk)
    after = job.current_step - 1 - POLL_BEHIND
    client = Http(port, {"Cookie": _session_cookie(data.big_user), "Accept-Encoding": "gzip"})
    # As charts.js asks: from the ingest position before the last write (the seed's last
    # POLL_BEHIND points), with the status and the progress position the page shows.
    seen = job.ingest_seq - 1
    path = f"/jobs/{job.pk}/poll/?cursor={seen}&keys=&status={job.status}&progress_seq={seen}"
    samples, floor, body, _ = http_p50_against_floor(client, path, plan.poll_requests)
    news = json.loads(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
    if len(news["headline"]["steps"]) != POLL_BEHIND:
        raise RuntimeError(f"the poll brought {news!r:.300}, not {POLL_BEHIND} new points")
    client.close()
    figure.samples = samples
    figure.baseline_samples = floor
    sql = (
        "SELECT step, loss, accuracy, learning_rate FROM metrics_trainingmetric"
        " WHERE job_id = %s AND step > %s ORDER BY step"
    )
    raw_select, in_process = [], []
    for _ in range(plan.poll_requests):

        def raw() -> list[tuple[Any, ...]]:
            with connection.cursor() as cursor:
                cursor.execute(sql, [job.pk, after])
                rows: list[tuple[Any, ...]] = cursor.fetchall()
                return rows

        seconds, rows = timed(raw)
        raw_select.append(seconds * 1000)
        seconds, _ = timed(lambda: metrics_after(job, after))
        in_process.append(seconds * 1000)
    if len(rows) != POLL_BEHIND:
        raise RuntimeError(f"the raw SELECT found {len(rows)} rows, expected {POLL_BEHIND}")
    figure.met = _below(figure.ratio, NEWS_POLL_TARGET, inclusive=True)
    raw_ms = statistics.median(raw_select)
    figure.extra |= {
        "p90": percentile(samples, 0.9),
        "metrics_after_ms": statistics.median(in_process),
        "raw_select_ms": raw_ms,
        "ratio_to_raw_select": (figure.median or 0) / (raw_ms or math.inf),
        "response_bytes": len(body),
        "healthz_ms": statistics.median(floor),
    }
    figure.notes += [
        f"GET /jobs/{job.pk}/poll/?cursor=N&keys=&status=S&progress_seq=N over HTTP, as "
        f"charts.js asks, N before the write of the last {POLL_BEHIND} points (gunicorn as in "
        "the Procfile, session cookie, gzip accepted), p50 of "
        f"{plan.poll_requests} after {WARM_UP_REQUESTS} warm-up requests",
        "baseline: GET /healthz on the same connection, alternating with the poll, p50 (with "
        "the cookie it loads the session and user as the poll does, then one SELECT 1)",
        f"the raw indexed SELECT of those 50 rows takes {raw_ms:.2f} ms on an open connection "
        f"(the poll is {(figure.median or 0) / (raw_ms or math.inf):.1f}x that); in process, "
        f"metrics_after() takes {statistics.median(in_process):.2f} ms",
    ]
    return figure


def catch_up_figure(plan: Plan, data: Data, port: int) -> Figure:
    """A poll from the very start of a million-point job, and what it does to other users."""
    figure = Figure("catch_up_poll_ms_1m", "ms (p50)", "ratio <= 1.5, others < 1 s")
    job = TrainingJob.objects.get(pk=data.big_job.pk)
    cookie = {"Cookie": _session_cookie(data.big_user), "Accept-Encoding": "gzip"}
    client = Http(port, cookie)
    catch_up = f"/jobs/{job.pk}/poll/?after=-1"
    normal = f"/jobs/{job.pk}/poll/?after={job.current_step - 1 - POLL_BEHIND}"
    figure.samples, _ = _http_p50(client, catch_up, plan.poll_requests)
    figure.baseline_samples, _ = _http_p50(client, f"/jobs/{job.pk}/series/", plan.poll_requests)
    alone, _ = _http_p50(client, normal, plan.poll_requests)
    # CATCH_UP_CLIENTS users catching up at once, back to back, while one more polls.
    stop = threading.Event()

    def hammer() -> None:
        own = Http(port, cookie)
        while not stop.is_set():
            own.request("GET", catch_up)
        own.close()

    threads = [threading.Thread(target=hammer) for _ in range(CATCH_UP_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        loaded, _ = _http_p50(client, normal, plan.poll_requests)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    client.close()
    loaded_p50 = statistics.median(loaded)
    figure.met = _below(figure.ratio, 1.5, inclusive=True) and _below(max(loaded), 1000)
    figure.extra |= {
        "normal_poll_ms": statistics.median(alone),
        "normal_poll_ms_under_catch_ups": loaded_p50,
        "normal_poll_max_ms_under_catch_ups": max(loaded),
        "catch_up_clients": CATCH_UP_CLIENTS,
    }
    figure.notes += [
        f"GET {catch_up} (the whole {job.current_step:,}-point history, downsampled from the "
        f"summary) over HTTP, p50 of {plan.poll_requests}",
        "baseline: the chart's first load, GET /series/ (the same 2,000 points), same connection",
        f"a normal poll ({POLL_BEHIND} new points) takes {statistics.median(alone):.1f} ms p50 "
        f"alone and {loaded_p50:.1f} ms p50 (max {max(loaded):.0f} ms) while "
        f"{CATCH_UP_CLIENTS} clients send catch-up polls back to back to gunicorn as in the "
        "Procfile (2 cores)",
    ]
    return figure


def export_http_figure(plan: Plan, data: Data, port: int) -> list[Figure]:
    """Both exports of the million-point job through gunicorn against the same in process."""
    from metrics.export import export_csv_chunks, export_json_chunks

    job = TrainingJob.objects.get(pk=data.big_job.pk)
    client = Http(port, {"Cookie": _session_cookie(data.big_user)})
    figures = []
    for fmt, chunks in (("csv", export_csv_chunks), ("json", export_json_chunks)):
        figure = Figure(f"export_{fmt}_http_s_1m", "s", "ratio <= 5")
        for _ in range(plan.export_repeats):
            seconds, (status, _, body) = timed(
                partial(client.request, "GET", f"/jobs/{job.pk}/metrics.{fmt}")
            )
            # The in-process run below outlasts gunicorn's keep-alive: a new connection each.
            client.close()
            if status != 200:
                raise RuntimeError(f"metrics.{fmt} answered {status}")
            figure.samples.append(seconds)
            # chunks() is a generator: the export runs inside sum(), within the timing.
            in_process, size = timed(partial(sum, map(len, chunks(job))))
            figure.baseline_samples.append(in_process)
        figure.met = _below(figure.ratio, 5, inclusive=True)
        figure.extra |= {"mb": len(body) / 1e6}
        figure.notes += [
            f"GET /jobs/{job.pk}/metrics.{fmt} ({len(body) / 1e6:.0f} MB, {job.current_step:,}"
            " points) over HTTP, read to the end",
            f"baseline: {chunks.__name__}(job) consumed in process ({size / 1e6:.0f} MB)",
        ]
        figures.append(figure)
    client.close()
    return figures


def dashboard_figure(plan: Plan, data: Data, port: int) -> Figure:
    from django.test import Client

    figure = Figure("dashboard_ms_1k", "ms (p50)", "p50 <= 15 ms, equal queries")
    client = Http(port, {"Cookie": _session_cookie(data.many_user), "Accept-Encoding": "gzip"})
    samples, _ = _http_p50(client, "/", plan.dashboard_requests)
    client.close()
    figure.samples = samples
    counts = {}
    for name, user in (("few", data.few_user), ("many", data.many_user)):
        browser = Client(HTTP_HOST="127.0.0.1")
        browser.force_login(user)
        browser.get("/")
        with CaptureQueriesContext(connection) as context:
            response = browser.get("/")
        if response.status_code != 200:
            raise RuntimeError(f"dashboard answered {response.status_code}")
        counts[name] = len(context.captured_queries)
    figure.met = _below(figure.median, 15, inclusive=True) and counts["few"] == counts["many"]
    figure.extra |= {
        "p90": percentile(samples, 0.9),
        "queries_10_jobs": counts["few"],
        "queries_1000_jobs": counts["many"],
    }
    figure.notes += [
        f"GET / over HTTP for a user with {len(data.tick_ids):,} jobs, p50 of "
        f"{plan.dashboard_requests} requests",
        f"queries per page: {counts['few']} with {plan.dashboard_few_jobs} jobs, "
        f"{counts['many']} with {len(data.tick_ids):,}",
    ]
    return figure


def api_figure(plan: Plan, data: Data, port: int) -> Figure:
    """10,000-point batches over HTTP as the client library sends them (columns), against a
    binary COPY of the same rows; the same points as rows (the older shape) alongside."""
    from accounts.services import api_token_create

    figure = Figure("api_ingest_points_per_s", "points/s", "ratio >= 0.2")
    _, token = api_token_create(user=data.big_user, name="bench")
    job = data.api_job
    simulator = TrainingSimulator(
        job.initial_loss, job.final_loss, job.decay_rate, seed=job.seed, warmup_steps=1000
    )
    size = plan.api_batch
    # Columns take steps from 0, rows from `rows_start`: both shapes write new points.
    rows_start = size * (plan.api_repeats + 1)
    length = (2 * rows_start, job.simulation_length[1])
    client = Http(port, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    path = f"/api/v1/jobs/{job.pk}/metrics/"
    _bare_table()
    write_figures.indexed_tables()
    binary_copy_samples: list[float] = []
    indexed_samples: list[float] = []
    rows_samples: list[float] = []
    bodies: dict[str, bytes] = {}
    for index in range(plan.api_repeats + 1):
        batch = simulator.generate_metrics_batch(index * size, size, *length)
        rows_batch = simulator.generate_metrics_batch(rows_start + index * size, size, *length)
        bodies = {
            "columns": write_figures.api_body(batch, "columns"),
            "points": write_figures.api_body(rows_batch, "points"),
        }
        seconds = _post_new_points(client, path, bodies["columns"], size)
        rows_seconds = _post_new_points(client, path, bodies["points"], size)
        if index == 0:
            held = write_figures.indexed_seed([job.pk])
            continue  # warm-up
        figure.samples.append(size / seconds)
        rows_samples.append(size / rows_seconds)
        indexed_samples.append(
            size / write_figures.copy_indexed_baseline([(job.pk, batch)], timezone.now())
        )
        _truncate_bare()
        figure.baseline_samples.append(size / copy_rows_baseline([(job.pk, batch)], timezone.now()))
        _truncate_bare()
        binary_copy_samples.append(size / copy_binary_baseline([(job.pk, batch)], timezone.now()))
    client.close()
    figure.notes += [
        f"POST of {size:,}-point JSON batches as columns, as clients/trainmon_client.py sends "
        f"them (~{len(bodies['columns']) / 1e6:.1f} MB; as rows ~"
        f"{len(bodies['points']) / 1e6:.1f} MB) over HTTP to gunicorn as in the Procfile, one "
        "client, keep-alive, Bearer token",
        "baseline: psycopg 3 COPY (write_row per row) of the same rows into the bare table, "
        "+ commit",
    ]
    _compare_with_binary_copy(figure, binary_copy_samples)
    write_figures.use_indexed_baseline(figure, indexed_samples, 0.35)
    rows = statistics.median(rows_samples)
    rows_ratio = rows / figure.baseline if figure.baseline else None
    figure.extra["api_ingest_points_per_s_rows"] = {"median": rows, "ratio": rows_ratio}
    figure.notes += [
        f'the same points as rows ({{"points": [...]}}, the older shape, posted alternately '
        f"with the columns): {rows:,.0f} points/s, ratio {rows_ratio or 0:.3f}",
        f"the indexed table held the job's {held[0]:,} warm-up rows before the first repeat",
    ]
    first_step = 2 * rows_start
    for shape in ("columns", "points"):
        profile = write_figures.api_profile(
            data.big_user, job, simulator=simulator, first_step=first_step, size=size, shape=shape
        )
        first_step += size * (write_figures.PROFILE_REPEATS + 1)
        lines = profile.lines(size)
        if shape == "points":  # the older shape: its total and parsing, for comparison
            lines = [line for line in lines if "total" in line or "pydantic" in line]
        figure.notes += [f"API breakdown ({shape}, in process): {line}" for line in lines]
        figure.extra["breakdown" if shape == "columns" else "breakdown_rows"] = profile.as_json()
    return figure


def _post_new_points(client: Http, path: str, body: bytes, size: int) -> float:
    """Seconds to POST a batch of `size` new points; RuntimeError unless all are stored."""
    started = time.perf_counter()
    status, _, answer = client.request("POST", path, body)
    seconds = time.perf_counter() - started
    if status != 200 or json.loads(answer)["created"] != size:
        raise RuntimeError(f"POST {path} answered {status}: {answer[:300]!r}")
    return seconds


def export_figure(plan: Plan, data: Data, env: dict[str, str]) -> Figure:
    figure = Figure("export_mb_1m", "MB (peak)", f"< {EXPORT_LIMIT_MB} MB")
    probe = [sys.executable, "-m", "bench.export_probe", str(data.big_job.pk)]
    runs = []
    for _ in range(plan.export_repeats):
        finished = subprocess.run(
            probe, cwd=BASE_DIR, env=env, capture_output=True, text=True, check=False
        )
        if finished.returncode != 0:
            raise RuntimeError(f"export probe failed: {finished.stderr.strip()[-500:]}")
        run = json.loads(finished.stdout)
        runs.append(run)
        figure.samples.append(run["peak_mb"])
    figure.met = _below(figure.median, EXPORT_LIMIT_MB)
    seconds = statistics.median(run["seconds"] for run in runs)
    figure.extra |= {
        "rows": runs[0]["rows"],
        "csv_mb": runs[0]["bytes"] / 1e6,
        "seconds": seconds,
        "rows_per_s": runs[0]["rows"] / seconds,
    }
    figure.notes += [
        "export_csv_chunks(job) consumed to the end in a fresh process: its peak resident "
        "size (VmHWM, reset first) minus its resident size just before the export started",
        f"{runs[0]['rows']:,} rows, {runs[0]['bytes'] / 1e6:.0f} MB of CSV in {seconds:.1f} s",
        f"the probe process peaked at {runs[0]['process_peak_mb']:.1f} MB resident in all "
        f"(Python, Django and psycopg included); the export added {runs[0]['peak_mb']:.2f} MB",
    ]
    return figure


def guarded(name: str, unit: str, target: str, build: Callable[[], Any]) -> list[Figure]:
    """Run a figure; a failure becomes a line that says so instead of ending the run."""
    try:
        result = build()
    except Exception as error:
        figure = Figure(name, unit, target, error=f"{type(error).__name__}: {error}")
        figure.notes.append(f"could not be measured: {figure.error}")
        return [figure]
    return result if isinstance(result, list) else [result]


# --- named series (issue 12) ------------------------------------------------------------------

NAMED_BARE_TABLE = "bench_bare_named"
# The data columns of metrics_namedmetric, without its id, index or constraint.
NAMED_BARE_COLUMNS = write_figures.INDEXED_NAMED_COLUMNS
NAMED_INGEST_KEYS = 5
PAGE_KEYS = 100
POLL_KEYS = 20
POLL_NEW_STEPS = 10
# The charts the job page loads before any scrolling: the panels in view (and 300 px below)
# on a 1080-pixel screen, in the one series request charts.js makes for them.
FIRST_SCREEN_KEYS = 12
NAMED_SEED_VALUES = 10_000  # values per write while seeding


def _write_named(job: TrainingJob, named: Any) -> None:
    """One write of named points through the write path, as the API makes it."""
    from jobs.services import jobs_lock
    from metrics.services import metric_batches_write

    with transaction.atomic():
        [locked] = jobs_lock([job.pk])
        metric_batches_write([(locked, MetricBatch.empty())], named={locked.pk: named})


def _named_batch(names: list[str], steps: np.ndarray, seed: int) -> Any:
    """Every name at every step: a decaying noisy curve per name, timestamps 1 s apart."""
    from metrics.points import NamedBatch

    rng = np.random.default_rng(seed)
    count = len(names) * len(steps)
    key_index = np.repeat(np.arange(len(names), dtype=np.int64), len(steps))
    all_steps = np.tile(steps.astype(np.int64), len(names))
    values = 2.0 * np.exp(-all_steps / 2e5) + 0.05 * rng.standard_normal(count)
    times = 1.7e9 + all_steps.astype(np.float64)
    return NamedBatch(tuple(names), key_index, all_steps, values, times)


def _seed_named(job: TrainingJob, names: list[str], points_per_key: int) -> float:
    """Write `points_per_key` steps of every name, NAMED_SEED_VALUES values per write.

    Returns values written per second (setup figure, for the record).
    """
    steps_per_write = max(1, NAMED_SEED_VALUES // len(names))
    started = time.perf_counter()
    for start in range(0, points_per_key, steps_per_write):
        steps = np.arange(start, min(start + steps_per_write, points_per_key))
        _write_named(job, _named_batch(names, steps, seed=start))
    return len(names) * points_per_key / (time.perf_counter() - started)


def _named_job(data: Data, name: str, steps: int) -> TrainingJob:
    return data._external_job(data.big_user, name, steps)


def named_ingest_figure(plan: Plan, data: Data, port: int) -> Figure:
    """API batches of 10,000 points x 5 named keys over HTTP against psycopg COPY."""
    from accounts.services import api_token_create

    figure = Figure("named_ingest_values_per_s", "values/s", "ratio >= 0.3")
    size, keys = plan.api_batch, NAMED_INGEST_KEYS
    job = _named_job(data, "bench-named-api", size * (plan.api_repeats + 1))
    _, token = api_token_create(user=data.big_user, name="bench-named")
    client = Http(port, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    path = f"/api/v1/jobs/{job.pk}/metrics/"
    names = [f"train/metric_{index}" for index in range(keys)]
    definition = ", ".join(f"{column} {sql_type}" for column, sql_type in NAMED_BARE_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {NAMED_BARE_TABLE}")
        cursor.execute(f"CREATE TABLE {NAMED_BARE_TABLE} ({definition})")
    body = b""
    for index in range(plan.api_repeats + 1):
        batch = _named_batch(names, np.arange(index * size, (index + 1) * size), seed=index)
        values = batch.values.reshape(keys, size)
        steps = batch.steps[:size].tolist()
        times = batch.times[:size].tolist()
        columns = [values[k].tolist() for k in range(keys)]
        body = json.dumps(
            {
                "points": [
                    {
                        "step": steps[i],
                        "timestamp": times[i],
                        "metrics": {names[k]: columns[k][i] for k in range(keys)},
                    }
                    for i in range(size)
                ]
            }
        ).encode()
        started = time.perf_counter()
        status, _, answer = client.request("POST", path, body)
        seconds = time.perf_counter() - started
        if status != 200 or json.loads(answer).get("named_created") != size * keys:
            raise RuntimeError(f"POST {path} answered {status}: {answer[:300]!r}")
        if index == 0:
            continue  # warm-up
        figure.samples.append(size * keys / seconds)
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {NAMED_BARE_TABLE}")
        figure.baseline_samples.append(size * keys / _copy_named_rows(batch, timezone.now()))
    client.close()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {NAMED_BARE_TABLE}")
    figure.met = figure.ratio is not None and figure.ratio >= 0.3
    figure.notes += [
        f"POST of {size:,}-point JSON batches, {keys} named keys per point ({size * keys:,} "
        f"values, ~{len(body) / 1e6:.1f} MB) over HTTP to gunicorn as in the Procfile, one "
        "client, keep-alive, Bearer token",
        "baseline: psycopg 3 COPY (write_row per row) of the same (key, step, value, time) "
        "rows into a bare table, + commit",
    ]
    return figure


def _copy_named_rows(batch: Any, now: datetime) -> float:
    """Seconds for psycopg's text COPY, `write_row` per (key, step, value, time) row."""
    started = time.perf_counter()
    names = ", ".join(column for column, _ in NAMED_BARE_COLUMNS)
    with (
        transaction.atomic(),
        connection.cursor() as cursor,
        cursor.copy(f"COPY {NAMED_BARE_TABLE} ({names}) FROM STDIN") as copy,
    ):
        for key, step, value in zip(
            batch.key_index.tolist(), batch.steps.tolist(), batch.values.tolist(), strict=True
        ):
            copy.write_row((key, step, value, now))
    return time.perf_counter() - started


def named_chart_figure(plan: Plan, data: Data) -> Figure:
    """One key of plan.big_job_points points downsampled to 2,000 vs GROUP BY over its rows."""
    from metrics.models import MetricKey
    from metrics.selectors import named_series_downsampled
    from metrics.series import POINTS_PER_BUCKET

    figure = Figure("named_chart_ms_1m", "ms", "ratio <= 0.2")
    points = plan.big_job_points
    job = _named_job(data, "bench-named-1m", points)
    seeded = _seed_named(job, ["val/loss"], points)
    key = MetricKey.objects.get(job=job, name="val/loss")
    max_points = plan.chart_points
    series = named_series_downsampled(key=key, max_points=max_points)  # warm-up
    for _ in range(plan.chart_repeats):
        seconds, series = timed(lambda: named_series_downsampled(key=key, max_points=max_points))
        figure.samples.append(seconds * 1000)
    groups = (max_points - 1) // POINTS_PER_BUCKET
    width = -(-points // groups)
    sql = (
        "SELECT step / %s AS bucket, MIN(value), MAX(value), COUNT(*), MAX(step)"
        " FROM metrics_namedmetric WHERE key_id = %s GROUP BY step / %s ORDER BY bucket"
    )
    for _ in range(plan.raw_chart_repeats):

        def raw() -> list[tuple[Any, ...]]:
            with connection.cursor() as cursor:
                cursor.execute(sql, [width, key.pk, width])
                return list(cursor.fetchall())

        seconds, _ = timed(raw)
        figure.baseline_samples.append(seconds * 1000)
    figure.met = figure.ratio is not None and figure.ratio <= 0.2
    figure.extra |= {"shown": len(series.steps), "total": series.total, "seed_values_per_s": seeded}
    figure.notes += [
        f"named_series_downsampled(key, {max_points}) of a {points:,}-point key: "
        f"{len(series.steps):,} of {series.total:,} points",
        f"baseline: GROUP BY step / {width} (min, max, count, last) over all the key's rows",
        f"seeded through metric_batches_write at {seeded:,.0f} values/s",
    ]
    if series.total != points:
        figure.notes.append("named_series_downsampled did not report the key's point count")
    return figure


class NamedPage:
    """A job with PAGE_KEYS keys x plan.page_key_points points, for the page and poll."""

    def __init__(self, plan: Plan, data: Data) -> None:
        self.names = [
            f"{'train' if index % 2 else 'val'}/metric_{index:03d}" for index in range(PAGE_KEYS)
        ]
        self.points = plan.page_key_points
        self.job = _named_job(data, "bench-named-100-keys", self.points + POLL_NEW_STEPS)
        self.seed_values_per_s = _seed_named(self.job, self.names, self.points)
        self.user = data.big_user
        # What autovacuum does after a bulk load (this server may run with it off): the
        # planner then knows a (key, step) lookup finds one row, as it would in production.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")


CHARTS_JS = BASE_DIR / "static" / "trainmon" / "charts.js"


def named_max_points() -> int:
    """The points budget charts.js asks for per named chart (its NAMED_MAX_POINTS)."""
    found = re.search(r"const NAMED_MAX_POINTS = (\d+);", CHARTS_JS.read_text())
    if found is None:
        raise RuntimeError(f"no NAMED_MAX_POINTS in {CHARTS_JS}")
    return int(found.group(1))


def job_page_figure(plan: Plan, page: NamedPage, port: int) -> Figure:
    """Everything the job page asks for before any scrolling, summed per page load."""
    figure = Figure("job_page_100_keys_ms", "ms (p50)", "p50 < 60 ms")
    job = page.job
    first = ",".join(sorted(page.names)[:FIRST_SCREEN_KEYS])
    named_points = min(plan.chart_points, named_max_points())
    paths = [
        job.get_absolute_url(),
        f"/jobs/{job.pk}/series/?max_points={plan.chart_points}",
        f"/jobs/{job.pk}/keys/",
        f"/jobs/{job.pk}/series/?keys={first}&max_points={named_points}",
    ]
    client = Http(port, {"Cookie": _session_cookie(page.user), "Accept-Encoding": "gzip"})
    sizes = {}
    for _ in range(WARM_UP_REQUESTS):
        for path in paths:
            client.request("GET", path)
    per_path: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(plan.page_loads):
        total = 0.0
        for path in paths:
            started = time.perf_counter()
            status, _, body = client.request("GET", path)
            elapsed = (time.perf_counter() - started) * 1000
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
            per_path[path].append(elapsed)
            sizes[path] = len(body)
            total += elapsed
        figure.samples.append(total)
    client.close()
    figure.met = _below(figure.median, 60)
    figure.extra |= {
        "p90": percentile(figure.samples, 0.9),
        "requests": {
            path: {"p50_ms": statistics.median(ms), "bytes": sizes[path]}
            for path, ms in per_path.items()
        },
    }
    figure.notes += [
        f"a job with {PAGE_KEYS} keys x {page.points:,} points; one page load = "
        + ", ".join(f"GET {path.split('?')[0]}" for path in paths)
        + f" (the headline at {plan.chart_points} points and {FIRST_SCREEN_KEYS} first-screen "
        f"keys at {named_points}, charts.js's NAMED_MAX_POINTS), sequential on one keep-alive "
        "connection, session cookie, gzip accepted, after ANALYZE",
        "per request p50: "
        + ", ".join(f"{statistics.median(ms):.1f} ms" for ms in per_path.values()),
    ]
    return figure


def named_poll_figure(plan: Plan, page: NamedPage, port: int) -> Figure:
    """A poll for 20 live keys (each with new points since the cursor) against /healthz."""
    from bench.poll_figures import http_p50_against_floor

    figure = Figure("poll_ms_20_keys", "ms (p50)", "ratio <= 2 (vs /healthz)")
    job = page.job
    job.refresh_from_db()
    cursor = job.ingest_seq
    live = page.names[:POLL_KEYS]
    steps = np.arange(page.points, page.points + POLL_NEW_STEPS)
    _write_named(job, _named_batch(live, steps, seed=1))
    client = Http(port, {"Cookie": _session_cookie(page.user), "Accept-Encoding": "gzip"})
    # As charts.js asks: the status it shows goes along, so the header is not re-sent.
    path = f"/jobs/{job.pk}/poll/?cursor={cursor}&keys={','.join(live)}&status={job.status}"
    samples, floor, body, _ = http_p50_against_floor(client, path, plan.poll_requests)
    client.close()
    figure.samples = samples
    figure.baseline_samples = floor
    figure.met = _below(figure.ratio, 2, inclusive=True)
    figure.extra |= {"p90": percentile(samples, 0.9), "response_bytes": len(body)}
    figure.notes += [
        f"GET /jobs/{job.pk}/poll/?cursor=N&keys=<{POLL_KEYS} keys>&status=S over HTTP (as "
        "charts.js asks: S is the status the page shows, so the header is not re-sent), each "
        f"key with {POLL_NEW_STEPS} points after the cursor, p50 of {plan.poll_requests}",
        "baseline: GET /healthz on the same connection, alternating with the poll, p50",
    ]
    return figure


# --- the MLflow tracking API (issue 13) -------------------------------------------------------

MLFLOW_INGEST_TARGET = 35_000  # points/s: 10x the 3,400 measured for a real MLflow server
MLFLOW_HISTORY_TARGET_MS = 2000
MLFLOW_OVERVIEW_TARGET_MS = 30
MLFLOW_HISTORY_KEY = "train/loss"
MLFLOW_SPIKE_STEP = 123_457
MLFLOW_SPIKE_VALUE = 1e6


class MlflowBench:
    """A token, an MLflow client on the bench's gunicorn and the 200,000-point run the read
    figures share (a decaying curve with one planted spike)."""

    def __init__(self, plan: Plan, data: Data, port: int) -> None:
        import os

        from mlflow.tracking import MlflowClient

        from accounts.services import api_token_create

        _, self.token = api_token_create(user=data.big_user, name="bench-mlflow")
        os.environ["MLFLOW_TRACKING_TOKEN"] = self.token
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        self.uri = f"http://127.0.0.1:{port}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.port = port
        self.plan = plan
        experiment_id = self.client.create_experiment("bench-mlflow")
        self.experiment_id = experiment_id
        self.history_points = plan.mlflow_history_points
        run = self.client.create_run(experiment_id, run_name="bench-history")
        self.history_run = run.info.run_id
        job = TrainingJob.objects.get(run_uuid=self.history_run)
        steps = np.arange(self.history_points, dtype=np.int64)
        for start in range(0, self.history_points, 50_000):
            chunk = steps[start : start + 50_000]
            batch = _named_batch([MLFLOW_HISTORY_KEY], chunk, seed=start)
            if start <= MLFLOW_SPIKE_STEP < start + len(chunk):
                batch.values[MLFLOW_SPIKE_STEP - start] = MLFLOW_SPIKE_VALUE
            _write_named(job, batch)

    def http(self) -> Http:
        return Http(self.port, {"Authorization": f"Bearer {self.token}"})


def _mlflow_metrics(keys: int, steps: int, start: int, seed: int) -> list[Any]:
    from mlflow.entities import Metric

    rng = np.random.default_rng(seed)
    values = rng.standard_normal(keys * steps).tolist()
    stamp = int(time.time() * 1000)
    return [
        Metric(f"train/metric_{k}", values[k * steps + s], stamp + s, start + s)
        for k in range(keys)
        for s in range(steps)
    ]


class _NoOpMlflow:
    """A loopback server that answers every POST with `{}` at once: the same client against
    it measures the client's own cost per log_batch (its floor with no server work)."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _copy_mlflow_rows(metrics: list[Any], keys: int) -> float:
    """Seconds for the COPY baseline of log_batch metrics (keys x steps, key-major)."""
    from metrics.points import NamedBatch

    steps = len(metrics) // keys
    named = NamedBatch(
        names=tuple(f"k{k}" for k in range(keys)),
        key_index=np.repeat(np.arange(keys, dtype=np.int64), steps),
        steps=np.asarray([m.step for m in metrics], dtype=np.int64),
        values=np.asarray([m.value for m in metrics]),
        times=np.asarray([m.timestamp / 1000 for m in metrics]),
    )
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {NAMED_BARE_TABLE}")
    return _copy_named_rows(named, timezone.now())


def _encode_and_serve_ms(
    django_client: Any, run_id: str, metrics: list[Any]
) -> tuple[float, float]:
    """(The client's own encode of a log_batch: to_proto + message_to_json, the server's
    time for that body in process through Django's test client), in ms."""
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.proto_json_utils import message_to_json

    started = time.perf_counter()
    body = message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics]))
    encoded = time.perf_counter()
    answer = django_client.post(
        "/api/2.0/mlflow/runs/log-batch", body, content_type="application/json"
    )
    served = time.perf_counter()
    if answer.status_code != 200:
        raise RuntimeError(f"in-process log-batch answered {answer.status_code}")
    return (encoded - started) * 1000, (served - encoded) * 1000


def mlflow_ingest_figures(plan: Plan, bench: MlflowBench) -> list[Figure]:
    """MlflowClient.log_batch of 1,000 metrics over HTTP: 5 keys x 200 steps, and 1,000 keys
    x 1 step; baseline: psycopg COPY of the same rows. Also the server's own time per batch
    (the same request in process, Django's test client) and the client's encode time."""
    from django.test import Client

    shapes = [("5 keys x 200 steps", 5, 200), ("1,000 keys x 1 step", 1000, 1)]
    figures = []
    definition = ", ".join(f"{column} {sql_type}" for column, sql_type in NAMED_BARE_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {NAMED_BARE_TABLE}")
        cursor.execute(f"CREATE TABLE {NAMED_BARE_TABLE} ({definition})")
    django_client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {bench.token}")
    from mlflow.tracking import MlflowClient

    no_op = _NoOpMlflow()
    no_op_client = MlflowClient(tracking_uri=no_op.uri)
    for index, (label, keys, steps) in enumerate(shapes):
        name = "mlflow_ingest_points_per_s" + ("" if index == 0 else "_1000_keys")
        figure = Figure(name, "points/s", f">= {MLFLOW_INGEST_TARGET:,}")
        run_id = bench.client.create_run(bench.experiment_id, run_name=f"bench-{name}").info.run_id
        server_run = bench.client.create_run(
            bench.experiment_id, run_name=f"in-process-{name}"
        ).info.run_id
        encode_ms: list[float] = []
        server_ms: list[float] = []
        floor_ms: list[float] = []
        for repeat in range(plan.mlflow_batches + 1):
            metrics = _mlflow_metrics(keys, steps, repeat * steps, seed=repeat)
            started = time.perf_counter()
            bench.client.log_batch(run_id, metrics=metrics, synchronous=True)
            seconds = time.perf_counter() - started
            if repeat == 0:
                continue  # warm-up
            figure.samples.append(len(metrics) / seconds)
            started = time.perf_counter()
            no_op_client.log_batch(run_id, metrics=metrics, synchronous=True)
            floor_ms.append((time.perf_counter() - started) * 1000)
            encode, server = _encode_and_serve_ms(django_client, server_run, metrics)
            encode_ms.append(encode)
            server_ms.append(server)
            figure.baseline_samples.append(len(metrics) / _copy_mlflow_rows(metrics, keys))
        written = bench.client.get_metric_history(run_id, "train/metric_0")
        if len(written) != steps * (plan.mlflow_batches + 1):
            raise RuntimeError(f"{name}: read back {len(written)} points of train/metric_0")
        figure.met = figure.median is not None and figure.median >= MLFLOW_INGEST_TARGET
        per_batch = 1000 / (figure.median or math.inf)
        figure.extra |= {
            "server_ms_per_batch": statistics.median(server_ms),
            "client_encode_ms_per_batch": statistics.median(encode_ms),
            "http_ms_per_batch": per_batch * 1000,
            "client_floor_ms_per_batch": statistics.median(floor_ms),
        }
        floor = statistics.median(floor_ms)
        figure.notes += [
            f"mlflow.tracking.MlflowClient.log_batch of 1,000 metrics ({label}), synchronous, "
            f"over HTTP to gunicorn as in the Procfile, {plan.mlflow_batches} batches, one "
            "client, MLFLOW_TRACKING_TOKEN",
            f"per batch: {per_batch * 1000:.1f} ms end to end; server in process (Django test "
            f"client, same body) {statistics.median(server_ms):.1f} ms; the client's own "
            f"encode (to_proto + message_to_json) {statistics.median(encode_ms):.1f} ms",
            "baseline: psycopg 3 COPY (write_row per row) of the same 1,000 rows into a bare "
            "table, + commit",
            f"the client's floor: the same log_batch against a server that answers {{}} at "
            f"once takes {floor:.1f} ms (at most {1000 / floor * 1000:,.0f} points/s for any "
            f"server); the {MLFLOW_INGEST_TARGET:,} points/s target leaves the server "
            f"{1000 / MLFLOW_INGEST_TARGET * 1000 - floor:.1f} ms per batch",
        ]
        figures.append(figure)
    no_op.close()
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {NAMED_BARE_TABLE}")
    return figures


def _history_parse(pages: list[bytes]) -> int:
    """What MlflowClient does with get-history answers once they arrive: JSON decode,
    protobuf ParseDict, Metric objects (mlflow's RestStore and call_endpoint)."""
    from mlflow.entities import Metric
    from mlflow.protos.service_pb2 import GetMetricHistory
    from mlflow.utils.proto_json_utils import parse_dict

    count = 0
    for page in pages:
        response = GetMetricHistory.Response()
        parse_dict(js_dict=json.loads(page), message=response)  # type: ignore[no-untyped-call]
        count += len([Metric.from_proto(metric) for metric in response.metrics])
    return count


def mlflow_history_figure(plan: Plan, bench: MlflowBench) -> Figure:
    figure = Figure("mlflow_history_ms_200k", "ms", f"<= {MLFLOW_HISTORY_TARGET_MS:,} ms")
    points = bench.history_points
    http = bench.http()
    path = (
        f"/api/2.0/mlflow/metrics/get-history?run_id={bench.history_run}"
        f"&metric_key={MLFLOW_HISTORY_KEY}"
    )
    fetch_ms: list[float] = []
    gzip_ms: list[float] = []
    size = gzip_size = 0
    pages: list[bytes] = []
    for repeat in range(plan.mlflow_history_repeats + 1):
        seconds, history = timed(
            lambda: bench.client.get_metric_history(bench.history_run, MLFLOW_HISTORY_KEY)
        )
        if len(history) != points:
            raise RuntimeError(f"get_metric_history returned {len(history):,} of {points:,}")
        if repeat == 0:
            spike = [m for m in history if m.step == MLFLOW_SPIKE_STEP]
            if points > MLFLOW_SPIKE_STEP and spike[0].value != MLFLOW_SPIKE_VALUE:
                raise RuntimeError("the history lost the planted spike")
            continue
        figure.samples.append(seconds * 1000)
        # The client's call outlasts gunicorn's keep-alive: a new connection each time.
        http.close()
        started = time.perf_counter()
        status, _, body = http.request("GET", path)
        fetch_ms.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}")
        pages, size = [body], len(body)
        started = time.perf_counter()
        status, headers, zipped = http.request("GET", path, headers={"Accept-Encoding": "gzip"})
        gzip_ms.append((time.perf_counter() - started) * 1000)
        gzip_size = len(zipped)
        figure.baseline_samples.append(timed(partial(_history_parse, pages))[0] * 1000)
    http.close()
    floor = figure.baseline or 0
    server = statistics.median(fetch_ms)
    figure.met = _below(figure.median, MLFLOW_HISTORY_TARGET_MS, inclusive=True)
    figure.extra |= {
        "client_parse_floor_ms": floor,
        "http_fetch_ms": server,
        "http_fetch_gzip_ms": statistics.median(gzip_ms),
        "bytes": size,
        "gzip_bytes": gzip_size,
    }
    figure.notes += [
        f"MlflowClient.get_metric_history of {points:,} points over HTTP to gunicorn as in the "
        f"Procfile, {plan.mlflow_history_repeats} calls",
        f"baseline (the client-only floor): the client's own parsing of the same "
        f"{size / 1e6:.1f} MB answer from memory (json.loads, ParseDict, Metric objects): "
        f"{floor:.0f} ms; the fetch alone (server + transfer, raw bytes) {server:.0f} ms, "
        f"gzip {statistics.median(gzip_ms):.0f} ms ({gzip_size / 1e6:.1f} MB"
        f"{'' if 'gzip' in str(headers).lower() else ', not compressed'})",
    ]
    if floor > MLFLOW_HISTORY_TARGET_MS:
        figure.notes.append(
            f"the target is below the client's own floor ({floor:.0f} ms > "
            f"{MLFLOW_HISTORY_TARGET_MS} ms): no server can meet it for this client"
        )
    return figure


def mlflow_overview_figure(plan: Plan, bench: MlflowBench) -> Figure:
    figure = Figure("mlflow_overview_ms_200k", "ms (p50)", f"<= {MLFLOW_OVERVIEW_TARGET_MS} ms")
    http = bench.http()
    path = (
        f"/api/2.0/mlflow/metrics/get-history-bulk-interval?run_ids={bench.history_run}"
        f"&metric_key={MLFLOW_HISTORY_KEY}&max_results=1000"
    )
    samples, body = _http_p50(http, path, plan.poll_requests)
    figure.samples = samples
    figure.baseline_samples, _ = _http_p50(http, "/healthz", plan.poll_requests)
    http.close()
    metrics = json.loads(body)["metrics"]
    kept = any(m["step"] == MLFLOW_SPIKE_STEP and m["value"] == MLFLOW_SPIKE_VALUE for m in metrics)
    figure.met = (
        _below(figure.median, MLFLOW_OVERVIEW_TARGET_MS, inclusive=True)
        and len(metrics) <= 1000
        and (kept or bench.history_points <= MLFLOW_SPIKE_STEP)
    )
    figure.notes += [
        f"GET get-history-bulk-interval, max_results=1000, of {bench.history_points:,} points "
        f"over HTTP, p50 of {plan.poll_requests}: {len(metrics)} points, planted spike "
        f"{'kept' if kept else 'LOST'}",
        "baseline: GET /healthz on the same connection, p50",
    ]
    return figure
