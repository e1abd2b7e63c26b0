"""MLflow artifacts through the real client against live_server: upload, list, download,
the size limit, path traversal, and another user's runs; and the job page's artifact list."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import requests
from django.test import Client
from django.urls import reverse

from accounts.services import api_token_create
from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory, UserFactory
from tracking.artifacts import (
    ArtifactPathError,
    ArtifactTooLargeError,
    artifact_save,
    clean_relative_path,
    run_root,
)

mlflow = pytest.importorskip("mlflow")
pytestmark = pytest.mark.django_db(transaction=True)

ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_files_and_folders_round_trip_byte_exact(tracking, artifacts_dir, tmp_path):
    # Past the 1 MiB chunk and spool sizes, with every byte value, so nothing is re-encoded.
    big = os.urandom(3 * 1024 * 1024 + 17)
    single = write(tmp_path / "up" / "weights.bin", big)
    folder = tmp_path / "folder"
    write(folder / "config.json", b'{"lr": 0.1}\n')
    write(folder / "nested" / "deep" / "table.csv", bytes(range(256)) * 10)
    # No empty file here: requests sends one chunked, which the test server (wsgiref) cannot
    # read; gunicorn, as in the Procfile, can.

    with mlflow.start_run() as run:
        mlflow.log_artifact(str(single))
        mlflow.log_artifacts(str(folder), artifact_path="data")
    run_id = run.info.run_id
    client = mlflow.MlflowClient()

    top = client.list_artifacts(run_id)
    assert [(f.path, f.is_dir, f.file_size) for f in top] == [
        ("data", True, None),
        ("weights.bin", False, len(big)),
    ]
    listed = client.list_artifacts(run_id, "data")
    assert [(f.path, f.is_dir) for f in listed] == [
        ("data/config.json", False),
        ("data/nested", True),
    ]
    assert client.list_artifacts(run_id, "data/nested/deep")[0].file_size == 2560

    out = tmp_path / "down"
    out.mkdir()
    local = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(out))
    assert tree(Path(local)) == {
        "weights.bin": big,
        "data/config.json": b'{"lr": 0.1}\n',
        "data/nested/deep/table.csv": bytes(range(256)) * 10,
    }
    one = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="data/config.json", dst_path=str(tmp_path / "one")
    )
    assert Path(one).read_bytes() == b'{"lr": 0.1}\n'
    # Stored through the storage API under the run's id, not the experiment's.
    stored = artifacts_dir / run_root(run_id) / "weights.bin"
    assert stored.read_bytes() == big


def test_a_second_upload_replaces_the_file(tracking, artifacts_dir, tmp_path):
    with mlflow.start_run() as run:
        mlflow.log_text("first version, longer", "notes/readme.txt")
        mlflow.log_text("second", "notes/readme.txt")
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/notes/readme.txt")
    assert text == "second"
    folder = artifacts_dir / run_root(run.info.run_id) / "notes"
    assert [path.name for path in folder.iterdir()] == ["readme.txt"]  # no renamed copy


def test_past_the_size_limit_413_and_nothing_stored(tracking, artifacts_dir, settings, tmp_path):
    settings.TRAINMON_ARTIFACT_MAX_BYTES = 1000
    small = write(tmp_path / "small.bin", b"s" * 1000)
    large = write(tmp_path / "large.bin", b"l" * 1001)
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(small))
        # The client's artifact uploads raise requests' error, with our reply in it.
        with pytest.raises(requests.HTTPError) as raised:
            mlflow.log_artifact(str(large))
    assert raised.value.response.status_code == 413
    assert raised.value.response.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "An artifact may be at most 1,000 bytes (TRAINMON_ARTIFACT_MAX_BYTES).",
    }
    root = artifacts_dir / run_root(run.info.run_id)
    assert sorted(path.name for path in root.iterdir()) == ["small.bin"]


def test_the_limit_holds_without_a_declared_length(settings, artifacts_dir):
    # A chunked upload carries no Content-Length: the count while streaming refuses it.
    with pytest.raises(ArtifactTooLargeError):
        artifact_save(root="runs/r", path="a.bin", stream=io.BytesIO(b"x" * 11), max_bytes=10)
    assert not (artifacts_dir / "runs" / "r").exists()
    assert artifact_save(root="runs/r", path="a.bin", stream=io.BytesIO(b"x" * 10), max_bytes=10)
    assert (artifacts_dir / "runs" / "r" / "a.bin").read_bytes() == b"x" * 10


@pytest.mark.parametrize(
    ("path", "clean"),
    [("a/b.txt", "a/b.txt"), ("./a/b/", "a/b"), ("a/./b", "a/b"), ("", "")],
)
def test_clean_relative_path(path, clean):
    assert clean_relative_path(path) == clean


@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "a//etc/passwd", "a\\..\\x", "a/\x00b"]
)
def test_clean_relative_path_refuses_escapes(path):
    with pytest.raises(ArtifactPathError):
        clean_relative_path(path)


@pytest.fixture
def owned_run(artifacts_dir):
    owner = UserFactory()
    job = TrainingJobFactory(owner=owner, source=TrainingJob.Source.EXTERNAL)
    token = api_token_create(user=owner, name="t")[1]
    return job, token


def api(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.mark.parametrize(
    "tail",
    [
        "../../{other}/artifacts/planted.txt",
        "%2e%2e/%2e%2e/{other}/artifacts/planted.txt",
        "sub/../../../../planted.txt",
        "/etc/passwd",
    ],
)
def test_path_traversal_is_refused(owned_run, artifacts_dir, tail):
    job, token = owned_run
    other = TrainingJobFactory(owner=job.owner, source=TrainingJob.Source.EXTERNAL)
    base = f"{ARTIFACTS}/0/{job.run_uuid}/artifacts/"
    path = base + tail.format(other=other.run_uuid)
    client = Client()
    response = client.put(path, b"planted", "application/octet-stream", headers=api(token))
    assert response.status_code in (400, 404), response.content
    assert response.json()["error_code"] in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST")
    assert not any(path.is_file() for path in artifacts_dir.rglob("*"))
    assert client.get(path, headers=api(token)).status_code in (400, 404)
    listed = client.get(
        ARTIFACTS, {"path": f"0/{job.run_uuid}/artifacts/../.."}, headers=api(token)
    )
    assert listed.status_code == 400
    assert listed.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_dot_dot_in_the_artifact_path_is_refused_as_invalid(owned_run):
    job, token = owned_run
    path = f"{ARTIFACTS}/0/{job.run_uuid}/artifacts/a/../../b.txt"
    response = Client().put(path, b"x", "application/octet-stream", headers=api(token))
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_another_users_run_reads_as_missing(owned_run, artifacts_dir):
    job, token = owned_run
    base = f"{ARTIFACTS}/0/{job.run_uuid}/artifacts"
    client = Client()
    assert (
        client.put(f"{base}/mine.txt", b"mine", "text/plain", headers=api(token)).status_code == 200
    )
    intruder = api_token_create(user=UserFactory(is_staff=True), name="i")[1]
    refused = [
        client.put(f"{base}/mine.txt", b"theirs", "text/plain", headers=api(intruder)),
        client.get(f"{base}/mine.txt", headers=api(intruder)),
        client.get(ARTIFACTS, {"path": base.removeprefix(f"{ARTIFACTS}/")}, headers=api(intruder)),
    ]
    for response in refused:
        assert response.status_code == 404
        assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    for response in (
        client.get(f"{base}/mine.txt"),
        client.put(f"{base}/mine.txt", b"anon", "text/plain"),
    ):
        assert response.status_code == 401
        assert response.json()["error_code"] == "UNAUTHENTICATED"
    stored = artifacts_dir / run_root(job.run_uuid) / "mine.txt"
    assert stored.read_bytes() == b"mine"
    mine = client.get(f"{base}/mine.txt", headers=api(token))
    assert b"".join(mine.streaming_content) == b"mine"


def test_server_info_is_a_json_404(owned_run):
    _, token = owned_run
    response = Client().get("/api/3.0/mlflow/server-info", headers=api(token))
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


# --- the job page ------------------------------------------------------------------------------


def test_the_job_page_lists_the_runs_artifacts_with_download_links(owned_run, artifacts_dir):
    job, token = owned_run
    base = f"{ARTIFACTS}/0/{job.run_uuid}/artifacts"
    client = Client()
    client.put(f"{base}/plots/loss.png", b"\x89PNG..", "image/png", headers=api(token))
    client.put(f"{base}/<b>odd</b>.txt", b"<script>x</script>", "text/plain", headers=api(token))

    page = Client()
    page.force_login(job.owner)
    detail = page.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    partial_url = reverse("tracking_pages:job_artifacts", args=[job.pk])
    assert f'hx-get="{partial_url}"' in detail
    html = page.get(partial_url).content.decode()
    link = reverse("tracking_pages:job_artifact", args=[job.pk, "plots/loss.png"])
    assert f'href="{link}"' in html
    assert "plots/loss.png" in html
    assert "&lt;b&gt;odd&lt;/b&gt;.txt" in html  # names are escaped
    assert "<b>odd</b>" not in html

    download = page.get(link)
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == b"\x89PNG.."
    assert download["Content-Disposition"].startswith("attachment")
    assert download["Content-Type"] == "application/octet-stream"
    gzip = page.get(link, headers={"Accept-Encoding": "gzip"})
    assert gzip["Content-Length"] == "6"  # sent as stored, never re-encoded
    assert not gzip.has_header("Content-Encoding")

    stranger = Client()
    stranger.force_login(UserFactory())
    assert stranger.get(partial_url).status_code == 404
    assert stranger.get(link).status_code == 404
    staff = Client()
    staff.force_login(UserFactory(is_staff=True))
    assert staff.get(partial_url).status_code == 200
    missing = reverse("tracking_pages:job_artifact", args=[job.pk, "nope.txt"])
    assert page.get(missing).status_code == 404


def test_a_job_without_artifacts_says_so(owned_run):
    job, _ = owned_run
    page = Client()
    page.force_login(job.owner)
    html = page.get(reverse("tracking_pages:job_artifacts", args=[job.pk])).content.decode()
    assert "None logged" in html


def test_deleting_the_job_deletes_its_run_artifacts(owned_run, artifacts_dir):
    from jobs.services import job_delete

    job, token = owned_run
    keep = TrainingJobFactory(owner=job.owner, source=TrainingJob.Source.EXTERNAL)
    client = Client()
    for run in (job, keep):
        path = f"{ARTIFACTS}/0/{run.run_uuid}/artifacts/sub/file.txt"
        assert client.put(path, b"x", "text/plain", headers=api(token)).status_code == 200
    job_delete(job=job)
    assert not any((artifacts_dir / run_root(job.run_uuid)).rglob("*.txt"))
    assert (artifacts_dir / run_root(keep.run_uuid) / "sub" / "file.txt").is_file()
