"""The protocol layer: auth, error replies, NaN on the wire, and hypothesis over the
endpoints' JSON (never a 5xx, never a partial write)."""

from __future__ import annotations

import base64
import json
import math

import pytest
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from accounts.services import api_token_create
from jobs.models import TrainingJob
from jobs.services import job_create
from metrics.models import NamedMetric
from tracking.protocol import number_in, number_out

P = "/api/2.0/mlflow"
pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    _, raw = api_token_create(user=user, name="t")
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    client.raw = raw
    return client


@pytest.fixture
def run(user):
    return job_create(owner=user, name="run", source=TrainingJob.Source.EXTERNAL)


def post(client: Client, path: str, body) -> tuple[int, dict]:
    response = client.post(f"{P}/{path}", json.dumps(body), "application/json")
    return response.status_code, response.json()


def test_no_token_is_unauthenticated_in_mlflow_s_shape(client):
    response = client.get(f"{P}/experiments/get", {"experiment_id": "0"})
    assert response.status_code == 401
    assert response.json()["error_code"] == "UNAUTHENTICATED"


def test_basic_auth_needs_the_token_owner_s_name(api, user):
    good = base64.b64encode(f"{user.username}:{api.raw}".encode()).decode()
    bad = base64.b64encode(f"someone:{api.raw}".encode()).decode()
    client = Client()
    ok = client.get(
        f"{P}/experiments/get", {"experiment_id": "0"}, HTTP_AUTHORIZATION=f"Basic {good}"
    )
    assert ok.status_code == 200
    refused = client.get(
        f"{P}/experiments/get", {"experiment_id": "0"}, HTTP_AUTHORIZATION=f"Basic {bad}"
    )
    assert refused.status_code == 401


def test_unknown_routes_and_methods_answer_json(api):
    response = api.get(f"{P}/no/such/route")
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    response = api.get(f"{P}/runs/create")
    assert response.status_code == 405
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    assert api.get("/api/3.0/mlflow/server-info").status_code == 404


def test_bad_json_is_bad_request(api):
    response = api.post(f"{P}/runs/create", b"{not json", "application/json")
    assert response.status_code == 400
    assert response.json()["error_code"] == "BAD_REQUEST"


def test_nan_and_infinities_travel_as_strings(api, run):
    status, _ = post(
        api,
        "runs/log-batch",
        {
            "run_id": run.run_uuid,
            "metrics": [
                {"key": "a", "value": "NaN", "timestamp": 1, "step": 0},
                {"key": "b", "value": "Infinity", "timestamp": 1, "step": 0},
                {"key": "c", "value": "-Infinity", "timestamp": 1, "step": 0},
            ],
        },
    )
    assert status == 200
    response = api.get(f"{P}/runs/get", {"run_id": run.run_uuid})
    text = response.content.decode()
    assert "NaN" in text and "Infinity" in text
    metrics = {m["key"]: m["value"] for m in response.json()["run"]["data"]["metrics"]}
    assert metrics == {"a": "NaN", "b": "Infinity", "c": "-Infinity"}
    assert number_out(number_in("-Infinity", "v")) == "-Infinity"
    assert math.isnan(number_in("nan", "v"))


def test_ids_are_strings_and_statuses_upper_case(api, run):
    response = api.get(f"{P}/runs/get", {"run_id": run.run_uuid}).json()["run"]["info"]
    assert response["experiment_id"] == "0"
    assert response["status"] == "RUNNING"
    assert isinstance(response["start_time"], int)


def test_batch_limits(api, run):
    metric = {"key": "m", "value": 1, "timestamp": 0, "step": 0}
    too_many = [{**metric, "step": i} for i in range(1001)]
    status, body = post(api, "runs/log-batch", {"run_id": run.run_uuid, "metrics": too_many})
    assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE")
    params = [{"key": f"p{i}", "value": "v"} for i in range(101)]
    status, _ = post(api, "runs/log-batch", {"run_id": run.run_uuid, "params": params})
    assert status == 400
    tags = [{"key": f"t{i}", "value": "v"} for i in range(101)]
    status, _ = post(api, "runs/log-batch", {"run_id": run.run_uuid, "tags": tags})
    assert status == 400
    mixed = {
        "run_id": run.run_uuid,
        "metrics": [{**metric, "step": i} for i in range(950)],
        "params": params[:60],
    }
    status, body = post(api, "runs/log-batch", mixed)
    assert status == 400, body
    for bad in ({"value": 10**400}, {"timestamp": 2**63}, {"step": -1}, {"value": True}):
        status, body = post(
            api, "runs/log-batch", {"run_id": run.run_uuid, "metrics": [{**metric, **bad}]}
        )
        assert (status, body["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), bad
    assert not NamedMetric.objects.filter(key__job=run).exists()


# --- hypothesis: never a 5xx, never a partial write -------------------------------------------

keys = st.one_of(
    st.sampled_from(["loss", "acc", "val/loss", "lr", "a b", "x:y"]),
    st.text(max_size=260),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1.5", "x"]),
    st.text(max_size=20),
)
metric_items = st.fixed_dictionaries(
    {"key": keys, "value": json_scalars},
    optional={"timestamp": json_scalars, "step": json_scalars},
)
pair_items = st.fixed_dictionaries({"key": keys}, optional={"value": json_scalars})
batches = st.fixed_dictionaries(
    {},
    optional={
        "metrics": st.lists(metric_items, max_size=6),
        "params": st.lists(pair_items, max_size=4),
        "tags": st.lists(pair_items, max_size=4),
    },
)


def snapshot(run: TrainingJob) -> tuple:
    job = TrainingJob.objects.get(pk=run.pk)
    points = sorted(NamedMetric.objects.filter(key__job=run).values_list("key__name", "step"))
    return (job.hyperparameters, job.tags, points)


@hypothesis_settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=batches)
def test_log_batch_is_all_or_nothing_and_never_a_5xx(api, run, body):
    before = snapshot(run)
    response = api.post(
        f"{P}/runs/log-batch", json.dumps({"run_id": run.run_uuid, **body}), "application/json"
    )
    assert response.status_code in {200, 400}, response.content[:300]
    after = snapshot(run)
    if response.status_code == 400:
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert after == before
    else:
        for item in body.get("params", []):
            assert item["key"] in after[0]
        for item in body.get("tags", []):
            assert item["key"] in after[1]
        stored = {(name, step) for name, step in after[2]}
        for item in body.get("metrics", []):
            assert (item["key"], int(float(item.get("step") or 0))) in stored


ROUTES = [
    ("post", "experiments/create"),
    ("get", "experiments/get"),
    ("get", "experiments/get-by-name"),
    ("post", "experiments/search"),
    ("post", "experiments/update"),
    ("post", "experiments/delete"),
    ("post", "experiments/restore"),
    ("post", "experiments/set-experiment-tag"),
    ("post", "runs/create"),
    ("get", "runs/get"),
    ("post", "runs/update"),
    ("post", "runs/delete"),
    ("post", "runs/restore"),
    ("post", "runs/search"),
    ("post", "runs/log-metric"),
    ("post", "runs/log-parameter"),
    ("post", "runs/set-tag"),
    ("post", "runs/delete-tag"),
    ("post", "runs/log-inputs"),
    ("get", "metrics/get-history"),
    ("get", "metrics/get-history-bulk-interval"),
]
field_names = st.sampled_from(
    [
        "experiment_id",
        "experiment_ids",
        "name",
        "new_name",
        "experiment_name",
        "run_id",
        "run_name",
        "status",
        "end_time",
        "start_time",
        "key",
        "value",
        "timestamp",
        "step",
        "filter",
        "order_by",
        "max_results",
        "page_token",
        "run_view_type",
        "view_type",
        "metric_key",
        "run_ids",
        "tags",
        "datasets",
        "start_step",
        "end_step",
    ]
)
values = st.one_of(
    json_scalars,
    st.sampled_from(["0", "RUN", "FINISHED", "metrics.loss < 1", "name = 'x'", "eyJ4IjogMX0="]),
    st.lists(json_scalars, max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["key", "value", "dataset"]), json_scalars)),
)


@hypothesis_settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(ROUTES),
    body=st.dictionaries(field_names, values, max_size=6),
    use_run=st.booleans(),
)
def test_no_body_makes_a_5xx(api, run, route, body, use_run):
    method, path = route
    if use_run:
        body = {**body, "run_id": run.run_uuid}
    if method == "post":
        response = api.post(f"{P}/{path}", json.dumps(body), "application/json")
    else:
        query = {
            k: (json.dumps(v) if isinstance(v, dict) else v)
            for k, v in body.items()
            if v is not None
        }
        query = {
            k: [str(item) for item in v] if isinstance(v, list) else str(v)
            for k, v in query.items()
        }
        response = api.get(f"{P}/{path}", query)
    assert response.status_code < 500, (path, body, response.content[:300])
    assert "error_code" in response.json() or response.status_code == 200
