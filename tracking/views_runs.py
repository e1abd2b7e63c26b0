"""Runs: create, get, update, delete, restore, search, and the writes (log-batch,
log-metric, log-parameter, set-tag, delete-tag, log-inputs)."""

from __future__ import annotations

from collections import defaultdict
from functools import reduce
from operator import or_
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Q
from django.http import HttpRequest

from jobs.models import Lifecycle, TrainingJob
from jobs.selectors import experiment_jobs_q
from metrics.models import MetricKey
from tracking import services
from tracking.protocol import (
    DEFAULT_EXPERIMENT_ID,
    RESOURCE_DOES_NOT_EXIST,
    STATUS_TO_MLFLOW,
    MlflowError,
    Params,
    endpoint,
    entries,
    experiment_resolve,
    integer,
    millis,
    param_text,
    run_dict,
    run_get_owned,
    run_id_param,
    run_info,
    run_tags,
    string,
    string_list,
)
from tracking.search import compare, filter_parse, order_parse, sort_rows
from tracking.views_experiments import lifecycle_matches, max_results, page, page_offset, view_type


@endpoint("POST")
def create(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment_id = string(params, "experiment_id", required=False) or DEFAULT_EXPERIMENT_ID
    experiment = experiment_resolve(user, experiment_id)
    tags = services.tag_pairs(entries(params, "tags"))
    job = services.run_create(
        user=user,
        experiment=experiment,
        run_name=string(params, "run_name", required=False),
        start_time=integer(params, "start_time"),
        tags=tags,
    )
    job = run_get_owned(user, job.run_uuid)
    return {"run": run_dict(job, keys=[])}


@endpoint("GET")
def get(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    return {"run": run_dict(run_get_owned(user, run_id_param(params)))}


@endpoint("POST")
def update(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, run_id_param(params))
    job = services.run_update(
        job=job,
        status=string(params, "status", required=False) or None,
        end_time=integer(params, "end_time"),
        run_name=string(params, "run_name", required=False) or None,
    )
    return {"run_info": run_info(job)}


@endpoint("POST")
def delete(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, run_id_param(params))
    services.run_lifecycle_set(job=job, lifecycle=Lifecycle.DELETED)
    return {}


@endpoint("POST")
def restore(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, run_id_param(params))
    services.run_lifecycle_set(job=job, lifecycle=Lifecycle.ACTIVE)
    return {}


@endpoint("POST")
def log_batch(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    metrics, pairs, tags = (entries(params, name) for name in ("metrics", "params", "tags"))
    services.run_log_batch(
        user=user, run_id=run_id_param(params), metrics=metrics, params=pairs, tags=tags
    )
    return {}


@endpoint("POST")
def log_metric(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, run_id_param(params))
    metric = {name: params.get(name) for name in ("key", "value", "timestamp", "step")}
    services.run_log(job=job, batch=services.batch_parse([metric], [], []))
    return {}


@endpoint("POST")
def log_parameter(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, run_id_param(params))
    pair = {"key": params.get("key"), "value": params.get("value")}
    services.run_log(job=job, batch=services.batch_parse([], [pair], []))
    return {}


@endpoint("POST")
def set_tag(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, run_id_param(params))
    pair = {"key": params.get("key"), "value": params.get("value")}
    services.run_log(job=job, batch=services.batch_parse([], [], [pair]))
    return {}


@endpoint("POST")
def delete_tag(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, run_id_param(params))
    services.run_tag_delete(job=job, key=string(params, "key"))
    return {}


@endpoint("POST")
def log_inputs(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, run_id_param(params))
    services.run_inputs_log(job=job, datasets=entries(params, "datasets"))
    return {}


# --- search -------------------------------------------------------------------------------------


class _Row:
    __slots__ = ("job", "keys", "tags")

    def __init__(self, job: TrainingJob, keys: list[MetricKey]) -> None:
        self.job = job
        self.keys = keys
        self.tags = run_tags(job)


def _latest(row: _Row, name: str) -> float | None:
    for key in row.keys:
        if key.name == name and key.last_step is not None:
            return float("nan") if key.last_value is None else key.last_value
    return None


_ATTRIBUTE_VALUES: dict[str, Any] = {
    "run_id": lambda job: job.run_uuid,
    "run_name": lambda job: job.name,
    "status": lambda job: STATUS_TO_MLFLOW[TrainingJob.Status(job.status)],
    "user_id": lambda job: job.owner.get_username(),
    "start_time": lambda job: millis(job.started_at or job.created_at),
    "created": lambda job: millis(job.started_at or job.created_at),
    "Created": lambda job: millis(job.started_at or job.created_at),
    "end_time": lambda job: millis(job.finished_at) if job.is_terminal else None,
    "artifact_uri": lambda job: run_info(job)["artifact_uri"],
}


def _run_value(row: _Row, entity: str, key: str) -> Any:
    if entity == "metrics":
        return _latest(row, key)
    if entity == "params":
        value = row.job.hyperparameters.get(key)
        return None if value is None else param_text(value)
    if entity == "tags":
        return row.tags.get(key)
    return _ATTRIBUTE_VALUES[key](row.job)


RUN_ATTRIBUTES = set(_ATTRIBUTE_VALUES)


@endpoint("POST", "GET")
def search(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment_ids = string_list(params, "experiment_ids")
    view = view_type(params)
    count = max_results(params)
    offset = page_offset(params)
    clauses = filter_parse(
        string(params, "filter", required=False),
        attributes=RUN_ATTRIBUTES,
        default_entity="attributes",
    )
    orders = order_parse(
        string_list(params, "order_by"), attributes=RUN_ATTRIBUTES, default_entity="attributes"
    )
    if not experiment_ids:
        return {}
    experiments = []
    for experiment_id in experiment_ids:
        try:
            experiments.append(experiment_resolve(user, experiment_id))
        except MlflowError as error:
            # MLflow answers an unknown experiment id with no runs from it.
            if error.code != RESOURCE_DOES_NOT_EXIST:
                raise
    if not experiments:
        return {"runs": []}
    where = reduce(or_, (experiment_jobs_q(experiment) for experiment in experiments), Q())
    jobs = list(
        TrainingJob.objects.filter(where, owner=user)
        .select_related("experiment", "owner")
        .order_by("-created_at", "-pk")
    )
    jobs = [job for job in jobs if lifecycle_matches(job.lifecycle, view)]
    keys_by_job: dict[int, list[MetricKey]] = defaultdict(list)
    for key in MetricKey.objects.filter(job_id__in=[job.pk for job in jobs]).order_by("name"):
        keys_by_job[key.job_id].append(key)
    rows = [
        row
        for row in (_Row(job, keys_by_job[job.pk]) for job in jobs)
        if all(compare(_run_value(row, c.entity, c.key), c.op, c.value) for c in clauses)
    ]
    rows = sort_rows(rows, orders, _run_value)
    shown, token = page(rows, offset, count)
    body: dict[str, Any] = {"runs": [run_dict(row.job, keys=row.keys) for row in shown]}
    if token:
        body["next_page_token"] = token
    return body
