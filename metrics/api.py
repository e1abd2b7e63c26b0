"""The points endpoints of the HTTP API: POST and GET /api/v1/jobs/<id>/metrics/.

Mounted on the one NinjaAPI in trainmon/api.py (authentication: accounts/api.py, errors:
trainmon/api_errors.py); the job endpoints are jobs/api.py. Bodies are in
metrics/api_schemas.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from django.db import transaction
from django.http import Http404
from ninja import Query, Router
from pydantic import BaseModel, Field

from jobs.api import job_reportable
from jobs.api_schemas import JobOut
from jobs.models import TrainingJob
from jobs.selectors import job_get_owned
from jobs.services import jobs_lock
from metrics.api_schemas import MAX_STEP, MetricsIn, MetricsOut, PointIn, SeriesOut
from metrics.points import MetricBatch
from metrics.selectors import metrics_after
from metrics.series import MIN_DOWNSAMPLED_POINTS, SERIES_MAX_POINTS
from metrics.services import metric_batches_write
from trainmon.api_errors import (
    HTTP_BAD_REQUEST,
    HTTP_CONFLICT,
    HTTP_PAYLOAD_TOO_LARGE,
    ApiError,
    bounded,
    responses,
)
from trainmon.http import ApiRequest

# GET .../metrics/ answers with at most this many points.
SERIES_LIMIT = 10_000

router = Router(tags=["metrics"])


@router.post(
    "/jobs/{int:job_id}/metrics/",
    response=responses({200: MetricsOut}, HTTP_CONFLICT, HTTP_PAYLOAD_TOO_LARGE),
    url_name="metrics_write",
)
def write_metrics(request: ApiRequest, job_id: int, payload: MetricsIn) -> MetricsOut:
    """Store a batch of points, all or nothing; safe to retry.

    Steps already stored are skipped and counted as duplicates. A NaN or infinite loss, or one
    beyond ±1e100, fails the job at that step; the points after it are discarded. A finished
    job answers 409.
    """
    job = job_reportable(job_get_owned(user=request.auth, job_id=job_id))
    batch = _batch_for(job, payload.points)
    with transaction.atomic():
        locked = jobs_lock([job.pk])
        if not locked:
            raise Http404(f"No job {job_id}.")
        [job] = locked
        job_reportable(job)  # a finish may have landed since the first check
        [result] = metric_batches_write([(job, batch)])
    return MetricsOut(
        created=result.created,
        duplicates=result.duplicates,
        discarded=len(batch) - result.created - result.duplicates,
        job=JobOut.of(job, request),
    )


class SeriesQuery(BaseModel):
    after: int = Field(-1, ge=-1, le=MAX_STEP, description="Only points with a larger step.")
    max_points: int = Field(
        SERIES_MAX_POINTS,
        ge=MIN_DOWNSAMPLED_POINTS,
        le=SERIES_LIMIT,
        description="More points than this are downsampled to this many.",
    )


@router.get(
    "/jobs/{int:job_id}/metrics/", response=responses({200: SeriesOut}), url_name="metrics_read"
)
def read_metrics(request: ApiRequest, job_id: int, query: Query[SeriesQuery]) -> SeriesOut:
    """The job's points after `after`, at most `max_points` of them (downsampled if more)."""
    job = job_get_owned(user=request.auth, job_id=job_id)
    series = metrics_after(job, query.after, limit=query.max_points)
    return SeriesOut(**series.columns(), downsampled=series.downsampled)


def _batch_for(job: TrainingJob, points: Sequence[PointIn]) -> MetricBatch:
    """The points as a MetricBatch sorted by step, or ApiError 400 naming the bad ones."""
    count = len(points)
    steps = np.fromiter((p.step for p in points), dtype=np.int64, count=count)
    epochs = np.fromiter((p.epoch for p in points), dtype=np.int64, count=count)
    # No check against the job's declared length: it is a hint, never a limit (a script
    # numbering steps from 1, or one that trains longer than it said, loses nothing).
    problems: list[dict[str, Any]] = []
    order = np.argsort(steps, kind="stable")
    repeated = order[1:][steps[order][1:] == steps[order][:-1]]
    for index in np.sort(repeated):
        problems.append(
            _point_problem(index, "step", f"Step {steps[index]} appears twice in the batch.")
        )
    if problems:
        problems.sort(key=lambda problem: problem["index"])
        bad = len({problem["index"] for problem in problems})
        raise ApiError(
            HTTP_BAD_REQUEST, f"{bad} invalid point(s): nothing was stored.", bounded(problems)
        )
    nan = float("nan")
    return MetricBatch(
        steps=steps[order],
        epochs=epochs[order],
        losses=np.fromiter((p.loss for p in points), dtype=np.float64, count=count)[order],
        accuracies=np.fromiter(
            (nan if p.accuracy is None else p.accuracy for p in points), np.float64, count
        )[order],
        learning_rates=np.fromiter(
            (nan if p.learning_rate is None else p.learning_rate for p in points),
            np.float64,
            count,
        )[order],
    )


def _point_problem(index: int | np.integer[Any], field: str, message: str) -> dict[str, Any]:
    return {"field": f"points[{index}].{field}", "index": int(index), "message": message}
