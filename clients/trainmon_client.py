"""Report a training run to trainmon. Standard library only: copy this file next to your script.

    from trainmon_client import Run

    with Run("http://127.0.0.1:8000", token, name="mlp-spirals",
             total_epochs=10, steps_per_epoch=100,
             hyperparameters={"lr": 0.1, "hidden": 64}) as run:
        for step in range(run.total_steps):
            loss, accuracy = train_one_batch()
            run.log(step, loss=loss, accuracy=accuracy, learning_rate=lr)
    # Leaving the block sends what is buffered and marks the job completed; an exception
    # marks it failed with the exception's text, then propagates. print(run.url) shows the page.

Points are buffered and sent in batches (every `batch_size` points or `flush_interval` seconds,
checked at each `log`). Network errors, 5xx and 429 answers are retried with exponential
backoff: the server ignores steps it already has, so a retried batch never counts twice.
Other 4xx answers raise `TrainmonError` with the server's message. Pass `job_id=` to resume
reporting to an existing job (e.g. after a restart from a checkpoint).
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import operator
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any
from urllib.request import urlopen

__all__ = ["Run", "TrainmonError"]

logger = logging.getLogger("trainmon_client")

API_PATH = "/api/v1"
SERVER_MAX_POINTS = 10_000  # the server's default TRAINMON_API_MAX_POINTS
REASON_MAX_LENGTH = 2_000  # the server refuses longer failure reasons
MAX_BACKOFF_SECONDS = 30.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Creating a job is not idempotent: retry it only where the server surely did not act on it.
CREATE_RETRY_STATUSES = frozenset({429, 503})
HTTP_CONFLICT = 409
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
# JSON has no NaN or Infinity; the server takes these strings for a diverged loss.
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


class TrainmonError(Exception):
    """The server refused a request (`status` is its HTTP status), or could not be reached."""

    def __init__(self, message: str, status: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


class Run:
    """One training job on a trainmon server, as a context manager. See the module docstring."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        name: str | None = None,
        total_epochs: int | None = None,
        steps_per_epoch: int | None = None,
        job_id: int | None = None,
        model_name: str = "",
        dataset: str = "",
        description: str = "",
        hyperparameters: dict[str, Any] | None = None,
        batch_size: int = 500,
        flush_interval: float = 5.0,
        max_retries: int = 5,
        timeout: float = 10.0,
        backoff: float = 0.5,
    ) -> None:
        if job_id is None and (name is None or total_epochs is None or steps_per_epoch is None):
            raise ValueError("Give name, total_epochs and steps_per_epoch, or a job_id to resume.")
        if not 1 <= batch_size <= SERVER_MAX_POINTS:
            raise ValueError(f"batch_size must be from 1 to {SERVER_MAX_POINTS}.")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.job_id = job_id
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self._new_job = {
            "name": name,
            "total_epochs": total_epochs,
            "steps_per_epoch": steps_per_epoch,
            "model_name": model_name,
            "dataset": dataset,
            "description": description,
            "hyperparameters": hyperparameters or {},
        }
        self.job: dict[str, Any] = {}  # the server's latest view of the job
        self.created = 0  # points the server stored
        self.duplicates = 0  # points it already had (retries, resumed runs)
        self._buffer: list[dict[str, Any]] = []
        self._last_flush = time.monotonic()

    # --- the job ------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.flush()
            if not self.finished:
                self.finish("completed")
            return
        # Report what we can without hiding the original exception, which propagates.
        try:
            self.flush()
        except Exception as error:
            logger.warning("trainmon: could not send the last points: %s", error)
        if not self.finished:
            reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            try:
                self.finish("failed", reason)
            except Exception as error:
                logger.warning("trainmon: could not mark job %s failed: %s", self.job_id, error)

    def start(self) -> dict[str, Any]:
        """Create the job, or load it when resuming; `with Run(...)` calls this for you."""
        if self.job_id is None:
            self.job = self._request("POST", "/jobs/", self._new_job, idempotent=False)
            self.job_id = self.job["id"]
        else:
            self.job = self._request("GET", f"/jobs/{self.job_id}/")
            if self.finished:
                raise TrainmonError(
                    f"Job {self.job_id} is {self.job['status']}: it takes no more points.",
                    status=HTTP_CONFLICT,
                )
        self._last_flush = time.monotonic()
        return self.job

    @property
    def total_steps(self) -> int:
        return int(self.job["total_steps"])

    @property
    def steps_per_epoch(self) -> int:
        return int(self.job["steps_per_epoch"])

    @property
    def url(self) -> str:
        """The job's page on the server."""
        return str(self.job.get("url", ""))

    @property
    def finished(self) -> bool:
        return self.job.get("status") in TERMINAL_STATUSES

    def finish(self, status: str = "completed", reason: str = "") -> dict[str, Any]:
        """Mark the job "completed" or "failed" (with a reason); buffered points go first."""
        self.flush()
        body = {"status": status, "reason": reason[:REASON_MAX_LENGTH]}
        try:
            self.job = self._request("POST", f"/jobs/{self.job_id}/finish/", body)
        except TrainmonError as error:
            # A retried finish whose first attempt landed: the job is already where we want it.
            if error.status != HTTP_CONFLICT:
                raise
            self.job = self._request("GET", f"/jobs/{self.job_id}/")
            if self.job["status"] != status:
                raise
        return self.job

    # --- points -------------------------------------------------------------------------------

    def log(
        self,
        step: int,
        *,
        loss: float,
        accuracy: float | None = None,
        learning_rate: float | None = None,
        epoch: int | None = None,
    ) -> None:
        """Buffer one point (steps count from 0; epoch from 1, derived from step if omitted).

        A NaN or infinite loss is sent as such and fails the job on the server: training
        diverged. A NaN accuracy or learning rate means "not measured" and is sent as null.
        """
        if not self.job:
            raise RuntimeError("Use `with Run(...) as run:` (or call start()) before log().")
        if self.finished:
            reason = f" ({self.job['failure_reason']})" if self.job.get("failure_reason") else ""
            raise TrainmonError(
                f"Job {self.job_id} is {self.job['status']}{reason}: it takes no more points.",
                status=HTTP_CONFLICT,
            )
        step = operator.index(step)
        point: dict[str, Any] = {
            "step": step,
            "epoch": step // self.steps_per_epoch + 1 if epoch is None else operator.index(epoch),
            "loss": _loss(loss),
        }
        for key, value in (("accuracy", accuracy), ("learning_rate", learning_rate)):
            if value is not None and not math.isnan(float(value)):
                point[key] = float(value)
        self._buffer.append(point)
        due = time.monotonic() - self._last_flush >= self.flush_interval
        if len(self._buffer) >= self.batch_size or due:
            self.flush()

    def flush(self) -> None:
        """Send the buffered points now, in batches of `batch_size`.

        A batch the server refuses for good (a 4xx other than 429: invalid points, a finished
        job) is dropped before the error is raised: sent again, it would be refused again.
        """
        while self._buffer:
            batch = self._buffer[: self.batch_size]
            try:
                reply = self._send(batch)
            except TrainmonError as error:
                if error.status is not None and error.status not in RETRY_STATUSES:
                    del self._buffer[: len(batch)]
                raise
            del self._buffer[: len(batch)]
            self.created += reply["created"]
            self.duplicates += reply["duplicates"]
            self.job = reply["job"]
        self._last_flush = time.monotonic()

    def _send(self, points: list[dict[str, Any]]) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{self.job_id}/metrics/", {"points": points})

    # --- HTTP ---------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, idempotent: bool = True
    ) -> dict[str, Any]:
        """One API call, retried on network errors, 5xx and 429 with exponential backoff.

        A request that is not idempotent (creating a job) is retried only where the server
        surely did not act on it: connection refused, 429, 503.
        """
        data = None if body is None else json.dumps(body, allow_nan=False).encode()
        request = urllib.request.Request(
            self.base_url + API_PATH + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        retry_statuses = RETRY_STATUSES if idempotent else CREATE_RETRY_STATUSES
        for attempt in range(self.max_retries + 1):
            last_attempt = attempt == self.max_retries
            try:
                with urlopen(request, timeout=self.timeout) as response:
                    answer: dict[str, Any] = json.load(response)
                    return answer
            except urllib.error.HTTPError as error:
                message, details = _error_message(error)
                if error.code not in retry_statuses or last_attempt:
                    raise TrainmonError(
                        f"{method} {path}: HTTP {error.code}: {message}", error.code, details
                    ) from None
                delay = _retry_after(error) or self._delay(attempt)
                problem = f"HTTP {error.code} ({message})"
            except (OSError, http.client.HTTPException) as error:
                refused = isinstance(getattr(error, "reason", error), ConnectionRefusedError)
                if last_attempt or not (idempotent or refused):
                    raise TrainmonError(
                        f"{method} {path}: no answer from {self.base_url}: {error}"
                    ) from error
                delay = self._delay(attempt)
                problem = str(error)
            logger.warning("trainmon: %s %s: %s; retrying in %.1f s", method, path, problem, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int) -> float:
        return min(self.backoff * 2.0**attempt, MAX_BACKOFF_SECONDS)


def _loss(value: float) -> float | str:
    loss = float(value)
    if math.isnan(loss):
        return "NaN"
    return _NON_FINITE.get(loss, loss)


def _error_message(error: urllib.error.HTTPError) -> tuple[str, Any]:
    try:
        payload = json.loads(error.read() or b"{}")
        return str(payload.get("error") or error.reason), payload.get("details")
    except (ValueError, AttributeError, OSError):
        return str(error.reason), None


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    try:
        return min(float(error.headers.get("Retry-After", "")), MAX_BACKOFF_SECONDS)
    except (TypeError, ValueError):
        return None
