"""The job endpoints (jobs/api.py) with open-ended external runs (issue 12): the length is
optional, a hint for progress and ETA, never a limit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from accounts.services import api_token_create
from jobs.models import TrainingJob

pytestmark = pytest.mark.django_db


class Api:
    def __init__(self, token: str) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str):
        return self.client.get(f"/api/v1{path}", headers=self.headers)

    def post(self, path: str, body: Any):
        return self.client.post(
            f"/api/v1{path}",
            json.dumps(body),
            content_type="application/json",
            headers=self.headers,
        )


@pytest.fixture
def api(user) -> Api:
    return Api(api_token_create(user=user, name="test")[1])


def create(api: Api, **fields: Any) -> dict[str, Any]:
    response = api.post("/jobs/", {"name": "numpy-mlp", **fields})
    assert response.status_code == 201, response.content
    return response.json()


def send(api: Api, job_id: int, steps, **point: Any) -> dict[str, Any]:
    points = [{"step": step, "epoch": 1, "loss": 1.0 / (step + 1), **point} for step in steps]
    response = api.post(f"/jobs/{job_id}/metrics/", {"points": points})
    assert response.status_code == 200, response.content
    return response.json()


def test_a_job_without_length_is_created_and_reads_back_with_nulls(api):
    job = create(api)
    assert job["status"] == "running"
    assert job["source"] == "external"
    for field in ("total_epochs", "steps_per_epoch", "total_steps", "current_epoch"):
        assert job[field] is None, field
    assert job["progress_percent"] is None
    assert job["eta_seconds"] is None
    assert api.get(f"/jobs/{job['id']}/").json()["total_steps"] is None


@pytest.mark.parametrize("given", [{"total_epochs": 5}, {"steps_per_epoch": 40}])
def test_half_a_length_is_a_400_that_says_so(api, given):
    response = api.post("/jobs/", {"name": "x", **given})
    assert response.status_code == 400
    assert "Give both total_epochs and steps_per_epoch, or neither" in response.content.decode()
    assert not TrainingJob.objects.exists()


def test_explicit_nulls_mean_no_length(api):
    job = create(api, total_epochs=None, steps_per_epoch=None)
    assert job["total_steps"] is None


def test_points_of_a_job_without_length_are_stored(api):
    job = create(api)
    reply = send(api, job["id"], range(1, 1001), accuracy=0.5)
    assert (reply["created"], reply["duplicates"]) == (1000, 0)
    assert reply["job"]["current_step"] == 1001
    assert reply["job"]["progress_percent"] is None
    assert reply["job"]["eta_seconds"] is None
    assert TrainingJob.objects.get(pk=job["id"]).metrics.count() == 1000


@pytest.mark.parametrize("first", [0, 1])
def test_steps_from_0_or_1_past_the_declared_length_lose_nothing(api, first):
    # The script: 5 epochs x 40 steps, sending its last batch with step 200.
    job = create(api, total_epochs=5, steps_per_epoch=40)
    assert send(api, job["id"], range(first, first + 150))["job"]["progress_percent"] < 100
    reply = send(api, job["id"], range(first + 150, first + 200))
    assert reply["created"] == 50
    # 0..199: all declared steps, but a 1-based script would still send step 200, so not
    # 100 until it finishes; 1..200: that was the last step.
    assert reply["job"]["progress_percent"] == (100.0 if first else 99.999)
    overrun = send(api, job["id"], range(first + 200, first + 260))  # trains longer than said
    assert overrun["created"] == 60
    assert overrun["job"]["current_step"] == first + 260
    assert overrun["job"]["progress_percent"] == 100.0  # the bar is full, past the length
    assert overrun["job"]["eta_seconds"] is None
    assert TrainingJob.objects.get(pk=job["id"]).metrics.count() == 260
    finished = api.post(f"/jobs/{job['id']}/finish/", {"status": "completed"}).json()
    assert finished["progress_percent"] == 100.0


def test_the_schema_marks_the_length_optional_and_nullable(client):
    schema = client.get("/api/v1/openapi.json").json()["components"]["schemas"]
    assert "total_epochs" not in schema["JobIn"].get("required", [])
    assert "steps_per_epoch" not in schema["JobIn"].get("required", [])
    job_out = schema["JobOut"]["properties"]
    for field in ("total_epochs", "steps_per_epoch", "total_steps", "progress_percent"):
        assert {"type": "null"} in job_out[field]["anyOf"], field
