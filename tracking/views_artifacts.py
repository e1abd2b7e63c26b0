"""The `mlflow-artifacts` endpoints the MLflow client uses, and the job page's artifact list.

A run's `artifact_uri` is `mlflow-artifacts:/<experiment id>/<run id>/artifacts`, a logged
model's `mlflow-artifacts:/<experiment id>/models/<model id>/artifacts`; the client uploads
(PUT, raw bytes), lists (`GET .../artifacts?path=`) and downloads (GET) below them. A token
reaches its own user's runs and models only; anything else reads as missing.
"""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.models import User
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from jobs.models import TrainingJob
from jobs.selectors import job_get_visible
from tracking.artifacts import (
    CHUNK_BYTES,
    ArtifactPathError,
    ArtifactTooLargeError,
    artifact_list,
    artifact_max_bytes,
    artifact_open,
    artifact_save,
    artifact_walk,
    clean_relative_path,
    model_root,
    run_root,
)
from tracking.models import LoggedModel
from tracking.protocol import (
    INVALID_PARAMETER_VALUE,
    PAYLOAD_TOO_LARGE,
    MlflowError,
    authenticate,
    error_response,
    invalid,
    json_response,
    method_refused,
    not_found,
)
from trainmon.http import AuthenticatedHttpRequest

# A folder of an artifact URI: `<experiment>/<run>/artifacts` or
# `<experiment>/models/<model>/artifacts`.
ARTIFACTS_FOLDER = "artifacts"
MODELS_FOLDER = "models"


def _locate(user: User, path: str) -> tuple[str, str]:
    """(storage root, path below it) of an mlflow-artifacts path within the user's reach."""
    try:
        parts = clean_relative_path(path).split("/")
    except ArtifactPathError as error:
        raise invalid(str(error)) from None
    if len(parts) >= 4 and parts[1] == MODELS_FOLDER and parts[3] == ARTIFACTS_FOLDER:
        model_id = parts[2]
        if not LoggedModel.objects.filter(model_id=model_id, experiment__owner=user).exists():
            raise not_found(f"No logged model {model_id!r}.")
        return model_root(model_id), "/".join(parts[4:])
    if len(parts) >= 3 and parts[2] == ARTIFACTS_FOLDER:
        run_uuid = parts[1]
        if not TrainingJob.objects.filter(run_uuid=run_uuid, owner=user).exists():
            raise not_found(f"Run with id={run_uuid} not found")
        return run_root(run_uuid), "/".join(parts[3:])
    raise not_found(f"No artifact location {path!r}.")


def _too_large(error: ArtifactTooLargeError) -> HttpResponse:
    # No Retry-After: the client would retry a 413 that carries one.
    return error_response(INVALID_PARAMETER_VALUE, str(error), PAYLOAD_TOO_LARGE)


def _declared_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


ArtifactView = Callable[..., HttpResponseBase]


def artifact_endpoint(*methods: str) -> Callable[[ArtifactView], ArtifactView]:
    """Token auth and MLflow's error replies, without tracking.protocol.endpoint's JSON body
    parsing: an upload's body is the file, read as a stream by the view."""

    def decorate(view: ArtifactView) -> ArtifactView:
        @login_not_required
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if (refused := method_refused(request, methods)) is not None:
                    return refused
                return view(request, authenticate(request), *args, **kwargs)
            except MlflowError as error:
                return error_response(error.code, error.message)

        return wrapper

    return decorate


@artifact_endpoint("GET", "PUT")
def artifact(request: HttpRequest, user: User, artifact_path: str) -> HttpResponseBase:
    """PUT stores the body as the file (replacing it); GET sends the file back."""
    root, path = _locate(user, artifact_path)
    if request.method == "PUT":
        limit = artifact_max_bytes()
        declared = _declared_length(request)
        try:
            if declared is not None and declared > limit:
                raise ArtifactTooLargeError(limit)
            # Read from the request as a stream: request.body would hold the whole file.
            stream: Any = request
            if declared is None and request.META.get("wsgi.input_terminated"):
                # A chunked body (requests sends an empty file that way): Django reads no
                # body without a length, but a server that ends the input (gunicorn) can.
                stream = request.META["wsgi.input"]
            artifact_save(root=root, path=path, stream=stream, max_bytes=limit)
        except ArtifactTooLargeError as error:
            return _too_large(error)
        except ArtifactPathError as error:
            raise invalid(str(error)) from None
        return json_response({})
    return _file_response(request, root, path)


@artifact_endpoint("GET")
def artifacts_list(request: HttpRequest, user: User) -> HttpResponse:
    root, path = _locate(user, request.GET.get("path", ""))
    files = [
        {"path": entry.path, "is_dir": entry.is_dir}
        | ({} if entry.file_size is None else {"file_size": entry.file_size})
        for entry in artifact_list(root=root, path=path)
    ]
    return json_response({"files": files})


def _file_response(request: HttpRequest, root: str, path: str) -> FileResponse:
    try:
        handle = artifact_open(root=root, path=path)
    except FileNotFoundError:
        raise not_found(f"No artifact {path!r}.") from None
    except ArtifactPathError as error:
        raise invalid(str(error)) from None
    # Always a download, never rendered: an uploaded page must not run under our origin.
    response = FileResponse(
        handle,
        as_attachment=True,
        filename=posixpath.basename(path),
        content_type="application/octet-stream",
    )
    response.block_size = CHUNK_BYTES
    # Files leave as stored, with their Content-Length: GZipMiddleware would drop the length
    # (the client then sees a truncated download as complete) and spend CPU squeezing weights.
    request.META.pop("HTTP_ACCEPT_ENCODING", None)
    return response


# --- the job page ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PageArtifact:
    path: str
    file_size: int | None
    url: str


def _page_artifacts(job: TrainingJob) -> tuple[list[PageArtifact], bool]:
    entries, truncated = artifact_walk(root=run_root(job.run_uuid))
    listed = [
        PageArtifact(
            entry.path,
            entry.file_size,
            reverse("tracking_pages:job_artifact", args=[job.pk, entry.path]),
        )
        for entry in entries
    ]
    for model in LoggedModel.objects.filter(source_run=job).order_by("created_at", "model_id"):
        model_entries, model_truncated = artifact_walk(root=model_root(model.model_id))
        truncated = truncated or model_truncated
        listed += [
            PageArtifact(
                f"{model.name}/{entry.path}",
                entry.file_size,
                reverse(
                    "tracking_pages:job_model_artifact",
                    args=[job.pk, model.model_id, entry.path],
                ),
            )
            for entry in model_entries
        ]
    return listed, truncated


@require_GET
def job_artifacts(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """The job page's artifact list (a partial the page loads once)."""
    job = job_get_visible(user=request.user, job_id=pk)
    artifacts, truncated = _page_artifacts(job)
    context = {"job": job, "artifacts": artifacts, "truncated": truncated}
    return render(request, "jobs/_job_artifacts.html", context)


@require_GET
def job_artifact(
    request: AuthenticatedHttpRequest, pk: int, artifact_path: str
) -> HttpResponseBase:
    job = job_get_visible(user=request.user, job_id=pk)
    return _page_file(request, run_root(job.run_uuid), artifact_path)


@require_GET
def job_model_artifact(
    request: AuthenticatedHttpRequest, pk: int, model_id: str, artifact_path: str
) -> HttpResponseBase:
    job = job_get_visible(user=request.user, job_id=pk)
    if not LoggedModel.objects.filter(model_id=model_id, source_run=job).exists():
        raise Http404("No such model.")
    return _page_file(request, model_root(model_id), artifact_path)


def _page_file(request: HttpRequest, root: str, path: str) -> HttpResponseBase:
    try:
        return _file_response(request, root, path)
    except MlflowError:
        raise Http404("No such artifact.") from None
