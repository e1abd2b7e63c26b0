"""Every write to a job: creation, status transitions and progress.

Views, admin actions, commands, the API and Celery tasks all come through here, so a rule such
as "a cancelled job never runs again" is written once.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Q
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from jobs.models import TrainingJob
from trainmon.bulk import json_rows

Status = TrainingJob.Status

DECAY_SPAN = 5.0  # loss is within exp(-5) ≈ 0.7 % of its floor by the job's last step
MAX_SEED = 2**63 - 1
# Bounds that keep every count inside the database's integer columns and a job's history
# within what one machine can chart; forms and the API show the same limits.
MAX_EPOCHS = 10_000
MAX_STEPS_PER_EPOCH = 1_000_000
MAX_TOTAL_STEPS = 100_000_000
MAX_STEPS_PER_TICK = 10_000
HYPERPARAMETERS_MAX_DEPTH = 16
# A gap longer than this between two reports is a pause, not a slow step: keep the old rate.
RATE_GAP_SECONDS = 60.0
RATE_SMOOTHING = 0.3


class JobTransitionError(Exception):
    """An action that the job's current status does not allow."""

    def __init__(self, job: TrainingJob, action: str) -> None:
        self.job = job
        self.action = action
        super().__init__(f"Cannot {action} job {job.pk} ({job.name!r}): it is {job.status}.")


# action -> (statuses it may start from, status it leads to)
TRANSITIONS: dict[str, tuple[frozenset[str], str]] = {
    "start": (frozenset({Status.QUEUED}), Status.RUNNING),
    "pause": (frozenset({Status.QUEUED, Status.RUNNING, Status.STALLED}), Status.PAUSED),
    "resume": (frozenset({Status.PAUSED}), Status.RUNNING),
    "cancel": (
        frozenset({Status.QUEUED, Status.RUNNING, Status.PAUSED, Status.STALLED}),
        Status.CANCELLED,
    ),
    "complete": (frozenset({Status.RUNNING, Status.PAUSED, Status.STALLED}), Status.COMPLETED),
    "fail": (
        frozenset({Status.QUEUED, Status.RUNNING, Status.PAUSED, Status.STALLED}),
        Status.FAILED,
    ),
}


# What a person may ask for from a page or the command line; "complete" and "fail" belong to
# the engine and the API.
USER_ACTIONS = ("start", "pause", "resume", "cancel")


def job_allowed_actions(job: TrainingJob) -> list[str]:
    """The transitions a user may ask for now, in the order buttons show them."""
    return [action for action, (sources, _) in TRANSITIONS.items() if job.status in sources]


def job_create(**fields: Any) -> TrainingJob:
    """Create a job (see `job_build` for the fields), running at once unless `start` is false.

    Raises ValidationError, with a message per field, for anything out of range; nothing is
    written then.
    """
    job = job_build(**fields)
    job.save()
    return job


def job_build(
    *,
    owner: AbstractBaseUser,
    name: str,
    total_epochs: int,
    steps_per_epoch: int,
    steps_per_tick: int = 10,
    source: str = TrainingJob.Source.SIMULATED,
    description: str = "",
    model_name: str = "",
    dataset: str = "",
    hyperparameters: dict[str, Any] | None = None,
    initial_loss: float = 2.5,
    final_loss: float = 0.3,
    decay_rate: float | None = None,
    seed: int | None = None,
    base_learning_rate: float = 1e-3,
    warmup_steps: int | None = None,
    diverge_at_step: int | None = None,
    start: bool = True,
) -> TrainingJob:
    """A new, validated, unsaved job: every rule `job_create` applies, without the write.

    Raises ValidationError with a message per field. Unset simulator parameters get defaults
    that span the job's length; `start=False` leaves it queued.
    """
    errors: dict[str, str] = {}
    if not isinstance(name, str) or not name.strip():
        errors["name"] = "Give the job a name."
    for field, value, most in (
        ("total_epochs", total_epochs, MAX_EPOCHS),
        ("steps_per_epoch", steps_per_epoch, MAX_STEPS_PER_EPOCH),
        ("steps_per_tick", steps_per_tick, MAX_STEPS_PER_TICK),
    ):
        label = field.replace("_", " ").capitalize()
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            errors[field] = f"{label} must be a positive integer."
        elif value > most:
            errors[field] = f"{label} can be at most {most:,}."
    if not errors and total_epochs * steps_per_epoch > MAX_TOTAL_STEPS:
        errors["steps_per_epoch"] = (
            f"That is {total_epochs * steps_per_epoch:,} steps in all; the most is "
            f"{MAX_TOTAL_STEPS:,}."
        )
    if not (_finite(initial_loss) and _finite(final_loss)):
        errors["initial_loss"] = "Losses must be finite numbers."
    elif final_loss < 0:
        errors["final_loss"] = "The final loss cannot be negative."
    elif final_loss >= initial_loss:
        errors["final_loss"] = "The final loss must be lower than the initial loss."
    if decay_rate is not None and not (_finite(decay_rate) and decay_rate > 0):
        errors["decay_rate"] = "The decay rate must be a positive number."
    if not (_finite(base_learning_rate) and base_learning_rate >= 0):
        errors["base_learning_rate"] = "The learning rate must be a number >= 0."
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        errors["seed"] = f"The seed must be an integer from 0 to {MAX_SEED}."
    if warmup_steps is not None and not (isinstance(warmup_steps, int) and warmup_steps >= 0):
        errors["warmup_steps"] = "Warm-up steps must be an integer >= 0."
    if diverge_at_step is not None and not (
        isinstance(diverge_at_step, int) and diverge_at_step >= 0
    ):
        errors["diverge_at_step"] = "The divergence step must be an integer >= 0."
    if hyperparameters is not None and not isinstance(hyperparameters, dict):
        errors["hyperparameters"] = "Hyperparameters must be a JSON object."
    elif problem := unstorable_json(hyperparameters):
        errors["hyperparameters"] = problem
    for field, text in (
        ("name", name),
        ("description", description),
        ("model_name", model_name),
        ("dataset", dataset),
    ):
        if field not in errors and isinstance(text, str) and (problem := unstorable_text(text)):
            errors[field] = problem
    if errors:
        raise ValidationError(errors)

    total_steps = total_epochs * steps_per_epoch
    job = TrainingJob(
        owner=owner,
        name=name.strip(),
        description=description,
        model_name=model_name,
        dataset=dataset,
        hyperparameters=hyperparameters or {},
        source=source,
        total_epochs=total_epochs,
        steps_per_epoch=steps_per_epoch,
        steps_per_tick=steps_per_tick,
        initial_loss=initial_loss,
        final_loss=final_loss,
        decay_rate=decay_rate if decay_rate is not None else DECAY_SPAN / total_steps,
        seed=seed if seed is not None else secrets.randbelow(MAX_SEED),
        base_learning_rate=base_learning_rate,
        warmup_steps=warmup_steps if warmup_steps is not None else min(total_steps // 20, 500),
        diverge_at_step=diverge_at_step,
    )
    if start:
        job.status = Status.RUNNING
        job.started_at = job.created_at
    job.full_clean()
    return job


def unstorable_text(text: str) -> str | None:
    """Why every database cannot store `text` as given, or None if it can."""
    if "\x00" in text:
        return "Text cannot contain NUL characters (\\u0000)."  # PostgreSQL refuses them
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "Text must be valid Unicode (no lone surrogates such as \\ud800)."
    return None


def unstorable_json(value: Any) -> str | None:
    """Why a parsed JSON value cannot be stored in every database, or None if it can.

    Python's json module accepts NaN, Infinity, "\\u0000" and lone surrogates, all of
    which PostgreSQL's jsonb refuses; deep nesting is capped so no reader recurses too far.
    """
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > HYPERPARAMETERS_MAX_DEPTH:
            return f"Nest at most {HYPERPARAMETERS_MAX_DEPTH} levels deep."
        if isinstance(item, str):
            if problem := unstorable_text(item):
                return problem
        elif isinstance(item, float) and not math.isfinite(item):
            return "Numbers must be finite (no NaN or Infinity)."
        elif isinstance(item, dict):
            pending.extend((part, depth + 1) for pair in item.items() for part in pair)
        elif isinstance(item, list):
            pending.extend((part, depth + 1) for part in item)
    return None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def job_transition(job: TrainingJob, action: str, *, reason: str = "") -> TrainingJob:
    """Move `job` along `action` if its status in the database allows it.

    A compare-and-set UPDATE, so a tick or another user acting at the same moment cannot
    slip a transition in between the check and the write. Updates `job` in place.
    """
    sources, target = TRANSITIONS[action]
    now = timezone.now()
    changes: dict[str, Any] = {"status": target, "updated_at": now}
    if target == Status.RUNNING:
        changes["started_at"] = Coalesce("started_at", Now())
    if target in TrainingJob.TERMINAL_STATUSES:
        changes["finished_at"] = now
    if target == Status.FAILED:
        changes["failure_reason"] = reason or "Marked failed."
    updated = TrainingJob.objects.filter(pk=job.pk, status__in=sources).update(**changes)
    job.refresh_from_db()
    if not updated:
        raise JobTransitionError(job, action)
    return job


def job_start(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job, "start")


def job_pause(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job, "pause")


def job_resume(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job, "resume")


def job_cancel(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job, "cancel")


def job_complete(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job, "complete")


def job_fail(*, job: TrainingJob, reason: str) -> TrainingJob:
    return job_transition(job, "fail", reason=reason)


def job_delete(*, job: TrainingJob) -> None:
    # The job's row lock is taken first (jobs.signals), so a write in flight lands before the
    # cascade; TrainingMetric has no signals, so the cascade is one DELETE per related table.
    job.delete()


def jobs_mark_stalled(*, reported_before: datetime) -> int:
    """External running jobs silent since `reported_before` become stalled; returns how many."""
    never_reported = Q(last_reported_at__isnull=True, started_at__lt=reported_before)
    return (
        TrainingJob.objects.filter(status=Status.RUNNING, source=TrainingJob.Source.EXTERNAL)
        .filter(Q(last_reported_at__lt=reported_before) | never_reported)
        .update(status=Status.STALLED, updated_at=timezone.now())
    )


# --- progress ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSummary:
    """What a batch of points just stored tells its job. Steps are 0-based."""

    job: TrainingJob
    max_step: int | None = None  # highest step with a finite loss, None if there is none
    last_loss: float | None = None  # at max_step
    last_accuracy: float | None = None
    last_learning_rate: float | None = None
    min_loss: float | None = None
    min_loss_step: int | None = None
    diverged_at_step: int | None = None  # first step whose loss was NaN or infinite


_PROGRESS_COLUMNS = (
    ("id", "bigint"),
    ("current_step", "bigint"),
    ("last_loss", "double precision"),
    ("best_loss", "double precision"),
    ("best_loss_step", "bigint"),
    ("last_accuracy", "double precision"),
    ("last_learning_rate", "double precision"),
    ("steps_per_second", "double precision"),
    ("status", "text"),
    ("failure_reason", "text"),
    ("finished", "boolean"),
)


def jobs_record_progress(summaries: Sequence[BatchSummary], *, now: datetime) -> None:
    """Apply batch summaries to their jobs in one UPDATE, however many jobs there are.

    Call inside the transaction that stored the points, with the jobs' rows locked, so the
    progress fields never disagree with the metrics table. Status follows the points: a
    non-finite loss fails the job, a simulated job's last step completes it, and a report
    revives a stalled job. The job instances are updated in place.
    """
    rows = [_progress_row(summary, now) for summary in summaries]
    if not rows:
        return
    table = TrainingJob._meta.db_table
    assignments = ", ".join(
        f"{name} = u.{name}" for name, _ in _PROGRESS_COLUMNS if name not in {"id", "finished"}
    )
    source, params = json_rows(_PROGRESS_COLUMNS, rows)
    db_now = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {assignments}, last_reported_at = %s, updated_at = %s, "
            f"finished_at = CASE WHEN u.finished THEN %s ELSE {table}.finished_at END "
            f"FROM {source} AS u WHERE {table}.id = u.id",
            [db_now, db_now, db_now, *params],
        )


def _progress_row(summary: BatchSummary, now: datetime) -> tuple:
    job = summary.job
    previous_step = job.current_step
    if summary.max_step is not None and summary.max_step + 1 > job.current_step:
        job.current_step = summary.max_step + 1
        job.last_loss = summary.last_loss
        job.last_accuracy = summary.last_accuracy
        job.last_learning_rate = summary.last_learning_rate
    if summary.min_loss is not None and (job.best_loss is None or summary.min_loss < job.best_loss):
        job.best_loss = summary.min_loss
        job.best_loss_step = summary.min_loss_step
    if job.last_reported_at is not None and job.status == Status.RUNNING:
        elapsed = (now - job.last_reported_at).total_seconds()
        if 0 < elapsed <= RATE_GAP_SECONDS and job.current_step > previous_step:
            rate = (job.current_step - previous_step) / elapsed
            job.steps_per_second = (
                rate
                if job.steps_per_second is None
                else RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * job.steps_per_second
            )
    job.last_reported_at = now
    job.updated_at = now

    finished = False
    if summary.diverged_at_step is not None and not job.is_terminal:
        job.status = Status.FAILED
        job.failure_reason = f"loss diverged at step {summary.diverged_at_step}"
        finished = True
    elif (
        job.source == TrainingJob.Source.SIMULATED
        and job.current_step >= job.total_steps
        and not job.is_terminal
    ):
        job.status = Status.COMPLETED
        finished = True
    elif job.status == Status.STALLED:
        job.status = Status.RUNNING
    if finished:
        job.finished_at = now
    return (
        job.pk,
        job.current_step,
        job.last_loss,
        job.best_loss,
        job.best_loss_step,
        job.last_accuracy,
        job.last_learning_rate,
        job.steps_per_second,
        job.status,
        job.failure_reason,
        finished,
    )


def jobs_lock(job_ids: Sequence[int]) -> list[TrainingJob]:
    """Lock the given jobs' rows for the current transaction, in id order (no deadlocks)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("jobs_lock() must run inside transaction.atomic()")
    return list(TrainingJob.objects.select_for_update().filter(pk__in=job_ids).order_by("pk"))
