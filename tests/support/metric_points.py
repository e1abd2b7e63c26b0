"""Metric points built by hand and stored through the real write path (lock, then write)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from django.db import transaction

from jobs.models import TrainingJob
from jobs.services import jobs_lock
from metrics.points import MetricBatch, NamedBatch
from metrics.services import WriteResult, metric_batches_write

Values = float | Sequence[float] | np.ndarray


def _column(values: Values | None, n: int, default: float) -> np.ndarray:
    if values is None:
        values = default
    if np.ndim(values) == 0:
        return np.full(n, values, dtype=float)
    return np.asarray(values, dtype=float)


def metric_batch(
    steps: Sequence[int] | np.ndarray,
    *,
    steps_per_epoch: int,
    losses: Values | None = None,
    accuracies: Values | None = None,
    learning_rates: Values | None = None,
) -> MetricBatch:
    """A batch at `steps`: loss falling linearly from 2 to 1, accuracy not reported (NaN) and
    learning rate 1e-3 unless given; a single number stands for every point."""
    steps = np.asarray(steps, dtype=np.int64)
    n = len(steps)
    return MetricBatch(
        steps=steps,
        epochs=steps // steps_per_epoch + 1,
        losses=np.linspace(2.0, 1.0, n) if losses is None else _column(losses, n, np.nan),
        accuracies=_column(accuracies, n, np.nan),
        learning_rates=_column(learning_rates, n, 1e-3),
    )


def batches_write(*pairs: tuple[TrainingJob, MetricBatch]) -> list[WriteResult]:
    """Store each (job, batch) as the engine and the API do: lock the jobs, then write."""
    with transaction.atomic():
        locked = {job.pk: job for job in jobs_lock([job.pk for job, _ in pairs])}
        return metric_batches_write([(locked[job.pk], batch) for job, batch in pairs])


def named_batch(
    points: dict[str, tuple[Sequence[int], Values]], *, time: float = 1.8e9
) -> NamedBatch:
    """Named points from {name: (steps, values)}; a single number stands for every value."""
    return NamedBatch.from_points(
        (name, int(step), float(value), time)
        for name, (steps, values) in points.items()
        for step, value in zip(steps, np.broadcast_to(values, (len(steps),)), strict=True)
    )


def named_write(
    job: TrainingJob,
    points: dict[str, tuple[Sequence[int], Values]] | NamedBatch,
    headline: MetricBatch | None = None,
) -> WriteResult:
    """Store named points (and an optional headline batch) through the real write path."""
    batch = points if isinstance(points, NamedBatch) else named_batch(points)
    with transaction.atomic():
        [locked] = jobs_lock([job.pk])
        [result] = metric_batches_write(
            [(locked, MetricBatch.empty() if headline is None else headline)],
            named={locked.pk: batch},
        )
    return result


def points_write(
    job: TrainingJob,
    steps: Sequence[int] | np.ndarray,
    losses: Sequence[float] | np.ndarray | None = None,
    *,
    accuracies: Sequence[float] | np.ndarray | None = None,
    learning_rates: Sequence[float] | np.ndarray | None = None,
) -> TrainingJob:
    """Store points at `steps` (NaN accuracy / lr = not reported) and return the updated job.

    The job needs room for them: `TrainingJobFactory(total_epochs=..., steps_per_epoch=...)`.
    """
    n = len(steps)
    batch = metric_batch(
        steps,
        steps_per_epoch=job.steps_per_epoch,
        losses=np.linspace(2.0, 0.5, n) if losses is None else losses,
        accuracies=0.5 if accuracies is None else accuracies,
        learning_rates=learning_rates,
    )
    batches_write((job, batch))
    job.refresh_from_db()
    return job
