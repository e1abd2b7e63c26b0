"""Who may do what, for every URL: one table, checked against the URL resolver.

Roles: anonymous, another (non-staff) user, the owner of the job/token, and staff (not the
owner). In the web UI staff see and control every job; API tokens reach their own user's jobs
only, staff included. A new route without a row here fails `test_the_table_covers_every_route`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import ApiToken
from accounts.services import api_token_create, api_token_revoke
from jobs.models import TrainingJob
from tests.support.factories import PASSWORD, TrainingJobFactory, TrainingMetricFactory, UserFactory
from tests.support.pages import form_csrf_token, htmx_csrf_token

pytestmark = pytest.mark.django_db

ROLES = ("anonymous", "other", "owner", "staff")
HTMX = {"HX-Request": "true"}
LOGIN = "login"  # 302 to the login page, nothing done
ADMIN_LOGIN = "admin-login"  # 302 to the admin's login page
ANY_LOGIN = "any-login"  # 302 to either
JSON_401 = "json-401"
JSON_404 = "json-404"
MLFLOW_401 = "mlflow-401"  # MLflow's {"error_code": "UNAUTHENTICATED", ...}
MLFLOW_404 = "mlflow-404"  # MLflow's {"error_code": "RESOURCE_DOES_NOT_EXIST" | ENDPOINT..., ...}


@dataclass
class World:
    """The rows every probe works on; the owner owns the job, the external job and the token."""

    owner: Any
    other: Any
    staff: Any
    job: TrainingJob
    ext_job: TrainingJob
    token: ApiToken
    raw_tokens: dict[str, str] = field(default_factory=dict)

    def client(self, role: str) -> Client:
        client = Client()
        if role != "anonymous":
            client.force_login(getattr(self, role))
        return client


@dataclass(frozen=True)
class Probe:
    method: str
    path: Callable[[World], str]
    expect: dict[str, int | str]  # role -> status code or LOGIN / ADMIN_LOGIN / JSON_*
    data: Callable[[World], Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    api: bool = False  # authenticate with the role's Bearer token instead of a session
    label: str = ""


def same(status: int | str) -> dict[str, int | str]:
    return dict.fromkeys(ROLES, status)


def logged_in(status: int | str, *, other: int | str | None = None, staff: int | str | None = None):
    expect: dict[str, int | str] = {"anonymous": LOGIN, "owner": status}
    expect["other"] = status if other is None else other
    expect["staff"] = status if staff is None else staff
    return expect


def on_the_job(status: int) -> dict[str, int | str]:
    """Another user's job is a 404, like a missing one; staff reach every job."""
    return logged_in(status, other=404)


def api_own(status: int) -> dict[str, int | str]:
    """A token reaches its own user's jobs only, staff included."""
    return {"anonymous": JSON_401, "other": JSON_404, "owner": status, "staff": JSON_404}


def mlflow_own(status: int) -> dict[str, int | str]:
    """An MLflow token reaches its own user's experiments and runs only, staff included."""
    return {"anonymous": MLFLOW_401, "other": MLFLOW_404, "owner": status, "staff": MLFLOW_404}


def mlflow_any(status: int) -> dict[str, int | str]:
    """Any token: each user acts on their own (a new experiment, their own Default)."""
    return {"anonymous": MLFLOW_401, "other": status, "owner": status, "staff": status}


def owners_experiment(w: World) -> str:
    from jobs.models import Experiment

    if w.owner.pk is None:  # the owner was deleted (dead tokens)
        return "999999"
    experiment, _ = Experiment.objects.get_or_create(owner=w.owner, name="probe-experiment")
    return str(experiment.pk)


def tagged_run(w: World) -> dict[str, Any]:
    TrainingJob.objects.filter(pk=w.ext_job.pk).update(tags={"probe": "x"})
    return {"run_id": w.ext_job.run_uuid, "key": "probe"}


def mlflow_probe(method: str, route: str, expect, data=None, query=None) -> Probe:
    def path(w: World) -> str:
        url = reverse(f"tracking:{route}")
        return url + ("?" + urlencode(query(w)) if query else "")

    return Probe(method, path, expect, data=data, api=True)


def owners_model(w: World, job: TrainingJob | None = None) -> str:
    """A logged model of the owner's (from `job` when given), made on first use."""
    from jobs.services import experiment_default
    from tracking.models import LoggedModel

    if w.owner.pk is None:  # the owner was deleted (dead tokens)
        return "m-none"
    model, _ = LoggedModel.objects.get_or_create(
        name="probe-model",
        source_run=job,
        defaults={"experiment": experiment_default(user=w.owner)},
    )
    return model.model_id


def planted(root: str, path: str = "probe.txt") -> str:
    """`path`, stored under `root` in the artifacts storage."""
    import io

    from tracking.artifacts import artifact_save

    artifact_save(root=root, path=path, stream=io.BytesIO(b"probe"), max_bytes=100)
    return path


def run_artifacts(w: World) -> str:
    return f"0/{w.ext_job.run_uuid}/artifacts"


job_url = "jobs/{}/"
NEW_JOB = {
    "name": "made-by-probe",
    "total_epochs": "1",
    "steps_per_epoch": "5",
    "steps_per_tick": "5",
    "initial_loss": "2.5",
    "final_loss": "0.3",
    "base_learning_rate": "0.001",
}
POINTS = {"points": [{"step": 0, "epoch": 1, "loss": 1.0}]}

TABLE: dict[str, list[Probe]] = {
    # --- pages and partials --------------------------------------------------------------------
    "jobs:dashboard": [
        Probe("get", lambda w: reverse("jobs:dashboard"), logged_in(200)),
        Probe("get", lambda w: reverse("jobs:dashboard"), logged_in(200), headers=HTMX),
    ],
    "jobs:new": [
        Probe("get", lambda w: reverse("jobs:new"), logged_in(200)),
        Probe("post", lambda w: reverse("jobs:new"), logged_in(302), data=lambda w: NEW_JOB),
    ],
    "jobs:detail": [
        Probe("get", lambda w: reverse("jobs:detail", args=[w.job.pk]), on_the_job(200)),
    ],
    "jobs:action": [
        Probe(
            "post",
            lambda w: reverse("jobs:action", args=[w.job.pk, "pause"]),
            on_the_job(200),
            headers=HTMX,
        ),
        Probe("post", lambda w: reverse("jobs:action", args=[w.job.pk, "cancel"]), on_the_job(302)),
        Probe("get", lambda w: reverse("jobs:action", args=[w.job.pk, "pause"]), logged_in(405)),
    ],
    "jobs:delete": [
        Probe("post", lambda w: reverse("jobs:delete", args=[w.job.pk]), on_the_job(302)),
        Probe(
            "post", lambda w: reverse("jobs:delete", args=[w.job.pk]), on_the_job(200), headers=HTMX
        ),
        Probe("get", lambda w: reverse("jobs:delete", args=[w.job.pk]), logged_in(405)),
    ],
    "metrics:poll": [
        Probe(
            "get",
            lambda w: reverse("metrics:poll", args=[w.job.pk]) + "?after=-1",
            on_the_job(200),
            headers=HTMX,
        ),
        Probe(
            "get",
            lambda w: reverse("metrics:poll", args=[w.job.pk]) + "?cursor=0&keys=val/loss",
            on_the_job(200),
            headers=HTMX,
            label="cursor",
        ),
        Probe("post", lambda w: reverse("metrics:poll", args=[w.job.pk]), logged_in(405)),
    ],
    "metrics:series": [
        Probe("get", lambda w: reverse("metrics:series", args=[w.job.pk]), on_the_job(200)),
        Probe(
            "get",
            lambda w: reverse("metrics:series", args=[w.job.pk]) + "?keys=val/loss,loss",
            on_the_job(200),
            label="keys",
        ),
    ],
    "metrics:keys": [
        Probe("get", lambda w: reverse("metrics:keys", args=[w.job.pk]), on_the_job(200)),
        Probe("post", lambda w: reverse("metrics:keys", args=[w.job.pk]), logged_in(405)),
    ],
    "metrics:export_csv": [
        Probe("get", lambda w: reverse("metrics:export_csv", args=[w.job.pk]), on_the_job(200)),
    ],
    "metrics:export_json": [
        Probe("get", lambda w: reverse("metrics:export_json", args=[w.job.pk]), on_the_job(200)),
    ],
    "metrics:export_keys_csv": [
        Probe(
            "get", lambda w: reverse("metrics:export_keys_csv", args=[w.job.pk]), on_the_job(200)
        ),
    ],
    "metrics:export_keys_json": [
        Probe(
            "get",
            lambda w: reverse("metrics:export_keys_json", args=[w.job.pk]) + "?keys=a,b",
            on_the_job(200),
        ),
    ],
    "metrics:compare": [
        Probe("get", lambda w: reverse("metrics:compare") + f"?jobs={w.job.pk}", on_the_job(200)),
        Probe(
            "get",
            lambda w: reverse("metrics:compare") + f"?jobs={w.job.pk}&key=val/loss",
            on_the_job(200),
            label="key",
        ),
    ],
    # --- accounts ------------------------------------------------------------------------------
    "accounts:tokens": [Probe("get", lambda w: reverse("accounts:tokens"), logged_in(200))],
    "accounts:token_create": [
        Probe(
            "post",
            lambda w: reverse("accounts:token_create"),
            logged_in(200),
            data=lambda w: {"name": "probe"},
        ),
        Probe("get", lambda w: reverse("accounts:token_create"), logged_in(405)),
    ],
    "accounts:token_revoke": [
        # Tokens are personal: staff revoke other people's in the admin, not here.
        Probe(
            "post",
            lambda w: reverse("accounts:token_revoke", args=[w.token.pk]),
            logged_in(302, other=404, staff=404),
        ),
    ],
    "login": [
        Probe("get", lambda w: reverse("login"), same(200)),
        Probe(
            "post",
            lambda w: reverse("login"),
            same(200),  # a wrong password: the form again, with its error
            data=lambda w: {"username": w.owner.username, "password": "wrong"},
        ),
    ],
    "logout": [
        Probe("post", lambda w: reverse("logout"), same(302)),
        Probe("get", lambda w: reverse("logout"), logged_in(405)),
    ],
    "password_change": [Probe("get", lambda w: reverse("password_change"), logged_in(200))],
    "password_change_done": [
        Probe("get", lambda w: reverse("password_change_done"), logged_in(200))
    ],
    # No mail is configured: the reset pages answer, but nothing is sent (see the report).
    "healthz": [Probe("get", lambda w: reverse("healthz"), same(200))],
    # --- the API: Bearer tokens only ----------------------------------------------------------
    "api:job_create": [
        Probe(
            "post",
            lambda w: reverse("api:job_create"),
            {"anonymous": JSON_401, "other": 201, "owner": 201, "staff": 201},
            data=lambda w: {"name": "api-probe", "total_epochs": 1, "steps_per_epoch": 5},
            api=True,
        ),
    ],
    "api:job": [
        Probe("get", lambda w: reverse("api:job", args=[w.ext_job.pk]), api_own(200), api=True)
    ],
    "api:job_finish": [
        Probe(
            "post",
            lambda w: reverse("api:job_finish", args=[w.ext_job.pk]),
            api_own(200),
            data=lambda w: {"status": "completed"},
            api=True,
        )
    ],
    "api:metrics_write": [
        Probe(
            "post",
            lambda w: reverse("api:metrics_write", args=[w.ext_job.pk]),
            api_own(200),
            data=lambda w: POINTS,
            api=True,
        )
    ],
    "api:metrics_read": [
        Probe(
            "get",
            lambda w: reverse("api:metrics_read", args=[w.ext_job.pk]),
            api_own(200),
            api=True,
        )
    ],
    "api:keys": [
        Probe("get", lambda w: reverse("api:keys", args=[w.ext_job.pk]), api_own(200), api=True)
    ],
    # The schema and its docs are public: they describe the API and hold no data.
    "api:openapi-json": [Probe("get", lambda w: reverse("api:openapi-json"), same(200), api=True)],
    "api:openapi-view": [Probe("get", lambda w: reverse("api:openapi-view"), same(200), api=True)],
    "api:api-root": [Probe("get", lambda w: reverse("api:api-root"), same(JSON_404), api=True)],
    "api:unknown": [
        Probe("get", lambda w: "/api/v1/no/such/thing/", same(JSON_404), api=True),
        Probe("post", lambda w: "/api/v1/no/such/thing/", same(JSON_404), api=True),
    ],
    # --- the MLflow tracking API (tracking/): tokens only, MLflow's error replies -------------
    "tracking:experiments_create": [
        mlflow_probe("post", "experiments_create", mlflow_any(200), lambda w: {"name": "new-exp"})
    ],
    "tracking:experiments_get": [
        mlflow_probe(
            "get",
            "experiments_get",
            mlflow_own(200),
            query=lambda w: {"experiment_id": owners_experiment(w)},
        )
    ],
    "tracking:experiments_get_by_name": [
        mlflow_probe(
            "get",
            "experiments_get_by_name",
            mlflow_own(200),
            query=lambda w: {"experiment_name": "probe-experiment", "_": owners_experiment(w)},
        )
    ],
    "tracking:experiments_search": [
        mlflow_probe("post", "experiments_search", mlflow_any(200), lambda w: {})
    ],
    "tracking:experiments_update": [
        mlflow_probe(
            "post",
            "experiments_update",
            mlflow_own(200),
            lambda w: {"experiment_id": owners_experiment(w), "new_name": "renamed"},
        )
    ],
    "tracking:experiments_delete": [
        mlflow_probe(
            "post",
            "experiments_delete",
            mlflow_own(200),
            lambda w: {"experiment_id": owners_experiment(w)},
        )
    ],
    "tracking:experiments_restore": [
        mlflow_probe(
            "post",
            "experiments_restore",
            mlflow_own(200),
            lambda w: {"experiment_id": owners_experiment(w)},
        )
    ],
    "tracking:experiments_set_tag": [
        mlflow_probe(
            "post",
            "experiments_set_tag",
            mlflow_own(200),
            lambda w: {"experiment_id": owners_experiment(w), "key": "k", "value": "v"},
        )
    ],
    "tracking:runs_create": [
        mlflow_probe("post", "runs_create", mlflow_any(200), lambda w: {"experiment_id": "0"}),
        mlflow_probe(
            "post",
            "runs_create",
            mlflow_own(200),
            lambda w: {"experiment_id": owners_experiment(w)},
        ),
    ],
    "tracking:runs_get": [
        mlflow_probe(
            "get", "runs_get", mlflow_own(200), query=lambda w: {"run_id": w.ext_job.run_uuid}
        )
    ],
    "tracking:runs_update": [
        mlflow_probe(
            "post",
            "runs_update",
            mlflow_own(200),
            lambda w: {"run_id": w.ext_job.run_uuid, "status": "FINISHED"},
        )
    ],
    "tracking:runs_delete": [
        mlflow_probe(
            "post", "runs_delete", mlflow_own(200), lambda w: {"run_id": w.ext_job.run_uuid}
        )
    ],
    "tracking:runs_restore": [
        mlflow_probe(
            "post", "runs_restore", mlflow_own(200), lambda w: {"run_id": w.ext_job.run_uuid}
        )
    ],
    "tracking:runs_search": [
        mlflow_probe("post", "runs_search", mlflow_any(200), lambda w: {"experiment_ids": ["0"]})
    ],
    "tracking:runs_log_batch": [
        mlflow_probe(
            "post",
            "runs_log_batch",
            mlflow_own(200),
            lambda w: {
                "run_id": w.ext_job.run_uuid,
                "metrics": [{"key": "loss", "value": 1.0, "timestamp": 0, "step": 0}],
                "params": [{"key": "lr", "value": "0.1"}],
            },
        )
    ],
    "tracking:runs_log_metric": [
        mlflow_probe(
            "post",
            "runs_log_metric",
            mlflow_own(200),
            lambda w: {"run_id": w.ext_job.run_uuid, "key": "loss", "value": 1, "timestamp": 0},
        )
    ],
    "tracking:runs_log_parameter": [
        mlflow_probe(
            "post",
            "runs_log_parameter",
            mlflow_own(200),
            lambda w: {"run_id": w.ext_job.run_uuid, "key": "lr", "value": "0.1"},
        )
    ],
    "tracking:runs_set_tag": [
        mlflow_probe(
            "post",
            "runs_set_tag",
            mlflow_own(200),
            lambda w: {"run_id": w.ext_job.run_uuid, "key": "t", "value": "v"},
        )
    ],
    "tracking:runs_delete_tag": [
        mlflow_probe("post", "runs_delete_tag", mlflow_own(200), tagged_run)
    ],
    "tracking:runs_log_inputs": [
        mlflow_probe(
            "post",
            "runs_log_inputs",
            mlflow_own(200),
            lambda w: {"run_id": w.ext_job.run_uuid, "datasets": []},
        )
    ],
    "tracking:metrics_get_history": [
        mlflow_probe(
            "get",
            "metrics_get_history",
            mlflow_own(200),
            query=lambda w: {"run_id": w.ext_job.run_uuid, "metric_key": "loss"},
        )
    ],
    "tracking:metrics_get_history_bulk_interval": [
        mlflow_probe(
            "get",
            "metrics_get_history_bulk_interval",
            mlflow_own(200),
            query=lambda w: {"run_ids": w.ext_job.run_uuid, "metric_key": "loss"},
        )
    ],
    # Any other path under the prefixes: MLflow's JSON 404, never an HTML page.
    "tracking_fallback:not_found": [
        Probe("get", lambda w: "/api/2.0/mlflow/no/such", same(MLFLOW_404), api=True),
        Probe("post", lambda w: "/api/2.0/mlflow/no/such", same(MLFLOW_404), api=True),
    ],
    "tracking:runs_outputs": [
        mlflow_probe(
            "post",
            "runs_outputs",
            mlflow_own(200),
            lambda w: {"run_id": w.ext_job.run_uuid, "models": [{"model_id": owners_model(w)}]},
        )
    ],
    "tracking:logged_models_create": [
        mlflow_probe(
            "post",
            "logged_models_create",
            mlflow_own(200),
            lambda w: {"experiment_id": "0", "source_run_id": w.ext_job.run_uuid},
        )
    ],
    "tracking:logged_models_search": [
        mlflow_probe(
            "post", "logged_models_search", mlflow_any(200), lambda w: {"experiment_ids": ["0"]}
        )
    ],
    "tracking:logged_model": [
        Probe(
            "get",
            lambda w: reverse("tracking:logged_model", args=[owners_model(w)]),
            mlflow_own(200),
            api=True,
        ),
        Probe(
            "patch",
            lambda w: reverse("tracking:logged_model", args=[owners_model(w)]),
            mlflow_own(200),
            data=lambda w: {"status": "LOGGED_MODEL_READY"},
            api=True,
        ),
        Probe(
            "delete",
            lambda w: reverse("tracking:logged_model", args=[owners_model(w)]),
            mlflow_own(200),
            api=True,
        ),
    ],
    "tracking:logged_model_tags": [
        Probe(
            "patch",
            lambda w: reverse("tracking:logged_model_tags", args=[owners_model(w)]),
            mlflow_own(200),
            data=lambda w: {"tags": [{"key": "a", "value": "b"}]},
            api=True,
        )
    ],
    "tracking:logged_model_tag": [
        Probe(
            "delete",
            lambda w: reverse("tracking:logged_model_tag", args=[owners_model(w), "a"]),
            mlflow_own(200),
            api=True,
        )
    ],
    "tracking:logged_model_params": [
        Probe(
            "post",
            lambda w: reverse("tracking:logged_model_params", args=[owners_model(w)]),
            mlflow_own(200),
            data=lambda w: {"params": [{"key": "a", "value": "b"}]},
            api=True,
        )
    ],
    "tracking_artifacts:list": [
        Probe(
            "get",
            lambda w: (
                reverse("tracking_artifacts:list") + "?" + urlencode({"path": run_artifacts(w)})
            ),
            mlflow_own(200),
            api=True,
        )
    ],
    "tracking_artifacts:artifact": [
        Probe(
            "put",
            lambda w: reverse("tracking_artifacts:artifact", args=[f"{run_artifacts(w)}/up.txt"]),
            mlflow_own(200),
            data=lambda w: {"any": "bytes"},
            api=True,
        ),
        Probe(
            "get",
            lambda w: reverse(
                "tracking_artifacts:artifact",
                args=[f"{run_artifacts(w)}/{planted(f'runs/{w.ext_job.run_uuid}')}"],
            ),
            mlflow_own(200),
            api=True,
        ),
    ],
    # The job page's artifact list and downloads: session users, like the page.
    "tracking_pages:job_artifacts": [
        Probe(
            "get",
            lambda w: reverse("tracking_pages:job_artifacts", args=[w.job.pk]),
            on_the_job(200),
        ),
    ],
    "tracking_pages:job_artifact": [
        Probe(
            "get",
            lambda w: reverse(
                "tracking_pages:job_artifact", args=[w.job.pk, planted(f"runs/{w.job.run_uuid}")]
            ),
            on_the_job(200),
        ),
    ],
    "tracking_pages:job_model_artifact": [
        Probe(
            "get",
            lambda w: reverse(
                "tracking_pages:job_model_artifact",
                args=[
                    w.job.pk,
                    (model_id := owners_model(w, w.job)),
                    planted(f"models/{model_id}", "MLmodel"),
                ],
            ),
            on_the_job(200),
        ),
    ],
    "tracking_3:not_found": [
        Probe("get", lambda w: "/api/3.0/mlflow/server-info", same(MLFLOW_404), api=True),
    ],
}


def probes() -> Iterator[Any]:
    for name, route_probes in TABLE.items():
        for index, probe in enumerate(route_probes):
            for role in ROLES:
                yield pytest.param(probe, role, id=f"{name}-{probe.method}{index}-{role}")


@pytest.fixture
def world(user, other_user, staff_user, artifacts_dir) -> World:
    job = TrainingJobFactory(owner=user)
    TrainingMetricFactory.create_batch(3, job=job)
    ext_job = TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL)
    token, raw = api_token_create(user=user, name="owner's")
    world = World(user, other_user, staff_user, job, ext_job, token, {"owner": raw})
    for role in ("other", "staff"):
        world.raw_tokens[role] = api_token_create(user=getattr(world, role), name=role)[1]
    return world


def send(world: World, probe: Probe, role: str, *, client: Client | None = None):
    path = probe.path(world)
    headers = dict(probe.headers)
    if probe.api:
        client = client or Client()
        if role != "anonymous":
            headers["Authorization"] = f"Bearer {world.raw_tokens[role]}"
        data = probe.data(world) if probe.data else None
        if probe.method == "get":
            return client.get(path, headers=headers)
        body = "" if data is None else json.dumps(data)
        return getattr(client, probe.method)(path, body, "application/json", headers=headers)
    client = client or world.client(role)
    data = probe.data(world) if probe.data else None
    return getattr(client, probe.method)(path, data, headers=headers)


def assert_outcome(response, expected: int | str, path: str) -> None:
    if expected == LOGIN:
        # htmx requests are sent to login as a whole page (HX-Redirect), others by a 302.
        redirect = "HX-Redirect" if response.has_header("HX-Redirect") else "Location"
        assert response.status_code == (200 if redirect == "HX-Redirect" else 302)
        assert response[redirect].startswith(f"{reverse('login')}?next="), response[redirect]
    elif expected == ADMIN_LOGIN:
        assert response.status_code == 302, response.status_code
        assert response["Location"].startswith(f"{reverse('admin:login')}?next=")
    elif expected == ANY_LOGIN:
        assert response.status_code == 302, response.status_code
        logins = (f"{reverse('admin:login')}?next=", f"{reverse('login')}?next=")
        assert response["Location"].startswith(logins), response["Location"]
    elif expected in (MLFLOW_401, MLFLOW_404):
        status = 401 if expected == MLFLOW_401 else 404
        assert response.status_code == status, (response.status_code, response.content[:300])
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["error_code"] in {
            "UNAUTHENTICATED",
            "RESOURCE_DOES_NOT_EXIST",
            "ENDPOINT_NOT_FOUND",
        }
    elif expected in (JSON_401, JSON_404):
        status = 401 if expected == JSON_401 else 404
        assert response.status_code == status, (response.status_code, response.content[:300])
        assert response["Content-Type"].startswith("application/json")
        assert response.json()["error"]
    else:
        assert response.status_code == expected, (response.status_code, path)


def job_unchanged(world: World) -> bool:
    return (
        TrainingJob.objects.filter(pk=world.job.pk, status=world.job.status).exists()
        and TrainingJob.objects.filter(pk=world.ext_job.pk, status=world.ext_job.status).exists()
    )


@pytest.mark.parametrize(("probe", "role"), list(probes()))
def test_access(world, probe: Probe, role: str):
    jobs_before, tokens_before = TrainingJob.objects.count(), ApiToken.objects.count()
    response = send(world, probe, role)
    expected = probe.expect[role]
    assert_outcome(response, expected, probe.path(world))
    refused = expected in (LOGIN, ADMIN_LOGIN, JSON_401, JSON_404, MLFLOW_401, MLFLOW_404, 404, 405)
    if refused:
        # A refusal changes nothing: no job moved, deleted or created, no token made or revoked.
        assert job_unchanged(world)
        assert TrainingJob.objects.count() == jobs_before
        assert ApiToken.objects.count() == tokens_before
        world.token.refresh_from_db()
        assert world.token.revoked_at is None
        assert not world.ext_job.metrics.exists()
        assert not world.ext_job.metric_keys.exists()
        assert TrainingJob.objects.get(pk=world.ext_job.pk).hyperparameters == (
            world.ext_job.hyperparameters
        )
        assert TrainingJob.objects.get(pk=world.ext_job.pk).lifecycle == "active"
    if expected == 201:
        created = TrainingJob.objects.get(pk=response.json()["id"])
        assert created.owner == getattr(world, role)  # a token creates jobs for its own user


def test_nothing_of_anothers_leaks_into_lists(world):
    secret = TrainingJobFactory(owner=world.owner, name="owners-secret-run")
    other = world.client("other")
    assert "owners-secret-run" not in other.get(reverse("jobs:dashboard")).content.decode()
    assert (
        "owners-secret-run"
        not in other.get(reverse("jobs:dashboard"), {"q": "secret"}, headers=HTMX).content.decode()
    )
    response = other.get(reverse("metrics:compare"), {"jobs": f"{secret.pk},{world.job.pk}"})
    assert response.status_code == 404
    assert (
        "owners-secret-run" in world.client("staff").get(reverse("jobs:dashboard")).content.decode()
    )
    # Compare shows the visible jobs and names the rest as skipped, without their names.
    mine = TrainingJobFactory(owner=world.other, name="others-own-run")
    response = other.get(reverse("metrics:compare"), {"jobs": f"{mine.pk},{secret.pk}"})
    assert response.status_code == 200
    assert "owners-secret-run" not in response.content.decode()
    # The tokens page lists the user's own tokens only.
    page = other.get(reverse("accounts:tokens")).content.decode()
    assert world.token.prefix not in page


# --- the table covers every route --------------------------------------------------------------


def route_names(patterns=None, namespace: str = "") -> Iterator[str]:
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            inner = ":".join(part for part in (namespace, pattern.namespace or "") if part)
            yield from route_names(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern):
            if namespace == "admin" and not pattern.name:
                continue  # the admin's own redirect to the change page
            assert pattern.name, f"unnamed route {pattern.pattern} has no access rule"
            yield f"{namespace}:{pattern.name}" if namespace else pattern.name


def test_the_table_covers_every_route():
    names = set(route_names())
    # The admin's routes are Django's own: test_the_admin_is_for_staff_only checks them.
    ours = {name for name in names if not name.startswith("admin:")}
    assert ours - set(TABLE) == set(), "routes without an access rule in TABLE"
    assert set(TABLE) - ours == set(), "rules for routes that no longer exist"


def test_only_the_api_is_csrf_exempt():
    def callbacks(patterns, namespace=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from callbacks(pattern.url_patterns, pattern.namespace or namespace)
            else:
                yield namespace, pattern

    exempt = {
        f"{namespace}:{pattern.name}"
        for namespace, pattern in callbacks(get_resolver().url_patterns)
        if getattr(pattern.callback, "csrf_exempt", False)
    }
    # Token-authenticated: a browser's cookies never authenticate the API, so CSRF cannot apply.
    # The MLflow protocol (tracking) is token-authenticated too.
    assert {name.split(":")[0] for name in exempt} <= {
        "api",
        "tracking",
        "tracking_fallback",
        "tracking_3",
        "tracking_artifacts",
    }, exempt


def test_a_browser_session_does_not_authenticate_the_api(world):
    client = world.client("owner")
    for probe_list in (TABLE["api:job"], TABLE["api:metrics_write"], TABLE["api:job_create"]):
        probe = probe_list[0]
        response = send(world, probe, "anonymous", client=client)
        assert_outcome(response, JSON_401, probe.path(world))
    assert not world.ext_job.metrics.exists()


# --- the admin -------------------------------------------------------------------------------


def admin_urls(world: World) -> list[str]:
    urls = [reverse("admin:index"), reverse("admin:password_change")]
    for model in admin.site._registry:
        meta = model._meta
        urls.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        urls.append(reverse("admin:app_list", args=[meta.app_label]))
    urls.append(reverse("admin:jobs_trainingjob_add"))
    urls.append(reverse("admin:jobs_trainingjob_change", args=[world.job.pk]))
    urls.append(reverse("admin:jobs_trainingjob_history", args=[world.job.pk]))
    urls.append(reverse("admin:accounts_apitoken_change", args=[world.token.pk]))
    urls.append(reverse("admin:auth_user_change", args=[world.owner.pk]))
    return sorted(set(urls))


@pytest.mark.parametrize("role", ROLES)
def test_the_admin_is_for_staff_only(world, role):
    client = world.client(role)
    for url in admin_urls(world):
        response = client.get(url)
        # Strangers go to a login page (the site's, from LoginRequiredMiddleware, or the
        # admin's); users who are not staff to the admin's, which tells them so.
        expected = {"anonymous": ANY_LOGIN, "staff": 200}.get(role, ADMIN_LOGIN)
        assert_outcome(response, expected, url)
    assert client.get(reverse("admin:login")).status_code in {200, 302}
    # Admin actions are POSTs through the same gate.
    response = client.post(
        reverse("admin:jobs_trainingjob_changelist"),
        {"action": "cancel_jobs", "_selected_action": [world.job.pk]},
    )
    assert response.status_code == 302
    world.job.refresh_from_db()
    assert (world.job.status == "cancelled") == (role == "staff")


# --- tokens that no longer count ---------------------------------------------------------------

API_PROBES = [probe for name, items in TABLE.items() if name.startswith("api:") for probe in items]
MLFLOW_PROBES = [
    probe for name, items in TABLE.items() if name.startswith("tracking:") for probe in items
]


@pytest.mark.parametrize("how", ["revoked", "user-deleted", "user-inactive"])
def test_dead_tokens_are_refused_everywhere(world, how):
    if how == "revoked":
        api_token_revoke(token=world.token)
    elif how == "user-deleted":
        job_owner = world.owner
        world.job.owner = world.ext_job.owner = UserFactory()
        TrainingJob.objects.filter(owner=job_owner).update(owner=world.job.owner)
        job_owner.delete()
    else:
        world.owner.is_active = False
        world.owner.save()
    for probe in API_PROBES:
        if probe.expect["owner"] in (JSON_404,) or "openapi" in probe.path(world):
            continue
        if probe.path(world).endswith(("/docs", "openapi.json")):
            continue
        response = send(world, probe, "owner")
        assert_outcome(response, JSON_401, probe.path(world))
    for probe in MLFLOW_PROBES:
        response = send(world, probe, "owner")
        assert_outcome(response, MLFLOW_401, probe.path(world))
    assert not world.ext_job.metrics.exists()


# --- CSRF ------------------------------------------------------------------------------------


def browser_posts() -> Iterator[Any]:
    for name, items in TABLE.items():
        for probe in items:
            if probe.method == "post" and not probe.api:
                yield pytest.param(probe, id=f"{name}{'-htmx' if probe.headers else ''}")


@pytest.mark.parametrize("probe", list(browser_posts()))
def test_every_browser_post_needs_the_csrf_token(world, probe: Probe):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.owner)
    jobs_before = TrainingJob.objects.count()
    response = send(world, probe, "owner", client=client)
    assert response.status_code == 403, probe.path(world)
    assert job_unchanged(world)
    assert TrainingJob.objects.count() == jobs_before
    world.token.refresh_from_db()
    assert world.token.revoked_at is None
    # With the token the page gives htmx, the same request goes through.
    token = htmx_csrf_token(client, reverse("jobs:dashboard"))
    with_token = replace(probe, headers={**probe.headers, "X-CSRFToken": token})
    response = send(world, with_token, "owner", client=client)
    assert response.status_code == probe.expect["owner"]


def test_login_needs_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    data = {"username": world.owner.username, "password": PASSWORD}
    assert client.post(reverse("login"), data).status_code == 403
    token = form_csrf_token(client, reverse("login"))
    response = client.post(reverse("login"), {**data, "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert client.get(reverse("jobs:dashboard")).status_code == 200


def test_a_csrf_token_from_another_session_is_refused(world):
    theirs = Client(enforce_csrf_checks=True)
    theirs.force_login(world.other)
    token = htmx_csrf_token(theirs, reverse("jobs:dashboard"))
    mine = Client(enforce_csrf_checks=True)
    mine.force_login(world.owner)
    response = mine.post(
        reverse("jobs:action", args=[world.job.pk, "pause"]),
        headers={**HTMX, "X-CSRFToken": token},
    )
    assert response.status_code == 403
    assert job_unchanged(world)


def test_logout_is_post_only_and_ends_the_session(world):
    client = world.client("owner")
    assert client.get(reverse("logout")).status_code == 405
    assert client.get(reverse("jobs:dashboard")).status_code == 200
    assert client.post(reverse("logout")).status_code == 302
    assert_outcome(client.get(reverse("jobs:dashboard")), LOGIN, "/")


def test_session_cookie_flags(world):
    client = Client()
    token = form_csrf_token(client, reverse("login"))
    response = client.post(
        reverse("login"),
        {"username": world.owner.username, "password": PASSWORD, "csrfmiddlewaretoken": token},
    )
    session = response.cookies["sessionid"]
    assert session["httponly"]
    assert session["samesite"] == "Lax"
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_admin_posts_need_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.staff)
    data = {"action": "cancel_jobs", "_selected_action": [world.job.pk]}
    changelist = reverse("admin:jobs_trainingjob_changelist")
    assert client.post(changelist, data).status_code == 403
    assert job_unchanged(world)
    token = form_csrf_token(client, changelist)
    assert client.post(changelist, {**data, "csrfmiddlewaretoken": token}).status_code == 302
    world.job.refresh_from_db()
    assert world.job.status == "cancelled"
