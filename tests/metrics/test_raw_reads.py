"""No read of a long series touches more raw points than it returns, plus one summary bucket
at each end (issue 14): every series read of a job past the summary's threshold is answered
from the summary (metrics/summary.py).

Measured on PostgreSQL: each query a request sends is run again under EXPLAIN (ANALYZE,
FORMAT JSON), and the rows every plan node took from a points table (returned by the node or
removed by its filter, times its loops) are added up. A path that went back to scanning the
raw rows would read the whole range (100,000 points here) and fail by a factor of 40.
SQLite has no such plans; the same paths run there in test_selectors and test_summary.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from accounts.services import api_token_create
from jobs.models import TrainingJob
from metrics.models import IngestLog, MetricKey, NamedMetric, TrainingMetric
from metrics.selectors import _news_statement
from metrics.series import POINTS_PER_BUCKET, POLL_MAX_POINTS, SERIES_MAX_POINTS
from metrics.summary import KEY_SUMMARY_FROM, summary_width_for
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import batches_write, metric_batch, named_write
from tests.support.plans import plan_nodes, rows_taken

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

STEPS = 100_000
RAW_TABLES = {TrainingMetric._meta.db_table, NamedMetric._meta.db_table}
KEY = "val/loss"


@pytest.fixture
def job(user):
    job = TrainingJobFactory(owner=user, total_epochs=100, steps_per_epoch=STEPS // 100)
    steps = np.arange(STEPS)
    rng = np.random.default_rng(14)
    losses = 2.0 - steps / STEPS + rng.random(STEPS) * 0.1
    batches_write((job, metric_batch(steps, steps_per_epoch=job.steps_per_epoch, losses=losses)))
    named_write(job, {KEY: (steps, rng.random(STEPS)), "lr": (steps[:100], 1e-3)})
    job.refresh_from_db()
    return job


@pytest.fixture
def api(user):
    client = Client()
    token = api_token_create(user=user, name="test")[1]
    return lambda path: client.get(f"/api/v1{path}", headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def browser(client, user):
    client.force_login(user)
    return client


def raw_rows_read(request: Callable[[], Any]) -> tuple[int, Any]:
    """The rows of the points tables that `request`'s queries read, and its answer."""
    with CaptureQueriesContext(connection) as captured:
        answer = request()
    read = 0
    with connection.cursor() as cursor:
        for query in captured.captured_queries:
            sql = query["sql"]
            if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            if not any(table in sql for table in RAW_TABLES):
                continue
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")
            [plan] = cursor.fetchone()[0]
            read += sum(
                rows_taken(node)
                for node in plan_nodes(plan["Plan"])
                if node.get("Relation Name") in RAW_TABLES
            )
    return read, answer


def bucket_width(steps_in_range: int, max_points: int) -> int:
    width = summary_width_for(steps_in_range, (max_points - 1) // POINTS_PER_BUCKET)
    assert width is not None, "the range is too short for the summary: make the job longer"
    return width


def assert_within_bound(read: int, returned: int, width: int) -> None:
    assert 0 < returned < STEPS
    assert read <= returned + 2 * width, f"read {read:,} raw rows to return {returned:,}"


def test_the_measure_sees_a_scan_of_the_raw_rows(job):
    def scan():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT MIN(loss), MAX(loss) FROM metrics_trainingmetric WHERE job_id = %s",
                [job.pk],
            )

    read, _ = raw_rows_read(scan)
    assert read >= STEPS


@pytest.mark.parametrize("max_points", [SERIES_MAX_POINTS, 10_000, 301])
@pytest.mark.parametrize("after", [-1, 0, 12_345, 50_000])
def test_api_headline_read(job, api, after, max_points):
    read, response = raw_rows_read(
        lambda: api(f"/jobs/{job.pk}/metrics/?after={after}&max_points={max_points}")
    )
    body = response.json()
    assert response.status_code == 200
    assert body["downsampled"]
    assert body["steps"][0] == after + 1
    assert body["steps"][-1] == STEPS - 1
    assert_within_bound(read, len(body["steps"]), bucket_width(STEPS - after - 1, max_points))


@pytest.mark.parametrize("max_points", [SERIES_MAX_POINTS, 301])
@pytest.mark.parametrize("after", [-1, 12_345])
def test_api_named_read(job, api, after, max_points):
    read, response = raw_rows_read(
        lambda: api(f"/jobs/{job.pk}/metrics/?keys={KEY},lr&after={after}&max_points={max_points}")
    )
    keys = response.json()["keys"]
    # "lr" is short (100 points): all of them, read as they are.
    assert len(keys["lr"]["steps"]) == (100 if after < 0 else 0)
    series = keys[KEY]
    assert series["downsampled"]
    assert series["steps"][0] == after + 1
    returned = len(series["steps"]) + len(keys["lr"]["steps"])
    assert_within_bound(read, returned, bucket_width(STEPS - after - 1, max_points))


def test_a_key_too_short_for_a_summary_reads_at_most_its_own_points(job, api):
    """Below KEY_SUMMARY_FROM points a key has no buckets: a read of it reads its raw rows,
    which are never more than that, however wide its steps (a validation metric)."""
    steps = np.arange(0, STEPS, STEPS // KEY_SUMMARY_FROM)
    named_write(job, {"val/sparse": (steps, np.linspace(1.0, 0.5, len(steps)))})
    read, response = raw_rows_read(
        lambda: api(f"/jobs/{job.pk}/metrics/?keys=val/sparse&max_points=301")
    )
    series = response.json()["keys"]["val/sparse"]
    assert response.status_code == 200 and series["downsampled"]
    assert len(series["steps"]) <= 301
    assert read == len(steps) == KEY_SUMMARY_FROM


def test_api_read_of_the_newest_points_reads_just_those(job, api):
    after = STEPS - 501
    read, response = raw_rows_read(lambda: api(f"/jobs/{job.pk}/metrics/?after={after}"))
    body = response.json()
    assert not body["downsampled"]
    assert body["steps"] == list(range(after + 1, STEPS))
    assert read <= len(body["steps"]) + 1


def test_api_keys_read_no_points(job, api):
    read, response = raw_rows_read(lambda: api(f"/jobs/{job.pk}/keys/"))
    assert {key["key"] for key in response.json()["keys"]} == {KEY, "lr"}
    assert read == 0


@pytest.mark.parametrize("after", [-1, 12_345])
def test_catch_up_poll(job, browser, after):
    read, response = raw_rows_read(lambda: browser.get(f"/jobs/{job.pk}/poll/?after={after}"))
    html = response.content.decode()
    data = json.loads(html.split('id="poll-data" hx-swap-oob="true">')[1].split("<")[0])
    assert data["catch_up"]
    assert data["steps"][0] == after + 1
    assert_within_bound(read, len(data["steps"]), bucket_width(STEPS - after - 1, POLL_MAX_POINTS))


def test_job_page_series_and_named_series(job, browser):
    read, response = raw_rows_read(lambda: browser.get(f"/jobs/{job.pk}/series/"))
    shown = len(response.json()["steps"])
    assert_within_bound(read, shown, bucket_width(STEPS, SERIES_MAX_POINTS))

    read, response = raw_rows_read(
        lambda: browser.get(f"/jobs/{job.pk}/series/?keys={KEY}&max_points=301")
    )
    shown = len(response.json()["keys"][KEY]["steps"])
    assert_within_bound(read, shown, bucket_width(STEPS, 301))

    read, response = raw_rows_read(lambda: browser.get(f"/jobs/{job.pk}/keys/"))
    assert response.status_code == 200
    assert read == 0


@pytest.fixture
def news(user):
    """A 20,000-step job, the ingest position after it, and the 50 headline steps written
    since (with 3 and 1 new points of its two keys)."""
    job = TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL)
    old, new = np.arange(20_000), np.arange(20_000, 20_050)
    batches_write((job, metric_batch(old, steps_per_epoch=job.steps_per_epoch)))
    named_write(job, {KEY: (old, 1.0), "lr": (old, 1e-3)})
    job.refresh_from_db()
    cursor = job.ingest_seq
    batches_write((job, metric_batch(new, steps_per_epoch=job.steps_per_epoch)))
    named_write(job, {KEY: (new[:3], 0.5), "lr": (new[:1], 1e-4)})
    job.refresh_from_db()
    return job, cursor, new


def test_a_poll_by_cursor_reads_just_the_ranges_written_since(news, browser):
    """The page's poll: one statement reads the ingest log and, per range it names, the
    points through the (owner, step) index; never the points before them."""
    job, cursor, new = news
    url = f"/jobs/{job.pk}/poll/?cursor={cursor}&keys={KEY}&status={job.status}"
    read, response = raw_rows_read(lambda: browser.get(url))
    data = response.json()
    assert data["headline"]["steps"] == new.tolist()
    assert data["keys"] == {KEY: data["keys"][KEY]}  # "lr" moved too, but was not asked for
    assert data["keys"][KEY]["steps"] == new[:3].tolist()
    assert read == len(new) + 3


def test_the_poll_runs_prepared_generic_plans_that_read_just_the_news(user, news, browser):
    """The poll's two statements are prepared on the connection (trainmon.prepared) and run
    the plan PostgreSQL made without their values, which must hold for any job: the ingest
    log's rows after the cursor through its (job, seq) index, the job's keys (or those the
    rows name), and the points of each changed range through the (owner, step) index; never
    another job's rows."""
    job, cursor, new = news
    _other_jobs_keys_and_log(user, jobs=50, keys_per_job=200, writes_per_job=400)
    url = f"/jobs/{job.pk}/poll/?cursor={cursor}&keys={KEY}&status={job.status}"
    for _ in range(3):
        data = browser.get(url).json()
        assert data["headline"]["steps"] == new.tolist()
        assert data["keys"][KEY]["steps"] == new[:3].tolist()
        assert data["keys"][KEY]["values"] == [0.5] * 3
    with connection.cursor() as cursor_:
        cursor_.execute(
            "SELECT name, statement, generic_plans, custom_plans FROM pg_prepared_statements"
        )
        prepared = cursor_.fetchall()
    sql, params = _news_statement(job.pk, cursor, job.ingest_seq, [KEY], POLL_MAX_POINTS)
    as_sent = sql % tuple(f"${number}" for number in range(1, len(params) + 1))  # psycopg's form
    news = [row for row in prepared if row[1] == as_sent]
    live = [row for row in prepared if 'FROM "jobs_trainingjob" WHERE id = $1' in row[1]]
    assert [row[2:] for row in news] == [(3, 0)]
    assert [row[2:] for row in live] == [(3, 0)]

    read = _rows_read_by_prepared(news[0][0], params)
    log_rows = IngestLog.objects.filter(job=job, seq__gt=cursor).count()
    assert read[IngestLog._meta.db_table] == log_rows
    # The job's keys, or the key of each log row: whichever the plan finds cheaper.
    job_keys = MetricKey.objects.filter(job=job).count()
    assert read[MetricKey._meta.db_table] <= max(job_keys, log_rows)
    # The points of each changed range ("lr" moved too: its range is found, its points not read).
    assert read[TrainingMetric._meta.db_table] == len(new)
    assert read[NamedMetric._meta.db_table] == 3


def _other_jobs_keys_and_log(
    user: Any, *, jobs: int, keys_per_job: int, writes_per_job: int
) -> None:
    """Other jobs' keys and ingest log rows, analyzed: enough that a plan reading them shows."""
    others = [TrainingJobFactory(owner=user).pk for _ in range(jobs)]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO metrics_metrickey (job_id, name, created_at, count)
            SELECT job, 'key/' || n, now(), 0
            FROM unnest(%s::bigint[]) AS job, generate_series(1, %s) AS n
            """,
            [others, keys_per_job],
        )
        cursor.execute(
            """
            INSERT INTO metrics_ingestlog (job_id, seq, key_id, min_step, max_step, created_at)
            SELECT job, seq, NULL, seq * 10, seq * 10 + 9, now()
            FROM unnest(%s::bigint[]) AS job, generate_series(1, %s) AS seq
            """,
            [others, writes_per_job],
        )
        cursor.execute("ANALYZE metrics_metrickey, metrics_ingestlog")


def _rows_read_by_prepared(name: str, params: list[Any]) -> Counter[str]:
    """The rows each table gave the prepared statement `name` run with `params`, by EXPLAIN
    ANALYZE: returned by a node reading it, or removed by its filter, times its loops."""
    placeholders = ", ".join(["%s"] * len(params))
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {name}({placeholders})", params)
        [plan] = cursor.fetchone()[0]
    read: Counter[str] = Counter()
    for node in plan_nodes(plan["Plan"]):
        if "Relation Name" in node:
            read[node["Relation Name"]] += rows_taken(node)
    return read
