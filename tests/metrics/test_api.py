from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from accounts.services import api_token_create, api_token_revoke
from jobs.models import TrainingJob
from metrics.models import MetricKey, NamedMetric, TrainingMetric
from metrics.points import MAX_LOSS_MAGNITUDE
from tests.support.api import Api
from tests.support.factories import TrainingJobFactory, TrainingMetricFactory, UserFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db

MAX_POINTS = 10_000


def points(steps, **fields) -> list[dict[str, Any]]:
    return [
        {"step": step, "epoch": step // 20 + 1, "loss": 2.0 / (step + 1), **fields}
        for step in steps
    ]


def stored_steps(job: TrainingJob) -> list[int]:
    return list(job.metrics.order_by("step").values_list("step", flat=True))


def assert_error(response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json; charset=utf-8"
    body = response.json()
    assert set(body) == {"error", "details"}
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


# --- authentication -------------------------------------------------------------------------

ENDPOINTS = [
    ("post", "/jobs/"),
    ("get", "/jobs/{id}/"),
    ("post", "/jobs/{id}/finish/"),
    ("post", "/jobs/{id}/metrics/"),
    ("get", "/jobs/{id}/metrics/"),
    ("get", "/jobs/{id}/keys/"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_anonymous_requests_get_a_json_401_not_the_login_page(method, path, ext_job):
    anonymous = Api(None)
    path = path.format(id=ext_job.pk)
    response = anonymous.get(path) if method == "get" else anonymous.post(path, {})
    body = assert_error(response, 401)
    assert "Bearer" in body["error"]
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_a_session_login_does_not_authenticate_the_api(client, user, ext_job):
    client.force_login(user)
    assert_error(Api(None, client).get(f"/jobs/{ext_job.pk}/"), 401)


@pytest.mark.parametrize("header", ["Bearer nope", "Bearer ", "Token abc", "Basic dXNlcjpwdw=="])
def test_a_wrong_token_is_refused(header, ext_job):
    response = Client().get(f"/api/v1/jobs/{ext_job.pk}/", headers={"Authorization": header})
    assert_error(response, 401)


def test_a_revoked_token_is_refused(user, ext_job):
    token, raw = api_token_create(user=user, name="soon revoked")
    assert Api(raw).get(f"/jobs/{ext_job.pk}/").status_code == 200
    api_token_revoke(token=token)
    assert_error(Api(raw).get(f"/jobs/{ext_job.pk}/"), 401)


def test_a_deleted_or_inactive_users_token_is_refused():
    gone, kept = UserFactory(), UserFactory()
    gone_raw = api_token_create(user=gone, name="t")[1]
    kept_raw = api_token_create(user=kept, name="t")[1]
    gone.delete()
    kept.is_active = False
    kept.save()
    assert_error(Api(gone_raw).post("/jobs/", {"name": "x"}), 401)
    assert_error(Api(kept_raw).post("/jobs/", {"name": "x"}), 401)


def test_token_requests_need_no_csrf_token(user):
    raw = api_token_create(user=user, name="t")[1]
    api = Api(raw, Client(enforce_csrf_checks=True))
    response = api.post("/jobs/", {"name": "run", "total_epochs": 1, "steps_per_epoch": 5})
    assert response.status_code == 201


# --- jobs -----------------------------------------------------------------------------------


def test_create_an_external_running_job(api, user):
    response = api.post(
        "/jobs/",
        {
            "name": "  resnet-50  ",
            "total_epochs": 3,
            "steps_per_epoch": 100,
            "model_name": "resnet50",
            "dataset": "imagenet",
            "description": "from a script",
            "hyperparameters": {"lr": 0.1, "layers": [1, 2], "nested": {"a": None}},
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    job = TrainingJob.objects.get(pk=body["id"])
    assert (job.owner, job.source, job.status) == (user, "external", Status.RUNNING)
    assert job.name == "resnet-50"
    assert job.hyperparameters == {"lr": 0.1, "layers": [1, 2], "nested": {"a": None}}
    assert body["status"] == "running"
    assert (body["total_steps"], body["current_step"], body["progress_percent"]) == (300, 0, 0)
    assert body["last_loss"] is None
    assert body["url"] == f"http://testserver{reverse('jobs:detail', args=[job.pk])}"


def test_create_takes_nulls_for_optional_fields(api):
    response = api.post(
        "/jobs/",
        {
            "name": "n",
            "total_epochs": 1,
            "steps_per_epoch": 1,
            "model_name": None,
            "hyperparameters": None,
        },
    )
    assert response.status_code == 201, response.content
    assert response.json()["model_name"] == ""


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"total_epochs": 1, "steps_per_epoch": 1}, "name"),
        ({"name": "", "total_epochs": 1, "steps_per_epoch": 1}, "name"),
        ({"name": "   ", "total_epochs": 1, "steps_per_epoch": 1}, "name"),
        ({"name": "x" * 201, "total_epochs": 1, "steps_per_epoch": 1}, "name"),
        ({"name": "a\x00b", "total_epochs": 1, "steps_per_epoch": 1}, "name"),
        ({"name": "x", "total_epochs": 0, "steps_per_epoch": 1}, "total_epochs"),
        ({"name": "x", "total_epochs": "3", "steps_per_epoch": 1}, "total_epochs"),
        ({"name": "x", "total_epochs": 2.0, "steps_per_epoch": 1}, "total_epochs"),
        ({"name": "x", "total_epochs": True, "steps_per_epoch": 1}, "total_epochs"),
        ({"name": "x", "total_epochs": 10**30, "steps_per_epoch": 1}, "total_epochs"),
        ({"name": "x", "total_epochs": 1, "steps_per_epoch": -5}, "steps_per_epoch"),
        ({"name": "x", "total_epochs": 10_000, "steps_per_epoch": 1_000_000}, "body"),
        ({"name": "x", "total_epochs": 1, "steps_per_epoch": 1, "hyperparameters": [1]}, "hyper"),
        ({"name": "x", "total_epochs": 1, "steps_per_epoch": 1, "epochs": 3}, "epochs"),
    ],
)
def test_create_rejects_bad_fields_with_400(api, body, field):
    response = api.post("/jobs/", body)
    details = assert_error(response, 400)["details"]
    assert any(problem["field"].startswith(field) for problem in details), details
    assert not TrainingJob.objects.exists()


def test_create_rejects_hyperparameters_no_database_can_store(api):
    for hyperparameters in ('{"lr": NaN}', '{"a": {"b": "\\u0000"}}', '{"k": "\\ud800"}'):
        raw = '{"name": "x", "total_epochs": 1, "steps_per_epoch": 1, '
        raw += f'"hyperparameters": {hyperparameters}}}'
        assert_error(api.post("/jobs/", raw=raw), 400)
    deep: Any = 1
    for _ in range(40):
        deep = {"d": deep}
    assert_error(
        api.post(
            "/jobs/",
            {"name": "x", "total_epochs": 1, "steps_per_epoch": 1, "hyperparameters": deep},
        ),
        400,
    )
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"total_epochs": 10_001}, "total_epochs", "Total epochs can be at most 10,000."),
        ({"total_epochs": 0}, "total_epochs", "Total epochs must be a positive integer."),
        (
            {"steps_per_epoch": 1_000_001},
            "steps_per_epoch",
            "Steps per epoch can be at most 1,000,000.",
        ),
        (
            {"total_epochs": 10_000, "steps_per_epoch": 1_000_000},
            "body",
            "That is 10,000,000,000 steps in all; the most is 100,000,000.",
        ),
    ],
)
def test_create_refuses_the_services_bounds_with_its_messages(api, body, field, message):
    response = api.post("/jobs/", {"name": "x", "total_epochs": 1, "steps_per_epoch": 1} | body)
    assert assert_error(response, 400) == {
        "error": "Invalid request: 1 problem(s).",
        "details": [{"field": field, "message": message}],
    }
    assert not TrainingJob.objects.exists()


def test_create_refuses_oversized_hyperparameters(api, settings):
    settings.TRAINMON_HYPERPARAMETERS_MAX_BYTES = 30
    body = {"name": "x", "total_epochs": 1, "steps_per_epoch": 1}
    response = api.post("/jobs/", body | {"hyperparameters": {"notes": "z" * 30}})
    assert assert_error(response, 400)["details"] == [
        {
            "field": "hyperparameters",
            "message": "Hyperparameters can be at most 30 bytes of JSON; these are 42.",
        }
    ]
    assert not TrainingJob.objects.exists()


def test_the_schema_documents_the_services_bounds(client):
    schema = client.get("/api/v1/openapi.json").json()
    job_in = schema["components"]["schemas"]["JobIn"]["properties"]
    assert (job_in["total_epochs"]["minimum"], job_in["total_epochs"]["maximum"]) == (1, 10_000)
    assert job_in["steps_per_epoch"]["maximum"] == 1_000_000


def test_progress_is_rounded_down(api, user):
    job = TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=1_000_000)
    job.current_step = 999_999  # 99.9999 %: rounded to 3 decimals that would say done
    job.save()
    assert api.get(f"/jobs/{job.pk}/").json()["progress_percent"] == 99.999
    job.current_step = 1_000_000
    job.save()
    assert api.get(f"/jobs/{job.pk}/").json()["progress_percent"] == 100


@pytest.mark.parametrize("raw", ["", "{", "nope", '{"name": "x",}', "[]", "null", "5", "\xff"])
def test_malformed_bodies_are_400(api, raw):
    assert_error(api.post("/jobs/", raw=raw), 400)


def test_get_a_job(api, ext_job):
    response = api.get(f"/jobs/{ext_job.pk}/")
    assert response.status_code == 200
    assert response.json()["id"] == ext_job.pk
    assert response.json()["name"] == ext_job.name


def test_another_users_job_is_a_404_like_a_missing_one(other_api, ext_job):
    for response in (
        other_api.get(f"/jobs/{ext_job.pk}/"),
        other_api.get(f"/jobs/{ext_job.pk}/metrics/"),
        other_api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": points([0])}),
        other_api.post(f"/jobs/{ext_job.pk}/finish/", {"status": "completed"}),
        other_api.get(f"/jobs/{ext_job.pk + 1000}/"),
        other_api.get(f"/jobs/{10**30}/"),
    ):
        assert_error(response, 404)
    ext_job.refresh_from_db()
    assert ext_job.status == Status.RUNNING
    assert not ext_job.metrics.exists()


def test_staff_tokens_reach_only_their_own_jobs(staff_user, ext_job):
    # Staff see every job in the web UI; a token (which lives on a training machine) does not.
    api = Api(api_token_create(user=staff_user, name="t")[1])
    assert_error(api.get(f"/jobs/{ext_job.pk}/"), 404)
    own = TrainingJobFactory(owner=staff_user, source=TrainingJob.Source.EXTERNAL)
    assert api.get(f"/jobs/{own.pk}/").status_code == 200


def test_unknown_paths_and_methods_answer_json(api, ext_job):
    assert "slash" in assert_error(api.get(f"/jobs/{ext_job.pk}"), 404)["error"]
    assert_error(api.get("/nothing/here/"), 404)
    assert_error(api.get("/"), 404)
    response = api.client.delete(f"/api/v1/jobs/{ext_job.pk}/", headers=api.headers)
    assert_error(response, 405)
    assert response["Allow"] == "GET"


# --- finish ---------------------------------------------------------------------------------


def test_finish_completed(api, ext_job):
    response = api.post(f"/jobs/{ext_job.pk}/finish/", {"status": "completed"})
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    ext_job.refresh_from_db()
    assert ext_job.status == Status.COMPLETED
    assert ext_job.finished_at is not None


def test_finish_failed_keeps_the_reason(api, ext_job):
    response = api.post(
        f"/jobs/{ext_job.pk}/finish/", {"status": "failed", "reason": "CUDA out of memory"}
    )
    assert response.status_code == 200
    ext_job.refresh_from_db()
    assert (ext_job.status, ext_job.failure_reason) == (Status.FAILED, "CUDA out of memory")


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_finishing_a_finished_job_is_409(api, user, status):
    job = TrainingJobFactory(owner=user, source="external", status=status)
    body = assert_error(api.post(f"/jobs/{job.pk}/finish/", {"status": "completed"}), 409)
    assert status in body["error"]
    assert body["details"] == {"status": status}


def test_a_simulated_job_takes_no_reports(api, job):
    assert_error(api.post(f"/jobs/{job.pk}/finish/", {"status": "completed"}), 409)
    assert_error(api.post(f"/jobs/{job.pk}/metrics/", {"points": points([0])}), 409)
    assert not job.metrics.exists()


@pytest.mark.parametrize(
    "body", [{}, {"status": "done"}, {"status": "failed", "reason": "x" * 2001}, {"status": 1}]
)
def test_finish_rejects_bad_bodies(api, ext_job, body):
    assert_error(api.post(f"/jobs/{ext_job.pk}/finish/", body), 400)
    ext_job.refresh_from_db()
    assert ext_job.status == Status.RUNNING


# --- writing points -------------------------------------------------------------------------


def test_a_batch_is_stored_and_moves_the_job_on(api, ext_job):
    batch = points([2, 0, 1], accuracy=0.5, learning_rate=0.01)
    batch[0]["accuracy"] = 1  # an integer is a number too
    response = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["created"], body["duplicates"], body["discarded"]) == (3, 0, 0)
    assert body["job"]["current_step"] == 3
    assert body["job"]["last_loss"] == pytest.approx(2.0 / 3)
    assert body["job"]["last_accuracy"] == 1
    rows = list(
        ext_job.metrics.order_by("step").values_list("step", "epoch", "accuracy", "learning_rate")
    )
    assert rows == [(0, 1, 0.5, 0.01), (1, 1, 0.5, 0.01), (2, 1, 1.0, 0.01)]
    ext_job.refresh_from_db()
    assert ext_job.current_step == 3
    assert ext_job.last_reported_at is not None


def test_accuracy_and_learning_rate_are_optional(api, ext_job):
    batch = [
        {"step": 0, "epoch": 1, "loss": 1},
        {"step": 1, "epoch": 1, "loss": 1.5e-3, "accuracy": None, "learning_rate": None},
    ]
    assert api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}).status_code == 200
    assert list(ext_job.metrics.values_list("accuracy", "learning_rate")) == [(None, None)] * 2


def test_the_same_batch_twice_is_stored_once(api, ext_job):
    batch = {"points": points(range(10))}
    first = api.post(f"/jobs/{ext_job.pk}/metrics/", batch).json()
    second = api.post(f"/jobs/{ext_job.pk}/metrics/", batch).json()
    assert (first["created"], first["duplicates"]) == (10, 0)
    assert (second["created"], second["duplicates"]) == (0, 10)
    assert stored_steps(ext_job) == list(range(10))
    overlap = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": points(range(5, 15))}).json()
    assert (overlap["created"], overlap["duplicates"]) == (5, 5)
    assert overlap["job"]["current_step"] == 15


def test_an_empty_batch_is_a_heartbeat(api, ext_job):
    response = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": []})
    assert response.status_code == 200
    assert response.json()["created"] == 0
    ext_job.refresh_from_db()
    assert ext_job.last_reported_at is not None


def test_one_bad_point_in_10000_writes_nothing(api, user):
    job = TrainingJobFactory(owner=user, source="external", total_epochs=1, steps_per_epoch=20_000)
    batch = [{"step": step, "epoch": 1, "loss": 1.0} for step in range(MAX_POINTS)]
    batch[7_777]["accuracy"] = 1.5
    body = assert_error(api.post(f"/jobs/{job.pk}/metrics/", {"points": batch}), 400)
    [problem] = body["details"]
    assert (problem["field"], problem["index"]) == ("points[7777].accuracy", 7777)
    assert problem["message"] == "Input should be less than or equal to 1"
    assert "nothing was stored" in body["error"]
    assert not job.metrics.exists()
    job.refresh_from_db()
    assert (job.current_step, job.last_reported_at) == (0, None)


@pytest.mark.parametrize(
    ("point", "field"),
    [
        ({"step": -1}, "step"),
        ({"step": "3"}, "step"),
        ({"step": 3.0}, "step"),
        ({"step": None}, "step"),
        ({"step": 2**64}, "step"),
        ({"epoch": 0}, "epoch"),
        ({"epoch": True}, "epoch"),
        ({"epoch": 2**31}, "epoch"),
        ({"epoch": 2**64}, "epoch"),
        ({"loss": "nan"}, "loss"),
        ({"loss": "1.5"}, "loss"),
        ({"loss": None}, "loss"),
        ({"loss": [1]}, "loss"),
        ({"loss": 10**400}, "loss"),
        ({"accuracy": -0.1}, "accuracy"),
        ({"accuracy": "NaN"}, "accuracy"),
        ({"learning_rate": -1e-9}, "learning_rate"),
        ({"acc": 0.5}, "acc"),
    ],
)
def test_each_bad_field_is_named_with_its_point(api, ext_job, point, field):
    batch = points(range(3))
    batch[1] = {**batch[1], **point}
    body = assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}), 400)
    assert [(p["index"], p["field"]) for p in body["details"]] == [(1, f"points[1].{field}")]
    assert not ext_job.metrics.exists()


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_accuracy_or_learning_rate_literals_are_refused(api, ext_job, literal):
    for field in ("accuracy", "learning_rate"):
        raw = f'{{"points": [{{"step": 0, "epoch": 1, "loss": 1, "{field}": {literal}}}]}}'
        assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", raw=raw), 400)
    assert not ext_job.metrics.exists()


def test_repeated_points_are_refused_but_points_past_the_declared_length_are_not(api, ext_job):
    # Issue 12: the declared length (steps 0..59, epochs 1..3) is a hint, never a limit.
    batch = points(range(5))
    batch[1]["step"] = 60
    batch[2]["epoch"] = 4
    batch[4]["step"] = 3  # twice in the batch
    body = assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}), 400)
    assert [(p["index"], p["field"]) for p in body["details"]] == [(4, "points[4].step")]
    assert "1 invalid point(s)" in body["error"]
    assert not ext_job.metrics.exists()

    del batch[4]
    response = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch})
    assert response.status_code == 200, response.content
    assert stored_steps(ext_job) == [0, 2, 3, 60]


def test_the_error_list_is_bounded(api, ext_job):
    batch = [{"step": -1, "epoch": 1, "loss": 1}] * 500
    body = assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}), 400)
    assert len(body["details"]) == 50
    assert "500 invalid point(s)" in body["error"]


@pytest.mark.parametrize(
    ("loss", "raw"), [("NaN", False), ("Infinity", False), ("-Infinity", False), ("NaN", True)]
)
def test_a_non_finite_loss_fails_the_job_at_that_step(api, ext_job, loss, raw):
    batch = points(range(10))
    batch[6]["loss"] = loss
    response = (
        api.post(
            f"/jobs/{ext_job.pk}/metrics/",
            raw=json.dumps({"points": batch}).replace('"NaN"', "NaN"),
        )
        if raw
        else api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch})
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["created"], body["duplicates"], body["discarded"]) == (6, 0, 4)
    assert body["job"]["status"] == "failed"
    assert body["job"]["failure_reason"] == "loss diverged at step 6"
    assert stored_steps(ext_job) == list(range(6))
    ext_job.refresh_from_db()
    assert (ext_job.status, ext_job.failure_reason) == (Status.FAILED, "loss diverged at step 6")
    # The failed job takes nothing more.
    assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": points([7])}), 409)


def test_losses_too_large_to_sum_fail_the_job_instead_of_the_request(api, ext_job):
    # Two finite 1e308 losses in one summary bucket used to overflow its sum: a 500.
    batch = points(range(6))
    batch[3]["loss"] = batch[4]["loss"] = 1e308
    response = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["created"], body["discarded"]) == (3, 3)
    assert body["job"]["failure_reason"] == "loss diverged at step 3"
    assert stored_steps(ext_job) == [0, 1, 2]


def test_the_largest_loss_that_counts_is_stored_and_summed(api, ext_job):
    batch = points(range(4))
    for point in batch:
        point["loss"] = MAX_LOSS_MAGNITUDE
    body = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}).json()
    assert (body["created"], body["job"]["status"]) == (4, "running")
    bucket = ext_job.metric_summaries.get(width=64)
    assert bucket.sum_loss == 4 * MAX_LOSS_MAGNITUDE


def test_points_are_sorted_before_the_divergence_is_found(api, ext_job):
    batch = points([9, 3, 5, 1])
    batch[2]["loss"] = "NaN"  # step 5
    body = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}).json()
    assert stored_steps(ext_job) == [1, 3]
    assert body["job"]["failure_reason"] == "loss diverged at step 5"


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_a_finished_job_takes_no_points(api, user, status):
    job = TrainingJobFactory(owner=user, source="external", status=status)
    body = assert_error(api.post(f"/jobs/{job.pk}/metrics/", {"points": points([0])}), 409)
    assert body["details"] == {"status": status}
    assert not job.metrics.exists()


def test_a_batch_revives_a_stalled_job(api, user):
    job = TrainingJobFactory(owner=user, source="external", status=Status.STALLED)
    body = api.post(f"/jobs/{job.pk}/metrics/", {"points": points([0, 1])}).json()
    assert body["job"]["status"] == "running"
    job.refresh_from_db()
    assert job.status == Status.RUNNING


def test_a_paused_job_still_takes_points_and_stays_paused(api, user):
    job = TrainingJobFactory(owner=user, source="external", status=Status.PAUSED)
    body = api.post(f"/jobs/{job.pk}/metrics/", {"points": points([0])}).json()
    assert (body["created"], body["job"]["status"]) == (1, "paused")


def test_more_than_the_maximum_points_is_413_and_writes_nothing(api, user):
    job = TrainingJobFactory(owner=user, source="external", total_epochs=1, steps_per_epoch=20_000)
    batch = [{"step": step, "epoch": 1, "loss": 1.0} for step in range(MAX_POINTS + 1)]
    body = assert_error(api.post(f"/jobs/{job.pk}/metrics/", {"points": batch}), 413)
    assert "10000" in body["error"]
    assert body["details"] == {"limit": MAX_POINTS, "count": MAX_POINTS + 1}
    assert not job.metrics.exists()
    # Exactly the maximum is fine.
    response = api.post(f"/jobs/{job.pk}/metrics/", {"points": batch[:MAX_POINTS]})
    assert response.json()["created"] == MAX_POINTS


def test_a_body_over_the_upload_limit_is_413(api, ext_job, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    body = {"points": points(range(50))}
    assert len(json.dumps(body)) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    error = assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", body), 413)
    assert error["details"] == {"max_bytes": 2_000}
    assert not ext_job.metrics.exists()


def test_the_write_costs_the_same_queries_for_any_batch_size(
    api, ext_job, user, django_assert_num_queries
):
    big = TrainingJobFactory(owner=user, source="external", total_epochs=1, steps_per_epoch=5000)
    api.get(f"/jobs/{ext_job.pk}/")  # the token's last_used_at write happens once a minute
    with CaptureQueriesContext(connection) as small:
        api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": points(range(5))})
    with django_assert_num_queries(len(small)):
        api.post(
            f"/jobs/{big.pk}/metrics/",
            {"points": [{"step": s, "epoch": 1, "loss": 1.0} for s in range(5000)]},
        )
    assert big.metrics.count() == 5000


# --- reading points -------------------------------------------------------------------------


def test_read_the_points_after_a_step(api, ext_job):
    for step in range(10):
        TrainingMetricFactory(job=ext_job, step=step, loss=10 - step, accuracy=None)
    body = api.get(f"/jobs/{ext_job.pk}/metrics/", after=6).json()
    assert body["steps"] == [7, 8, 9]
    assert body["loss"] == [3, 2, 1]
    assert body["accuracy"] == [None, None, None]
    assert body["learning_rate"] == [1e-3] * 3
    assert (body["total"], body["downsampled"], body["last_step"]) == (3, False, 9)
    assert api.get(f"/jobs/{ext_job.pk}/metrics/", after=9).json()["steps"] == []
    assert api.get(f"/jobs/{ext_job.pk}/metrics/").json()["total"] == 10


def test_read_downsamples_past_max_points(api, user):
    job = TrainingJobFactory(owner=user, source="external", total_epochs=1, steps_per_epoch=500)
    api.post(
        f"/jobs/{job.pk}/metrics/",
        {"points": [{"step": s, "epoch": 1, "loss": 1 + (s % 7)} for s in range(500)]},
    )
    body = api.get(f"/jobs/{job.pk}/metrics/", max_points=100).json()
    assert body["downsampled"] is True
    assert body["total"] == 500
    assert 0 < len(body["steps"]) <= 100
    assert body["last_step"] == 499


@pytest.mark.parametrize(
    "params",
    [{"after": "x"}, {"after": -2}, {"max_points": 3}, {"max_points": 10_001}, {"after": 2**64}],
)
def test_read_rejects_bad_queries(api, ext_job, params):
    assert_error(api.get(f"/jobs/{ext_job.pk}/metrics/", **params), 400)


# --- schema and docs ------------------------------------------------------------------------


def test_the_openapi_schema_is_valid_and_public(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    validate(schema)
    paths = schema["paths"]
    assert set(paths) == {
        "/api/v1/jobs/",
        "/api/v1/jobs/{job_id}/",
        "/api/v1/jobs/{job_id}/finish/",
        "/api/v1/jobs/{job_id}/metrics/",
        "/api/v1/jobs/{job_id}/keys/",
    }
    write = paths["/api/v1/jobs/{job_id}/metrics/"]["post"]
    assert {"200", "400", "401", "404", "409", "413"} <= set(write["responses"])
    assert schema["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    # The write endpoint validates its body itself (trainmon/api_bodies.py): still documented.
    body = write["requestBody"]
    assert body["required"] is True
    media = body["content"]["application/json"]
    # Both shapes of a batch, with an example of each.
    assert media["schema"] == {
        "oneOf": [
            {"$ref": "#/components/schemas/MetricsIn"},
            {"$ref": "#/components/schemas/MetricColumnsIn"},
        ]
    }
    assert set(media["examples"]) == {"points", "columns"}
    components = schema["components"]["schemas"]
    points = components["MetricsIn"]["properties"]["points"]
    assert points["items"] == {"$ref": "#/components/schemas/PointIn"}
    assert "TRAINMON_API_MAX_POINTS" in points["description"]
    loss = components["PointIn"]["properties"]["loss"]
    assert {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]} in loss["anyOf"][0]["anyOf"]
    columns = components["MetricColumnsIn"]["properties"]["columns"]
    assert columns["$ref"] == "#/components/schemas/PointColumnsIn"
    assert set(components["PointColumnsIn"]["properties"]) == set(
        components["PointIn"]["properties"]
    )
    assert components["PointColumnsIn"]["required"] == ["step"]


@pytest.mark.parametrize("where", ["loss", "metrics"])
def test_an_integer_too_big_for_a_float_is_refused_not_read_as_infinity(api, ext_job, where):
    # From JSON, pydantic-core reads 10**400 as infinity; the API refuses it, as it always has.
    point = {"step": 1, "epoch": 1, "loss": 1.0}
    point |= {"loss": 10**400} if where == "loss" else {"metrics": {"a": 10**400}}
    body = assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": [point]}), 400)
    field = "loss" if where == "loss" else "metrics.a"
    assert body["details"] == [
        {"field": f"points[0].{field}", "message": "Input should be a valid number", "index": 0}
    ]
    ext_job.refresh_from_db()
    assert ext_job.status == TrainingJob.Status.RUNNING
    assert not ext_job.metrics.exists()


def test_the_docs_page_uses_bundled_files_only(client):
    response = client.get("/api/v1/docs")
    assert response.status_code == 200
    html = response.content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources
    assert all(source.startswith("/static/ninja/") for source in sources), sources
    assert "http://" not in html
    assert "https://" not in html
    assert '"validatorUrl": null' in html


# --- fuzzing --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
wild = (
    st.integers(min_value=-(2**80), max_value=2**80)
    | st.sampled_from(
        [2**31, 2**53 + 1, 2**63 - 2, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -0.0, 1e308]
    )
    | st.floats()
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", "1", "", "\x00", "∞"])
    | json_values
)


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """Valid values 4 times in 5, so that whole points are often valid but one field is not."""
    return st.integers(0, 4).flatmap(lambda k: valid if k else wild)


near_valid_point = st.fixed_dictionaries(
    {
        "step": mostly(st.integers(min_value=0, max_value=110)),
        "epoch": mostly(st.integers(min_value=1, max_value=3)),
        "loss": mostly(st.floats() | st.sampled_from(["NaN", "Infinity", "-Infinity"])),
    },
    optional={
        "accuracy": mostly(st.none() | st.floats(min_value=0, max_value=1)),
        "learning_rate": mostly(st.none() | st.floats(min_value=0, max_value=10)),
    },
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"points": json_values}),
    st.fixed_dictionaries({"points": st.lists(near_valid_point, max_size=8)}),
    st.fixed_dictionaries(
        {"points": st.lists(near_valid_point | json_values, max_size=8)},
        optional={"other": json_values},
    ),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
def test_generated_bodies_never_cause_a_5xx_or_a_partial_write(api, user, body):
    job = TrainingJobFactory(owner=user, source="external", total_epochs=2, steps_per_epoch=50)
    raw = json.dumps(body)  # NaN and Infinity go out as JSON literals, which the parser takes
    response = api.post(f"/jobs/{job.pk}/metrics/", raw=raw)
    assert response.status_code < 500, response.content
    assert response["Content-Type"] == "application/json; charset=utf-8"
    stored = job.metrics.count()
    if response.status_code == 200:
        reply = response.json()
        assert stored == reply["created"]
        assert reply["created"] + reply["duplicates"] + reply["discarded"] == len(body["points"])
    else:
        assert response.status_code in {400, 413}
        assert set(response.json()) == {"error", "details"}
        assert stored == 0
        job.refresh_from_db()
        assert job.last_reported_at is None


def test_non_finite_floats_are_rendered_as_valid_json(api, ext_job):
    # Stored losses are always finite (the write path drops the diverged tail), so replies are
    # strict JSON, parseable by any client.
    batch = points(range(3))
    batch[2]["loss"] = "Infinity"
    response = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch})
    json.loads(response.content, parse_constant=lambda name: pytest.fail(f"{name} in reply"))
    assert not math.isnan(response.json()["job"]["best_loss"])


# --- named metrics --------------------------------------------------------------------------


def named_values(job: TrainingJob) -> dict[str, dict[int, float | None]]:
    values: dict[str, dict[int, float | None]] = {}
    for name, step, value in NamedMetric.objects.filter(key__job=job).values_list(
        "key__name", "step", "value"
    ):
        values.setdefault(name, {})[step] = value
    return values


def test_named_metrics_are_stored_beside_the_loss_or_instead_of_it(api, ext_job):
    batch = [
        {"step": 0, "epoch": 1, "loss": 2.0, "metrics": {"train/grad_norm": 1.5}},
        {"step": 1, "loss": 1.9, "metrics": {"train/grad_norm": 1.25}},
        {"step": 1, "metrics": {"val_loss": 2.1, "val/acc": 0.25}},
    ]
    response = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch})
    assert response.status_code == 200, response.content
    reply = response.json()
    assert (reply["created"], reply["duplicates"], reply["discarded"]) == (2, 0, 0)
    assert (reply["named_created"], reply["named_duplicates"]) == (4, 0)
    # The point without a loss wrote no headline row; the epoch was derived from the step.
    assert list(ext_job.metrics.order_by("step").values_list("step", "epoch")) == [(0, 1), (1, 1)]
    assert named_values(ext_job) == {
        "train/grad_norm": {0: 1.5, 1: 1.25},
        "val_loss": {1: 2.1},
        "val/acc": {1: 0.25},
    }
    again = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}).json()
    assert (again["created"], again["duplicates"]) == (0, 2)
    assert (again["named_created"], again["named_duplicates"]) == (0, 4)
    assert NamedMetric.objects.count() == 4


def test_a_named_only_batch_writes_no_headline_point(api, ext_job):
    batch = [{"step": step, "metrics": {"val_loss": 1.0 / (step + 1)}} for step in range(5)]
    reply = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}).json()
    assert (reply["created"], reply["named_created"]) == (0, 5)
    assert not ext_job.metrics.exists()
    assert sorted(named_values(ext_job)["val_loss"]) == [0, 1, 2, 3, 4]


def test_non_finite_named_values_are_stored_and_the_job_goes_on(api, ext_job):
    raw = (
        '{"points": [{"step": 0, "metrics": {"a": "NaN", "b": "Infinity", "c": "-Infinity"}},'
        ' {"step": 1, "metrics": {"a": NaN, "b": Infinity, "c": 1e400}}]}'
    )
    response = api.post(f"/jobs/{ext_job.pk}/metrics/", raw=raw)
    assert response.status_code == 200, response.content
    assert response.json()["named_created"] == 6
    json.loads(response.content, parse_constant=lambda name: pytest.fail(f"{name} in reply"))
    values = named_values(ext_job)
    assert values["a"][0] is None or math.isnan(values["a"][0])
    assert values["a"][1] is None or math.isnan(values["a"][1])
    assert values["b"] == {0: math.inf, 1: math.inf}
    assert values["c"] == {0: -math.inf, 1: math.inf}
    ext_job.refresh_from_db()
    assert ext_job.status == Status.RUNNING


def test_the_timestamp_is_the_points_wall_clock(api, ext_job):
    batch = [{"step": 0, "timestamp": 1_700_000_000.5, "metrics": {"a": 1.0}}]
    assert api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}).status_code == 200
    [point] = NamedMetric.objects.all()
    assert point.reported_at.timestamp() == pytest.approx(1_700_000_000.5)


@pytest.mark.parametrize(
    ("point", "field"),
    [
        ({"metrics": {"bad,name": 1.0}}, "points[1].metrics"),
        ({"metrics": {"": 1.0}}, "points[1].metrics"),
        ({"metrics": {"x" * 251: 1.0}}, "points[1].metrics"),
        ({"metrics": {"é": 1.0}}, "points[1].metrics"),
        ({"metrics": {"a": "nan"}}, "points[1].metrics.a"),
        ({"metrics": {"a": None}}, "points[1].metrics.a"),
        ({"metrics": {"a": True}}, "points[1].metrics.a"),
        ({"metrics": {"a": [1]}}, "points[1].metrics.a"),
        ({"metrics": []}, "points[1].metrics"),
        ({"timestamp": -1}, "points[1].timestamp"),
        ({"timestamp": "now"}, "points[1].timestamp"),
        ({"timestamp": 1e300}, "points[1].timestamp"),
        ({"loss": None, "metrics": {}}, "points[1].loss"),
        ({"loss": None, "accuracy": 0.5, "metrics": {"a": 1.0}}, "points[1].accuracy"),
    ],
)
def test_bad_named_fields_are_refused_and_nothing_is_stored(api, ext_job, point, field):
    batch = [{"step": step, "epoch": 1, "loss": 1.0, "metrics": {"a": 1.0}} for step in range(3)]
    batch[1] = {**batch[1], **point}
    body = assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}), 400)
    assert [p["index"] for p in body["details"]] == [1]
    assert body["details"][0]["field"].startswith(field), body
    assert not ext_job.metrics.exists()
    assert not MetricKey.objects.exists()
    assert not NamedMetric.objects.exists()


def test_a_key_twice_at_one_step_is_refused_but_a_step_may_carry_both_series(api, ext_job):
    batch = [
        {"step": 3, "loss": 1.0, "metrics": {"a": 1.0}},
        {"step": 3, "metrics": {"b": 2.0}},  # fine: another series at the same step
        {"step": 3, "metrics": {"a": 3.0}},  # "a" at step 3 again
    ]
    body = assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}), 400)
    assert [(p["index"], p["field"]) for p in body["details"]] == [(2, "points[2].metrics.a")]
    assert not NamedMetric.objects.exists()
    del batch[2]
    reply = api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}).json()
    assert (reply["created"], reply["named_created"]) == (1, 2)


def test_the_key_limit_refuses_the_whole_batch_naming_the_limit(api, ext_job, settings):
    settings.TRAINMON_MAX_KEYS_PER_JOB = 3
    first = [{"step": 0, "metrics": {"a": 1.0, "b": 1.0}}]
    assert api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": first}).status_code == 200
    batch = [
        {"step": 1, "loss": 1.0, "metrics": {"a": 2.0, "c": 1.0}},
        {"step": 2, "metrics": {"d": 1.0}},
    ]
    body = assert_error(api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}), 400)
    assert "at most 3 metric keys" in body["error"]
    assert "TRAINMON_MAX_KEYS_PER_JOB" in body["error"]
    assert body["details"]["limit"] == 3
    assert not ext_job.metrics.exists()
    assert named_values(ext_job) == {"a": {0: 1.0}, "b": {0: 1.0}}
    # Within the limit, the same points go in.
    del batch[1]
    assert api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch}).status_code == 200
    assert set(named_values(ext_job)) == {"a", "b", "c"}


def test_list_a_jobs_keys(api, ext_job, other_api):
    batch = [
        {"step": step, "metrics": {"val_loss": 2.0 - step, "b/nan": "NaN" if step else 5.0}}
        for step in range(3)
    ]
    api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch})
    response = api.get(f"/jobs/{ext_job.pk}/keys/")
    assert response.status_code == 200
    json.loads(response.content, parse_constant=lambda name: pytest.fail(f"{name} in reply"))
    assert response.json() == {
        "keys": [
            {
                "key": "b/nan",
                "count": 3,
                "first_step": 0,
                "last_step": 2,
                "last": None,
                "min": 5.0,
                "max": 5.0,
            },
            {
                "key": "val_loss",
                "count": 3,
                "first_step": 0,
                "last_step": 2,
                "last": 0.0,
                "min": 0.0,
                "max": 2.0,
            },
        ]
    }
    assert_error(other_api.get(f"/jobs/{ext_job.pk}/keys/"), 404)


def test_read_named_series_by_key(api, ext_job):
    batch = [
        {"step": step, "metrics": {"a": float(step), "b": "NaN" if step == 5 else 1.0}}
        for step in range(10)
    ]
    api.post(f"/jobs/{ext_job.pk}/metrics/", {"points": batch})
    response = api.get(f"/jobs/{ext_job.pk}/metrics/", keys="a,b,missing", after=3)
    assert response.status_code == 200, response.content
    keys = response.json()["keys"]
    assert set(keys) == {"a", "b"}
    assert keys["a"]["steps"] == [4, 5, 6, 7, 8, 9]
    assert keys["a"]["values"] == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert (keys["a"]["total"], keys["a"]["downsampled"], keys["a"]["last_step"]) == (6, False, 9)
    assert keys["b"]["values"][1] is None  # step 5's NaN: a gap
    # Without keys: the headline series, as before.
    assert set(api.get(f"/jobs/{ext_job.pk}/metrics/").json()) >= {"steps", "loss"}


def test_a_named_read_downsamples_past_max_points(api, user):
    job = TrainingJobFactory(owner=user, source="external", total_epochs=1, steps_per_epoch=2000)
    batch = [{"step": step, "metrics": {"a": math.sin(step)}} for step in range(2000)]
    api.post(f"/jobs/{job.pk}/metrics/", {"points": batch})
    series = api.get(f"/jobs/{job.pk}/metrics/", keys="a", max_points=100).json()["keys"]["a"]
    assert series["downsampled"] is True
    assert series["total"] == 2000
    assert len(series["steps"]) <= 100
    assert series["steps"] == sorted(series["steps"])


def test_a_read_of_too_many_keys_is_refused(api, ext_job):
    keys = ",".join(f"k{index}" for index in range(101))
    assert_error(api.get(f"/jobs/{ext_job.pk}/metrics/", keys=keys), 400)


key_names = st.text(alphabet="abcXYZ019_-./: ", min_size=1, max_size=12) | st.sampled_from(
    ["", "a,b", "é", "x" * 251, "\x00", "a\n"]
)
named_value = st.floats() | st.sampled_from(["NaN", "Infinity", "-Infinity", "nan", None, True])
named_point = st.fixed_dictionaries(
    {"step": mostly(st.integers(min_value=0, max_value=30))},
    optional={
        "loss": mostly(st.floats(min_value=0, max_value=10)),
        "epoch": mostly(st.integers(min_value=1, max_value=2)),
        "metrics": mostly(st.dictionaries(key_names, named_value, max_size=4)),
        "timestamp": mostly(st.floats(min_value=0, max_value=4e9)),
    },
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(named_point, max_size=8), keys_limit=st.integers(1, 6))
def test_generated_named_batches_never_cause_a_5xx_or_a_partial_write(api, user, batch, keys_limit):
    from django.conf import settings as django_settings

    job = TrainingJobFactory(owner=user, source="external", total_epochs=2, steps_per_epoch=50)
    previous = django_settings.TRAINMON_MAX_KEYS_PER_JOB
    django_settings.TRAINMON_MAX_KEYS_PER_JOB = keys_limit
    try:
        response = api.post(f"/jobs/{job.pk}/metrics/", raw=json.dumps({"points": batch}))
    finally:
        django_settings.TRAINMON_MAX_KEYS_PER_JOB = previous
    assert response.status_code < 500, response.content
    stored = NamedMetric.objects.filter(key__job=job).count()
    if response.status_code == 200:
        reply = response.json()
        assert stored == reply["named_created"]
        sent = sum(len(point.get("metrics") or {}) for point in batch)
        assert reply["named_duplicates"] == 0  # a fresh job; repeats in a batch are refused
        assert reply["named_created"] <= sent
        assert job.metrics.count() == reply["created"]
    else:
        assert response.status_code == 400
        assert set(response.json()) == {"error", "details"}
        assert stored == 0
        assert not MetricKey.objects.filter(job=job).exists()
        assert not job.metrics.exists()


@pytest.mark.parametrize("shape", ["points", "columns"])
def test_the_highest_step_leaves_room_for_the_progress_after_it(api, user, shape):
    """A job's progress is the step after its highest: 2**63 - 1 would overflow it."""
    job = TrainingJobFactory(
        owner=user, source=TrainingJob.Source.EXTERNAL, total_epochs=None, steps_per_epoch=None
    )

    def body(step: int) -> dict[str, Any]:
        point = {"step": step, "loss": 1.0, "metrics": {"val/loss": 0.5}}
        if shape == "points":
            return {"points": [point]}
        return {"columns": {"step": [step], "loss": [1.0], "metrics": {"val/loss": [0.5]}}}

    assert_error(api.post(f"/jobs/{job.pk}/metrics/", body(2**63 - 1)), 400)
    assert not TrainingMetric.objects.filter(job=job).exists()
    answer = api.post(f"/jobs/{job.pk}/metrics/", body(2**63 - 2))
    assert answer.status_code == 200, answer.content
    job.refresh_from_db()
    assert job.current_step == 2**63 - 1
    assert named_values(job) == {"val/loss": {2**63 - 2: 0.5}}
