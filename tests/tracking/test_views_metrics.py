"""Metric reads: get_metric_history through the client (paged past 25,000 points) and
get-history-bulk-interval (the overview keeps a spike)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from django.db import transaction
from mlflow.entities import Metric

from jobs.services import jobs_lock
from metrics.points import MetricBatch, NamedBatch
from metrics.services import metric_batches_write


def write_points(job, name: str, values: np.ndarray) -> None:
    # The client's log_batch would take 30 requests here; the write path is the same.
    count = len(values)
    batch = NamedBatch(
        (name,),
        np.zeros(count, dtype=np.int64),
        np.arange(count, dtype=np.int64),
        values,
        np.full(count, 1_700_000_000.0),
    )
    with transaction.atomic():
        [locked] = jobs_lock([job.pk])
        metric_batches_write([(locked, MetricBatch.empty())], named={job.pk: batch})


def test_get_metric_history_pages_past_25000_points(tracking):
    from jobs.models import TrainingJob

    client = tracking.client()
    run = client.create_run("0")
    job = TrainingJob.objects.get(run_uuid=run.info.run_id)
    values = np.linspace(1.0, 0.0, 30_001)
    values[7] = math.nan
    values[8] = math.inf
    write_points(job, "val/loss", values)
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert [m.step for m in history] == list(range(30_001))
    assert math.isnan(history[7].value)
    assert history[8].value == math.inf
    assert history[100].value == pytest.approx(values[100])
    assert history[0].timestamp == 1_700_000_000_000
    assert client.get_metric_history(run.info.run_id, "missing") == []


def test_history_reads_back_what_the_client_wrote(tracking):
    client = tracking.client()
    run = client.create_run("0")
    written = [Metric("loss", 1.0 / (i + 1), 1_000 + i, i) for i in range(50)]
    written.append(Metric("loss", float("-inf"), 5_000, 50))
    client.log_batch(run.info.run_id, metrics=written)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.key, m.value, m.timestamp, m.step) for m in history] == [
        (m.key, m.value, m.timestamp, m.step) for m in written
    ]


def test_bulk_interval_is_an_overview_that_keeps_a_spike(tracking, client):
    from jobs.models import TrainingJob

    mlflow_client = tracking.client()
    run = mlflow_client.create_run("0")
    job = TrainingJob.objects.get(run_uuid=run.info.run_id)
    values = np.full(20_000, 0.5)
    values[12_345] = 99.0
    write_points(job, "loss", values)
    response = client.get(
        "/api/2.0/mlflow/metrics/get-history-bulk-interval",
        {"run_ids": run.info.run_id, "metric_key": "loss", "max_results": 500},
        headers={"Authorization": f"Bearer {tracking.token}"},
    )
    assert response.status_code == 200
    points = response.json()["metrics"]
    assert 0 < len(points) <= 500
    assert max(point["value"] for point in points) == 99.0
    assert all(point["run_id"] == run.info.run_id for point in points)
    steps = [point["step"] for point in points]
    assert steps == sorted(steps)


def test_history_json_is_the_json_of_the_points():
    import json

    from tracking.views_metrics import history_json

    rows = [
        (0, 0.1, 1_700_000_000_000.0),
        (1, None, 1.0),
        (2, math.nan, 2.0),
        (3, math.inf, 3.0),
        (4, -math.inf, 4.0),
        (5, -0.0, 5.0),
        (6, 1e-300, 6.0),
        (7, 12345678901234567890.0, 7.0),
    ]
    decoded = json.loads(history_json("a/b c:d", rows, "tok"))
    assert decoded["next_page_token"] == "tok"
    assert [(m["key"], m["step"], m["timestamp"]) for m in decoded["metrics"]] == [
        ("a/b c:d", step, int(ms)) for step, _, ms in rows
    ]
    values = [m["value"] for m in decoded["metrics"]]
    assert values[0] == 0.1 and values[1:5] == ["NaN", "NaN", "Infinity", "-Infinity"]
    assert values[5:] == [-0.0, 1e-300, 12345678901234567890.0]
    assert json.loads(history_json("k", [], None)) == {"metrics": []}


def test_a_large_history_is_gzipped_only_for_a_client_that_accepts_it(tracking):
    import gzip
    import json

    from django.test import Client

    from jobs.models import TrainingJob

    run = tracking.client().create_run("0")
    job = TrainingJob.objects.get(run_uuid=run.info.run_id)
    write_points(job, "loss", np.linspace(1.0, 0.0, 20_000))
    token = tracking.token
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    path = f"/api/2.0/mlflow/metrics/get-history?run_id={run.info.run_id}&metric_key=loss"
    plain = client.get(path)
    zipped = client.get(path, HTTP_ACCEPT_ENCODING="gzip, deflate")
    assert "Content-Encoding" not in plain.headers
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped.headers["Vary"]
    assert gzip.decompress(zipped.content) == plain.content
    assert len(json.loads(plain.content)["metrics"]) == 20_000
    paged = client.get(path + "&max_results=15000").json()
    rest = client.get(path + f"&page_token={paged['next_page_token']}").json()
    assert [m["step"] for m in paged["metrics"] + rest["metrics"]] == list(range(20_000))
    assert "next_page_token" not in rest


@pytest.mark.postgres
def test_a_history_page_reads_its_own_points_not_the_rest_of_the_key(db):
    from django.db import connection

    from jobs.models import TrainingJob
    from metrics.models import MetricKey
    from tests.support.factories import TrainingJobFactory
    from tracking.views_metrics import _history_rows

    job = TrainingJobFactory(source=TrainingJob.Source.EXTERNAL)
    write_points(job, "val/loss", np.linspace(1.0, 0.0, 5_000))
    key = MetricKey.objects.get(job=job, name="val/loss")

    def points_fetched() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0)"
                " FROM pg_stat_xact_user_tables WHERE relname = 'metrics_namedmetric'"
            )
            return cursor.fetchone()[0]

    # The table was never analysed, as right after a run's points arrive.
    before = points_fetched()
    rows = _history_rows(key.pk, 999, limit=101)
    assert [row[0] for row in rows] == list(range(1_000, 1_101))
    assert points_fetched() - before <= 101
