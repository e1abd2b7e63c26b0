"""Every error of the HTTP API as JSON `{"error": "...", "details": ...}`, in one place.

`install(api)` registers the handlers on the NinjaAPI (trainmon/api.py); the routers raise
`ApiError`, Http404, JobTransitionError or Django's ValidationError and never build an error
reply themselves. Bad input is a 4xx, never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as NinjaValidationError
from pydantic import Field

from jobs.services import JobTransitionError

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
ERRORS = {HTTP_BAD_REQUEST, HTTP_UNAUTHORIZED, HTTP_NOT_FOUND}


class ErrorOut(Schema):
    error: str = Field(description="What went wrong, in one sentence.")
    details: Any = Field(
        None,
        description="For invalid input, a list of {field, message} objects (with `index` for "
        "a bad point, whether sent as a row or as a column), at most 50; otherwise null or "
        "an object.",
    )


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


def responses(ok: dict[int, Any], *extra_errors: int) -> dict[Any, Any]:
    """An endpoint's `response=`: its success bodies, and ErrorOut for the errors it gives."""
    return {**ok, frozenset(ERRORS | set(extra_errors)): ErrorOut}


def error_response(status: int, message: str, details: Any = None) -> JsonResponse:
    response = JsonResponse(
        {"error": message, "details": details}, status=status, content_type=JSON_CONTENT_TYPE
    )
    if status == HTTP_UNAUTHORIZED:
        response["WWW-Authenticate"] = 'Bearer realm="trainmon"'
    return response


def bounded(problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return problems[:MAX_LISTED_ERRORS]


def too_large_body() -> JsonResponse:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return error_response(
        HTTP_PAYLOAD_TOO_LARGE,
        f"The request body is larger than {limit:,} bytes: send fewer points per batch.",
        {"max_bytes": limit},
    )


def install(api: NinjaAPI) -> None:
    """Register the handlers that turn every exception into the JSON error body."""
    for exception, handler in (
        (ApiError, _api_error),
        (AuthenticationError, _unauthenticated),
        (HttpError, _http_error),
        (RequestDataTooBig, _request_too_big),
        (NinjaValidationError, _invalid),
        (Http404, _not_found),
        (JobTransitionError, _conflict),
        (DjangoValidationError, _model_invalid),
        (Exception, _unexpected),
    ):
        # arg-type: ninja types a handler's argument `_E | type[_E]`; it only passes instances.
        api.add_exception_handler(exception, handler)  # type: ignore[arg-type]


def _api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return error_response(exc.status, exc.message, exc.details)


def _unauthenticated(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error_response(
        HTTP_UNAUTHORIZED,
        "Missing, invalid or revoked API token: send the header 'Authorization: Bearer <token>'.",
    )


def _http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, RequestDataTooBig):
        return too_large_body()
    if exc.status_code == HTTP_BAD_REQUEST and "parse" in exc.message:
        return error_response(HTTP_BAD_REQUEST, "The request body is not valid JSON.")
    return error_response(exc.status_code, exc.message)


def _request_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return too_large_body()


def _invalid(request: HttpRequest, exc: NinjaValidationError) -> HttpResponse:
    problems = [_problem(error) for error in exc.errors]
    bad_points = {p["index"] for p in problems if "index" in p}
    if bad_points:
        message = f"{len(bad_points)} invalid point(s): nothing was stored."
    else:
        message = f"Invalid request: {len(problems)} problem(s)."
    return error_response(HTTP_BAD_REQUEST, message, bounded(problems))


def _problem(error: dict[str, Any]) -> dict[str, Any]:
    # loc is (source, [param name,] field, ...): ("body", "payload", "points", 3, "loss"), or
    # for a batch sent as columns ("body", "payload", "columns", "loss", 3).
    loc = [part for part in error.get("loc", ()) if part not in {"body", "payload", "query"}]
    problem: dict[str, Any] = {"field": _dotted(loc), "message": error.get("msg", "Invalid.")}
    if len(loc) >= 2 and loc[0] == "points" and isinstance(loc[1], int):
        problem["index"] = loc[1]
    elif len(loc) >= 3 and loc[0] == "columns" and isinstance(loc[-1], int):
        problem["index"] = loc[-1]
    return problem


def _dotted(loc: Sequence[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _not_found(request: HttpRequest, exc: Http404) -> HttpResponse:
    return error_response(HTTP_NOT_FOUND, str(exc) or "Not found.")


def _conflict(request: HttpRequest, exc: JobTransitionError) -> HttpResponse:
    return error_response(HTTP_CONFLICT, str(exc), {"status": exc.job.status})


def _model_invalid(request: HttpRequest, exc: DjangoValidationError) -> HttpResponse:
    if hasattr(exc, "error_dict"):
        problems = [
            {"field": field, "message": message}
            for field, messages in exc.message_dict.items()
            for message in messages
        ]
    else:
        problems = [{"field": "body", "message": message} for message in exc.messages]
    return error_response(HTTP_BAD_REQUEST, "Invalid job.", bounded(problems))


def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("API error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(HTTP_SERVER_ERROR, "Internal server error.")
