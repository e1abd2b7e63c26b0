"""Writing metric points: the one path the simulation tick and the HTTP API share."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from django.db import connection, transaction
from django.utils import timezone

from jobs.models import TrainingJob
from jobs.services import BatchSummary, jobs_record_progress
from metrics.models import TrainingMetric
from metrics.points import MetricBatch
from metrics.simulator import TrainingSimulator


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

    Points at steps a job already has are ignored and counted as duplicates, so a retried
    batch changes nothing. Points from the first non-finite loss on are not stored: that
    step fails the job. The jobs must be locked by the caller (`jobs_lock`) inside
    `transaction.atomic()`. Two statements in all, however many jobs and points.
    """
    now = now or timezone.now()
    stored: list[tuple[TrainingJob, MetricBatch, int | None]] = []
    for job, batch in batches:
        diverged_index = batch.first_non_finite_loss()
        finite = batch if diverged_index is None else batch.head(diverged_index)
        diverged_step = None if diverged_index is None else int(batch.steps[diverged_index])
        stored.append((job, finite, diverged_step))

    with transaction.atomic():
        created_by_job = _insert_points([(job.pk, batch) for job, batch, _ in stored], now)
        jobs_record_progress([_summary(*item) for item in stored], now=now)
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


def _insert_points(batches: Sequence[tuple[int, MetricBatch]], now: datetime) -> Counter[int]:
    """INSERT ... ON CONFLICT DO NOTHING; returns rows created per job id."""
    batches = [(job_id, batch) for job_id, batch in batches if len(batch)]
    if not batches:
        return Counter()
    table = TrainingMetric._meta.db_table
    job_ids = np.concatenate([np.full(len(b), job_id, dtype=np.int64) for job_id, b in batches])
    columns = [
        job_ids,
        *(
            np.concatenate([getattr(b, name) for _, b in batches])
            for name in ("epochs", "steps", "losses", "accuracies", "learning_rates")
        ),
    ]
    db_now = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Arrays travel as six parameters; NaN marks "not reported" and becomes NULL.
            cursor.execute(
                f"WITH inserted AS ("
                f" INSERT INTO {table} ({_COLUMNS})"
                f" SELECT j, e, s, l, NULLIF(a, 'NaN'), NULLIF(r, 'NaN'), %s"
                f" FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[],"
                f" %s::float8[], %s::float8[], %s::float8[]) AS p(j, e, s, l, a, r)"
                f" ON CONFLICT (job_id, step) DO NOTHING RETURNING job_id)"
                f" SELECT job_id, count(*) FROM inserted GROUP BY job_id",
                [db_now, *(column.tolist() for column in columns)],
            )
            return Counter(dict(cursor.fetchall()))
        job_ids, epochs, steps, losses, accuracies, learning_rates = (c.tolist() for c in columns)
        rows = [
            [job, epoch, step, loss, _json_float(accuracy), _json_float(rate)]
            for job, epoch, step, loss, accuracy, rate in zip(
                job_ids, epochs, steps, losses, accuracies, learning_rates, strict=True
            )
        ]
        cursor.execute(
            f"INSERT INTO {table} ({_COLUMNS}) SELECT"
            f" json_extract(value, '$[0]'), json_extract(value, '$[1]'),"
            f" json_extract(value, '$[2]'), json_extract(value, '$[3]'),"
            f" json_extract(value, '$[4]'), json_extract(value, '$[5]'), %s"
            f" FROM json_each(%s) WHERE true"
            f" ON CONFLICT (job_id, step) DO NOTHING RETURNING job_id",
            [db_now, json.dumps(rows)],
        )
        return Counter(job_id for (job_id,) in cursor.fetchall())


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value
