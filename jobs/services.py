"""Every write to a job: creation, edits, status transitions and progress.

Views, admin, commands (createjob, pausejob, resumejob, canceljob), the API and Celery tasks
all come through here, so a rule such as "a cancelled job never runs again" or "at most
10,000 epochs" is written once. The web form, the API schema and the admin take their limits
and messages from `JOB_BOUNDS` and the `*_problem` functions below.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from jobs.models import Experiment, TrainingJob
from trainmon.bulk import json_rows, only_ids

Status = TrainingJob.Status

DECAY_SPAN = 5.0  # loss is within exp(-5) ≈ 0.7 % of its floor by the job's last step
MAX_SEED = 2**63 - 1
# Bounds that keep every count inside the database's integer columns and a job's history
# within what one machine can chart.
MAX_EPOCHS = 10_000
MAX_STEPS_PER_EPOCH = 1_000_000
MAX_TOTAL_STEPS = 100_000_000
MAX_STEPS_PER_TICK = 10_000
# Simulator bounds: with them no finite input overflows anything downstream. A bucket of the
# chart summary sums up to 262,144 losses, and a diverging loss grows ~130-fold before it
# turns NaN: 1e6 * 130 * 262,144 ≈ 3e13, far from float64's 1.8e308. Below 0.001 the
# initial loss sits under the simulator's floor (0.05) and the accuracy (1 - loss / initial)
# only overflows.
MIN_INITIAL_LOSS = 0.001
MAX_LOSS = 1_000_000.0
MAX_DECAY_RATE = 10.0  # exp(-10) per step: the loss is at its floor after a few steps
MAX_LEARNING_RATE = 10.0
HYPERPARAMETERS_MAX_DEPTH = 16
# A gap longer than this between two reports is a pause, not a slow step: keep the old rate.
RATE_GAP_SECONDS = 60.0
RATE_SMOOTHING = 0.3


# --- validation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """The inclusive range of one numeric job field, and what to say outside it."""

    minimum: int | float
    maximum: int | float
    message: str  # not a number of the right kind, or below the minimum
    too_large: str = ""  # above the maximum; `message` when empty
    integer: bool = True
    exclusive_minimum: bool = False  # the value must be above `minimum`

    def problem(self, value: object) -> str | None:
        """Why `value` is refused, or None if it is in range."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.message
        if self.integer and not isinstance(value, int):
            return self.message
        if isinstance(value, float) and not math.isfinite(value):
            return self.message
        if value < self.minimum or (self.exclusive_minimum and value == self.minimum):
            return self.message
        if value > self.maximum:
            return self.too_large or self.message
        return None

    def validate(self, value: object) -> None:
        """As a Django validator: the same message, as a ValidationError."""
        if problem := self.problem(value):
            raise ValidationError(problem, code="out_of_range")


def _number(value: float) -> str:
    return f"{value:,.3f}".rstrip("0").rstrip(".")


JOB_BOUNDS: dict[str, Bound] = {
    "total_epochs": Bound(
        1,
        MAX_EPOCHS,
        "Total epochs must be a positive integer.",
        f"Total epochs can be at most {MAX_EPOCHS:,}.",
    ),
    "steps_per_epoch": Bound(
        1,
        MAX_STEPS_PER_EPOCH,
        "Steps per epoch must be a positive integer.",
        f"Steps per epoch can be at most {MAX_STEPS_PER_EPOCH:,}.",
    ),
    "steps_per_tick": Bound(
        1,
        MAX_STEPS_PER_TICK,
        "Steps per tick must be a positive integer.",
        f"Steps per tick can be at most {MAX_STEPS_PER_TICK:,}.",
    ),
    "initial_loss": Bound(
        MIN_INITIAL_LOSS,
        MAX_LOSS,
        f"The initial loss must be a number from {_number(MIN_INITIAL_LOSS)} to "
        f"{_number(MAX_LOSS)}.",
        integer=False,
    ),
    "final_loss": Bound(
        0,
        MAX_LOSS,
        f"The final loss must be a number from 0 to {_number(MAX_LOSS)}.",
        integer=False,
    ),
    "decay_rate": Bound(
        0,
        MAX_DECAY_RATE,
        "The decay rate must be a positive number.",
        f"The decay rate can be at most {_number(MAX_DECAY_RATE)}.",
        integer=False,
        exclusive_minimum=True,
    ),
    "base_learning_rate": Bound(
        0,
        MAX_LEARNING_RATE,
        f"The learning rate must be a number from 0 to {_number(MAX_LEARNING_RATE)}.",
        integer=False,
    ),
    "seed": Bound(0, MAX_SEED, f"The seed must be an integer from 0 to {MAX_SEED}."),
    "warmup_steps": Bound(
        0,
        MAX_TOTAL_STEPS,
        "Warm-up steps must be an integer >= 0.",
        f"Warm-up steps can be at most {MAX_TOTAL_STEPS:,}.",
    ),
    "diverge_at_step": Bound(
        0,
        MAX_TOTAL_STEPS,
        "The divergence step must be an integer >= 0.",
        f"The divergence step can be at most {MAX_TOTAL_STEPS:,}.",
    ),
}
# Left unset (None), the service chooses them from the job's length. The length itself is
# optional for external jobs only (`length_problems`).
OPTIONAL_FIELDS = frozenset(
    {"decay_rate", "seed", "warmup_steps", "diverge_at_step", "total_epochs", "steps_per_epoch"}
)
LENGTH_FIELDS = ("total_epochs", "steps_per_epoch")
# An open-ended job's simulator parameters are never used; the decay still needs a value > 0.
OPEN_ENDED_DECAY_RATE = DECAY_SPAN / MAX_TOTAL_STEPS
TEXT_FIELDS = ("name", "description", "model_name", "dataset")
# What may change on an existing job. Status moves only through the transitions, progress only
# through the write path, and the simulator's parameters would rewrite a curve in flight.
EDITABLE_FIELDS = (
    "name",
    "owner",
    "description",
    "model_name",
    "dataset",
    "hyperparameters",
    "steps_per_tick",
)


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


def name_problem(name: object) -> str | None:
    if not isinstance(name, str) or not name.strip():
        return "Give the job a name."
    return unstorable_text(name)


def text_problem(text: object) -> str | None:
    if not isinstance(text, str):
        return "Enter text."
    return unstorable_text(text)


def hyperparameters_problem(value: object) -> str | None:
    """Why `value` cannot be a job's hyperparameters, or None if it can."""
    if not isinstance(value, dict):
        return "Hyperparameters must be a JSON object."
    if problem := unstorable_json(value):
        return problem
    return hyperparameters_size_problem(value)


def hyperparameters_size_problem(value: Any) -> str | None:
    # The job and compare pages read the column whole: megabytes per job made every page
    # that loaded it seconds slower.
    limit = settings.TRAINMON_HYPERPARAMETERS_MAX_BYTES
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > limit:
        return f"Hyperparameters can be at most {limit:,} bytes of JSON; these are {size:,}."
    return None


def length_problems(
    source: str, total_epochs: int | None, steps_per_epoch: int | None
) -> dict[str, str]:
    """Why the declared length cannot be left out as it is: field -> message.

    A simulated job runs to its last step, so it needs both. An external job may give both
    (a hint for progress and ETA, never a limit) or neither (an open-ended run), not one.
    """
    missing = [
        field
        for field, value in zip(LENGTH_FIELDS, (total_epochs, steps_per_epoch), strict=True)
        if value is None
    ]
    if not missing:
        return {}
    if source == TrainingJob.Source.SIMULATED:
        return {field: f"A simulated job needs {field.replace('_', ' ')}." for field in missing}
    if len(missing) == 1:
        return {
            missing[0]: "Give both total_epochs and steps_per_epoch, or neither (a run of "
            "unknown length)."
        }
    return {}


def total_steps_problem(total_epochs: int, steps_per_epoch: int) -> str | None:
    total = total_epochs * steps_per_epoch
    if total > MAX_TOTAL_STEPS:
        return f"That is {total:,} steps in all; the most is {MAX_TOTAL_STEPS:,}."
    return None


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda value: None if value is None else check(value)


# field -> why a value is refused (None: it is fine). One entry per field job_build takes.
FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    **{
        field: _optional(bound.problem) if field in OPTIONAL_FIELDS else bound.problem
        for field, bound in JOB_BOUNDS.items()
    },
    "name": name_problem,
    **{field: text_problem for field in TEXT_FIELDS if field != "name"},
    "hyperparameters": _optional(hyperparameters_problem),
}


def job_fields_check(values: dict[str, Any]) -> None:
    """Raise ValidationError, a message per field, for every value in `values` refused.

    Checks each field alone, plus the rules between two fields given together (total steps,
    a loss that decreases, a length that only external jobs may leave out: pass "source" with
    the two length fields for that one). Fields without a rule are not checked.
    """
    errors = {
        field: problem
        for field, value in values.items()
        if field in FIELD_CHECKS and (problem := FIELD_CHECKS[field](value))
    }
    if {"source", *LENGTH_FIELDS} <= values.keys():
        length = length_problems(
            values["source"], values["total_epochs"], values["steps_per_epoch"]
        )
        errors = {**length, **errors}
    valid = values.keys() - errors.keys()
    if (
        {"total_epochs", "steps_per_epoch"} <= valid
        and None
        not in (
            values["total_epochs"],
            values["steps_per_epoch"],
        )
        and (problem := total_steps_problem(values["total_epochs"], values["steps_per_epoch"]))
    ):
        errors["steps_per_epoch"] = problem
    if {"initial_loss", "final_loss"} <= valid:
        initial, final = values["initial_loss"], values["final_loss"]
        if final >= initial:
            errors["final_loss"] = "The final loss must be lower than the initial loss."
    if errors:
        raise ValidationError(errors)


# --- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobAction:
    """A status change: where it may start, where it leads, and how people see it."""

    name: str  # "pause": the URL, the admin action and the command use it
    verb: str  # "Pause"
    past_tense: str  # "paused"
    sources: frozenset[str]
    target: str
    # People may ask for it (pages, admin, commands); the others belong to the engine and API.
    by_users: bool = True
    button: str = ""  # the job page's button; `verb` when empty
    tone: str = "info"  # the toast's level; "success" and "warning" also colour the button
    confirm: str = ""  # the button asks first, with this warning

    @property
    def label(self) -> str:
        return self.button or self.verb


_UNFINISHED = frozenset({Status.QUEUED, Status.RUNNING, Status.PAUSED, Status.STALLED})
JOB_ACTIONS: dict[str, JobAction] = {
    action.name: action
    for action in (
        JobAction(
            "start", "Start", "started", frozenset({Status.QUEUED}), Status.RUNNING, tone="success"
        ),
        JobAction(
            "pause",
            "Pause",
            "paused",
            frozenset({Status.QUEUED, Status.RUNNING, Status.STALLED}),
            Status.PAUSED,
        ),
        JobAction(
            "resume",
            "Resume",
            "resumed",
            frozenset({Status.PAUSED}),
            Status.RUNNING,
            tone="success",
        ),
        JobAction(
            "cancel",
            "Cancel",
            "cancelled",
            _UNFINISHED,
            Status.CANCELLED,
            button="Cancel job",
            tone="warning",
            confirm="A cancelled job cannot be resumed.",
        ),
        JobAction(
            "complete",
            "Complete",
            "completed",
            frozenset({Status.RUNNING, Status.PAUSED, Status.STALLED}),
            Status.COMPLETED,
            by_users=False,
        ),
        JobAction("fail", "Fail", "failed", _UNFINISHED, Status.FAILED, by_users=False),
    )
}
# What a person may ask for from a page, the admin or a command.
USER_ACTIONS = tuple(name for name, action in JOB_ACTIONS.items() if action.by_users)


class JobTransitionError(Exception):
    """An action that the job's current status does not allow."""

    def __init__(self, job: TrainingJob, action: str) -> None:
        self.job = job
        self.action = action
        super().__init__(f"Cannot {action} job {job.pk} ({job.name!r}): it is {job.status}.")


def job_allowed_actions(*, job: TrainingJob, by_users: bool = False) -> list[str]:
    """The transitions the job's status allows now, in table order (the buttons' order).

    All of them, the engine's complete and fail included, unless `by_users`: then only those a
    person may ask for.
    """
    return [
        name
        for name, action in JOB_ACTIONS.items()
        if job.status in action.sources and (action.by_users or not by_users)
    ]


# --- creation and edits -------------------------------------------------------------------------


def job_create(
    *,
    owner: User,
    name: str,
    total_epochs: int | None = None,
    steps_per_epoch: int | None = None,
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
    experiment: Experiment | None = None,
) -> TrainingJob:
    """Create a job, running at once unless `start` is false.

    Raises ValidationError, with a message per field, for anything out of range; nothing is
    written then. Unset simulator parameters get defaults that span the job's length. An
    external job may leave out both `total_epochs` and `steps_per_epoch` (a run of unknown
    length); a simulated one needs both.
    """
    job = job_build(
        owner=owner,
        name=name,
        total_epochs=total_epochs,
        steps_per_epoch=steps_per_epoch,
        steps_per_tick=steps_per_tick,
        source=source,
        description=description,
        model_name=model_name,
        dataset=dataset,
        hyperparameters=hyperparameters,
        initial_loss=initial_loss,
        final_loss=final_loss,
        decay_rate=decay_rate,
        seed=seed,
        base_learning_rate=base_learning_rate,
        warmup_steps=warmup_steps,
        diverge_at_step=diverge_at_step,
        start=start,
        experiment=experiment,
    )
    job.save()
    return job


def job_build(
    *,
    owner: User,
    name: str,
    total_epochs: int | None = None,
    steps_per_epoch: int | None = None,
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
    experiment: Experiment | None = None,
) -> TrainingJob:
    """A new, validated, unsaved job: every rule `job_create` applies, without the write."""
    job_fields_check(
        {
            "name": name,
            "source": source,
            "total_epochs": total_epochs,
            "steps_per_epoch": steps_per_epoch,
            "steps_per_tick": steps_per_tick,
            "description": description,
            "model_name": model_name,
            "dataset": dataset,
            "hyperparameters": hyperparameters,
            "initial_loss": initial_loss,
            "final_loss": final_loss,
            "decay_rate": decay_rate,
            "seed": seed,
            "base_learning_rate": base_learning_rate,
            "warmup_steps": warmup_steps,
            "diverge_at_step": diverge_at_step,
        }
    )
    total_steps = (
        None if total_epochs is None or steps_per_epoch is None else total_epochs * steps_per_epoch
    )
    if decay_rate is None:
        decay_rate = OPEN_ENDED_DECAY_RATE if total_steps is None else DECAY_SPAN / total_steps
    if warmup_steps is None:
        warmup_steps = 0 if total_steps is None else min(total_steps // 20, 500)
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
        decay_rate=decay_rate,
        seed=seed if seed is not None else secrets.randbelow(MAX_SEED),
        base_learning_rate=base_learning_rate,
        warmup_steps=warmup_steps,
        diverge_at_step=diverge_at_step,
        experiment=experiment,
    )
    if start:
        job.status = Status.RUNNING
        job.started_at = job.created_at
    job.full_clean()
    return job


def job_update_check(*, data: dict[str, Any]) -> None:
    """Raise ValidationError if `data` is not an edit `job_update` would make."""
    if refused := sorted(set(data) - set(EDITABLE_FIELDS)):
        raise ValidationError(
            dict.fromkeys(refused, "This field cannot be changed on an existing job.")
        )
    job_fields_check(data)


def job_update(*, job: TrainingJob, data: dict[str, Any]) -> TrainingJob:
    """Change the `EDITABLE_FIELDS` given in `data`, validated like a new job's.

    Writes only those columns: a full save would write back progress and status read before a
    concurrent tick or action changed them.
    """
    job_update_check(data=data)
    if "name" in data:
        data = {**data, "name": data["name"].strip()}
    for field, value in data.items():
        setattr(job, field, value)
    job.updated_at = timezone.now()
    job.save(update_fields=[*data, "updated_at"])
    return job


# --- transitions --------------------------------------------------------------------------------


def job_transition(*, job: TrainingJob, action: str, reason: str = "") -> TrainingJob:
    """Move `job` along `action` if its status in the database allows it.

    A compare-and-set UPDATE, so a tick or another user acting at the same moment cannot
    slip a transition in between the check and the write. Updates `job` in place.
    """
    sources, target = JOB_ACTIONS[action].sources, JOB_ACTIONS[action].target
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
    return job_transition(job=job, action="start")


def job_pause(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job=job, action="pause")


def job_resume(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job=job, action="resume")


def job_cancel(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job=job, action="cancel")


def job_complete(*, job: TrainingJob) -> TrainingJob:
    return job_transition(job=job, action="complete")


def job_fail(*, job: TrainingJob, reason: str) -> TrainingJob:
    return job_transition(job=job, action="fail", reason=reason)


def job_delete(*, job: TrainingJob) -> None:
    """Delete the job with everything it holds, after any write in flight to it.

    The job's row is locked before Django collects what to cascade: a write holds that lock,
    and a key it creates must be collected too (MetricKey has a database FK: missed, it
    would fail the deletion). The points, summary and ingest-log rows go by one DELETE per
    table, run after the lock, whatever was collected.
    """
    with transaction.atomic():
        jobs_lock([job.pk])
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
    named_max_step: int | None = None  # highest step of named points stored, if any
    first_key: str | None = None  # the primary metric of a job that has none yet


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
    ("ingest_seq", "bigint"),
    ("primary_metric", "text"),
)


def jobs_record_progress(
    summaries: Sequence[BatchSummary], *, now: datetime, tick: int | None = None
) -> None:
    """Apply batch summaries to their jobs in one UPDATE, however many jobs there are.

    Call inside the transaction that stored the points, with the jobs' rows locked, so the
    progress fields never disagree with the metrics table. Status follows the points: a
    non-finite loss fails the job, a simulated job's last step completes it, and a report
    revives a stalled job. `tick`, for a scheduled simulation tick, becomes every job's
    `last_tick` in the same UPDATE. The job instances are updated in place.
    """
    rows = [_progress_row(summary, now) for summary in summaries]
    if not rows:
        return
    table = TrainingJob._meta.db_table
    assignments = ", ".join(
        f"{name} = u.{name}" for name, _ in _PROGRESS_COLUMNS if name not in {"id", "finished"}
    )
    tick_assignment, tick_params = ("", []) if tick is None else (", last_tick = %s", [tick])
    source, params = json_rows(_PROGRESS_COLUMNS, rows)
    # Without the ids, every job in the table could be read and hashed (see only_ids).
    these_jobs, jobs_params = only_ids(f"{table}.id", [summary.job.pk for summary in summaries])
    db_now = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET {assignments}, last_reported_at = %s, updated_at = %s, "
            f"finished_at = CASE WHEN u.finished THEN %s ELSE {table}.finished_at END"
            f"{tick_assignment} FROM {source} AS u WHERE {table}.id = u.id{these_jobs}",
            [db_now, db_now, db_now, *tick_params, *params, *jobs_params],
        )
    if tick is not None:
        for summary in summaries:
            summary.job.last_tick = tick


def _progress_row(summary: BatchSummary, now: datetime) -> tuple[object, ...]:
    job = summary.job
    previous_step = job.current_step
    # ">=": a named point may have reached this step first; the loss there is still the last.
    if summary.max_step is not None and summary.max_step + 1 >= job.current_step:
        job.current_step = summary.max_step + 1
        job.last_loss = summary.last_loss
        job.last_accuracy = summary.last_accuracy
        job.last_learning_rate = summary.last_learning_rate
    # Steps done counts every series: a run may log only named keys.
    if summary.named_max_step is not None:
        job.current_step = max(job.current_step, summary.named_max_step + 1)
    if summary.max_step is not None or summary.named_max_step is not None:
        job.ingest_seq += 1  # this write stored points: the job's ingest position moves
    if summary.first_key and not job.primary_metric:
        job.primary_metric = summary.first_key
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
        and job.total_steps is not None  # always, for a simulated job (a DB constraint)
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
        job.ingest_seq,
        job.primary_metric,
    )


def jobs_lock(job_ids: Sequence[int]) -> list[TrainingJob]:
    """Lock the given jobs' rows for the current transaction, in id order (no deadlocks)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("jobs_lock() must run inside transaction.atomic()")
    return list(TrainingJob.objects.select_for_update().filter(pk__in=job_ids).order_by("pk"))


# --- experiments ---------------------------------------------------------------------------------

DEFAULT_EXPERIMENT_NAME = "Default"


def experiment_default(*, user: User) -> Experiment:
    """The user's Default experiment (MLflow's "0"), made on first use.

    Concurrent first uses meet at the (owner) unique index for defaults: the loser reads the
    winner's row.
    """
    found = Experiment.objects.filter(owner=user, is_default=True).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            name = DEFAULT_EXPERIMENT_NAME
            if Experiment.objects.filter(owner=user, name=name).exists():
                name = f"{DEFAULT_EXPERIMENT_NAME} ({user.pk})"
            return Experiment.objects.create(owner=user, name=name, is_default=True)
    except IntegrityError:
        return Experiment.objects.get(owner=user, is_default=True)


def experiment_get_or_create(*, user: User, name: str) -> Experiment:
    """The user's experiment called `name` (made if missing); the Default for "Default"."""
    name = name.strip()
    if not name:
        raise ValidationError({"experiment": "An experiment needs a name."})
    if len(name) > EXPERIMENT_NAME_MAX:
        raise ValidationError({"experiment": f"At most {EXPERIMENT_NAME_MAX} characters."})
    default = experiment_default(user=user)
    if name == default.name:
        return default
    try:
        with transaction.atomic():
            experiment, _ = Experiment.objects.get_or_create(owner=user, name=name)
    except IntegrityError:
        experiment = Experiment.objects.get(owner=user, name=name)
    return experiment


EXPERIMENT_NAME_MAX = 500
