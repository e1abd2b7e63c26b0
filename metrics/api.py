"""The HTTP API under /api/v1/: training scripts create jobs and report their points.

Authentication is `Authorization: Bearer <token>` (accounts.ApiToken); a token reaches its own
user's jobs only, staff included (staff see everyone's jobs in the web UI). Every error is JSON
`{"error": "...", "details": ...}`; bad input is a 4xx, never a 500. Bodies are in
metrics/api_schemas.py; the OpenAPI document is at /api/v1/openapi.json, its docs at /api/v1/docs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, re_path, reverse
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI, Query, Status, Swagger
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from ninja.security import HttpBearer
from pydantic import BaseModel, Field

from accounts.services import api_token_authenticate
from jobs.models import TrainingJob
from jobs.selectors import job_owned_by
from jobs.services import JobTransitionError, job_complete, job_create, job_fail, jobs_lock
from metrics.api_schemas import (
    MAX_STEP,
    TOO_MANY_POINTS,
    ErrorOut,
    FinishIn,
    JobIn,
    JobOut,
    MetricsIn,
    MetricsOut,
    PointIn,
    SeriesOut,
)
from metrics.points import MetricBatch
from metrics.selectors import MIN_DOWNSAMPLED_POINTS, SERIES_MAX_POINTS, metrics_after
from metrics.services import metric_batches_write

logger = logging.getLogger(__name__)

HTTP_BAD_REQUEST = 400
HTTP_UNAUTHORIZED = 401
HTTP_NOT_FOUND = 404
HTTP_METHOD_NOT_ALLOWED = 405
HTTP_CONFLICT = 409
HTTP_PAYLOAD_TOO_LARGE = 413
HTTP_SERVER_ERROR = 500
JSON_CONTENT_TYPE = "application/json; charset=utf-8"  # as ninja's own replies
# An error reply lists at most this many problems; the sentence gives the full count.
MAX_LISTED_ERRORS = 50
# GET .../metrics/ answers with at most this many points.
SERIES_LIMIT = 10_000


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return api_token_authenticate(token)


class TrainmonAPI(NinjaAPI):
    @property
    def urls(self) -> tuple[list[URLPattern], str, str]:
        """Ninja's URL patterns, open to token-only clients, with JSON for every error.

        LoginRequiredMiddleware would send an anonymous API request to the login page: the
        API's views are exempt and authenticate by token. A catch-all answers unknown paths
        under /api/v1/ with a JSON 404 instead of the site's HTML page.
        """
        patterns, app_name, namespace = super().urls
        wrapped = []
        for pattern in patterns:
            if not isinstance(pattern, URLPattern):
                raise TypeError(f"Unexpected nested URL conf in the API: {pattern!r}")
            view = login_not_required(_json_errors(pattern.callback))
            wrapped.append(URLPattern(pattern.pattern, view, pattern.default_args, pattern.name))
        wrapped.append(re_path(r"", _unknown_endpoint, name="unknown"))
        return wrapped, app_name, namespace


def _error(status: int, message: str, details: Any = None) -> JsonResponse:
    response = JsonResponse(
        {"error": message, "details": details}, status=status, content_type=JSON_CONTENT_TYPE
    )
    if status == HTTP_UNAUTHORIZED:
        response["WWW-Authenticate"] = 'Bearer realm="trainmon"'
    return response


def _json_errors(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    # Ninja answers a wrong method with a plain-text 405, and its API-root view raises Http404
    # outside the exception handlers.
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            response = view(request, *args, **kwargs)
        except Http404:
            docs = reverse("api:openapi-view")
            return _error(HTTP_NOT_FOUND, f"No API endpoint at {request.path}; see {docs}.")
        if response.status_code == HTTP_METHOD_NOT_ALLOWED and not response.get(
            "Content-Type", ""
        ).startswith("application/json"):
            allowed = response.get("Allow", "")
            reply = _error(
                HTTP_METHOD_NOT_ALLOWED, f"{request.method} is not allowed here; use {allowed}."
            )
            reply["Allow"] = allowed
            return reply
        return response

    return wrapper


@login_not_required
@csrf_exempt
def _unknown_endpoint(request: HttpRequest) -> JsonResponse:
    hint = "" if request.path.endswith("/") else " (API paths end with a slash)"
    return _error(HTTP_NOT_FOUND, f"No API endpoint at {request.path}{hint}.")


api = TrainmonAPI(
    title="trainmon API",
    version="1",
    description=(
        "Report training metrics to trainmon. Authenticate with `Authorization: Bearer "
        "<token>` (create tokens on the API tokens page or with `manage.py createapitoken`). "
        'Errors are JSON: `{"error": "...", "details": ...}`.'
    ),
    urls_namespace="api",
    auth=BearerToken(),
    # Swagger UI and its CSS are served from django-ninja's bundled static files; the
    # validator badge would call an outside service, so it is off.
    docs=Swagger(settings={"validatorUrl": None}),
)


# --- errors -------------------------------------------------------------------------------------


@api.exception_handler(ApiError)
def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return _error(exc.status, exc.message, exc.details)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(
        HTTP_UNAUTHORIZED,
        "Missing, invalid or revoked API token: send the header 'Authorization: Bearer <token>'.",
    )


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, RequestDataTooBig):
        return _too_large_body()
    if exc.status_code == HTTP_BAD_REQUEST and "parse" in exc.message:
        return _error(HTTP_BAD_REQUEST, "The request body is not valid JSON.")
    return _error(exc.status_code, exc.message)


def _too_large_body() -> JsonResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return _error(
        HTTP_PAYLOAD_TOO_LARGE,
        f"The request body is larger than {limit:,} bytes: send fewer points per batch.",
        {"max_bytes": limit},
    )


@api.exception_handler(RequestDataTooBig)
def _request_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _too_large_body()


@api.exception_handler(NinjaValidationError)
def _invalid(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    too_many = next((e for e in exc.errors if e.get("type") == TOO_MANY_POINTS), None)
    if too_many is not None:
        return _error(HTTP_PAYLOAD_TOO_LARGE, too_many["msg"], too_many.get("ctx"))
    problems = [_problem(error) for error in exc.errors]
    bad_points = {p["index"] for p in problems if "index" in p}
    if bad_points:
        message = f"{len(bad_points)} invalid point(s): nothing was stored."
    else:
        message = f"Invalid request: {len(problems)} problem(s)."
    return _error(HTTP_BAD_REQUEST, message, _bounded(problems))


def _problem(error: dict[str, Any]) -> dict[str, Any]:
    # loc is (source, [param name,] field, ...): ("body", "payload", "points", 3, "loss").
    loc = [part for part in error.get("loc", ()) if part not in {"body", "payload", "query"}]
    problem: dict[str, Any] = {"field": _dotted(loc), "message": error.get("msg", "Invalid.")}
    if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int):
        problem["index"] = loc[1]
    return problem


def _dotted(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _bounded(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return problems[:MAX_LISTED_ERRORS]


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return _error(HTTP_NOT_FOUND, str(exc) or "Not found.")


@api.exception_handler(JobTransitionError)
def _conflict(request: HttpRequest, exc: JobTransitionError) -> HttpResponse:
    return _error(HTTP_CONFLICT, str(exc), {"status": exc.job.status})


@api.exception_handler(DjangoValidationError)
def _model_invalid(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    if hasattr(exc, "error_dict"):
        problems = [
            {"field": field, "message": message}
            for field, messages in exc.message_dict.items()
            for message in messages
        ]
    else:
        problems = [{"field": "body", "message": message} for message in exc.messages]
    return _error(HTTP_BAD_REQUEST, "Invalid job.", _bounded(problems))


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("API error on %s %s", request.method, request.path, exc_info=exc)
    return _error(HTTP_SERVER_ERROR, "Internal server error.")


# --- endpoints ----------------------------------------------------------------------------------

ERRORS = {HTTP_BAD_REQUEST, HTTP_UNAUTHORIZED, HTTP_NOT_FOUND}


def _responses(ok: dict[int, Any], *extra_errors: int) -> dict[Any, Any]:
    return {**ok, frozenset(ERRORS | set(extra_errors)): ErrorOut}


@api.post("/jobs/", response=_responses({201: JobOut}), url_name="job_create", tags=["jobs"])
def create_job(request: HttpRequest, payload: JobIn) -> Status:
    """Create an external job, running at once; report its points with POST .../metrics/."""
    job = job_create(
        owner=request.auth,
        source=TrainingJob.Source.EXTERNAL,
        start=True,
        **payload.model_dump(),
    )
    return Status(201, JobOut.of(job, request))


@api.get("/jobs/{int:job_id}/", response=_responses({200: JobOut}), url_name="job", tags=["jobs"])
def get_job(request: HttpRequest, job_id: int) -> JobOut:
    """A job's status and progress."""
    return JobOut.of(job_owned_by(request.auth, job_id), request)


@api.post(
    "/jobs/{int:job_id}/finish/",
    response=_responses({200: JobOut}, HTTP_CONFLICT),
    url_name="job_finish",
    tags=["jobs"],
)
def finish_job(request: HttpRequest, job_id: int, payload: FinishIn) -> JobOut:
    """Mark an external job completed or failed (with a reason). A finished job answers 409."""
    job = _reportable_job(job_owned_by(request.auth, job_id))
    if payload.status == "completed":
        job_complete(job=job)
    else:
        job_fail(job=job, reason=payload.reason or "Reported failed by the training script.")
    return JobOut.of(job, request)


@api.post(
    "/jobs/{int:job_id}/metrics/",
    response=_responses({200: MetricsOut}, HTTP_CONFLICT, HTTP_PAYLOAD_TOO_LARGE),
    url_name="metrics_write",
    tags=["metrics"],
)
def write_metrics(request: HttpRequest, job_id: int, payload: MetricsIn) -> MetricsOut:
    """Store a batch of points, all or nothing; safe to retry.

    Steps already stored are skipped and counted as duplicates. A NaN or infinite loss fails
    the job at that step; the points after it are discarded. A finished job answers 409.
    """
    job = _reportable_job(job_owned_by(request.auth, job_id))
    batch = _batch_for(job, payload.points)
    with transaction.atomic():
        locked = jobs_lock([job.pk])
        if not locked:
            raise Http404(f"No job {job_id}.")
        [job] = locked
        _reportable_job(job)  # a finish may have landed since the first check
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


@api.get(
    "/jobs/{int:job_id}/metrics/",
    response=_responses({200: SeriesOut}),
    url_name="metrics_read",
    tags=["metrics"],
)
def read_metrics(request: HttpRequest, job_id: int, query: Query[SeriesQuery]) -> SeriesOut:
    """The job's points after `after`, at most `max_points` of them (downsampled if more)."""
    job = job_owned_by(request.auth, job_id)
    series = metrics_after(job, query.after, limit=query.max_points)
    return SeriesOut(
        steps=series.steps,
        loss=series.loss,
        accuracy=series.accuracy,
        learning_rate=series.learning_rate,
        total=series.total,
        downsampled=series.downsampled,
        last_step=series.last_step,
    )


# --- helpers ------------------------------------------------------------------------------------


def _reportable_job(job: TrainingJob) -> TrainingJob:
    if job.source != TrainingJob.Source.EXTERNAL:
        raise ApiError(
            HTTP_CONFLICT,
            f"Job {job.pk} is simulated: only external jobs take reports from the API.",
            {"status": job.status},
        )
    if job.is_terminal:
        reason = f" ({job.failure_reason})" if job.failure_reason else ""
        raise ApiError(
            HTTP_CONFLICT, f"Job {job.pk} is {job.status}{reason}.", {"status": job.status}
        )
    return job


def _batch_for(job: TrainingJob, points: Sequence[PointIn]) -> MetricBatch:
    """The points as a MetricBatch sorted by step, or ApiError 400 naming the bad ones."""
    count = len(points)
    steps = np.fromiter((p.step for p in points), dtype=np.int64, count=count)
    epochs = np.fromiter((p.epoch for p in points), dtype=np.int64, count=count)
    problems: list[dict[str, Any]] = []
    for index in np.flatnonzero(steps >= job.total_steps):
        problems.append(
            _point_problem(
                index,
                "step",
                f"Step {steps[index]} is past the job's last step "
                f"({job.total_steps - 1}: steps count from 0).",
            )
        )
    for index in np.flatnonzero(epochs > job.total_epochs):
        problems.append(
            _point_problem(
                index, "epoch", f"Epoch {epochs[index]} is past the job's {job.total_epochs}."
            )
        )
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
            HTTP_BAD_REQUEST, f"{bad} invalid point(s): nothing was stored.", _bounded(problems)
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


def _point_problem(index: int, field: str, message: str) -> dict[str, Any]:
    return {"field": f"points[{index}].{field}", "index": int(index), "message": message}
