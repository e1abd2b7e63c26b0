"""Exports of named series: long format (key, step, value, timestamp), CSV and JSON."""

from __future__ import annotations

import csv
import datetime
import io
import json
import math
from functools import partial

import pytest
from django.db import transaction
from django.urls import reverse

from jobs.models import TrainingJob
from jobs.services import jobs_lock
from metrics import export
from metrics.export import NAMED_EXPORT_COLUMNS, named_csv_chunks, named_json_chunks
from metrics.models import NamedMetric
from metrics.points import MetricBatch, NamedBatch
from metrics.services import metric_batches_write
from tests.support.commands import command_output
from tests.support.factories import TrainingJobFactory

pytestmark = pytest.mark.django_db

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def named_write(job: TrainingJob, points: list[tuple[str, int, float, float]]) -> None:
    with transaction.atomic():
        [locked] = jobs_lock([job.pk])
        metric_batches_write(
            [(locked, MetricBatch.empty())], named={locked.pk: NamedBatch.from_points(points)}
        )


@pytest.fixture
def job_with_keys(user) -> TrainingJob:
    job = TrainingJobFactory(owner=user, name="Named run", source="external")
    points = [("val/loss", step, 2.0 - step / 10, T0 + step) for step in range(7)]
    points += [("grad norm", step, math.nan if step == 2 else step * 0.5, T0) for step in (1, 2, 3)]
    points += [("b", 0, math.inf, T0 + 0.25), ("b", 1, -math.inf, T0)]
    named_write(job, points)
    return job


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def parsed(rows: list[list[str]]) -> list[tuple]:
    return [(key, int(step), float(value) if value else None, ts) for key, step, value, ts in rows]


def test_csv_is_long_format_keys_by_name_steps_in_order(job_with_keys):
    header, *rows = csv_rows("".join(named_csv_chunks(job_with_keys)))
    assert header == list(NAMED_EXPORT_COLUMNS) == ["key", "step", "value", "timestamp"]
    values = parsed(rows)
    assert [(key, step) for key, step, _, _ in values] == [
        ("b", 0),
        ("b", 1),
        *(("grad norm", step) for step in (1, 2, 3)),
        *(("val/loss", step) for step in range(7)),
    ]
    # Non-finite values are empty cells; the rest round-trip.
    assert [value for key, _, value, _ in values if key != "val/loss"] == [
        None,
        None,
        0.5,
        None,
        1.5,
    ]
    assert values[-1][2] == pytest.approx(1.4)
    assert values[0][3] == "2026-01-01T00:00:00.250000+00:00"
    assert values[-1][3] == "2026-01-01T00:00:06+00:00"


def test_csv_exports_only_the_asked_keys(job_with_keys):
    rows = csv_rows("".join(named_csv_chunks(job_with_keys, {"b", "missing"})))[1:]
    assert [row[0] for row in rows] == ["b", "b"]


def test_json_is_one_document_with_nulls_for_non_finite_values(job_with_keys):
    text = "".join(named_json_chunks(job_with_keys))
    document = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in export"))
    assert document["job"]["id"] == job_with_keys.pk
    assert document["keys"] == ["b", "grad norm", "val/loss"]
    assert len(document["points"]) == 12
    assert document["points"][0] == {
        "key": "b",
        "step": 0,
        "value": None,
        "timestamp": "2026-01-01T00:00:00.250000+00:00",
    }
    assert [p["value"] for p in document["points"] if p["key"] == "grad norm"] == [0.5, None, 1.5]


def test_a_job_without_keys_exports_valid_empty_documents(job):
    assert csv_rows("".join(named_csv_chunks(job))) == [list(NAMED_EXPORT_COLUMNS)]
    document = json.loads("".join(named_json_chunks(job)))
    assert (document["keys"], document["points"]) == ([], [])


def test_the_portable_path_reads_page_by_page(
    job_with_keys, django_assert_num_queries, monkeypatch
):
    monkeypatch.setattr(export.connection, "vendor", "portable")
    # The key list, then per key its pages of 3: b (1 page), grad norm (2), val/loss (3).
    with django_assert_num_queries(1 + 1 + 2 + 3):
        chunks = list(named_csv_chunks(job_with_keys, page_size=3))
    assert len(csv_rows("".join(chunks))) == 13


@pytest.mark.postgres
def test_the_postgres_copy_path_writes_what_the_portable_path_writes(job_with_keys, monkeypatch):
    NamedMetric.objects.filter(key__name="val/loss", step=3).update(
        reported_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    )
    copied = "".join(named_csv_chunks(job_with_keys))
    copied_json = json.loads("".join(named_json_chunks(job_with_keys)))
    monkeypatch.setattr(export.connection, "vendor", "portable")
    paged = "".join(named_csv_chunks(job_with_keys, page_size=2))
    paged_json = json.loads("".join(named_json_chunks(job_with_keys, page_size=2)))
    assert parsed(csv_rows(copied)[1:]) == parsed(csv_rows(paged)[1:])
    assert copied_json == paged_json


@pytest.mark.postgres
def test_the_postgres_copy_path_sends_large_chunks(user, monkeypatch):
    job = TrainingJobFactory(owner=user, source="external", total_epochs=1, steps_per_epoch=3000)
    named_write(job, [(f"k{step % 3}", step, float(step), T0) for step in range(3000)])
    monkeypatch.setattr(export, "EXPORT_CHUNK_CHARS", 8192)
    chunks = list(named_csv_chunks(job))
    text = "".join(chunks)
    assert all(len(chunk) >= 8192 for chunk in chunks[1:-1])
    assert len(chunks) < len(text) // 8192 + 3
    assert len(csv_rows(text)) == 3001


# --- views and the command ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extension", "content_type"),
    [("csv", "text/csv; charset=utf-8"), ("json", "application/json")],
)
def test_the_views_stream_an_attachment(client, user, job_with_keys, extension, content_type):
    name = f"export_keys_{extension}"
    client.force_login(user)
    response = client.get(
        reverse(f"metrics:{name}", args=[job_with_keys.pk]), {"keys": "b,val/loss"}
    )
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == content_type
    assert response["Content-Disposition"] == (
        f'attachment; filename="trainmon-job-{job_with_keys.pk}-named-run-keys.{extension}"'
    )
    body = b"".join(response.streaming_content).decode()
    if extension == "csv":
        assert [row[0] for row in csv_rows(body)[1:]] == ["b"] * 2 + ["val/loss"] * 7
    else:
        assert json.loads(body)["keys"] == ["b", "val/loss"]
    everything = client.get(reverse(f"metrics:{name}", args=[job_with_keys.pk]))
    assert b"grad norm" in b"".join(everything.streaming_content)


def test_the_views_of_another_users_job_are_404(client, other_user, job_with_keys):
    client.force_login(other_user)
    for name in ("export_keys_csv", "export_keys_json"):
        assert client.get(reverse(f"metrics:{name}", args=[job_with_keys.pk])).status_code == 404


run = partial(command_output, "export_metrics")


def test_the_command_exports_named_series_with_keys(job_with_keys, tmp_path):
    rows = csv_rows(run(str(job_with_keys.pk), "--keys"))
    assert rows[0] == list(NAMED_EXPORT_COLUMNS)
    assert len(rows) == 13
    only = csv_rows(run(str(job_with_keys.pk), "--keys", "grad norm,b"))
    assert {row[0] for row in only[1:]} == {"b", "grad norm"}
    target = tmp_path / "named.json"
    run(str(job_with_keys.pk), "--keys", "val/loss", "--format", "json", "-o", str(target))
    document = json.loads(target.read_text())
    assert [point["step"] for point in document["points"]] == list(range(7))
    # Without --keys, the headline export as before.
    assert csv_rows(run(str(job_with_keys.pk)))[0][0] == "step"
