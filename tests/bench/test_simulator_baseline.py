"""The benchmark's plain-Python simulator computes what the numpy simulator computes."""

from __future__ import annotations

import numpy as np
import pytest

from bench.simulator_baseline import generate_metrics_python
from metrics.simulator import TrainingSimulator

VALUE_FIELDS = ("losses", "accuracies", "learning_rates")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seed": 0},
        {"seed": 2**64 - 1, "warmup_steps": 15},
        {"seed": -42, "diverge_at_step": 120, "initial_loss": 4.0, "final_loss": 0.1},
    ],
)
def test_python_baseline_matches_numpy(kwargs: dict) -> None:
    sim = TrainingSimulator(**kwargs)
    start, count, total, spe = 30, 150, 200, 16
    batch = sim.generate_metrics_batch(start, count, total, spe)
    rows = generate_metrics_python(sim, start, count, total, spe)
    columns = [np.array(c) for c in zip(*rows, strict=True)]

    assert np.array_equal(columns[0], batch.steps)
    assert np.array_equal(columns[1], batch.epochs)
    for column, name in zip(columns[2:], VALUE_FIELDS, strict=True):
        assert np.allclose(column, getattr(batch, name), rtol=1e-12, atol=0, equal_nan=True), name
