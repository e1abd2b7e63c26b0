"""Writes for the MLflow protocol: experiments, runs, params, tags and metrics.

Every write that touches a run takes the run's row lock (jobs_lock) inside one transaction:
a batch's params, tags and metrics are stored all together or not at all, and concurrent
batches (async logging posts from 10 threads) queue on the lock instead of racing.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from jobs.models import Experiment, Lifecycle, TrainingJob
from jobs.services import (
    EXPERIMENT_NAME_MAX,
    experiment_default,
    hyperparameters_size_problem,
    job_create,
    jobs_lock,
    unstorable_json,
    unstorable_text,
)
from metrics.points import NamedBatch, is_key_name
from metrics.services import KeyLimitExceeded, metric_batches_write
from tracking.headline import headline_batch
from tracking.protocol import (
    MLFLOW_TO_STATUS,
    MlflowError,
    from_millis,
    integer,
    invalid,
    number_in,
)

# MLflow's server limits (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
RUN_NAME_MAX = 200  # TrainingJob.name
CLIENT_FAILED_REASON = "The MLflow client marked the run FAILED."
# Steps stay well inside int64: progress stores step + 1.
MAX_STEP = 2**62

_ADJECTIVES = ("amber", "bold", "calm", "deft", "eager", "fleet", "gentle", "keen", "lucid", "wry")
_NOUNS = ("otter", "heron", "lynx", "wren", "ibis", "panda", "finch", "koala", "mole", "yak")


# --- validation ---------------------------------------------------------------------------------


def _key(value: object, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(f"Missing value for required parameter 'key' of a {what}.")
    if len(value) > MAX_KEY_LENGTH:
        raise invalid(
            f"{what.capitalize()} key '{value[:50]}...' had length {len(value)}, which exceeded "
            f"length limit of {MAX_KEY_LENGTH}"
        )
    if not is_key_name(value):
        raise invalid(
            f"Invalid {what} name: '{value}'. Names may only contain alphanumerics, underscores "
            "(_), dashes (-), periods (.), spaces ( ), colons(:) and slashes (/)."
        )
    return value


def _text(value: object, what: str, limit: int) -> str:
    if value is None:
        value = ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise invalid(f"{what} must be a string.")
    text = str(value)
    if len(text) > limit:
        raise invalid(
            f"{what} '{text[:50]}...' had length {len(text)}, which exceeded length limit of "
            f"{limit}"
        )
    if problem := unstorable_text(text):
        raise invalid(f"{what}: {problem}")
    return text


def param_pairs(items: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Validated params in order; the same key twice with different values is an error."""
    found: dict[str, str] = {}
    for item in items:
        key = _key(item.get("key"), "param")
        value = _text(item.get("value"), f"Param value of '{key}'", MAX_PARAM_VALUE_LENGTH)
        if found.get(key, value) != value:
            raise invalid(f"Duplicate parameter key '{key}' with different values in one batch.")
        found[key] = value
    return found


def tag_pairs(items: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items:
        key = item.get("key")
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
            _key(key, "tag")
        if problem := unstorable_text(str(key)):
            raise invalid(f"Tag key: {problem}")
        found[str(key)] = _text(item.get("value"), f"Tag value of '{key}'", MAX_TAG_VALUE_LENGTH)
    return found


# Millisecond times Python's datetime can hold (years 1 to 9999).
MIN_TIMESTAMP_MS = -62_135_596_800_000
MAX_TIMESTAMP_MS = 253_402_300_799_999


def _metric_number(item: Mapping[str, Any], name: str, key: str, *, default: int | None) -> int:
    value = item.get(name)
    if type(value) is int:  # the common case, checked without the general parser
        number = value
    else:
        parsed = integer(dict(item), name, default=default, required=default is None)
        number = 0 if parsed is None else parsed
    if not -(2**63) <= number < 2**63:
        raise invalid(f"Metric '{key}': {name} {number} is out of range.")
    return number


def metric_points(items: Sequence[Mapping[str, Any]]) -> NamedBatch:
    """The metrics as a NamedBatch, first point kept per (key, step).

    1,000 metrics a request at tens of thousands of points a second: a batch of plain
    numbers is checked column by column; any other batch point by point, which also says
    what is wrong with the first bad metric.
    """
    plain = _plain_metric_points(items)
    return plain if plain is not None else _checked_metric_points(items)


def _plain_metric_points(items: Sequence[Mapping[str, Any]]) -> NamedBatch | None:
    """The batch if every metric has a valid key, a float value and in-range integer
    timestamp and step (what the MLflow client sends); None for anything else."""
    try:
        keys = [item["key"] for item in items]
        values = [item["value"] for item in items]
        stamps = [item["timestamp"] for item in items]
        given_steps = [item.get("step", 0) for item in items]
    except KeyError:
        return None
    if not (
        set(map(type, values)) <= {float}
        and set(map(type, stamps)) <= {int}
        and set(map(type, given_steps)) <= {int}
    ):
        return None
    index = dict.fromkeys(keys)
    if not all(type(key) is str and _key_valid(key) for key in index):
        return None
    try:
        steps = np.asarray(given_steps, dtype=np.int64)
        times = np.asarray(stamps, dtype=np.int64)
    except OverflowError:
        return None
    if len(items) and not (
        steps.min() >= 0
        and steps.max() <= MAX_STEP
        and times.min() >= MIN_TIMESTAMP_MS
        and times.max() <= MAX_TIMESTAMP_MS
    ):
        return None
    positions = {key: position for position, key in enumerate(index)}
    key_index = np.asarray([positions[key] for key in keys], dtype=np.int64)
    first = _first_per_key_step(key_index, steps)
    return NamedBatch(
        names=tuple(index),
        key_index=key_index[first],
        steps=steps[first],
        values=np.asarray(values, dtype=np.float64)[first],
        times=times[first] / 1000,
    )


def _key_valid(key: str) -> bool:
    return 0 < len(key) <= MAX_KEY_LENGTH and is_key_name(key)


def _first_per_key_step(key_index: np.ndarray, steps: np.ndarray) -> np.ndarray | slice:
    """Where each (key, step) first occurs, in batch order; every index if none repeats."""
    order = np.lexsort((steps, key_index))  # stable: the first of equal pairs stays first
    repeats = (np.diff(key_index[order]) == 0) & (np.diff(steps[order]) == 0)
    if not repeats.any():
        return slice(None)
    return np.sort(order[np.concatenate(([True], ~repeats))])


def _checked_metric_points(items: Sequence[Mapping[str, Any]]) -> NamedBatch:
    index: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    key_index: list[int] = []
    steps: list[int] = []
    values: list[float] = []
    times: list[float] = []
    for item in items:
        given = item.get("key")
        position = index.get(given) if isinstance(given, str) else None
        key = given if isinstance(given, str) and position is not None else _key(given, "metric")
        raw = item.get("value")
        if type(raw) is float:
            value = raw
        elif "value" not in item:
            raise invalid(f"Missing value for required parameter 'value' of metric '{key}'.")
        else:
            value = number_in(raw, f"value of metric '{key}'")
        timestamp = _metric_number(item, "timestamp", key, default=None)
        step = _metric_number(item, "step", key, default=0)
        if not 0 <= step <= MAX_STEP:
            raise invalid(f"Metric '{key}' has step {step}; steps must be 0 to {MAX_STEP}.")
        if not MIN_TIMESTAMP_MS <= timestamp <= MAX_TIMESTAMP_MS:
            raise invalid(f"Metric '{key}' has timestamp {timestamp} (ms), out of range.")
        # MLflow allows several values at one step (different timestamps); trainmon keeps
        # one point per (key, step): the first that arrives.
        if (key, step) in seen:
            continue
        seen.add((key, step))
        if position is None:
            position = index[key] = len(index)
        key_index.append(position)
        steps.append(step)
        values.append(value)
        times.append(timestamp / 1000)
    return NamedBatch(
        names=tuple(index),
        key_index=np.asarray(key_index, dtype=np.int64),
        steps=np.asarray(steps, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
        times=np.asarray(times, dtype=np.float64),
    )


@dataclass(frozen=True)
class Batch:
    metrics: NamedBatch
    params: dict[str, str]
    tags: dict[str, str]


def batch_parse(
    metrics: Sequence[Mapping[str, Any]],
    params: Sequence[Mapping[str, Any]],
    tags: Sequence[Mapping[str, Any]],
) -> Batch:
    """A log-batch request checked against MLflow's limits; nothing is written here."""
    if len(metrics) > MAX_METRICS_PER_BATCH:
        raise invalid(
            f"A batch logging request can contain at most {MAX_METRICS_PER_BATCH} metrics. "
            f"Got {len(metrics)} metrics."
        )
    if len(params) > MAX_PARAMS_PER_BATCH:
        raise invalid(
            f"A batch logging request can contain at most {MAX_PARAMS_PER_BATCH} params. "
            f"Got {len(params)} params."
        )
    if len(tags) > MAX_TAGS_PER_BATCH:
        raise invalid(
            f"A batch logging request can contain at most {MAX_TAGS_PER_BATCH} tags. "
            f"Got {len(tags)} tags."
        )
    total = len(metrics) + len(params) + len(tags)
    if total > MAX_ENTITIES_PER_BATCH:
        raise invalid(
            f"A batch logging request can contain at most {MAX_ENTITIES_PER_BATCH} "
            f"metrics, params and tags in all. Got {total}."
        )
    return Batch(metric_points(metrics), param_pairs(params), tag_pairs(tags))


# --- runs ---------------------------------------------------------------------------------------


def run_name_generate() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"


def run_create(
    *,
    user: User,
    experiment: Experiment,
    run_name: str = "",
    start_time: int | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainingJob:
    """A running external job for an MLflow run: named by `run_name`, else the
    mlflow.runName tag, else a generated name."""
    if experiment.lifecycle != Lifecycle.ACTIVE:
        raise invalid(f"The experiment {experiment.name!r} is deleted: restore it first.")
    tags = dict(tags or {})
    name = (run_name or tags.get("mlflow.runName") or "").strip() or run_name_generate()
    if len(name) > RUN_NAME_MAX:
        raise invalid(f"Run name had length {len(name)}, which exceeded {RUN_NAME_MAX}.")
    tags["mlflow.runName"] = name
    if problem := unstorable_json(tags):
        raise invalid(problem)
    with transaction.atomic():
        job = job_create(owner=user, name=name, source=TrainingJob.Source.EXTERNAL)
        job.experiment = experiment
        job.tags = tags
        if start_time is not None:
            job.started_at = from_millis(start_time)
        job.save(update_fields=["experiment", "tags", "started_at"])
    return job


def _locked(job: TrainingJob, *, active: bool = True) -> TrainingJob:
    locked = jobs_lock([job.pk])
    if not locked:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run with id={job.run_uuid} not found")
    return _writable(locked[0], active=active)


def _locked_owned(user: User, run_id: str) -> TrainingJob:
    """The user's run, row-locked, in one query: the lookup and the lock of a log-batch.

    One row, so jobs_lock's id order is moot; another user's run is as missing as none.
    """
    current = None
    if run_id and len(run_id) <= 32:
        # Raw: the ORM spent ~1 ms compiling this SELECT of the job's many columns, a tenth of
        # a log-batch's budget; (owner, run_uuid) is unique, so one row at most.
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        found = TrainingJob.objects.raw(
            f"SELECT * FROM {TrainingJob._meta.db_table} WHERE owner_id = %s AND run_uuid = %s"
            + lock,
            [user.pk, run_id],
        )
        current = next(iter(found), None)
    if current is None:
        raise MlflowError("RESOURCE_DOES_NOT_EXIST", f"Run with id={run_id} not found")
    return _writable(current, active=True)


def _writable(current: TrainingJob, *, active: bool) -> TrainingJob:
    job = current
    if current.source != TrainingJob.Source.EXTERNAL:
        # The simulator writes a simulated job's points and moves its status.
        raise invalid(f"Run {job.run_uuid} is a simulated job: it takes no data or status.")
    if active and current.lifecycle != Lifecycle.ACTIVE:
        raise invalid(
            f"The run {job.run_uuid} must be in the 'active' state. Current state is deleted."
        )
    return current


def run_update(
    *, job: TrainingJob, status: str | None, end_time: int | None, run_name: str | None
) -> TrainingJob:
    """Set a run's status (any to any, as MLflow: a finished run may run again) and name."""
    if status is not None and status not in MLFLOW_TO_STATUS:
        raise invalid(f"Invalid run status {status!r}.")
    if run_name is not None and len(run_name.strip()) > RUN_NAME_MAX:
        raise invalid(f"Run name had length {len(run_name)}, which exceeded {RUN_NAME_MAX}.")
    finished = from_millis(end_time) if end_time is not None else timezone.now()
    with transaction.atomic():
        current = _locked(job, active=False)
        changes: dict[str, Any] = {"updated_at": timezone.now()}
        target = None if status is None else MLFLOW_TO_STATUS[status]
        if (
            target == TrainingJob.Status.COMPLETED
            and current.status == TrainingJob.Status.FAILED
            and current.failure_reason != CLIENT_FAILED_REASON
        ):
            # A run trainmon failed (its loss diverged) stays failed when the script ends
            # normally: the client's FINISHED must not hide the divergence.
            target = None
        if target is not None:
            changes["status"] = target
            if target == TrainingJob.Status.QUEUED:
                changes["finished_at"] = None
            elif target == TrainingJob.Status.RUNNING:
                changes["started_at"] = Coalesce("started_at", Now())
                changes["finished_at"] = None
                changes["failure_reason"] = ""
            else:
                changes["started_at"] = Coalesce("started_at", Now())
                changes["finished_at"] = finished
                if target == TrainingJob.Status.FAILED:
                    changes["failure_reason"] = CLIENT_FAILED_REASON
        if run_name and run_name.strip():
            changes["name"] = run_name.strip()
            changes["tags"] = {**current.tags, "mlflow.runName": run_name.strip()}
        TrainingJob.objects.filter(pk=job.pk).update(**changes)
    job.refresh_from_db()
    return job


def run_lifecycle_set(*, job: TrainingJob, lifecycle: str) -> TrainingJob:
    with transaction.atomic():
        _locked(job, active=False)
        TrainingJob.objects.filter(pk=job.pk).update(lifecycle=lifecycle, updated_at=timezone.now())
    job.refresh_from_db()
    return job


def run_log(*, job: TrainingJob, batch: Batch, now: datetime | None = None) -> None:
    """Store a batch's params, tags and metrics together, or nothing.

    Params are immutable, as in MLflow: the same value again is fine, another one is
    INVALID_PARAMETER_VALUE. A retried or concurrent batch stores no point twice.
    """
    with transaction.atomic():
        _write_locked(_locked(job), batch, now)


def run_log_batch(
    *,
    user: User,
    run_id: str,
    metrics: Sequence[Mapping[str, Any]],
    params: Sequence[Mapping[str, Any]],
    tags: Sequence[Mapping[str, Any]],
    now: datetime | None = None,
) -> None:
    """log-batch: the run looked up and locked in one query, then the batch checked
    (batch_parse) and stored as run_log does."""
    with transaction.atomic():
        current = _locked_owned(user, run_id)
        _write_locked(current, batch_parse(metrics, params, tags), now)


def _write_locked(current: TrainingJob, batch: Batch, now: datetime | None) -> None:
    """Inside the caller's transaction, `current` locked."""
    job = current
    try:
        changes: dict[str, Any] = {}
        if batch.params:
            params = dict(current.hyperparameters)
            for key, value in batch.params.items():
                if key in params and params[key] != value:
                    raise invalid(
                        f"Changing param values is not allowed. Param with key='{key}' was "
                        f"already logged with value='{params[key]}' for run ID="
                        f"'{job.run_uuid}'. Attempted logging new value '{value}'."
                    )
                params[key] = value
            if problem := hyperparameters_size_problem(params):
                raise invalid(problem)
            changes["hyperparameters"] = params
        if batch.tags:
            tags = {**current.tags, **batch.tags}
            if "mlflow.runName" in batch.tags and batch.tags["mlflow.runName"].strip():
                name = batch.tags["mlflow.runName"].strip()
                if len(name) > RUN_NAME_MAX:
                    raise invalid(f"Run name had length {len(name)}, over {RUN_NAME_MAX}.")
                changes["name"] = name
            changes["tags"] = tags
        if changes:
            changes["updated_at"] = timezone.now()
            TrainingJob.objects.filter(pk=job.pk).update(**changes)
        if len(batch.metrics):
            metric_batches_write(
                [(current, headline_batch(current, batch.metrics))],
                named={current.pk: batch.metrics},
                now=now,
            )
    except KeyLimitExceeded as error:
        raise invalid(str(error)) from None


def run_tag_delete(*, job: TrainingJob, key: str) -> None:
    with transaction.atomic():
        current = _locked(job)
        if key not in current.tags:
            raise MlflowError(
                "RESOURCE_DOES_NOT_EXIST",
                f"No tag with name: {key} in run with id {job.run_uuid}",
            )
        tags = {name: value for name, value in current.tags.items() if name != key}
        TrainingJob.objects.filter(pk=job.pk).update(tags=tags, updated_at=timezone.now())


def run_inputs_log(*, job: TrainingJob, datasets: list[dict[str, Any]]) -> None:
    """Keep the dataset inputs as sent (shown nowhere else; read back with the run)."""
    if problem := unstorable_json(datasets):
        raise invalid(problem)
    with transaction.atomic():
        current = _locked(job)
        inputs = list(current.inputs)
        for dataset in datasets:
            if dataset not in inputs:
                inputs.append(dataset)
        TrainingJob.objects.filter(pk=job.pk).update(inputs=inputs, updated_at=timezone.now())


# --- experiments --------------------------------------------------------------------------------


def experiment_name_check(name: str) -> str:
    name = name.strip()
    if not name:
        raise invalid("Experiment name cannot be empty.")
    if len(name) > EXPERIMENT_NAME_MAX:
        raise invalid(f"Experiment name is longer than {EXPERIMENT_NAME_MAX} characters.")
    if problem := unstorable_text(name):
        raise invalid(problem)
    return name


def experiment_create(*, user: User, name: str, tags: Mapping[str, str]) -> Experiment:
    name = experiment_name_check(name)
    experiment_default(user=user)  # "Default" is taken by the Default from the start
    if problem := unstorable_json(dict(tags)):
        raise invalid(problem)
    try:
        with transaction.atomic():
            return Experiment.objects.create(owner=user, name=name, tags=dict(tags))
    except IntegrityError:
        raise MlflowError(
            "RESOURCE_ALREADY_EXISTS", f"Experiment '{name}' already exists."
        ) from None


def experiment_rename(*, experiment: Experiment, name: str) -> Experiment:
    name = experiment_name_check(name)
    try:
        with transaction.atomic():
            Experiment.objects.filter(pk=experiment.pk).update(name=name, updated_at=timezone.now())
    except IntegrityError:
        raise MlflowError(
            "RESOURCE_ALREADY_EXISTS", f"Experiment '{name}' already exists."
        ) from None
    experiment.refresh_from_db()
    return experiment


def experiment_lifecycle_set(*, experiment: Experiment, lifecycle: str) -> Experiment:
    if experiment.is_default and lifecycle == Lifecycle.DELETED:
        raise invalid("The Default experiment cannot be deleted.")
    Experiment.objects.filter(pk=experiment.pk).update(
        lifecycle=lifecycle, updated_at=timezone.now()
    )
    experiment.refresh_from_db()
    return experiment


def experiment_tag_set(*, experiment: Experiment, key: str, value: str) -> Experiment:
    key = _key(key, "tag")
    value = _text(value, f"Tag value of '{key}'", MAX_TAG_VALUE_LENGTH)
    with transaction.atomic():
        current = Experiment.objects.select_for_update().get(pk=experiment.pk)
        current.tags = {**current.tags, key: value}
        current.updated_at = timezone.now()
        current.save(update_fields=["tags", "updated_at"])
    experiment.refresh_from_db()
    return experiment
