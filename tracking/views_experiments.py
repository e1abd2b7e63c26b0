"""Experiments: create, get, get-by-name, search, update, delete, restore, set tag."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest

from jobs.models import Experiment, Lifecycle
from jobs.services import experiment_default
from tracking import services
from tracking.protocol import (
    DEFAULT_EXPERIMENT_ID,
    VIEW_TYPES,
    Params,
    endpoint,
    entries,
    experiment_dict,
    experiment_public_id,
    experiment_resolve,
    integer,
    invalid,
    millis,
    not_found,
    string,
    string_list,
    token_decode,
    token_encode,
)
from tracking.search import compare, filter_parse, order_parse, sort_rows

SEARCH_MAX_RESULTS = 50_000
SEARCH_DEFAULT_RESULTS = 1000
EXPERIMENT_ATTRIBUTES = {"name", "experiment_id", "creation_time", "last_update_time"}


@endpoint("POST")
def create(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    tags = {str(item.get("key")): str(item.get("value", "")) for item in entries(params, "tags")}
    experiment = services.experiment_create(user=user, name=string(params, "name"), tags=tags)
    return {"experiment_id": experiment_public_id(experiment)}


@endpoint("GET")
def get(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment = experiment_resolve(user, string(params, "experiment_id"))
    return {"experiment": experiment_dict(experiment)}


@endpoint("GET")
def get_by_name(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    name = string(params, "experiment_name")
    default = experiment_default(user=user)
    found = (
        default
        if name == default.name
        else Experiment.objects.filter(owner=user, name=name).first()
    )
    if found is None:
        raise not_found(f"Could not find experiment with name '{name}'")
    return {"experiment": experiment_dict(found)}


def view_type(params: Params) -> str:
    raw: object = params.get("view_type", params.get("run_view_type")) or "ACTIVE_ONLY"
    # Protobuf enums may come as their numbers.
    value = {"1": "ACTIVE_ONLY", "2": "DELETED_ONLY", "3": "ALL"}.get(str(raw), str(raw))
    if value not in VIEW_TYPES:
        raise invalid(f"Invalid view type {raw!r}.")
    return value


def lifecycle_matches(lifecycle: str, view: str) -> bool:
    return view == "ALL" or (lifecycle == Lifecycle.ACTIVE) == (view == "ACTIVE_ONLY")


def max_results(params: Params, default: int = SEARCH_DEFAULT_RESULTS) -> int:
    count = integer(params, "max_results", default=default) or default
    if not 0 < count <= SEARCH_MAX_RESULTS:
        raise invalid(f"Invalid value {count} for parameter 'max_results': 1 to 50000.")
    return count


def page_offset(params: Params) -> int:
    token = string(params, "page_token", required=False)
    if not token:
        return 0
    offset = token_decode(token).get("offset")
    if not isinstance(offset, int) or offset < 0:
        raise invalid("Invalid page token.")
    return offset


def page(rows: list[Any], offset: int, count: int) -> tuple[list[Any], str | None]:
    shown = rows[offset : offset + count]
    more = offset + count < len(rows)
    return shown, token_encode({"offset": offset + count}) if more else None


def _experiment_value(experiment: Experiment, entity: str, key: str) -> Any:
    if entity == "tags":
        return experiment.tags.get(key)
    if key == "name":
        return experiment.name
    if key == "experiment_id":
        return experiment_public_id(experiment)
    if key == "creation_time":
        return millis(experiment.created_at)
    return millis(experiment.updated_at)


@endpoint("POST", "GET")
def search(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment_default(user=user)
    view = view_type(params)
    count = max_results(params)
    offset = page_offset(params)
    clauses = filter_parse(
        string(params, "filter", required=False),
        attributes=EXPERIMENT_ATTRIBUTES,
        default_entity="attributes",
    )
    orders = order_parse(
        string_list(params, "order_by"),
        attributes=EXPERIMENT_ATTRIBUTES,
        default_entity="attributes",
    )
    for clause in clauses:
        if clause.entity not in {"attributes", "tags"}:
            raise invalid("Experiments filter on their attributes and tags only.")
    rows = [
        experiment
        for experiment in Experiment.objects.filter(owner=user).order_by("-created_at", "-pk")
        if lifecycle_matches(experiment.lifecycle, view)
        and all(
            compare(_experiment_value(experiment, c.entity, c.key), c.op, c.value) for c in clauses
        )
    ]
    rows = sort_rows(rows, orders, _experiment_value)
    shown, token = page(rows, offset, count)
    body: dict[str, Any] = {"experiments": [experiment_dict(e) for e in shown]}
    if token:
        body["next_page_token"] = token
    return body


@endpoint("POST")
def update(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment = experiment_resolve(user, string(params, "experiment_id"))
    new_name = string(params, "new_name", required=False)
    if new_name:
        services.experiment_rename(experiment=experiment, name=new_name)
    return {}


@endpoint("POST")
def delete(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment_id = string(params, "experiment_id")
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        raise invalid("The Default experiment cannot be deleted.")
    experiment = experiment_resolve(user, experiment_id)
    services.experiment_lifecycle_set(experiment=experiment, lifecycle=Lifecycle.DELETED)
    return {}


@endpoint("POST")
def restore(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment = experiment_resolve(user, string(params, "experiment_id"))
    services.experiment_lifecycle_set(experiment=experiment, lifecycle=Lifecycle.ACTIVE)
    return {}


@endpoint("POST")
def set_tag(request: HttpRequest, user: User, params: Params) -> dict[str, Any]:
    experiment = experiment_resolve(user, string(params, "experiment_id"))
    services.experiment_tag_set(
        experiment=experiment,
        key=string(params, "key"),
        value=string(params, "value", required=False),
    )
    return {}
