"""Logged models through the real client against live_server: `mlflow.pyfunc.log_model` and
loading `runs:/<run id>/model` back; the logged-models endpoints one by one."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from accounts.services import api_token_create
from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory, UserFactory
from tracking.artifacts import model_root
from tracking.models import LoggedModel, RunOutput

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("pandas")  # mlflow.pyfunc needs it
pytestmark = pytest.mark.django_db(transaction=True)

P = "/api/2.0/mlflow"


class AddN(mlflow.pyfunc.PythonModel):
    def __init__(self, n: int) -> None:
        self.n = n

    def predict(self, context, model_input: list[int], params=None) -> list[int]:
        return [value + self.n for value in model_input]


def test_a_logged_model_loads_back_through_runs_uri(tracking, artifacts_dir):
    with mlflow.start_run() as run:
        mlflow.log_param("n", "5")
        info = mlflow.pyfunc.log_model(name="model", python_model=AddN(5))
    run_id = run.info.run_id

    model = LoggedModel.objects.get(model_id=info.model_id)
    assert model.name == "model"
    assert model.status == LoggedModel.Status.READY
    assert model.source_run == TrainingJob.objects.get(run_uuid=run_id)
    assert RunOutput.objects.filter(job=model.source_run, model=model).exists()
    stored = artifacts_dir / model_root(model.model_id)
    assert (stored / "MLmodel").is_file()
    assert (stored / "python_model.pkl").is_file()

    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert loaded.predict([1, 2, 3]) == [6, 7, 8]
    # And by the model's own URI.
    assert mlflow.pyfunc.load_model(f"models:/{info.model_id}").predict([0]) == [5]

    client = tracking.client()
    got = client.get_logged_model(info.model_id)
    assert got.source_run_id == run_id
    assert got.status == "READY" or str(got.status).endswith("READY")
    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string="name = 'model'"
    )
    assert [m.model_id for m in found] == [info.model_id]


def test_the_page_lists_the_runs_model_files(tracking, artifacts_dir):
    with mlflow.start_run() as run:
        mlflow.pyfunc.log_model(name="model", python_model=AddN(1))
    job = TrainingJob.objects.get(run_uuid=run.info.run_id)
    page = Client()
    page.force_login(job.owner)
    from django.urls import reverse

    html = page.get(reverse("tracking_pages:job_artifacts", args=[job.pk])).content.decode()
    model = LoggedModel.objects.get(source_run=job)
    link = reverse("tracking_pages:job_model_artifact", args=[job.pk, model.model_id, "MLmodel"])
    assert "model/MLmodel" in html
    assert f'href="{link}"' in html
    body = b"".join(page.get(link).streaming_content)
    assert body == (artifacts_dir / model_root(model.model_id) / "MLmodel").read_bytes()


# --- the endpoints one by one -------------------------------------------------------------------


@pytest.fixture
def owner_api(artifacts_dir):
    owner = UserFactory()
    token = api_token_create(user=owner, name="t")[1]
    job = TrainingJobFactory(owner=owner, source=TrainingJob.Source.EXTERNAL)
    return owner, job, {"Authorization": f"Bearer {token}"}


def call(method: str, path: str, headers: dict[str, str], body: dict | None = None):
    client = Client()
    data = json.dumps(body) if body is not None else ""
    return getattr(client, method)(path, data, "application/json", headers=headers)


def test_create_get_finalize_tags_params_search_delete(owner_api, artifacts_dir):
    _, job, headers = owner_api
    created = call(
        "post",
        f"{P}/logged-models",
        headers,
        {
            "experiment_id": "0",
            "name": "clf",
            "source_run_id": job.run_uuid,
            "model_type": "sklearn",
            "params": [{"key": "alpha", "value": "0.1"}],
            "tags": [{"key": "team", "value": "nlp"}],
        },
    )
    assert created.status_code == 200, created.content
    info = created.json()["model"]["info"]
    model_id = info["model_id"]
    assert info["experiment_id"] == "0"
    assert info["source_run_id"] == job.run_uuid
    assert info["status"] == "LOGGED_MODEL_PENDING"
    assert info["artifact_uri"] == f"mlflow-artifacts:/0/models/{model_id}/artifacts"
    assert isinstance(info["creation_timestamp_ms"], int)
    assert created.json()["model"]["data"]["params"] == [{"key": "alpha", "value": "0.1"}]

    ready = call(
        "patch", f"{P}/logged-models/{model_id}", headers, {"status": "LOGGED_MODEL_READY"}
    )
    assert ready.json()["model"]["info"]["status"] == "LOGGED_MODEL_READY"
    bad = call("patch", f"{P}/logged-models/{model_id}", headers, {"status": "DONE"})
    assert bad.status_code == 400
    assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    tags = [{"key": "stage", "value": "dev"}]
    assert (
        call("patch", f"{P}/logged-models/{model_id}/tags", headers, {"tags": tags}).status_code
        == 200
    )
    assert call("delete", f"{P}/logged-models/{model_id}/tags/team", headers).status_code == 200
    params = [{"key": "beta", "value": "2"}]
    assert (
        call(
            "post", f"{P}/logged-models/{model_id}/params", headers, {"params": params}
        ).status_code
        == 200
    )
    model = LoggedModel.objects.get(model_id=model_id)
    assert model.tags == {"stage": "dev"}
    assert model.params == {"alpha": "0.1", "beta": "2"}

    outputs = {"run_id": job.run_uuid, "models": [{"model_id": model_id, "step": 3}]}
    assert call("post", f"{P}/runs/outputs", headers, outputs).status_code == 200
    assert RunOutput.objects.get(job=job, model=model).step == 3

    other = call("post", f"{P}/logged-models", headers, {"experiment_id": "0", "name": "other"})
    other_id = other.json()["model"]["info"]["model_id"]
    assert other.json()["model"]["info"]["name"] == "other"

    def search(**body):
        response = call(
            "post", f"{P}/logged-models/search", headers, {"experiment_ids": ["0"], **body}
        )
        assert response.status_code == 200, response.content
        return response.json()

    assert [m["info"]["model_id"] for m in search(filter="name = 'clf'")["models"]] == [model_id]
    assert [
        m["info"]["model_id"] for m in search(filter=f"source_run_id = '{job.run_uuid}'")["models"]
    ] == [model_id]
    assert [
        m["info"]["model_id"]
        for m in search(filter="tags.stage = 'dev' AND name LIKE 'c%'")["models"]
    ] == [model_id]
    ordered = search(order_by=[{"field_name": "name", "ascending": True}])
    assert [m["info"]["name"] for m in ordered["models"]] == ["clf", "other"]
    first = search(max_results=1, order_by=[{"field_name": "name", "ascending": False}])
    assert [m["info"]["name"] for m in first["models"]] == ["other"]
    rest = search(
        max_results=1,
        order_by=[{"field_name": "name", "ascending": False}],
        page_token=first["next_page_token"],
    )
    assert [m["info"]["name"] for m in rest["models"]] == ["clf"]
    assert "next_page_token" not in rest
    unsupported = call(
        "post",
        f"{P}/logged-models/search",
        headers,
        {"experiment_ids": ["0"], "filter": "metrics.acc > 1"},
    )
    assert unsupported.status_code == 400
    assert unsupported.json()["error_code"] == "INVALID_PARAMETER_VALUE"

    assert call("delete", f"{P}/logged-models/{other_id}", headers).status_code == 200
    gone = call("get", f"{P}/logged-models/{other_id}", headers)
    assert gone.status_code == 404
    assert gone.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_another_users_models_and_runs_read_as_missing(owner_api):
    _, job, headers = owner_api
    created = call("post", f"{P}/logged-models", headers, {"experiment_id": "0", "name": "m"})
    model_id = created.json()["model"]["info"]["model_id"]
    intruder = {
        "Authorization": f"Bearer {api_token_create(user=UserFactory(is_staff=True), name='i')[1]}"
    }
    for response in (
        call("get", f"{P}/logged-models/{model_id}", intruder),
        call("patch", f"{P}/logged-models/{model_id}", intruder, {"status": "LOGGED_MODEL_READY"}),
        call("delete", f"{P}/logged-models/{model_id}", intruder),
        call("post", f"{P}/runs/outputs", intruder, {"run_id": job.run_uuid, "models": []}),
        call(
            "post",
            f"{P}/logged-models",
            intruder,
            {"experiment_id": "0", "source_run_id": job.run_uuid},
        ),
        call(
            "put",
            f"/api/2.0/mlflow-artifacts/artifacts/0/models/{model_id}/artifacts/MLmodel",
            intruder,
        ),
    ):
        assert response.status_code == 404, response.content
        assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    # The intruder's own search of their Default sees nothing of the owner's.
    found = call("post", f"{P}/logged-models/search", intruder, {"experiment_ids": ["0"]})
    assert found.json()["models"] == []
    assert LoggedModel.objects.get(model_id=model_id).status == LoggedModel.Status.PENDING
    assert call("get", f"{P}/logged-models/{model_id}", {}).status_code == 401
