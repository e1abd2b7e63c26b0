"""Storing chosen metric points through the real write path, for chart and export tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from django.db import transaction

from jobs.models import TrainingJob
from jobs.services import jobs_lock
from metrics.points import MetricBatch
from metrics.services import metric_batches_write


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
    steps = np.asarray(steps, dtype=np.int64)
    n = len(steps)
    losses = np.linspace(2.0, 0.5, n) if losses is None else np.asarray(losses, dtype=float)
    batch = MetricBatch(
        steps=steps,
        epochs=steps // job.steps_per_epoch + 1,
        losses=losses,
        accuracies=np.full(n, 0.5) if accuracies is None else np.asarray(accuracies, float),
        learning_rates=(
            np.full(n, 1e-3) if learning_rates is None else np.asarray(learning_rates, float)
        ),
    )
    with transaction.atomic():
        (locked,) = jobs_lock([job.pk])
        metric_batches_write([(locked, batch)])
    job.refresh_from_db()
    return job
