"""Report a training run to trainmon. Standard library only: copy this file next to your script.

    from trainmon_client import Run

    with Run("http://127.0.0.1:8000", token, name="mlp-spirals",
             total_epochs=10, steps_per_epoch=100,          # both optional: a hint, not a limit
             hyperparameters={"lr": 0.1, "hidden": 64}) as run:
        for step in range(1000):
            loss, accuracy = train_one_batch()
            run.log(step, loss=loss, accuracy=accuracy, learning_rate=lr, grad_norm=norm)
            if end_of_epoch:
                run.log(step, val_loss=val_loss, **{"val/accuracy": val_acc})
    # Leaving the block sends what is buffered and marks the job completed; an exception
    # marks it failed with the exception's text, then propagates. print(run.url) shows the page.

Any keyword beyond the headline `loss`, `accuracy` and `learning_rate` is a named series
(letters, digits, `_ - . / :` and space; NaN and infinities are stored and drawn as gaps).

`log()` only appends to a buffer; a background thread sends it in batches (every `batch_size`
points or `flush_interval` seconds), as columns (`{"columns": {"step": [...], "loss": [...]}}`;
as rows to a server that predates them). Network errors, 5xx and 429 answers are retried with
exponential backoff (at most 30 s apart) for as long as the run is open: the server ignores
steps it already has, so a retried batch never counts twice. Training never waits on the
server: when the buffer (`buffer_size` points) is full, `log()` waits at most `block_seconds`
for the sender, then moves the oldest points to the unsent file and goes on without waiting
again until the sender gets through. At exit (or `close()`), the buffer is sent with retries
for at most `close_timeout` seconds; whatever the server never got is written to a JSON-lines
file next to your script, and a warning says how to send it later:

    python trainmon_client.py resend trainmon-unsent-job7.jsonl --token "$TRAINMON_TOKEN"

(or `resend(path, token)` from Python). A batch over the server's body limit (413) is split
in halves. A refused batch (any other 4xx but 429: invalid points, a finished job) is dropped
and raised as `TrainmonError` from the next `log()`, `flush()` or `close()`. Pass `job_id=` to
resume reporting to an existing job (e.g. after a restart from a checkpoint).
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import logging
import math
import operator
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.request import urlopen

__all__ = ["Run", "TrainmonError", "resend"]

logger = logging.getLogger("trainmon_client")

API_PATH = "/api/v1"
SERVER_MAX_POINTS = 10_000  # the server's default TRAINMON_API_MAX_POINTS
REASON_MAX_LENGTH = 2_000  # the server refuses longer failure reasons
MAX_BACKOFF_SECONDS = 30.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Creating a job is not idempotent: retry it only where the server surely did not act on it.
CREATE_RETRY_STATUSES = frozenset({429, 503})
HTTP_CONFLICT = 409
HTTP_PAYLOAD_TOO_LARGE = 413
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
# The server's rule for key names (MLflow's).
KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_\-./: ]{1,250}$")
HEADLINE_KEYS = ("accuracy", "learning_rate")
# JSON has no NaN or Infinity; the server takes these strings.
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
UNSENT_FORMAT = 1


class TrainmonError(Exception):
    """The server refused a request (`status` is its HTTP status), or could not be reached."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        details: Any = None,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.details = details
        self.retryable = retryable
        self.retry_after = retry_after


class _Api:
    """HTTP calls to one server with one token."""

    def __init__(self, base_url: str, token: str, *, timeout: float, backoff: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.backoff = backoff
        # Points go as columns, smaller and faster for the server than one object a point.
        self.columns = True

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        idempotent: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One attempt; a failure worth retrying raises TrainmonError with retryable=True.

        A request that is not idempotent (creating a job) is retryable only where the server
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
        try:
            with urlopen(request, timeout=self.timeout if timeout is None else timeout) as reply:
                return json.load(reply)  # type: ignore[no-any-return]
        except urllib.error.HTTPError as error:
            message, details = _error_message(error)
            raise TrainmonError(
                f"{method} {path}: HTTP {error.code}: {message}",
                error.code,
                details,
                retryable=error.code in retry_statuses,
                retry_after=_retry_after(error),
            ) from None
        except (OSError, http.client.HTTPException) as error:
            refused = isinstance(getattr(error, "reason", error), ConnectionRefusedError)
            raise TrainmonError(
                f"{method} {path}: no answer from {self.base_url}: {error}",
                retryable=idempotent or refused,
            ) from error

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        idempotent: bool = True,
        max_retries: int = 5,
    ) -> dict[str, Any]:
        """`call`, retried up to `max_retries` times with exponential backoff."""
        for attempt in range(max_retries + 1):
            try:
                return self.call(method, path, body, idempotent=idempotent)
            except TrainmonError as error:
                if not error.retryable or attempt == max_retries:
                    raise
                delay = error.retry_after or self.delay(attempt)
                logger.warning(
                    "trainmon: %s %s: %s; retrying in %.1f s", method, path, error, delay
                )
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def delay(self, attempt: int) -> float:
        return float(min(self.backoff * 2 ** min(attempt, 30), MAX_BACKOFF_SECONDS))

    def points_body(self, points: list[dict[str, Any]]) -> dict[str, Any]:
        """The body of POST .../metrics/: columns, or rows for a server that predates them."""
        return {"columns": _columns(points)} if self.columns else {"points": points}

    def refuses_columns(self, error: TrainmonError) -> bool:
        """Whether `error` is a server without column bodies refusing one; if so, send rows
        from now on (the refused batch was not stored: send it again)."""
        details = error.details if isinstance(error.details, list) else []
        older = self.columns and any(
            isinstance(detail, dict)
            and detail.get("field") == "columns"
            and "Extra inputs" in str(detail.get("message"))
            for detail in details
        )
        if older:
            self.columns = False
            logger.warning("trainmon: %s takes points as rows only", self.base_url)
        return older


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
        buffer_size: int = 100_000,
        block_seconds: float = 1.0,
        close_timeout: float = 30.0,
        unsent_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if job_id is None and name is None:
            raise ValueError("Give a name for a new job, or a job_id to resume one.")
        if not 1 <= batch_size <= SERVER_MAX_POINTS:
            raise ValueError(f"batch_size must be from 1 to {SERVER_MAX_POINTS}.")
        if buffer_size < batch_size:
            raise ValueError("buffer_size must be at least batch_size.")
        self._api = _Api(base_url, token, timeout=timeout, backoff=backoff)
        self.job_id = job_id
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_retries = max_retries
        self.buffer_size = buffer_size
        self.block_seconds = block_seconds
        self.close_timeout = close_timeout
        self.unsent_dir = Path(unsent_dir) if unsent_dir is not None else _script_dir()
        new_job: dict[str, Any] = {
            "name": name,
            "total_epochs": total_epochs,
            "steps_per_epoch": steps_per_epoch,
            "model_name": model_name,
            "dataset": dataset,
            "description": description,
            "hyperparameters": hyperparameters or {},
        }
        # An open-ended run leaves its length out (older servers need it).
        self._new_job = {key: value for key, value in new_job.items() if value is not None}
        self.job: dict[str, Any] = {}  # the server's latest view of the job
        self.created = 0  # headline points the server stored
        self.duplicates = 0  # headline points it already had (retries, resumed runs)
        self.named_created = 0
        self.named_duplicates = 0
        self.spilled = 0  # points moved to the unsent file because the buffer was full
        self.refused = 0  # points the server refused for good (dropped)
        self.unsent_path: Path | None = None  # set once a point (or the finish) is written there
        # Everything below is shared with the sender thread, under `_cond`.
        self._cond = threading.Condition()
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._in_flight: list[dict[str, Any]] = []
        self._error: TrainmonError | None = None  # raised at the next log/flush/close
        self._overflowing = False  # the buffer spilled; don't wait again until a send succeeds
        self._flushing = 0  # flush() calls waiting: send what there is now
        self._deadline: float | None = None  # set by close(): stop retrying at this time
        self._last_send = time.monotonic()
        self._thread: threading.Thread | None = None
        self._file_lock = threading.Lock()

    # --- the job ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._api.base_url

    @base_url.setter
    def base_url(self, value: str) -> None:
        self._api.base_url = value.rstrip("/")

    @property
    def token(self) -> str:
        return self._api.token

    @property
    def timeout(self) -> float:
        return self._api.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        # Read at each request, as base_url is: a run may move to a slower or faster link.
        self._api.timeout = value

    @property
    def backoff(self) -> float:
        return self._api.backoff

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
            self.close()
            if not self.finished:
                self._finish_or_save("completed", "")
            return
        # Report what we can without hiding the original exception, which propagates.
        try:
            self.close()
        except Exception as error:
            logger.warning("trainmon: could not send the last points: %s", error)
        if not self.finished:
            reason = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            try:
                self._finish_or_save("failed", reason)
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
        with self._cond:
            self._last_send = time.monotonic()
            self._deadline = None
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._send_loop, name=f"trainmon-job{self.job_id}", daemon=True
            )
            self._thread.start()
        return self.job

    @property
    def total_steps(self) -> int | None:
        """The declared length (a hint, not a limit), or None for an open-ended run."""
        total = self.job.get("total_steps")
        return None if total is None else int(total)

    @property
    def steps_per_epoch(self) -> int | None:
        steps = self.job.get("steps_per_epoch")
        return None if steps is None else int(steps)

    @property
    def url(self) -> str:
        """The job's page on the server."""
        return str(self.job.get("url", ""))

    @property
    def finished(self) -> bool:
        return self.job.get("status") in TERMINAL_STATUSES

    def finish(self, status: str = "completed", reason: str = "") -> dict[str, Any]:
        """Mark the job "completed" or "failed" (with a reason); buffered points go first."""
        self.close()
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

    def _finish_or_save(self, status: str, reason: str) -> None:
        """finish(); when the server cannot be reached, the finish joins the unsent file."""
        try:
            self.finish(status, reason)
        except TrainmonError as error:
            if error.status is not None and error.status not in RETRY_STATUSES:
                raise
            path = self._write_unsent([], finish={"status": status, "reason": reason})
            logger.warning(
                "trainmon: could not mark job %s %s (%s); saved to %s. %s",
                self.job_id,
                status,
                error,
                path,
                self.resend_hint(),
            )

    # --- points -------------------------------------------------------------------------------

    def log(
        self,
        step: int,
        *,
        loss: float | None = None,
        accuracy: float | None = None,
        learning_rate: float | None = None,
        epoch: int | None = None,
        timestamp: float | None = None,
        **metrics: float | None,
    ) -> None:
        """Buffer one point; returns at once (at most `block_seconds` when the buffer is full).

        `loss` is the headline series: NaN or infinite means training diverged, and the job
        fails on the server. A NaN accuracy or learning rate means "not measured". Every other
        keyword is a named series (use `**{"val/loss": x}` for names with `/`); None skips it,
        NaN and infinities are stored as such. Without a loss, accuracy and learning_rate are
        sent as named series of those names. `timestamp` (unix seconds) defaults to now; epoch
        (from 1) is derived from the step when the job has a length.
        """
        if not self.job:
            raise RuntimeError("Use `with Run(...) as run:` (or call start()) before log().")
        point = self._point(
            step,
            loss=loss,
            accuracy=accuracy,
            learning_rate=learning_rate,
            epoch=epoch,
            timestamp=timestamp,
            metrics=metrics,
        )
        spill: list[dict[str, Any]] = []
        first_spill = False
        with self._cond:
            self._raise_if_stopped()
            if self._deadline is not None:
                raise RuntimeError("The run is closed: log() after close() or finish().")
            if len(self._buffer) >= self.buffer_size and not self._overflowing:
                self._cond.wait_for(
                    lambda: len(self._buffer) < self.buffer_size or self._error is not None,
                    timeout=self.block_seconds,
                )
            if len(self._buffer) >= self.buffer_size:
                # The server is slow or down: training goes on, the oldest points go to disk.
                first_spill = not self._overflowing
                self._overflowing = True
                count = min(self.batch_size, len(self._buffer))
                spill = [self._buffer.popleft() for _ in range(count)]
                self.spilled += count
            self._buffer.append(point)
            # Wake the sender when it has something new to time or to send; not at every
            # point, which would wake it thousands of times a second in a tight loop.
            count = len(self._buffer)
            if count == 1 or count >= self.batch_size:
                self._cond.notify_all()
        if spill:
            path = self._write_unsent(spill)
        if spill and first_spill:
            logger.warning(
                "trainmon: the buffer is full (server slow or down): the oldest points go to "
                "%s until the server takes points again",
                path,
            )

    def _point(
        self,
        step: int,
        *,
        loss: float | None,
        accuracy: float | None,
        learning_rate: float | None,
        epoch: int | None,
        timestamp: float | None,
        metrics: dict[str, float | None],
    ) -> dict[str, Any]:
        step = operator.index(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}.")
        point: dict[str, Any] = {"step": step}
        steps_per_epoch = self.steps_per_epoch
        if epoch is not None:
            point["epoch"] = operator.index(epoch)
        elif steps_per_epoch:
            point["epoch"] = step // steps_per_epoch + 1
        named: dict[str, float | str] = {}
        if loss is not None:
            point["loss"] = _number(loss)
            for key, value in (("accuracy", accuracy), ("learning_rate", learning_rate)):
                if value is not None and not math.isnan(float(value)):
                    point[key] = float(value)
        else:
            for key, value in (("accuracy", accuracy), ("learning_rate", learning_rate)):
                if value is not None and not math.isnan(float(value)):
                    named[key] = float(value)
        for name, value in metrics.items():
            if not KEY_NAME_RE.match(name):
                raise ValueError(
                    f"Metric name {name[:60]!r}: use letters, digits, _ - . / : and space "
                    "(at most 250 characters)."
                )
            if value is not None:
                named[name] = _number(value)
        if named:
            point["metrics"] = named
        if "loss" not in point and not named:
            raise ValueError("log() needs a loss or at least one named metric.")
        point["timestamp"] = time.time() if timestamp is None else float(timestamp)
        return point

    def flush(self, timeout: float | None = None) -> int:
        """Wait until the buffered points are sent (at most `timeout` s, default close_timeout).

        Returns how many points are still waiting (0: all sent). Raises a refusal the sender
        met (TrainmonError).
        """
        limit = self.close_timeout if timeout is None else timeout
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                self._cond.wait_for(
                    lambda: (
                        (not self._buffer and not self._in_flight)
                        or self._error is not None
                        or not self._sender_alive()
                    ),
                    timeout=limit,
                )
            finally:
                self._flushing -= 1
            self._raise_if_stopped(finished_too=False)
            return len(self._buffer) + len(self._in_flight)

    def close(self) -> None:
        """Send the buffer (retrying for at most `close_timeout` s), then stop the sender.

        Points still unsent go to the unsent file, with a warning saying how to resend them.
        Raises a refusal the sender met (TrainmonError). log() is refused afterwards.
        """
        with self._cond:
            if self._deadline is None:
                self._deadline = time.monotonic() + self.close_timeout
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            # The last request may start just before the deadline: give it its own timeout.
            thread.join(timeout=max(0.0, self._deadline - time.monotonic()) + self.timeout + 1)
        with self._cond:
            left = [*self._in_flight, *self._buffer]
            self._buffer.clear()
            self._in_flight = []  # a request still running may yet land: resending is safe
        if left:
            path = self._write_unsent(left)
            logger.warning(
                "trainmon: %d points of job %s were not sent (%s): saved to %s. %s",
                len(left),
                self.job_id,
                self.base_url,
                path,
                self.resend_hint(),
            )
        with self._cond:
            self._raise_if_stopped(finished_too=False)

    def resend_hint(self) -> str:
        return (
            f"Send them later with: python trainmon_client.py resend {self.unsent_path} "
            '--token "$TRAINMON_TOKEN"'
        )

    def _raise_if_stopped(self, *, finished_too: bool = True) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if finished_too and self.finished:
            raise self._finished_error()

    def _finished_error(self) -> TrainmonError:
        reason = f" ({self.job['failure_reason']})" if self.job.get("failure_reason") else ""
        return TrainmonError(
            f"Job {self.job_id} is {self.job['status']}{reason}: it takes no more points.",
            status=HTTP_CONFLICT,
        )

    def _sender_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- the sender thread --------------------------------------------------------------------

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    count = len(self._buffer)
                    waited = time.monotonic() - self._last_send
                    closing = self._deadline is not None
                    if count and (
                        count >= self.batch_size
                        or closing
                        or self._flushing
                        or waited >= self.flush_interval
                    ):
                        break
                    if closing:
                        return
                    self._cond.wait(self.flush_interval - waited if count else None)
                batch = [self._buffer.popleft() for _ in range(min(self.batch_size, count))]
                self._in_flight = batch
                self._cond.notify_all()  # room in the buffer for a waiting log()
            if not self._deliver(batch):
                return  # closing and out of time: close() saves what is left
            with self._cond:
                self._in_flight = []
                self._last_send = time.monotonic()
                self._cond.notify_all()

    def _deliver(self, batch: list[dict[str, Any]]) -> bool:
        """Send one batch until it lands or is refused (True), or close() runs out of time."""
        attempt = 0
        while True:
            with self._cond:
                deadline = self._deadline
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                reply = self._api.call(
                    "POST",
                    f"/jobs/{self.job_id}/metrics/",
                    self._api.points_body(_unique_steps(batch)),
                    timeout=None if remaining is None else min(self.timeout, remaining),
                )
            except TrainmonError as error:
                if self._api.refuses_columns(error):
                    continue
                if error.status == HTTP_PAYLOAD_TOO_LARGE and len(batch) > 1:
                    # Too big a body for the server (many metrics per point): halve it.
                    middle = len(batch) // 2
                    return self._deliver(batch[:middle]) and self._deliver(batch[middle:])
                if not error.retryable:
                    self._refuse(error, batch)
                    return True
                delay = error.retry_after or self._api.delay(attempt)
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    logger.warning("trainmon: %s; retrying (attempt %d)", error, attempt)
                if deadline is None:
                    with self._cond:
                        # close() wakes this wait: the retries then run against its deadline.
                        self._cond.wait_for(lambda: self._deadline is not None, timeout=delay)
                else:
                    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                continue
            with self._cond:
                self.created += reply["created"]
                self.duplicates += reply["duplicates"]
                self.named_created += reply.get("named_created", 0)
                self.named_duplicates += reply.get("named_duplicates", 0)
                self.job = reply["job"]
                self._overflowing = False
                if self.finished and self._buffer:
                    # Diverged (a NaN loss), or finished elsewhere, with points still to
                    # send: the server would refuse them, and training should hear of it.
                    self._drop_buffer()
                    self._error = self._finished_error()
            return True

    def _refuse(self, error: TrainmonError, batch: list[dict[str, Any]]) -> None:
        """The server refused the batch for good: sent again, it would be refused again."""
        with self._cond:
            self.refused += len(batch)
            self._error = error
            if error.status == HTTP_CONFLICT:  # the job is finished: no point will land
                details = error.details if isinstance(error.details, dict) else {}
                status = details.get("status")
                self.job = {**self.job, "status": status or "failed"}
                self._drop_buffer()
            self._cond.notify_all()
        logger.warning("trainmon: %d points refused: %s", len(batch), error)

    def _drop_buffer(self) -> None:
        self.refused += len(self._buffer)
        self._buffer.clear()
        self._cond.notify_all()

    # --- the unsent file ----------------------------------------------------------------------

    def _write_unsent(
        self, points: list[dict[str, Any]], *, finish: dict[str, str] | None = None
    ) -> Path:
        """Append points (and a finish) to the job's unsent file; `resend` reads it."""
        with self._file_lock:
            if self.unsent_path is None:
                self.unsent_path = self.unsent_dir / f"trainmon-unsent-job{self.job_id}.jsonl"
            path = self.unsent_path
            lines = []
            if not path.exists() or path.stat().st_size == 0:
                header = {
                    "trainmon_unsent": UNSENT_FORMAT,
                    "base_url": self.base_url,
                    "job_id": self.job_id,
                }
                lines.append(json.dumps(header))
            lines.extend(json.dumps({"point": point}, allow_nan=False) for point in points)
            if finish is not None:
                lines.append(json.dumps({"finish": finish}))
            with path.open("a", encoding="utf-8") as file:
                file.write("".join(line + "\n" for line in lines))
            return path

    # --- HTTP ---------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, idempotent: bool = True
    ) -> dict[str, Any]:
        return self._api.request(
            method, path, body, idempotent=idempotent, max_retries=self.max_retries
        )


def resend(
    path: str | os.PathLike[str],
    token: str,
    *,
    base_url: str | None = None,
    batch_size: int = 500,
    max_retries: int = 5,
    timeout: float = 10.0,
    backoff: float = 0.5,
) -> dict[str, int]:
    """Send an unsent file's points (and its finish, if any) to the server; safe to repeat.

    Returns {"points", "created", "duplicates", "named_created", "named_duplicates"}. Raises
    TrainmonError when the server refuses or cannot be reached: run it again later.
    """
    header: dict[str, Any] = {}
    points: list[dict[str, Any]] = []
    finish: dict[str, str] | None = None
    with Path(path).open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "trainmon_unsent" in record:
                header = header or record
            elif "point" in record:
                points.append(record["point"])
            elif "finish" in record:
                finish = record["finish"]
            else:
                raise ValueError(f"{path}:{number}: not a trainmon unsent record.")
    if not header:
        raise ValueError(f"{path}: not a trainmon unsent file (no header line).")
    api = _Api(base_url or header["base_url"], token, timeout=timeout, backoff=backoff)
    job_id = header["job_id"]
    totals = dict.fromkeys(
        ("points", "created", "duplicates", "named_created", "named_duplicates"), 0
    )
    for batch in _batches(_unique_steps(points), batch_size):
        reply = _post_points(api, f"/jobs/{job_id}/metrics/", batch, max_retries=max_retries)
        totals["points"] += len(batch)
        for key in ("created", "duplicates", "named_created", "named_duplicates"):
            totals[key] += reply.get(key, 0)
    if finish is not None:
        try:
            api.request("POST", f"/jobs/{job_id}/finish/", finish, max_retries=max_retries)
        except TrainmonError as error:
            if error.status != HTTP_CONFLICT:  # already finished: nothing left to do
                raise
    return totals


def _post_points(
    api: _Api, path: str, points: list[dict[str, Any]], *, max_retries: int
) -> dict[str, Any]:
    try:
        return api.request("POST", path, api.points_body(points), max_retries=max_retries)
    except TrainmonError as error:
        if not api.refuses_columns(error):
            raise
    return api.request("POST", path, api.points_body(points), max_retries=max_retries)


def _columns(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Points (as `_point` makes them) as the server's column body: one list per field, null
    where a point leaves the field out; a field no point has is left out."""
    count = len(points)
    columns: dict[str, Any] = {"step": [point["step"] for point in points]}
    for field in ("epoch", "loss", "accuracy", "learning_rate", "timestamp"):
        values = [point.get(field) for point in points]
        if any(value is not None for value in values):
            columns[field] = values
    metrics: dict[str, list[Any]] = {}
    for index, point in enumerate(points):
        for name, value in point.get("metrics", {}).items():
            metrics.setdefault(name, [None] * count)[index] = value
    if metrics:
        columns["metrics"] = metrics
    return columns


def _unique_steps(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge points of the same step, in step order: log(s, loss=..) then log(s, val_loss=..)
    is one point to the server (a later value of the same series wins)."""
    by_step: dict[int, dict[str, Any]] = {}
    for point in points:
        known = by_step.get(point["step"])
        if known is None:
            by_step[point["step"]] = point
        else:
            metrics = {**known.get("metrics", {}), **point.get("metrics", {})}
            by_step[point["step"]] = {**known, **point, **({"metrics": metrics} if metrics else {})}
    return [by_step[step] for step in sorted(by_step)]


def _batches(points: list[dict[str, Any]], size: int) -> Iterable[list[dict[str, Any]]]:
    for start in range(0, len(points), size):
        yield points[start : start + size]


def _script_dir() -> Path:
    """The running script's folder (the unsent file's home), else the working directory."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.is_file():
        return script.resolve().parent
    return Path.cwd()


def _number(value: float) -> float | str:
    number = float(value)
    if math.isnan(number):
        return "NaN"
    return _NON_FINITE.get(number, number)


def _error_message(error: urllib.error.HTTPError) -> tuple[str, Any]:
    try:
        payload = json.loads(error.read() or b"{}")
        return str(payload.get("error") or error.reason), payload.get("details")
    except (ValueError, AttributeError, OSError):
        return str(error.reason), None


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    try:
        return min(float(error.headers.get("Retry-After", "")), MAX_BACKOFF_SECONDS)
    except (TypeError, ValueError, AttributeError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainmon_client.py")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("resend", help="send an unsent file's points to the server")
    command.add_argument("file")
    command.add_argument("--token", default=os.environ.get("TRAINMON_TOKEN"))
    command.add_argument("--url", default=None, help="server (default: the one in the file)")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set TRAINMON_TOKEN")
    try:
        totals = resend(args.file, args.token, base_url=args.url)
    except TrainmonError as error:
        print(f"trainmon: {error}; nothing is lost, run this again later.", file=sys.stderr)
        return 1
    print(
        f"Sent {totals['points']} points: {totals['created']} + {totals['named_created']} "
        f"stored, {totals['duplicates']} + {totals['named_duplicates']} already there."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
