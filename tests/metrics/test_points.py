from __future__ import annotations

import numpy as np
import pytest

from metrics.points import MetricBatch
from metrics.simulator import TrainingSimulator


def test_metric_batch_rejects_mismatched_lengths_and_non_1d() -> None:
    ok = np.zeros(3)
    with pytest.raises(ValueError, match="length"):
        MetricBatch(ok, ok, ok, ok, np.zeros(2))
    with pytest.raises(ValueError, match="1-D"):
        MetricBatch(ok, ok, np.zeros((3, 1)), ok, ok)


def test_metric_batch_empty_head_and_first_diverged() -> None:
    empty = MetricBatch.empty()
    assert len(empty) == 0
    assert empty.steps.dtype == np.int64 and empty.losses.dtype == np.float64
    assert empty.first_diverged_loss() is None

    batch = TrainingSimulator(seed=1).generate_metrics_batch(0, 10, 10, 5)
    assert len(batch) == 10
    assert batch.first_diverged_loss() is None
    head = batch.head(4)
    assert len(head) == 4
    assert np.array_equal(head.steps, [0, 1, 2, 3])
    assert len(batch.head(100)) == 10

    losses = batch.losses.copy()
    losses[[6, 8]] = [np.inf, np.nan]
    broken = MetricBatch(batch.steps, batch.epochs, losses, batch.accuracies, batch.learning_rates)
    assert broken.first_diverged_loss() == 6
