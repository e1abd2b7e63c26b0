"""Logged models: what `mlflow.<flavor>.log_model` and `runs:/<run id>/<name>` loading call.

`log_model` creates a model (POST logged-models), records it as the run's output
(POST runs/outputs), uploads its files under the model's artifact URI and marks it ready
(PATCH logged-models/<id>). Loading `runs:/<run id>/model` searches the run's experiment for a
model of that name from that run, then downloads its files.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest

from tracking import services_models
from tracking.models import LoggedModel, LoggedModelStatus
from tracking.protocol import (
    Params,
    endpoint,
    entries,
    experiment_public_id,
    experiment_resolve,
    integer,
    invalid,
    millis,
    not_found,
    run_get_owned,
    string,
    string_list,
)

KEY_MAX_CHARS = 250
PARAM_VALUE_MAX_CHARS = 6000
TAG_VALUE_MAX_CHARS = 8000
SEARCH_DEFAULT_RESULTS = 100
SEARCH_MAX_RESULTS = 1000
# `name = 'model'`, `attributes.status != 'x'`, `tags.k LIKE 'v%'`, `params.lr = '0.1'`.
_CLAUSE = re.compile(
    r"""^\s*(?P<field>(?:tags|params)\.(?:`[^`]+`|[\w.\-/]+)|(?:attributes\.)?\w+)\s*
    (?P<op>!=|=|LIKE|ILIKE)\s*'(?P<value>(?:[^'\\]|\\.)*)'\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_AND = re.compile(r"\s+AND\s+", re.IGNORECASE)
_ATTRIBUTES = {"name", "model_id", "model_type", "status", "source_run_id"}
_ORDER_FIELDS: dict[str, Callable[[LoggedModel], Any]] = {
    "name": lambda model: model.name,
    "model_id": lambda model: model.model_id,
    "creation_timestamp": lambda model: model.created_at,
    "creation_time": lambda model: model.created_at,
    "last_updated_timestamp": lambda model: model.updated_at,
}


def model_dict(model: LoggedModel) -> dict[str, Any]:
    experiment_id = experiment_public_id(model.experiment)
    info: dict[str, Any] = {
        "model_id": model.model_id,
        "experiment_id": experiment_id,
        "name": model.name,
        "creation_timestamp_ms": millis(model.created_at),
        "last_updated_timestamp_ms": millis(model.updated_at),
        "artifact_uri": f"mlflow-artifacts:/{experiment_id}/models/{model.model_id}/artifacts",
        "status": model.status,
        "tags": [{"key": key, "value": value} for key, value in model.tags.items()],
    }
    if model.model_type:
        info["model_type"] = model.model_type
    if model.source_run is not None:
        info["source_run_id"] = model.source_run.run_uuid
    if model.status_message:
        info["status_message"] = model.status_message
    params = [{"key": key, "value": value} for key, value in model.params.items()]
    return {"info": info, "data": {"params": params, "metrics": []}}


def _pairs(params: Params, name: str, value_max: int) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in entries(params, name):
        key, value = item.get("key"), item.get("value", "")
        if not isinstance(key, str) or not key or len(key) > KEY_MAX_CHARS:
            raise invalid(f"Each of '{name}' needs a key of 1 to {KEY_MAX_CHARS} characters.")
        if not isinstance(value, str) or len(value) > value_max:
            raise invalid(
                f"{name} '{key}': the value must be a string of at most {value_max} characters."
            )
        pairs[key] = value
    return pairs


def _model(user: User, model_id: str) -> LoggedModel:
    model = (
        LoggedModel.objects.select_related("experiment", "source_run")
        .filter(model_id=model_id, experiment__owner=user)
        .first()
    )
    if model is None:
        raise not_found(f"Logged model with id={model_id} not found.")
    return model


@endpoint("POST")
def logged_model_create(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment = experiment_resolve(user, string(params, "experiment_id"))
    run_id = string(params, "source_run_id", required=False)
    model = services_models.logged_model_create(
        experiment=experiment,
        name=string(params, "name", required=False)[:KEY_MAX_CHARS],
        source_run=run_get_owned(user, run_id) if run_id else None,
        model_type=string(params, "model_type", required=False)[:KEY_MAX_CHARS],
        params=_pairs(params, "params", PARAM_VALUE_MAX_CHARS),
        tags=_pairs(params, "tags", TAG_VALUE_MAX_CHARS),
    )
    return {"model": model_dict(model)}


@endpoint("GET", "PATCH", "DELETE")
def logged_model(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    """GET reads the model, PATCH finalizes it (sets its status), DELETE removes it."""
    model = _model(user, string(params, "model_id"))
    if request.method == "PATCH":
        status = string(params, "status")
        if status not in LoggedModelStatus.values:
            raise invalid(f"Unknown logged model status {status!r}.")
        model = services_models.logged_model_update(model=model, status=status)
    elif request.method == "DELETE":
        services_models.logged_model_delete(model=model)
        return {}
    return {"model": model_dict(model)}


@endpoint("PATCH")
def logged_model_tags(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    model = _model(user, string(params, "model_id"))
    tags = _pairs(params, "tags", TAG_VALUE_MAX_CHARS)
    services_models.logged_model_update(model=model, set_tags=tags)
    return {}


@endpoint("DELETE")
def logged_model_tag(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    model = _model(user, string(params, "model_id"))
    services_models.logged_model_update(model=model, delete_tag=string(params, "tag_key"))
    return {}


@endpoint("POST")
def logged_model_params(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    model = _model(user, string(params, "model_id"))
    values = _pairs(params, "params", PARAM_VALUE_MAX_CHARS)
    services_models.logged_model_update(model=model, add_params=values)
    return {}


@endpoint("POST")
def run_outputs(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    job = run_get_owned(user, string(params, "run_id"))
    outputs = [
        (_model(user, string(item, "model_id")), integer(item, "step", default=0) or 0)
        for item in entries(params, "models")
    ]
    services_models.run_outputs_log(job=job, outputs=outputs)
    return {}


# --- search ----------------------------------------------------------------------------------


def _like(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    regex = "".join(
        ".*" if char == "%" else "." if char == "_" else re.escape(char) for char in pattern
    )
    return re.compile(f"^{regex}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _filter(text: str) -> Callable[[LoggedModel], bool]:
    """A predicate for the conjunction of clauses in `text` (MLflow's filter syntax)."""
    checks: list[Callable[[LoggedModel], bool]] = []
    for clause in _AND.split(text.strip()) if text.strip() else []:
        match = _CLAUSE.match(clause)
        if match is None:
            raise invalid(f"Unsupported filter clause: {clause!r}.")
        field, op = match["field"], match["op"].upper()
        value = re.sub(r"\\(.)", r"\1", match["value"])
        getter = _getter(field)
        checks.append(_check(getter, op, value))
    return lambda model: all(check(model) for check in checks)


def _check(
    getter: Callable[[LoggedModel], str | None], op: str, value: str
) -> Callable[[LoggedModel], bool]:
    if op in ("=", "!="):
        equal = op == "="
        return lambda model: (getter(model) == value) is equal
    pattern = _like(value, ignore_case=op == "ILIKE")

    def like(model: LoggedModel) -> bool:
        found = getter(model)
        return found is not None and bool(pattern.match(found))

    return like


def _getter(field: str) -> Callable[[LoggedModel], str | None]:
    prefix, _, name = field.partition(".")
    name = name.strip("`")
    if prefix.lower() == "tags":
        return lambda model: model.tags.get(name)
    if prefix.lower() == "params":
        return lambda model: model.params.get(name)
    attribute = (name if prefix.lower() == "attributes" else field).lower()
    if attribute not in _ATTRIBUTES:
        raise invalid(f"Cannot filter logged models by {field!r}.")
    if attribute == "source_run_id":
        return lambda model: model.source_run.run_uuid if model.source_run else None
    return lambda model: str(getattr(model, attribute))


@endpoint("POST")
def logged_models_search(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    ids = string_list(params, "experiment_ids")
    if not ids:
        raise invalid("'experiment_ids' must name at least one experiment.")
    experiments = [experiment_resolve(user, experiment_id) for experiment_id in ids]
    keep = _filter(string(params, "filter", required=False))
    max_results = integer(params, "max_results", default=SEARCH_DEFAULT_RESULTS)
    if max_results is None or not 0 < max_results <= SEARCH_MAX_RESULTS:
        raise invalid(f"'max_results' must be 1 to {SEARCH_MAX_RESULTS}.")
    token = string(params, "page_token", required=False)
    if token and not (token.isdigit() and len(token) < 12):
        raise invalid("Invalid page token.")
    offset = int(token or 0)
    models = [
        model
        for model in LoggedModel.objects.select_related("experiment", "source_run").filter(
            experiment__in=experiments
        )
        if keep(model)
    ]
    models.sort(key=lambda model: (model.created_at, model.model_id), reverse=True)
    # Stable sorts, the last order_by first, so the first one decides.
    for order in reversed(entries(params, "order_by")):
        field = order.get("field_name")
        if not isinstance(field, str) or field not in _ORDER_FIELDS:
            raise invalid(f"Cannot order logged models by {field!r}.")
        models.sort(key=_ORDER_FIELDS[field], reverse=order.get("ascending") is False)
    page = models[offset : offset + max_results]
    answer: dict[str, Any] = {"models": [model_dict(model) for model in page]}
    if offset + max_results < len(models):
        answer["next_page_token"] = str(offset + max_results)
    return answer
