"""The points endpoints of the HTTP API: POST and GET /api/v1/jobs/<id>/metrics/.

Mounted on the one NinjaAPI in trainmon/api.py (authentication: accounts/api.py, errors:
trainmon/api_errors.py); the job endpoints are jobs/api.py. Bodies are in
metrics/api_schemas.py.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from ninja import Query, Router
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import BaseModel, Field

from jobs.api import job_reportable
from jobs.api_schemas import JobOut
from jobs.models import TrainingJob
from jobs.selectors import job_get_owned
from jobs.services import jobs_lock
from metrics.api_schemas import (
    MAX_EPOCH,
    MAX_STEP,
    KeyOut,
    KeysOut,
    MetricsIn,
    MetricsOut,
    NamedSeriesOut,
    NamedSeriesSetOut,
    PointIn,
    SeriesOut,
    metrics_in_for,
    non_finite,
)
from metrics.models import MetricKey
from metrics.points import MetricBatch, NamedBatch
from metrics.selectors import metric_key_list, metrics_after, named_series_downsampled
from metrics.series import MIN_DOWNSAMPLED_POINTS, SERIES_MAX_POINTS
from metrics.services import KeyLimitExceeded, metric_batches_write
from trainmon.api_bodies import (
    BODY_LOC,
    json_body,
    json_body_schema,
    json_response,
    python_body,
)
from trainmon.api_errors import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_PAYLOAD_TOO_LARGE,
    ApiError,
    bounded,
    responses,
)
from trainmon.http import ApiRequest

# GET .../metrics/ answers with at most this many points (per key).
SERIES_LIMIT = 10_000
# GET .../metrics/?keys= reads at most this many keys at once.
KEYS_PER_READ = 100

router = Router(tags=["metrics"])


@router.post(
    "/jobs/{int:job_id}/metrics/",
    response=responses({200: MetricsOut}, HTTP_CONFLICT, HTTP_PAYLOAD_TOO_LARGE),
    url_name="metrics_write",
    openapi_extra=json_body_schema(MetricsIn),
)
def write_metrics(request: ApiRequest, job_id: int) -> MetricsOut:
    """Store a batch of points, all or nothing; safe to retry.

    Steps already stored are skipped and counted as duplicates (per key for named metrics). A
    NaN or infinite loss, or one beyond ±1e100, fails the job at that step; the headline points
    after it are discarded. A non-finite named value is stored and never fails the job. Past
    the job's key limit (TRAINMON_MAX_KEYS_PER_JOB) nothing is stored: 400. A finished job
    answers 409.
    """
    job = job_reportable(job_get_owned(user=request.auth, job_id=job_id))
    batch, named = _batch_for(job, _payload(request, json_body).points)
    if not (np.isfinite(batch.losses).all() and np.isfinite(named.values).all()):
        # From JSON, pydantic reads an integer too big for a float (a loss of 10**400) as
        # infinity; json.loads and model_validate refuse it, as the API always has. Diverged
        # batches are rare: parse this one again that way.
        batch, named = _batch_for(job, _payload(request, python_body).points)
    try:
        with transaction.atomic():
            locked = jobs_lock([job.pk])
            if not locked:
                raise Http404(f"No job {job_id}.")
            [job] = locked
            job_reportable(job)  # a finish may have landed since the first check
            [result] = metric_batches_write([(job, batch)], named={job.pk: named})
    except KeyLimitExceeded as error:
        raise ApiError(
            HTTP_BAD_REQUEST,
            f"Job {job_id} may have at most {error.limit} metric keys "
            f"(TRAINMON_MAX_KEYS_PER_JOB): this batch would add {len(error.new_names)} new "
            "one(s). Nothing was stored.",
            {"limit": error.limit, "new_keys": sorted(error.new_names)[:50]},
        ) from None
    return MetricsOut(
        created=result.created,
        duplicates=result.duplicates,
        discarded=len(batch) - result.created - result.duplicates,
        named_created=result.named_created,
        named_duplicates=result.named_duplicates,
        job=JobOut.of(job, request),
    )


def _payload(
    request: ApiRequest, parse: Callable[[HttpRequest, type[MetricsIn]], MetricsIn]
) -> MetricsIn:
    """The body, by json_body (fast) or python_body (as ninja); 413 past the points limit."""
    limit = settings.TRAINMON_API_MAX_POINTS
    try:
        return parse(request, metrics_in_for(limit))
    except NinjaValidationError as error:
        too_long = next((e for e in error.errors if e["loc"] == _POINTS_LOC), None)
        if too_long is None or too_long["type"] != "too_long":
            raise
        count = too_long["ctx"]["actual_length"]
        raise ApiError(
            HTTP_PAYLOAD_TOO_LARGE,
            f"A batch holds at most {limit} points; this one has {count}.",
            {"limit": limit, "count": count},
        ) from None


_POINTS_LOC = (*BODY_LOC, "points")


class SeriesQuery(BaseModel):
    after: int = Field(-1, ge=-1, le=MAX_STEP, description="Only points with a larger step.")
    max_points: int = Field(
        SERIES_MAX_POINTS,
        ge=MIN_DOWNSAMPLED_POINTS,
        le=SERIES_LIMIT,
        description="More points than this are downsampled to this many.",
    )
    keys: str | None = Field(
        None,
        max_length=KEYS_PER_READ * 251,
        description="Comma-separated key names: read these named series instead of the "
        f"headline one (at most {KEYS_PER_READ}; keys the job lacks are left out).",
    )


@router.get(
    "/jobs/{int:job_id}/metrics/",
    response=responses({200: SeriesOut | NamedSeriesSetOut}),
    url_name="metrics_read",
)
def read_metrics(request: ApiRequest, job_id: int, query: Query[SeriesQuery]) -> HttpResponse:
    """The job's points after `after`, at most `max_points` per series (downsampled if more).

    Without `keys`: the headline series (loss, accuracy, learning rate). With
    `keys=val_loss,train/grad_norm`: `{"keys": {name: {steps, values, ...}}}`.
    """
    job = job_get_owned(user=request.auth, job_id=job_id)
    if query.keys is None:
        # The API's answers carry no times: the summary need not look them up.
        series = metrics_after(job, query.after, limit=query.max_points, times=False)
        # Up to 10,000 points x 4 columns: rendered by pydantic (api_bodies.py), not ninja.
        return json_response(SeriesOut(**series.columns(), downsampled=series.downsampled))
    names = _key_names(query.keys)
    keys = [key for key in metric_key_list(job=job) if key.name in names]
    out = {}
    for key in keys:
        named = named_series_downsampled(
            key=key, max_points=query.max_points, after_step=query.after, times=False
        )
        out[key.name] = NamedSeriesOut(
            steps=named.steps,
            values=named.values,
            total=named.total,
            downsampled=named.downsampled,
            last_step=named.last_step,
        )
    return json_response(NamedSeriesSetOut(keys=out))


@router.get("/jobs/{int:job_id}/keys/", response=responses({200: KeysOut}), url_name="keys")
def read_keys(request: ApiRequest, job_id: int) -> KeysOut:
    """The job's named series by name, with count, first and last step, last, min and max."""
    job = job_get_owned(user=request.auth, job_id=job_id)
    return KeysOut(keys=[_key_out(key) for key in metric_key_list(job=job)])


def _key_out(key: MetricKey) -> KeyOut:
    return KeyOut(
        key=key.name,
        count=key.count,
        first_step=key.first_step,
        last_step=key.last_step,
        last=_finite(key.last_value),
        min=_finite(key.min_value),
        max=_finite(key.max_value),
    )


def _finite(value: float | None) -> float | None:
    # JSON has no NaN or Infinity: a non-finite value is null, as in the series.
    return value if value is not None and math.isfinite(value) else None


def _key_names(text: str) -> set[str]:
    names = {name for name in text.split(",") if name}
    if len(names) > KEYS_PER_READ:
        raise ApiError(
            HTTP_BAD_REQUEST,
            f"Read at most {KEYS_PER_READ} keys at once; this asks for {len(names)}.",
            [{"field": "keys", "message": "too many keys"}],
        )
    return names


def _batch_for(job: TrainingJob, points: Sequence[PointIn]) -> tuple[MetricBatch, NamedBatch]:
    """The headline points as a MetricBatch sorted by step, and the named values as a
    NamedBatch; or ApiError 400 naming the bad points."""
    count = len(points)
    steps = np.fromiter((p.step for p in points), dtype=np.int64, count=count)
    epochs = np.fromiter((_epoch(job, p) for p in points), dtype=np.int64, count=count)
    headline = np.fromiter((p.loss is not None for p in points), dtype=bool, count=count)
    # No check against the job's declared length: it is a hint, never a limit (a script
    # numbering steps from 1, or one that trains longer than it said, loses nothing).
    problems: list[dict[str, Any]] = []
    for position, point in enumerate(points):
        if point.loss is None:
            if point.accuracy is not None or point.learning_rate is not None:
                field = "accuracy" if point.accuracy is not None else "learning_rate"
                problems.append(
                    _point_problem(
                        position,
                        field,
                        "Accuracy and learning rate belong to the headline point: send a loss "
                        "too, or send them in metrics.",
                    )
                )
            elif not point.metrics:
                problems.append(
                    _point_problem(position, "loss", "A point needs a loss or metrics.")
                )
    headline_index = np.flatnonzero(headline)
    order = headline_index[np.argsort(steps[headline_index], kind="stable")]
    repeated = order[1:][steps[order][1:] == steps[order][:-1]]
    for index in np.sort(repeated):
        problems.append(
            _point_problem(index, "step", f"Step {steps[index]} appears twice in the batch.")
        )
    named, repeated_keys = _named_batch(points)
    problems.extend(repeated_keys)
    if problems:
        problems.sort(key=lambda problem: problem["index"])
        bad = len({problem["index"] for problem in problems})
        raise ApiError(
            HTTP_BAD_REQUEST, f"{bad} invalid point(s): nothing was stored.", bounded(problems)
        )
    nan = float("nan")
    kept = [points[index] for index in order]
    return MetricBatch(
        steps=steps[order],
        epochs=epochs[order],
        losses=np.fromiter(
            (non_finite(p.loss) for p in kept if p.loss is not None), np.float64, len(kept)
        ),
        accuracies=np.fromiter(
            (nan if p.accuracy is None else p.accuracy for p in kept), np.float64, len(kept)
        ),
        learning_rates=np.fromiter(
            (nan if p.learning_rate is None else p.learning_rate for p in kept),
            np.float64,
            len(kept),
        ),
    ), named


def _epoch(job: TrainingJob, point: PointIn) -> int:
    """The point's epoch; left out, derived from the step where the job has a length.

    An open-ended job's points without an epoch count as epoch 1: the stored column needs
    one, and the step is what the charts show.
    """
    if point.epoch is not None:
        return point.epoch
    if job.steps_per_epoch:
        return min(point.step // job.steps_per_epoch + 1, MAX_EPOCH)
    return 1


def _named_batch(points: Sequence[PointIn]) -> tuple[NamedBatch, list[dict[str, Any]]]:
    """The points' named values, and a problem for each (key, step) given twice."""
    index_of: dict[str, int] = {}
    key_index: list[int] = []
    steps: list[int] = []
    values: list[float] = []
    times: list[float] = []
    owners: list[int] = []
    now = time.time()
    for position, point in enumerate(points):
        if not point.metrics:
            continue
        when = now if point.timestamp is None else point.timestamp
        for name, value in point.metrics.items():
            key_index.append(index_of.setdefault(name, len(index_of)))
            steps.append(point.step)
            values.append(non_finite(value))
            times.append(when)
            owners.append(position)
    names = tuple(index_of)
    batch = NamedBatch(
        names=names,
        key_index=np.asarray(key_index, dtype=np.int64),
        steps=np.asarray(steps, dtype=np.int64),
        values=np.asarray(values, dtype=np.float64),
        times=np.asarray(times, dtype=np.float64),
    )
    problems = []
    if len(steps) > 1:
        order = np.lexsort((batch.steps, batch.key_index))
        same = (batch.key_index[order][1:] == batch.key_index[order][:-1]) & (
            batch.steps[order][1:] == batch.steps[order][:-1]
        )
        for entry in np.sort(order[1:][same]):
            name = names[batch.key_index[entry]]
            problems.append(
                _point_problem(
                    owners[entry],
                    f"metrics.{name}",
                    f"Key {name!r} has step {steps[entry]} twice in the batch.",
                )
            )
    return batch, problems


def _point_problem(index: int | np.integer[Any], field: str, message: str) -> dict[str, Any]:
    return {"field": f"points[{index}].{field}", "index": int(index), "message": message}
