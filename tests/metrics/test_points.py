from __future__ import annotations

import numpy as np
import pytest

from metrics.points import MAX_STORED_STEP, MetricBatch, NamedBatch, is_key_name
from metrics.simulator import TrainingSimulator


def test_metric_batch_rejects_mismatched_lengths_and_non_1d() -> None:
    ok = np.zeros(3)
    with pytest.raises(ValueError, match="length"):
        MetricBatch(ok, ok, ok, ok, np.zeros(2))
    with pytest.raises(ValueError, match="1-D"):
        MetricBatch(ok, ok, np.zeros((3, 1)), ok, ok)


def test_metric_batch_empty_rows_and_first_diverged() -> None:
    empty = MetricBatch.empty()
    assert len(empty) == 0
    assert empty.steps.dtype == np.int64 and empty.losses.dtype == np.float64
    assert empty.first_diverged_loss() is None

    batch = TrainingSimulator(seed=1).generate_metrics_batch(0, 10, 10, 5)
    assert len(batch) == 10
    assert batch.first_diverged_loss() is None
    head = batch.rows(0, 4)
    assert len(head) == 4
    assert np.array_equal(head.steps, [0, 1, 2, 3])
    assert len(batch.rows(0, 100)) == 10

    losses = batch.losses.copy()
    losses[[6, 8]] = [np.inf, np.nan]
    broken = MetricBatch(batch.steps, batch.epochs, losses, batch.accuracies, batch.learning_rates)
    assert broken.first_diverged_loss() == 6


# --- NamedBatch -------------------------------------------------------------------------------


def test_a_named_batch_from_points_numbers_names_by_first_appearance():
    batch = NamedBatch.from_points(
        [("val/loss", 9, 0.5, 1.0), ("grad", 0, float("nan"), 2.0), ("val/loss", 19, 0.4, 3.0)]
    )
    assert batch.names == ("val/loss", "grad")
    assert batch.key_index.tolist() == [0, 1, 0]
    assert batch.steps.dtype == np.int64 and batch.values.dtype == np.float64
    assert len(batch) == 3 and np.isnan(batch.values[1])
    assert len(NamedBatch.empty()) == 0


@pytest.mark.parametrize(
    ("names", "key_index", "steps", "message"),
    [
        (("a", "a"), [0], [0], "distinct"),
        (("a",), [1], [0], "outside names"),
        (("a",), [0], [-1], ">= 0"),
        (("a",), [0], [MAX_STORED_STEP + 1], f"<= {MAX_STORED_STEP}"),
        (("bad\\nname",), [0], [0], "key name"),
        (("x" * 251,), [0], [0], "key name"),
        (("",), [0], [0], "key name"),
    ],
)
def test_a_named_batch_refuses_what_cannot_be_stored(names, key_index, steps, message):
    with pytest.raises(ValueError, match=message):
        NamedBatch(names, np.array(key_index), np.array(steps), np.zeros(1), np.zeros(1))


def test_key_names_follow_mlflows_rule():
    for name in ("loss", "val/loss", "train_acc-top.5", "eval: f1", "a" * 250):
        assert is_key_name(name)
    for name in ("", "a" * 251, "loss\\n", "é", "a,b", "x\\ty"):
        assert not is_key_name(name)


@pytest.mark.parametrize(
    ("headline_ends", "named_ends", "message"),
    [
        ([3], [1, 1], "1 headline ends for 2 named ends"),
        ([2, 1], [0, 1], "headline_ends must rise"),
        ([1, 2], [1, 2], "headline_ends must rise"),
        ([1, 3], [1, 0], "named_ends must rise"),
    ],
)
def test_many_jobs_points_refuse_ends_that_do_not_cut_their_batches(
    headline_ends, named_ends, message
):
    from metrics.points import JobsPoints, lengths_of

    headline = TrainingSimulator(seed=1).generate_metrics_batch(0, 3, 3, 10)
    named = NamedBatch(("loss",), [0], [0], [1.0], [0.0])
    with pytest.raises(ValueError, match=message):
        JobsPoints(headline, headline_ends, named, named_ends)
    points = JobsPoints(headline, [1, 3], named, [1, 1])
    assert len(points) == 2
    assert lengths_of(points.headline_ends).tolist() == [1, 2]
    assert points.headline_of(1).steps.tolist() == [1, 2]
    assert len(points.named_of(1)) == 0
