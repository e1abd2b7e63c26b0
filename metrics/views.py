from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pydantic_core
from django.http import (
    Http404,
    HttpResponse,
    HttpResponseBadRequest,
    QueryDict,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils.http import content_disposition_header
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_htmx.http import HTMX_STOP_POLLING, trigger_client_event

from jobs.live_figures import job_live_figures
from jobs.models import TrainingJob
from jobs.selectors import MAX_JOB_ID, job_get_live, job_get_visible, job_list_visible
from metrics.compare import jobs_with_key_names, key_series, shared_key_names
from metrics.export import (
    FORMATS,
    dumps_finite,
    export_csv_chunks,
    export_filename,
    export_json_chunks,
    named_csv_chunks,
    named_json_chunks,
)
from metrics.models import MetricKey
from metrics.points import KEY_NAME_RE
from metrics.selectors import (
    Poll,
    job_poll,
    metric_key_list,
    metrics_after,
    named_series_many,
    series_downsampled,
)
from metrics.series import MAX_STEP, POLL_MAX_POINTS, SERIES_MAX_POINTS, NamedSeries, Series
from trainmon.http import HtmxHttpRequest

Status = TrainingJob.Status

SERIES_MIN_POINTS_PARAM = 10
SERIES_MAX_POINTS_PARAM = 10_000
COMPARE_MAX_JOBS = 8
# Eight lines on one chart: fewer points each keeps the page light and still shows shape.
COMPARE_POINTS_PER_JOB = 1000
MAX_JOB_ID_DIGITS = len(str(MAX_JOB_ID))
PALETTE_SIZE = 8  # CSS variables --series-0 .. --series-7
MISSING_VALUE = "—"
# Named keys one series or poll request may ask for: a screenful of charts, with room to spare.
MAX_KEYS_PER_REQUEST = 100
KEY_NAME_MAX_LENGTH = 250
HEADLINE_KEY = "loss"  # the compare page's default: the headline loss (TrainingMetric)

_STATUS_TOASTS: dict[str, tuple[str, str]] = {
    Status.COMPLETED: ("completed", "success"),
    Status.STALLED: ("stalled: no report received lately", "warning"),
    Status.CANCELLED: ("cancelled", "warning"),
    Status.PAUSED: ("paused", "info"),
    Status.QUEUED: ("queued", "info"),
}
# What a job that runs again did, by the status it left.
_RESUMED_VERBS: dict[str, str] = {
    Status.QUEUED: "started",
    Status.PAUSED: "resumed",
    Status.STALLED: "is reporting again",
}

# Escapes as Django's json_script does, so data can sit inside a <script> element.
_SCRIPT_ESCAPES = {ord("<"): "\\u003C", ord(">"): "\\u003E", ord("&"): "\\u0026"}


class HttpResponseNoNews(HttpResponse):
    """A poll with nothing the page does not already show: no body, and htmx 2 swaps nothing
    on a 204 (and keeps polling)."""

    status_code = 204


class BadParameter(ValueError):
    """A query parameter the view cannot use; str() is the message for the user."""


@never_cache
@require_GET
def series(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    """The headline series (today's shape, plus "times" and "cursor"); with `?keys=a,b` the
    named series of those keys instead: {"keys": {name: columns}, "cursor": seq}."""
    try:
        max_points = _int_param(request.GET, "max_points", default=SERIES_MAX_POINTS)
        names = _keys_param(request.GET)
    except BadParameter as error:
        return _json_response({"error": str(error)}, status=400)
    max_points = min(max(max_points, SERIES_MIN_POINTS_PARAM), SERIES_MAX_POINTS_PARAM)
    job = job_get_visible(user=request.user, job_id=job_id)
    # The cursor is read (with the job) before the points: a write in between is sent again
    # by the next poll, which the page merges by step, rather than missed.
    cursor = job.ingest_seq
    if names is None:
        points = series_downsampled(job, max_points)
        return _json_response(
            {
                **_headline_columns(points),
                "shown": points.shown,
                "status": job.status,
                "cursor": cursor,
            }
        )
    by_name = {key.name: key for key in metric_key_list(job=job, names=names)}
    asked = [by_name[name] for name in names if name in by_name]
    found = named_series_many(asked, max_points)
    answer = {
        name: _named_columns(found[by_name[name].pk]) if name in by_name else _EMPTY_NAMED
        for name in names
    }
    return _json_response({"keys": answer, "cursor": cursor, "status": job.status})


@never_cache
@require_GET
def keys(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    """The job's named keys with their running stats, by name, and the ingest cursor."""
    job = job_get_visible(user=request.user, job_id=job_id)
    cursor = job.ingest_seq
    return _json_response(
        {"keys": [_key_stats(key) for key in metric_key_list(job=job)], "cursor": cursor}
    )


@never_cache
@require_GET
def poll(request: HtmxHttpRequest, job_id: int) -> HttpResponse:
    """News for an open job page: JSON with the new points and the progress and stats cards'
    figures as text (jobs.live_figures), which charts.js and job-figures.js place; after a
    status change, the job's partials out of band instead, with that JSON in #poll-data.

    `?cursor=N&keys=a,b`: everything ingested since the ingest position N (late points
    included) for the headline and those keys. The older `?after=<step>`: headline points
    with a step past it. `status` (the one the page shows) and `progress_seq` (the ingest
    position its progress and stats show): with no new points, an unchanged status and
    current figures, the answer is a bare 204. A finished job's answer is a 286 (htmx 2 stops
    polling), whatever its form.
    """
    try:
        known_status = _status_param(request.GET)
        # The ingest position the page's progress and stats show (data-ingest-seq).
        progress_seq = (
            _int_param(request.GET, "progress_seq", minimum=0)
            if "progress_seq" in request.GET
            else None
        )
        if "cursor" in request.GET:
            cursor = _int_param(request.GET, "cursor", minimum=0)
            names = _keys_param(request.GET)
            after = None
        else:
            # Steps are signed 64-bit: past the largest there is nothing, and SQLite cannot
            # even bind a larger number.
            after = min(_int_param(request.GET, "after", minimum=-1), MAX_STEP)
    except BadParameter as error:
        return HttpResponseBadRequest(str(error), content_type="text/plain; charset=utf-8")
    job = job_get_live(user=request.user, job_id=job_id)
    status_changed = known_status != job.status
    if after is None:
        # Every write that stores points moves the job's ingest position, and the progress
        # and stats partials only move with a write or a status change: an unmoved cursor
        # and an unchanged status mean the page shows all there is.
        nothing_new = cursor == job.ingest_seq
    else:
        points = metrics_after(job, after, POLL_MAX_POINTS, times=False)  # columns() has none
        nothing_new = points.total == 0
    if progress_seq is not None and progress_seq != job.ingest_seq:
        nothing_new = False  # no points, maybe, but the progress and stats are behind
    # A finished job always answers 286 with its final figures, so polling stops.
    if nothing_new and not status_changed and not job.is_terminal:
        return HttpResponseNoNews()
    if after is None:
        data = _poll_data(job_poll(job=job, cursor=cursor, keys=names))
    else:
        data = {
            **points.columns(),
            "shown": points.shown,
            "last_step": after if points.last_step is None else points.last_step,
            "catch_up": points.downsampled,
        }
    data.update(status=job.status, terminal=job.is_terminal)
    if not status_changed:
        # The page's partials keep their shape: their figures go as text in the JSON.
        data["figures"] = job_live_figures(job)
        return _json_response(data, status=_poll_status(job))
    response = _poll_partials(request, job, data)
    if known_status:
        trigger_client_event(response, "toast", status_toast(job, known_status))
    return response


def _poll_status(job: TrainingJob) -> int:
    # htmx 2 stops polling on 286 and still handles the answer: the final points and figures.
    return HTMX_STOP_POLLING if job.is_terminal else 200


def _poll_partials(
    request: HtmxHttpRequest, job: TrainingJob, data: dict[str, Any]
) -> HttpResponse:
    """A status change: the header (badge, buttons), progress and stats partials whole, out of
    band (the status changes what they show, not only their figures), and the poll's JSON in
    #poll-data. The header is re-sent only then: re-sending it on every poll would take
    keyboard focus off its buttons."""
    context = {"job": job, "poll_json": _script_json(data), "with_header": True}
    html = render_to_string("metrics/_poll.html", context, request=request)
    return HttpResponse(html, status=_poll_status(job))


@require_GET
def export_csv(request: HtmxHttpRequest, job_id: int) -> StreamingHttpResponse:
    return _export(request, job_id, "csv", export_csv_chunks)


@require_GET
def export_json(request: HtmxHttpRequest, job_id: int) -> StreamingHttpResponse:
    return _export(request, job_id, "json", export_json_chunks)


@require_GET
def export_keys_csv(request: HtmxHttpRequest, job_id: int) -> StreamingHttpResponse:
    """The job's named series (?keys=a,b: only those) as long-format CSV."""
    names = _key_names_param(request.GET)
    return _export(request, job_id, "csv", lambda job: named_csv_chunks(job, names), suffix="keys")


@require_GET
def export_keys_json(request: HtmxHttpRequest, job_id: int) -> StreamingHttpResponse:
    """The job's named series (?keys=a,b: only those) as long-format JSON."""
    names = _key_names_param(request.GET)
    return _export(
        request, job_id, "json", lambda job: named_json_chunks(job, names), suffix="keys"
    )


def _key_names_param(params: QueryDict) -> set[str] | None:
    """?keys=a,b as a set of names; None (every key) when absent or empty."""
    names = {name for name in params.get("keys", "").split(",") if name}
    return names or None


@require_GET
def compare(request: HtmxHttpRequest) -> HttpResponse:
    """Jobs side by side: one key overlaid (`?key=`, default the headline loss), the table
    with each job's last and best value of it and the hyperparameters."""
    try:
        job_ids = _job_ids(request.GET)
        key = _compare_key_param(request.GET)
    except BadParameter as error:
        context = {"error": str(error), "max_jobs": COMPARE_MAX_JOBS}
        return render(request, "metrics/compare.html", context, status=400)
    visible_jobs = jobs_with_key_names(job_list_visible(user=request.user).filter(pk__in=job_ids))
    visible = {job.pk: job for job in visible_jobs}
    jobs = [visible[job_id] for job_id in job_ids if job_id in visible]
    if not jobs:
        raise Http404("None of these jobs exist or are yours.")
    colours = series_colours([job.pk for job in jobs])
    shared = shared_key_names(jobs)
    if key:
        found = key_series(jobs, key, COMPARE_POINTS_PER_JOB)
        lines = {job_id: _named_compact(line.series) for job_id, line in found.items()}
        stats = {job_id: (line.last, line.best) for job_id, line in found.items()}
    else:
        lines = {
            job.pk: _compact_series(series_downsampled(job, COMPARE_POINTS_PER_JOB, times=False))
            for job in jobs
        }
        stats = {job.pk: (job.last_loss, job.best_loss) for job in jobs}
    chart = [
        {"id": job.pk, "name": job.name, "colour": colours[job.pk], **lines[job.pk]} for job in jobs
    ]
    params_keys, rows = _hyperparameter_table(jobs)
    context = {
        "jobs": jobs,
        "rows": [
            {
                "job": job,
                "colour": colours[job.pk],
                "params": params,
                "last": stats[job.pk][0],
                "best": stats[job.pk][1],
            }
            for job, params in zip(jobs, rows, strict=True)
        ],
        "hyperparameter_keys": params_keys,
        "skipped": [job_id for job_id in job_ids if job_id not in visible],
        "chart_data": chart,
        "max_jobs": COMPARE_MAX_JOBS,
        "key": key,
        "key_label": key or HEADLINE_KEY,
        # The picker: the keys every job has, and the one asked for even if some lack it.
        "key_choices": shared if not key or key in shared else sorted([*shared, key]),
        "job_ids": ",".join(str(job.pk) for job in jobs),
    }
    return render(request, "metrics/compare.html", context)


def status_toast(job: TrainingJob, previous: str) -> dict[str, str]:
    """The toast for a job whose status changed from `previous` to its current one."""
    name = job.name
    if job.status == Status.FAILED:
        reason = f": {job.failure_reason}" if job.failure_reason else ""
        return {"message": f"{name} failed{reason}", "level": "error"}
    if job.status == Status.RUNNING:
        verb = _RESUMED_VERBS.get(previous, "is running")
        return {"message": f"{name} {verb}", "level": "info"}
    message, level = _STATUS_TOASTS.get(
        job.status, (f"is {job.get_status_display().lower()}", "info")
    )
    return {"message": f"{name} {message}", "level": level}


def series_colours(job_ids: list[int]) -> dict[int, int]:
    """Palette slot per job: id mod palette size, so a job keeps its colour across pages;
    a slot already taken on this page goes to the next free one (lowest id keeps its own)."""
    taken: set[int] = set()
    colours: dict[int, int] = {}
    for job_id in sorted(set(job_ids)):
        slot = job_id % PALETTE_SIZE
        for offset in range(PALETTE_SIZE):
            candidate = (slot + offset) % PALETTE_SIZE
            if candidate not in taken:
                slot = candidate
                break
        taken.add(slot)
        if len(taken) == PALETTE_SIZE:
            taken.clear()
        colours[job_id] = slot
    return colours


# --- helpers ----------------------------------------------------------------------------------


def _int_param(
    params: QueryDict, name: str, *, default: int | None = None, minimum: int | None = None
) -> int:
    raw = params.get(name, "").strip()
    if raw == "":
        if default is None:
            raise BadParameter(f"{name} is required.")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameter(f"{name} must be an integer, got {raw[:40]!r}.") from None
    if minimum is not None and value < minimum:
        raise BadParameter(f"{name} must be at least {minimum}, got {value}.")
    return value


def _status_param(params: QueryDict) -> str:
    status = params.get("status", "").strip()
    if status and status not in Status.values:
        raise BadParameter(f"status must be one of {', '.join(Status.values)}.")
    return status


def _job_ids(params: QueryDict) -> list[int]:
    """Ids from ?jobs=1,2 or ?jobs=1&jobs=2 (the dashboard's checkboxes), in order, unique."""
    ids: list[int] = []
    for value in params.getlist("jobs"):
        for piece in value.split(","):
            part = piece.strip()
            if not part:
                continue
            job_id = _job_id(part)
            if job_id not in ids:
                ids.append(job_id)
    if not ids:
        raise BadParameter("Choose at least one job to compare.")
    if len(ids) > COMPARE_MAX_JOBS:
        raise BadParameter(f"Compare at most {COMPARE_MAX_JOBS} jobs at a time ({len(ids)} given).")
    return ids


def _job_id(text: str) -> int:
    # ASCII digits only: "²".isdigit() is true yet int() refuses it. Ids are signed 64-bit;
    # a larger number is no job, and SQLite cannot even bind it.
    if text.isascii() and text.isdigit() and len(text) <= MAX_JOB_ID_DIGITS:
        job_id = int(text)
        if 0 < job_id <= MAX_JOB_ID:
            return job_id
    raise BadParameter(f"{text[:40]!r} is not a job id.")


def _hyperparameter_table(
    jobs: list[TrainingJob],
) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """Columns (key, differs) and per job the cells (present, value, differs), keys sorted."""
    params = [job.hyperparameters if isinstance(job.hyperparameters, dict) else {} for job in jobs]
    keys = sorted({key for p in params for key in p})
    differs = {
        key: len({json.dumps(p.get(key, MISSING_VALUE), sort_keys=True) for p in params}) > 1
        for key in keys
    }
    rows = [
        [{"present": key in p, "value": p.get(key), "differs": differs[key]} for key in keys]
        for p in params
    ]
    return [{"key": key, "differs": differs[key]} for key in keys], rows


def _keys_param(params: QueryDict) -> list[str] | None:
    """Key names from ?keys=a,b (names cannot hold a comma), in order, unique; None when the
    parameter is absent, [] when it is empty."""
    if "keys" not in params:
        return None
    names: dict[str, None] = {}  # ordered and unique
    for value in params.getlist("keys"):
        for name in value.split(","):
            if not name or name in names:
                continue
            if len(name) > KEY_NAME_MAX_LENGTH:
                raise BadParameter(f"A key name has at most {KEY_NAME_MAX_LENGTH} characters.")
            names[name] = None
            # Checked as it grows: a hostile list of a million names costs no more than this.
            if len(names) > MAX_KEYS_PER_REQUEST:
                raise BadParameter(f"Ask for at most {MAX_KEYS_PER_REQUEST} keys at a time.")
    return list(names)


_EMPTY_NAMED: dict[str, Any] = {"steps": [], "values": [], "times": [], "total": 0, "shown": 0}


def _named_columns(points: NamedSeries) -> dict[str, Any]:
    return {
        "steps": points.steps,
        "values": points.values,
        "times": points.times,
        "total": points.total,
        "shown": points.shown,
    }


def _headline_columns(points: Series) -> dict[str, Any]:
    return {**points.columns(), "times": points.times}  # times: the wall-clock axis


def _key_stats(key: MetricKey) -> dict[str, Any]:
    return {
        "key": key.name,
        "count": key.count,
        "first_step": key.first_step,
        "last_step": key.last_step,
        "last": key.last_value,
        "min": key.min_value,
        "max": key.max_value,
    }


def _poll_data(news: Poll) -> dict[str, Any]:
    return {
        "cursor": news.cursor,
        "headline": _headline_columns(news.headline),
        "keys": {name: _named_columns(points) for name, points in news.named.items()},
        "reload": news.reload,
        "new_keys": news.new_keys,
    }


def _compact_series(points: Series) -> dict[str, Any]:
    return {"steps": points.steps, "values": points.loss, "total": points.total}


def _named_compact(points: NamedSeries | None) -> dict[str, Any]:
    if points is None:
        return {"steps": [], "values": [], "total": 0}
    return {"steps": points.steps, "values": points.values, "total": points.total}


def _compare_key_param(params: QueryDict) -> str:
    """The named key to compare; "" for the headline loss."""
    key = params.get("key", "")
    if key and not re.fullmatch(KEY_NAME_RE, key):
        raise BadParameter(f"{key[:40]!r} is not a metric key name.")
    return key


def _json_response(data: dict[str, Any], *, status: int = 200) -> HttpResponse:
    """The page's JSON (series, keys, poll news), compact, through pydantic-core: an open
    page polls every few seconds, and json.dumps took 0.1-0.2 ms of a poll's ~1 ms of own
    work (pydantic-core a sixth of that or less), more for a chart's thousands of points.
    Non-finite floats become null, as dumps_finite writes them."""
    body = pydantic_core.to_json(data, inf_nan_mode="null")
    return HttpResponse(body, content_type="application/json", status=status)


def _script_json(data: dict[str, Any]) -> SafeString:
    return mark_safe(dumps_finite(data).translate(_SCRIPT_ESCAPES))


def _export(
    request: HtmxHttpRequest,
    job_id: int,
    fmt: str,
    chunks: Callable[[TrainingJob], Iterator[str]],
    *,
    suffix: str = "",
) -> StreamingHttpResponse:
    job = job_get_visible(user=request.user, job_id=job_id)
    filename = export_filename(job, fmt, suffix=suffix)
    return StreamingHttpResponse(
        chunks(job),
        content_type=FORMATS[fmt],
        headers={
            "Content-Disposition": content_disposition_header(True, filename),
            "X-Content-Type-Options": "nosniff",
        },
    )
