"""The points endpoints of the HTTP API: POST and GET /api/v1/jobs/<id>/metrics/.

Mounted on the one NinjaAPI in trainmon/api.py (authentication: accounts/api.py, errors:
trainmon/api_errors.py); the job endpoints are jobs/api.py. Bodies are in
metrics/api_schemas.py; a batch, as rows or as columns, becomes arrays in
metrics/api_batches.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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
from metrics.api_batches import batches_from_columns, batches_from_points
from metrics.api_schemas import (
    KeyOut,
    KeysOut,
    MetricColumnsIn,
    MetricsBody,
    MetricsIn,
    MetricsOut,
    NamedSeriesOut,
    NamedSeriesSetOut,
    SeriesOut,
    metrics_body_for,
)
from metrics.models import MetricKey
from metrics.points import MetricBatch, NamedBatch
from metrics.selectors import metric_key_list, metrics_after, named_series_downsampled
from metrics.series import MAX_STEP, MIN_DOWNSAMPLED_POINTS, SERIES_MAX_POINTS
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
    responses,
)
from trainmon.http import ApiRequest

# GET .../metrics/ answers with at most this many points (per key).
SERIES_LIMIT = 10_000
# GET .../metrics/?keys= reads at most this many keys at once.
KEYS_PER_READ = 100

router = Router(tags=["metrics"])

# The write's body in both shapes, for the docs: the same two points.
WRITE_EXAMPLES = {
    "columns": {
        "summary": "columns (faster)",
        "value": {
            "columns": {
                "step": [0, 1],
                "loss": [2.31, 2.12],
                "accuracy": [0.1, None],
                "metrics": {"val_loss": [None, 2.2], "val/acc": [None, "NaN"]},
            }
        },
    },
    "points": {
        "summary": "points",
        "value": {
            "points": [
                {"step": 0, "loss": 2.31, "accuracy": 0.1},
                {"step": 1, "loss": 2.12, "metrics": {"val_loss": 2.2, "val/acc": "NaN"}},
            ]
        },
    },
}


@router.post(
    "/jobs/{int:job_id}/metrics/",
    response=responses({200: MetricsOut}, HTTP_CONFLICT, HTTP_PAYLOAD_TOO_LARGE),
    url_name="metrics_write",
    openapi_extra=json_body_schema(MetricsIn, MetricColumnsIn, examples=WRITE_EXAMPLES),
)
def write_metrics(request: ApiRequest, job_id: int) -> MetricsOut:
    """Store a batch of points, all or nothing; safe to retry.

    The points come as rows (`{"points": [{"step": 0, "loss": 2.3}, ...]}`) or as columns
    (`{"columns": {"step": [0, ...], "loss": [2.3, ...]}}`, faster), with the same rules.

    Steps already stored are skipped and counted as duplicates (per key for named metrics). A
    NaN or infinite loss, or one beyond ±1e100, fails the job at that step; the headline points
    after it are discarded. A non-finite named value is stored and never fails the job. Past
    the job's key limit (TRAINMON_MAX_KEYS_PER_JOB) nothing is stored: 400. A finished job
    answers 409.
    """
    job = job_reportable(job_get_owned(user=request.auth, job_id=job_id))
    batch, named = _batches(job, _payload(request, json_body))
    if not (np.isfinite(batch.losses).all() and np.isfinite(named.values).all()):
        # From JSON, pydantic reads an integer too big for a float (a loss of 10**400) as
        # infinity; json.loads and model_validate refuse it, as the API always has. Diverged
        # batches are rare: parse this one again that way.
        batch, named = _batches(job, _payload(request, python_body))
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


def _batches(job: TrainingJob, body: MetricsBody) -> tuple[MetricBatch, NamedBatch]:
    if body.columns is not None:
        return batches_from_columns(job, body.columns)
    return batches_from_points(job, body.points or [])


def _payload(
    request: ApiRequest, parse: Callable[[HttpRequest, type[MetricsBody]], MetricsBody]
) -> MetricsBody:
    """The body, by json_body (fast) or python_body (as ninja); 413 past the points limit."""
    limit = settings.TRAINMON_API_MAX_POINTS
    try:
        return parse(request, metrics_body_for(limit))
    except NinjaValidationError as error:
        too_long = next((e for e in error.errors if e["loc"] in _COUNTED_LOCS), None)
        if too_long is None or too_long["type"] != "too_long":
            raise
        count = too_long["ctx"]["actual_length"]
        raise ApiError(
            HTTP_PAYLOAD_TOO_LARGE,
            f"A batch holds at most {limit} points; this one has {count}.",
            {"limit": limit, "count": count},
        ) from None


# Where a batch's point count is checked: the points, or the step column.
_COUNTED_LOCS = ((*BODY_LOC, "points"), (*BODY_LOC, "columns", "step"))


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
