"""Writing metric points: the one path the simulation tick and the HTTP API share."""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.backends.utils import CursorWrapper
from django.db.models import Q, QuerySet
from django.utils import timezone

from jobs.models import TrainingJob
from jobs.services import BatchSummary, job_fail, jobs_record_progress
from metrics.models import TrainingMetric
from metrics.points import MetricBatch
from metrics.simulator import TrainingSimulator
from metrics.staging import staged_rows
from metrics.summary import summary_add
from trainmon.bulk import json_rows

logger = logging.getLogger(__name__)

# A failed job's reason quotes this much of the error: enough to recognise it.
SIMULATION_ERROR_CHARS = 200


@dataclass(frozen=True)
class WriteResult:
    created: int
    duplicates: int


def simulator_for(job: TrainingJob) -> TrainingSimulator:
    return TrainingSimulator(
        job.initial_loss,
        job.final_loss,
        job.decay_rate,
        seed=job.seed,
        base_learning_rate=job.base_learning_rate,
        warmup_steps=job.warmup_steps,
        diverge_at_step=job.diverge_at_step,
    )


def metric_batches_write(
    batches: Sequence[tuple[TrainingJob, MetricBatch]], *, now: datetime | None = None
) -> list[WriteResult]:
    """Store each job's batch and bring the jobs' progress up to date, atomically.

    One batch per job. Points at steps a job already has are ignored and counted as
    duplicates, so a retried batch changes nothing. Points from the first non-finite loss on
    are not stored: that step fails the job. The jobs must be locked by the caller
    (`jobs_lock`) inside `transaction.atomic()`. A fixed number of statements, however many
    jobs and points.
    """
    now = now or timezone.now()
    stored: list[tuple[TrainingJob, MetricBatch, int | None]] = []
    for job, batch in batches:
        diverged_index = batch.first_diverged_loss()
        finite = batch if diverged_index is None else batch.head(diverged_index)
        diverged_step = None if diverged_index is None else int(batch.steps[diverged_index])
        stored.append((job, finite, diverged_step))

    with transaction.atomic():
        created = _insert_points([(job.pk, batch) for job, batch, _ in stored], now)
        summary_add(created)
        # Progress follows what was stored: a retried batch's duplicates may carry other
        # values, and the stored ones win.
        created_points = dict(created)
        jobs_record_progress(
            [
                _summary(job, created_points.get(job.pk, MetricBatch.empty()), diverged_step)
                for job, _, diverged_step in stored
            ],
            now=now,
        )
    created_by_job = Counter({job_id: len(points) for job_id, points in created})
    return [
        WriteResult(created=created_by_job[job.pk], duplicates=len(batch) - created_by_job[job.pk])
        for job, batch, _ in stored
    ]


def _summary(job: TrainingJob, batch: MetricBatch, diverged_at_step: int | None) -> BatchSummary:
    if not len(batch):
        return BatchSummary(job=job, diverged_at_step=diverged_at_step)
    last = int(np.argmax(batch.steps))
    best = int(np.argmin(batch.losses))
    return BatchSummary(
        job=job,
        max_step=int(batch.steps[last]),
        last_loss=float(batch.losses[last]),
        last_accuracy=_optional(batch.accuracies[last]),
        last_learning_rate=_optional(batch.learning_rates[last]),
        min_loss=float(batch.losses[best]),
        min_loss_step=int(batch.steps[best]),
        diverged_at_step=diverged_at_step,
    )


def _optional(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


_COLUMNS = "job_id, epoch, step, loss, accuracy, learning_rate, created_at"
# PostgreSQL stages the points by binary COPY (NaN, "not reported", travels as NULL).
_STAGED_POINTS = (
    ("job_id", "bigint"),
    ("epoch", "bigint"),
    ("step", "bigint"),
    ("loss", "double precision"),
    ("accuracy", "double precision"),
    ("learning_rate", "double precision"),
)
_POINTS_STAGING_TABLE = "trainmon_points_in"
_BATCH_COLUMNS = ("epochs", "steps", "losses", "accuracies", "learning_rates")


def _insert_points(
    batches: Sequence[tuple[int, MetricBatch]], now: datetime
) -> list[tuple[int, MetricBatch]]:
    """Store the points, ignoring steps their job already has; returns the points created.

    The common case, nothing stored yet, is one plain INSERT: no per-row conflict handling
    and no rows sent back. If a step exists, that INSERT rolls back to its savepoint and
    runs again with ON CONFLICT DO NOTHING RETURNING, which says which points were created.
    """
    batches = [(job_id, batch) for job_id, batch in batches if len(batch)]
    if not batches:
        return []
    table = TrainingMetric._meta.db_table
    db_now = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        select, params = _points_source(cursor, batches, db_now)
        insert = f"INSERT INTO {table} ({_COLUMNS}) {select}"
        try:
            with transaction.atomic():
                cursor.execute(insert, params)
        except IntegrityError:
            cursor.execute(
                f"{insert} ON CONFLICT (job_id, step) DO NOTHING RETURNING job_id, step", params
            )
            return _only_created(batches, set(cursor.fetchall()))
    return batches


def _points_source(
    cursor: CursorWrapper, batches: Sequence[tuple[int, MetricBatch]], db_now: object
) -> tuple[str, list[Any]]:
    """A SELECT of all the points in INSERT column order, and its parameters."""
    job_ids = np.concatenate([np.full(len(b), job_id, dtype=np.int64) for job_id, b in batches])
    columns = [
        job_ids,
        *(np.concatenate([getattr(b, n) for _, b in batches]) for n in _BATCH_COLUMNS),
    ]
    source, params = staged_rows(cursor, _POINTS_STAGING_TABLE, _STAGED_POINTS, columns)
    # "WHERE true" tells SQLite's parser that a following ON CONFLICT belongs to the INSERT.
    return (
        f"SELECT job_id, epoch, step, loss, accuracy, learning_rate, %s {source} WHERE true",
        [db_now, *params],
    )


def _only_created(
    batches: Sequence[tuple[int, MetricBatch]], created: set[tuple[int, int]]
) -> list[tuple[int, MetricBatch]]:
    # A step given twice in one write is stored once, from its first occurrence.
    result = []
    for job_id, batch in batches:
        keep = np.zeros(len(batch), dtype=bool)
        for index, step in enumerate(batch.steps.tolist()):
            if (job_id, step) in created:
                keep[index] = True
                created.discard((job_id, step))
        result.append(
            (job_id, MetricBatch(**{name: getattr(batch, name)[keep] for name in _BATCH_COLUMNS}))
        )
    return result


# --- the simulation tick ----------------------------------------------------------------------


@dataclass(frozen=True)
class TickResult:
    jobs_advanced: int = 0
    points_written: int = 0
    jobs_completed: int = 0
    jobs_failed: int = 0
    job_ids: tuple[int, ...] = ()  # the jobs this tick advanced, in id order


def tick_slot(moment: datetime) -> int:
    """The scheduled tick `moment` falls in: one slot per TRAINMON_TICK_SECONDS since the epoch.

    Beat sends ticks at least a period apart, so the slots of their send times never repeat.
    """
    return math.floor(moment.timestamp() / settings.TRAINMON_TICK_SECONDS)


def simulation_due_job_ids(*, tick: int | None = None, limit: int | None = None) -> list[int]:
    """Ids of the running simulated jobs that `tick` has yet to advance, in id order."""
    ids = _due_for_tick(tick).order_by("pk").values_list("pk", flat=True)
    return list(ids if limit is None else ids[:limit])


def simulation_advance(
    *,
    job_ids: Sequence[int] | None = None,
    now: datetime | None = None,
    tick: int | None = None,
) -> TickResult:
    """Advance every running simulated job (or only those in `job_ids`) by one tick.

    Each job gets its next `steps_per_tick` points (fewer at the end) in one transaction, with
    a fixed number of queries however many jobs run: one SELECT claims the jobs,
    `metric_batches_write` stores every point and every job's progress (completion and
    divergence come from there) in bulk, and for a scheduled tick one UPDATE marks the jobs.

    `tick` names a scheduled tick (see `tick_slot`): a job it, or a later tick, already
    advanced is skipped, so a replayed or duplicated tick writes nothing. Without one the
    call is an ad-hoc tick (the `simulate` command, scripts) and always advances.

    On PostgreSQL a job locked by a concurrent tick is skipped, not waited for: that tick is
    advancing it. So a job moves at most once per tick; if tick k is still busy with it when
    tick k+1 claims, it sits k+1 out. Pause and cancel are status changes the next tick sees.
    """
    now = now or timezone.now()
    with transaction.atomic():
        claim = _due_for_tick(tick).select_for_update(
            skip_locked=connection.features.has_select_for_update_skip_locked
        )
        if job_ids is not None:
            claim = claim.filter(pk__in=list(job_ids))
        jobs = list(claim.order_by("pk"))
        if not jobs:
            return TickResult()
        results = _advance_each_alone_if_needed(jobs, now)
        if tick is not None:
            _record_tick([job.pk for job in jobs], tick)
    return TickResult(
        jobs_advanced=len(jobs),
        points_written=sum(result.created for result in results),
        jobs_completed=sum(job.status == TrainingJob.Status.COMPLETED for job in jobs),
        jobs_failed=sum(job.status == TrainingJob.Status.FAILED for job in jobs),
        job_ids=tuple(job.pk for job in jobs),
    )


def _advance_each_alone_if_needed(jobs: list[TrainingJob], now: datetime) -> list[WriteResult]:
    """Advance the claimed jobs together; if that fails, alone, failing the jobs at fault.

    One bad job (parameters from before today's bounds, a bug it alone hits) must not stop
    every user's jobs, so a write that fails for a reason of its own (bad data, not a lost
    connection or a busy database, which the task's retry handles) is retried job by job,
    each in its own savepoint: the jobs that fail again are marked failed with the error as
    their reason, the others advance. The healthy path stays one bulk write.
    """
    try:
        with transaction.atomic():
            return metric_batches_write([(job, _next_points(job)) for job in jobs], now=now)
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        logger.warning("tick: bulk write failed, advancing %d jobs one by one", len(jobs))
    results = []
    for job in jobs:
        job.refresh_from_db()  # the failed write changed the instances, not the rows
        try:
            with transaction.atomic():
                [result] = metric_batches_write([(job, _next_points(job))], now=now)
        except (OperationalError, InterfaceError):
            raise
        except Exception as error:
            logger.exception("tick: job %s failed to advance", job.pk)
            job_fail(job=job, reason=_simulation_failure(job, error))
            result = WriteResult(created=0, duplicates=0)
        results.append(result)
    return results


def _simulation_failure(job: TrainingJob, error: Exception) -> str:
    detail = str(error).strip().splitlines()[0][:SIMULATION_ERROR_CHARS] if str(error) else ""
    return f"simulation error at step {job.current_step}: {type(error).__name__}" + (
        f": {detail}" if detail else ""
    )


def _due_for_tick(tick: int | None) -> QuerySet[TrainingJob]:
    jobs = TrainingJob.objects.filter(
        status=TrainingJob.Status.RUNNING, source=TrainingJob.Source.SIMULATED
    )
    if tick is not None:
        jobs = jobs.filter(Q(last_tick__isnull=True) | Q(last_tick__lt=tick))
    return jobs


def _next_points(job: TrainingJob) -> MetricBatch:
    # A running job already at its last step gets an empty batch, which completes it.
    count = max(0, min(job.steps_per_tick, job.total_steps - job.current_step))
    return simulator_for(job).generate_metrics_batch(
        job.current_step, count, job.total_steps, job.steps_per_epoch
    )


def _record_tick(job_ids: list[int], tick: int) -> None:
    # The ids travel as one parameter, so the statement is the same for any count.
    table = TrainingJob._meta.db_table
    ids, params = json_rows([("id", "bigint")], [[job_id] for job_id in job_ids])
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET last_tick = %s WHERE id IN (SELECT id FROM {ids} AS t)",
            [tick, *params],
        )
