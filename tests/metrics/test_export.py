from __future__ import annotations

import csv
import gzip
import io
import json

import numpy as np
import pytest
from django.urls import reverse

from metrics.export import (
    EXPORT_COLUMNS,
    export_csv_chunks,
    export_filename,
    export_json_chunks,
    export_pages,
)
from metrics.models import TrainingMetric
from tests.support.factories import TrainingJobFactory, TrainingMetricFactory
from tests.support.metric_points import points_write

pytestmark = pytest.mark.django_db


@pytest.fixture
def job_with_points(user):
    job = TrainingJobFactory(
        owner=user, name="ResNet / run #1", total_epochs=10, steps_per_epoch=10
    )
    return points_write(
        job,
        range(23),
        losses=np.linspace(2, 1, 23),
        accuracies=[np.nan] + [0.5] * 22,
        learning_rates=[1e-5] * 23,
    )


def csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_csv_has_the_header_and_one_row_per_stored_point(job_with_points):
    rows = csv_rows("".join(export_csv_chunks(job_with_points)))
    assert rows[0] == list(EXPORT_COLUMNS)
    assert len(rows) - 1 == TrainingMetric.objects.filter(job=job_with_points).count() == 23
    step, epoch, loss, accuracy, rate, created = rows[1]
    # Numbers as numbers: PostgreSQL's COPY writes 2.0 as "2", Python as "2.0".
    assert (int(step), int(epoch), float(loss), accuracy, float(rate)) == (0, 1, 2.0, "", 1e-05)
    assert created.startswith(str(job_with_points.last_reported_at.date()))
    assert [int(row[0]) for row in rows[1:]] == list(range(23))
    assert float(rows[-1][2]) == 1.0


@pytest.mark.parametrize("page_size", [1, 5, 22, 23, 24, 1000])
def test_pages_cover_every_point_once_in_order(job_with_points, page_size):
    csv_steps = [
        int(row[0])
        for row in csv_rows("".join(export_csv_chunks(job_with_points, page_size=page_size)))[1:]
    ]
    json_steps = [
        point["step"]
        for point in json.loads("".join(export_json_chunks(job_with_points, page_size=page_size)))[
            "points"
        ]
    ]
    assert csv_steps == json_steps == list(range(23))


def test_export_reads_page_by_page(job_with_points, django_assert_num_queries, monkeypatch):
    # 23 points in pages of 5: five full-or-partial pages, and never the whole table at once.
    with django_assert_num_queries(5):
        pages = list(export_pages(job_with_points, page_size=5))
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    monkeypatch.setattr("metrics.export.connection.vendor", "portable")  # PostgreSQL uses COPY
    with django_assert_num_queries(5):
        chunks = list(export_csv_chunks(job_with_points, page_size=5))
    assert len(chunks) == 1 + 5  # the header, then one chunk per page


def test_json_is_one_valid_document_with_the_job_and_its_points(job_with_points):
    text = "".join(export_json_chunks(job_with_points))
    document = json.loads(text)
    assert document["job"]["id"] == job_with_points.pk
    assert document["job"]["name"] == "ResNet / run #1"
    assert len(document["points"]) == 23
    first = document["points"][0]
    assert set(first) == set(EXPORT_COLUMNS)
    assert (first["step"], first["epoch"], first["loss"], first["accuracy"]) == (0, 1, 2.0, None)


def test_exports_of_a_job_without_points_are_still_valid(job):
    assert csv_rows("".join(export_csv_chunks(job))) == [list(EXPORT_COLUMNS)]
    assert json.loads("".join(export_json_chunks(job)))["points"] == []


def test_json_writes_null_for_a_non_finite_value(job):
    # No write path stores one, but the column allows it; JSON has no Infinity.
    TrainingMetricFactory(job=job, step=0, learning_rate=float("inf"))
    document = json.loads("".join(export_json_chunks(job)))
    assert document["points"][0]["learning_rate"] is None


def test_filenames_are_safe(user):
    nasty = TrainingJobFactory(owner=user, name='../../etc/"passwd"\r\nX: y')
    name = export_filename(nasty, "csv")
    assert name == f"trainmon-job-{nasty.pk}-etcpasswd-x-y.csv"
    assert export_filename(TrainingJobFactory(owner=user, name="💥"), "json").endswith(
        "-metrics.json"
    )


# --- views ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("export_csv", "text/csv; charset=utf-8"), ("export_json", "application/json")],
)
def test_export_views_stream_an_attachment(client, user, job_with_points, name, content_type):
    client.force_login(user)
    response = client.get(reverse(f"metrics:{name}", args=[job_with_points.pk]))
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == content_type
    extension = name.removeprefix("export_")
    assert response["Content-Disposition"] == (
        f'attachment; filename="trainmon-job-{job_with_points.pk}-resnet-run-1.{extension}"'
    )
    body = b"".join(response.streaming_content).decode()
    if extension == "csv":
        assert len(csv_rows(body)) == 24
    else:
        assert len(json.loads(body)["points"]) == 23


def test_exports_of_another_users_job_are_404(client, user, other_user):
    theirs = points_write(
        TrainingJobFactory(owner=other_user, total_epochs=10, steps_per_epoch=10), range(3)
    )
    client.force_login(user)
    for name in ("export_csv", "export_json"):
        assert client.get(reverse(f"metrics:{name}", args=[theirs.pk])).status_code == 404
        assert client.get(reverse(f"metrics:{name}", args=[999999])).status_code == 404


def test_export_view_gzips_when_asked(client, user, job_with_points):
    client.force_login(user)
    response = client.get(
        reverse("metrics:export_csv", args=[job_with_points.pk]),
        headers={"accept-encoding": "gzip"},
    )
    assert response["Content-Encoding"] == "gzip"
    rows = csv_rows(gzip.decompress(b"".join(response.streaming_content)).decode())
    assert len(rows) == 24


@pytest.mark.postgres
def test_the_postgres_copy_paths_write_the_same_values_as_the_portable_paths(user, monkeypatch):
    import datetime

    from metrics import export

    job = TrainingJobFactory(owner=user, total_epochs=3, steps_per_epoch=100)
    points_write(
        job,
        list(range(250)),
        np.linspace(2.5, 0.3, 250),
        accuracies=[np.nan if step % 7 == 0 else step / 250 for step in range(250)],
    )
    TrainingMetric.objects.filter(job=job, step=3).update(
        created_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)  # no microseconds
    )
    copied = "".join(export.export_csv_chunks(job))
    copied_json = json.loads("".join(export.export_json_chunks(job)))
    monkeypatch.setattr(export.connection, "vendor", "portable")
    paged = "".join(export.export_csv_chunks(job, page_size=64))
    paged_json = json.loads("".join(export.export_json_chunks(job, page_size=64)))

    def values(text: str) -> list[list]:
        header, *rows = csv_rows(text)
        return [header] + [
            [int(r[0]), int(r[1]), *(float(x) if x else None for x in r[2:5]), r[5]] for r in rows
        ]

    assert values(copied) == values(paged)
    assert len(values(copied)) == 251

    assert copied_json == paged_json
    assert len(copied_json["points"]) == 250
    assert copied_json["points"][3]["created_at"] == "2026-01-01T00:00:00+00:00"


@pytest.mark.postgres
@pytest.mark.parametrize("export_chunks", ["export_csv_chunks", "export_json_chunks"])
def test_the_postgres_copy_path_sends_large_chunks_not_one_per_row(
    user, monkeypatch, export_chunks
):
    from metrics import export

    job = TrainingJobFactory(owner=user, total_epochs=3, steps_per_epoch=1000)
    points_write(job, list(range(3000)))
    monkeypatch.setattr(export, "EXPORT_CHUNK_CHARS", 8192)
    chunks = list(getattr(export, export_chunks)(job))
    text = "".join(chunks)
    # The header first, then pieces of at least EXPORT_CHUNK_CHARS, the last one shorter.
    assert all(len(chunk) >= 8192 for chunk in chunks[1:-2])
    assert len(chunks) < len(text) // 8192 + 4
    if export_chunks == "export_json_chunks":
        assert [p["step"] for p in json.loads(text)["points"]] == list(range(3000))
    else:
        assert [int(row[0]) for row in csv_rows(text)[1:]] == list(range(3000))
