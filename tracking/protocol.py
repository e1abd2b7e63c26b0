"""MLflow's wire protocol: errors, auth, request parsing and the JSON shapes of runs,
experiments and metrics. The views in this app build nothing else by hand.

Ids travel as strings, times as integer milliseconds, NaN and infinities as the strings
"NaN", "Infinity" and "-Infinity" (the client's parser rejects bare NaN tokens).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import gzip
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.utils.cache import patch_vary_headers
from django.views.decorators.csrf import csrf_exempt
from pydantic_core import from_json

from accounts.services import api_token_authenticate
from jobs.models import Experiment, TrainingJob
from jobs.services import experiment_default
from metrics.models import MetricKey

logger = logging.getLogger(__name__)

Params: TypeAlias = dict[str, Any]
Handler: TypeAlias = Callable[[HttpRequest, User, Params], dict[str, Any] | HttpResponse]

# MLflow's error codes and the HTTP status its server answers with.
RESOURCE_DOES_NOT_EXIST = "RESOURCE_DOES_NOT_EXIST"
RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
PERMISSION_DENIED = "PERMISSION_DENIED"
UNAUTHENTICATED = "UNAUTHENTICATED"
BAD_REQUEST = "BAD_REQUEST"
ENDPOINT_NOT_FOUND = "ENDPOINT_NOT_FOUND"
INTERNAL_ERROR = "INTERNAL_ERROR"
STATUS_OF = {
    RESOURCE_DOES_NOT_EXIST: 404,
    RESOURCE_ALREADY_EXISTS: 400,
    INVALID_PARAMETER_VALUE: 400,
    PERMISSION_DENIED: 403,
    UNAUTHENTICATED: 401,
    BAD_REQUEST: 400,
    ENDPOINT_NOT_FOUND: 404,
    INTERNAL_ERROR: 500,
}
METHOD_NOT_ALLOWED = 405
MAX_INT_AS_FLOAT = 10**308
PAYLOAD_TOO_LARGE = 413
JSON_CONTENT_TYPE = "application/json"

# The MLflow id of every user's Default experiment.
DEFAULT_EXPERIMENT_ID = "0"

STATUS_TO_MLFLOW = {
    TrainingJob.Status.QUEUED: "SCHEDULED",
    TrainingJob.Status.RUNNING: "RUNNING",
    TrainingJob.Status.PAUSED: "RUNNING",
    TrainingJob.Status.STALLED: "RUNNING",
    TrainingJob.Status.COMPLETED: "FINISHED",
    TrainingJob.Status.FAILED: "FAILED",
    TrainingJob.Status.CANCELLED: "KILLED",
}
MLFLOW_TO_STATUS = {
    "SCHEDULED": TrainingJob.Status.QUEUED,
    "RUNNING": TrainingJob.Status.RUNNING,
    "FINISHED": TrainingJob.Status.COMPLETED,
    "FAILED": TrainingJob.Status.FAILED,
    "KILLED": TrainingJob.Status.CANCELLED,
}
VIEW_TYPES = {"ACTIVE_ONLY", "DELETED_ONLY", "ALL"}


class MlflowError(Exception):
    """An error reply: `{"error_code": code, "message": message}` with the code's status."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS_OF.get(self.code, 400)


def invalid(message: str) -> MlflowError:
    return MlflowError(INVALID_PARAMETER_VALUE, message)


def not_found(message: str) -> MlflowError:
    return MlflowError(RESOURCE_DOES_NOT_EXIST, message)


def json_response(body: dict[str, Any], status: int = 200) -> HttpResponse:
    # One bytes body with its length: the whole reply leaves in one write (MLFLOW.md).
    content = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
    return HttpResponse(content, status=status, content_type=JSON_CONTENT_TYPE)


# Above this size a JSON answer is compressed here, at gzip level 1, instead of by
# GZipMiddleware's level 6: for 200,000 history points (17 MB) level 6 takes ~290 ms, level 1
# ~80 ms for a body only ~10% larger (measured; `make bench`, mlflow_history_ms_200k).
FAST_GZIP_MIN_BYTES = 1_000_000


def json_bytes_response(request: HttpRequest, content: bytes) -> HttpResponse:
    """A JSON body already encoded; a large one gzipped fast when the client accepts gzip
    (the MLflow client's requests library does)."""
    response = HttpResponse(content, content_type=JSON_CONTENT_TYPE)
    if len(content) >= FAST_GZIP_MIN_BYTES:
        patch_vary_headers(response, ("Accept-Encoding",))
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            response.content = gzip.compress(content, compresslevel=1, mtime=0)
            response.headers["Content-Encoding"] = "gzip"
    return response


def error_response(code: str, message: str, status: int | None = None) -> HttpResponse:
    return json_response(
        {"error_code": code, "message": message}, status or STATUS_OF.get(code, 400)
    )


# --- auth ---------------------------------------------------------------------------------------


def authenticate(request: HttpRequest) -> User:
    """The token's user: `Authorization: Bearer <token>`, or Basic with the token as the
    password (the user name must be the token owner's). Raises UNAUTHENTICATED otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    credentials = credentials.strip()
    user: User | None = None
    if scheme.lower() == "bearer":
        user = api_token_authenticate(raw=credentials)
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        username, colon, password = decoded.partition(":")
        if colon:
            user = api_token_authenticate(raw=password)
            if user is not None and user.get_username() != username:
                user = None
    if user is None:
        raise MlflowError(
            UNAUTHENTICATED,
            "Send a trainmon API token: MLFLOW_TRACKING_TOKEN=<token> (or Basic auth with "
            "your user name and a token as the password).",
        )
    return user


# --- requests -----------------------------------------------------------------------------------


def method_refused(request: HttpRequest, methods: Sequence[str]) -> HttpResponse | None:
    """MLflow's reply to a method the route does not take, or None when it takes it."""
    if request.method in methods:
        return None
    return error_response(
        ENDPOINT_NOT_FOUND,
        f"{request.method} is not allowed here; use {', '.join(methods)}.",
        METHOD_NOT_ALLOWED,
    )


def endpoint(*methods: str) -> Callable[[Handler], Callable[[HttpRequest], HttpResponse]]:
    """A protocol view: token auth, the JSON body (POST/PATCH) or query (GET) as a dict,
    the handler's dict as JSON, and every MlflowError as MLflow's error reply."""

    def decorate(handler: Handler) -> Callable[[HttpRequest], HttpResponse]:
        @login_not_required  # token auth, never a session: no login page, no CSRF
        @csrf_exempt
        @functools.wraps(handler)
        def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if (refused := method_refused(request, methods)) is not None:
                    return refused
                with _sqlite_serialised():
                    user = authenticate(request)
                    params = request_params(request)
                    params.update(kwargs)
                    answer = handler(request, user, params)
                    return answer if isinstance(answer, HttpResponse) else json_response(answer)
            except MlflowError as error:
                return error_response(error.code, error.message)
            except DjangoValidationError as error:
                return error_response(INVALID_PARAMETER_VALUE, "; ".join(error.messages))
            except RequestDataTooBig:
                return error_response(BAD_REQUEST, "The request body is too large.", 413)

        return view

    return decorate


_SQLITE_LOCK = threading.Lock()


@contextlib.contextmanager
def _sqlite_serialised() -> Iterator[None]:
    """On SQLite, one protocol request at a time per process.

    SQLite takes one writer at a time anyway; async logging posts from 10 threads, and in a
    threaded server on a shared-cache database (the test runner's) a second writer fails
    with "table is locked" instead of waiting. PostgreSQL needs no such lock (row locks).
    """
    if connection.vendor != "sqlite":
        yield
        return
    with _SQLITE_LOCK:
        yield


def request_params(request: HttpRequest) -> Params:
    if request.method == "GET":
        params: Params = {}
        for key in request.GET:
            values = request.GET.getlist(key)
            params[key] = values[0] if len(values) == 1 else values
        return params
    if not request.body:
        return {}
    try:
        # pydantic-core's parser: 0.4 ms for a 1,000-metric log-batch, json.loads 1 ms.
        body = from_json(request.body)
    except ValueError as error:
        raise MlflowError(BAD_REQUEST, f"The body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise MlflowError(BAD_REQUEST, "The body must be a JSON object.")
    return body


def string(params: Params, name: str, *, required: bool = True, default: str = "") -> str:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise invalid(f"Missing value for required parameter '{name}'.")
        return default
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise invalid(f"Parameter '{name}' must be a string.")
    return str(value)


def integer(
    params: Params, name: str, *, default: int | None = None, required: bool = False
) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise invalid(f"Missing value for required parameter '{name}'.")
        return default
    if isinstance(value, bool):
        raise invalid(f"Parameter '{name}' must be an integer.")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        number = None
    if number is None or abs(number) >= 2**63:
        raise invalid(f"Parameter '{name}' must be a 64-bit integer, got {value!r}.")
    return number


def number_in(value: object, name: str) -> float:
    """A float from JSON: a number, or "NaN" / "Infinity" / "-Infinity" (any case)."""
    if isinstance(value, bool):
        raise invalid(f"'{name}' must be a number.")
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_INT_AS_FLOAT:
            raise invalid(f"'{name}' is too large for a 64-bit float.")
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise invalid(f"'{name}' must be a number, got {value!r}.")


def number_out(value: float | None) -> float | str:
    """A float for JSON: NULL (a stored NaN) and NaN as "NaN", infinities by name."""
    if value is None or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def string_list(params: Params, name: str) -> list[str]:
    value = params.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise invalid(f"'{name}' must be a list of strings.")


def entries(params: Params, name: str) -> list[dict[str, Any]]:
    value = params.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise invalid(f"'{name}' must be a list of objects.")
    return value


# --- page tokens --------------------------------------------------------------------------------


def token_encode(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def token_decode(token: str) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, UnicodeError):
        data = None
    if not isinstance(data, dict):
        raise invalid(f"Invalid page token {token[:50]!r}.")
    return data


# --- times --------------------------------------------------------------------------------------


def millis(moment: datetime | None) -> int | None:
    return None if moment is None else round(moment.timestamp() * 1000)


def from_millis(value: int) -> datetime:
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise invalid(f"Time {value} (ms) is out of range.") from None


# --- experiments --------------------------------------------------------------------------------


def experiment_public_id(experiment: Experiment | None) -> str:
    if experiment is None or experiment.is_default:
        return DEFAULT_EXPERIMENT_ID
    return str(experiment.pk)


def experiment_resolve(user: User, experiment_id: str) -> Experiment:
    """The user's experiment with this MLflow id; "0" is the Default. Another user's
    experiment is as missing as one that never existed."""
    if experiment_id == DEFAULT_EXPERIMENT_ID:
        return experiment_default(user=user)
    found = None
    if experiment_id.isdigit() and len(experiment_id) < 19:
        found = Experiment.objects.filter(owner=user, pk=int(experiment_id)).first()
    if found is None:
        raise not_found(f"No experiment with id={experiment_id}.")
    return found


def experiment_dict(experiment: Experiment) -> dict[str, Any]:
    experiment_id = experiment_public_id(experiment)
    return {
        "experiment_id": experiment_id,
        "name": experiment.name,
        "artifact_location": f"mlflow-artifacts:/{experiment_id}",
        "lifecycle_stage": experiment.lifecycle,
        "last_update_time": millis(experiment.updated_at),
        "creation_time": millis(experiment.created_at),
        "tags": [{"key": key, "value": value} for key, value in sorted(experiment.tags.items())],
    }


# --- runs ---------------------------------------------------------------------------------------


def run_get_owned(user: User, run_id: str) -> TrainingJob:
    """The user's run (job) with this run id; another user's is as missing as none."""
    job = (
        TrainingJob.objects.select_related("experiment", "owner")
        .filter(owner=user, run_uuid=run_id)
        .first()
        if run_id and len(run_id) <= 32
        else None
    )
    if job is None:
        raise not_found(f"Run with id={run_id} not found")
    return job


def run_id_param(params: Params) -> str:
    # The client sends both run_id and the older run_uuid; either will do.
    run_id = params.get("run_id") or params.get("run_uuid")
    if not run_id or not isinstance(run_id, str):
        raise invalid("Missing value for required parameter 'run_id'.")
    return run_id


def artifact_uri(job: TrainingJob) -> str:
    return f"mlflow-artifacts:/{experiment_public_id(job.experiment)}/{job.run_uuid}/artifacts"


def param_text(value: object) -> str:
    # Native jobs may hold numbers or lists as hyperparameters; MLflow params are strings.
    return value if isinstance(value, str) else json.dumps(value)


def run_tags(job: TrainingJob) -> dict[str, str]:
    tags = {str(key): str(value) for key, value in job.tags.items()}
    tags["mlflow.runName"] = job.name
    return tags


def run_dict(job: TrainingJob, keys: Iterable[MetricKey] | None = None) -> dict[str, Any]:
    """MLflow's Run: info, data (latest metrics, params, tags) and inputs."""
    if keys is None:
        keys = MetricKey.objects.filter(job_id=job.pk).order_by("name")
    return {
        "info": run_info(job),
        "data": {
            "metrics": [metric_latest(key) for key in keys if key.last_step is not None],
            "params": [
                {"key": str(key), "value": param_text(value)}
                for key, value in job.hyperparameters.items()
            ],
            "tags": [{"key": key, "value": value} for key, value in run_tags(job).items()],
        },
        "inputs": {"dataset_inputs": job.inputs},
    }


def run_info(job: TrainingJob) -> dict[str, Any]:
    info: dict[str, Any] = {
        "run_id": job.run_uuid,
        "run_uuid": job.run_uuid,
        "run_name": job.name,
        "experiment_id": experiment_public_id(job.experiment),
        "user_id": job.owner.get_username(),
        "status": STATUS_TO_MLFLOW[TrainingJob.Status(job.status)],
        "start_time": millis(job.started_at or job.created_at),
        "artifact_uri": artifact_uri(job),
        "lifecycle_stage": job.lifecycle,
    }
    if job.is_terminal and job.finished_at is not None:
        info["end_time"] = millis(job.finished_at)
    return info


def metric_latest(key: MetricKey) -> dict[str, Any]:
    return {
        "key": key.name,
        "value": number_out(key.last_value),
        "timestamp": millis(key.last_reported_at) or 0,
        "step": key.last_step,
    }
