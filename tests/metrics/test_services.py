from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from jobs.models import TrainingJob
from jobs.services import jobs_lock
from metrics.models import TrainingMetric
from metrics.services import WriteResult, simulator_for
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import batches_write, metric_batch

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


batch = partial(metric_batch, steps_per_epoch=20)


def stored(job):
    return list(
        TrainingMetric.objects.filter(job=job)
        .order_by("step")
        .values_list("step", "epoch", "loss", "accuracy", "learning_rate")
    )


def test_points_and_progress_are_stored_together(job):
    result = batches_write(
        (job, batch([0, 1, 2], losses=[2.0, 1.5, 1.7], accuracies=[0.1, 0.2, 0.3]))
    )
    assert result == [WriteResult(created=3, duplicates=0)]
    assert stored(job) == [
        (0, 1, 2.0, 0.1, 1e-3),
        (1, 1, 1.5, 0.2, 1e-3),
        (2, 1, 1.7, 0.3, 1e-3),
    ]
    job.refresh_from_db()
    assert job.current_step == 3
    assert job.last_loss == 1.7
    assert (job.best_loss, job.best_loss_step) == (1.5, 1)
    assert job.last_accuracy == 0.3
    assert job.last_reported_at is not None


def test_missing_accuracy_is_stored_as_null(job):
    batches_write((job, batch([0])))
    assert stored(job)[0][3] is None


@pytest.mark.postgres
def test_an_epoch_past_its_column_is_refused_never_wrapped_around(job):
    # The binary COPY would store 2**31 as -2**31 in the integer column: the write stages
    # such rows instead, and PostgreSQL refuses them (integer out of range).
    from django.db import DataError

    too_big = metric_batch([0], steps_per_epoch=1)
    too_big = type(too_big)(**{**too_big.__dict__, "epochs": np.array([2**31], dtype=np.int64)})
    with pytest.raises(DataError):
        batches_write((job, too_big))
    assert not TrainingMetric.objects.filter(job=job).exists()


def test_a_replayed_batch_writes_nothing_and_counts_duplicates(job):
    batches_write((job, batch([0, 1, 2])))
    before = stored(job)
    result = batches_write((job, batch([1, 2, 3], losses=[9.0, 9.0, 1.0])))
    assert result == [WriteResult(created=1, duplicates=2)]
    assert stored(job)[:3] == before
    assert [row[0] for row in stored(job)] == [0, 1, 2, 3]


def test_many_jobs_in_one_call_count_separately(user):
    first, second = TrainingJobFactory.create_batch(2, owner=user)
    batches_write((first, batch([0, 1])))
    result = batches_write((first, batch([1, 2])), (second, batch([0, 1, 2, 3])))
    assert result == [WriteResult(1, 1), WriteResult(4, 0)]
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.current_step, second.current_step) == (3, 4)


def test_a_non_finite_loss_fails_the_job_and_stores_what_came_before(job):
    batches_write((job, batch([0, 1, 2, 3], losses=[2.0, 1.0, np.inf, 0.5])))
    job.refresh_from_db()
    assert [row[0] for row in stored(job)] == [0, 1]
    assert job.status == Status.FAILED
    assert job.failure_reason == "loss diverged at step 2"
    assert job.finished_at is not None
    assert job.current_step == 2


def test_the_last_simulated_step_completes_the_job(user):
    job = TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=5)
    batches_write((job, batch([0, 1, 2, 3, 4], steps_per_epoch=5)))
    job.refresh_from_db()
    assert job.status == Status.COMPLETED
    assert job.finished_at is not None
    assert job.current_step == job.total_steps


def test_a_report_revives_a_stalled_external_job(user):
    job = TrainingJobFactory(owner=user, status=Status.STALLED, source=TrainingJob.Source.EXTERNAL)
    batches_write((job, batch([0])))
    job.refresh_from_db()
    assert job.status == Status.RUNNING


def test_simulated_points_are_the_simulators(job):
    sim = simulator_for(job)
    points = sim.generate_metrics_batch(0, 10, job.total_steps, job.steps_per_epoch)
    batches_write((job, points))
    losses = [row[2] for row in stored(job)]
    np.testing.assert_array_equal(losses, points.losses)


@pytest.mark.django_db(transaction=True)
def test_locking_needs_a_transaction(job):
    with pytest.raises(RuntimeError, match="transaction"):
        jobs_lock([job.pk])


def test_progress_follows_the_stored_points_not_the_ignored_duplicates(job):
    batches_write((job, batch([0, 1], losses=[2.0, 1.5])))
    # A retry whose duplicates carry other values: only step 2 is new, and only it counts.
    batches_write((job, batch([0, 1, 2], losses=[0.1, 0.1, 1.4])))
    job.refresh_from_db()
    assert [row[2] for row in stored(job)] == [2.0, 1.5, 1.4]
    assert (job.best_loss, job.best_loss_step) == (1.4, 2)
    assert (job.last_loss, job.current_step) == (1.4, 3)


def test_a_batch_of_only_duplicates_still_counts_as_a_report(user):
    job = TrainingJobFactory(owner=user, status=Status.STALLED, source=TrainingJob.Source.EXTERNAL)
    batches_write((job, batch([0, 1])))
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.STALLED)
    job.refresh_from_db()
    assert batches_write((job, batch([0, 1]))) == [WriteResult(created=0, duplicates=2)]
    job.refresh_from_db()
    assert job.status == Status.RUNNING
    assert job.current_step == 2


def test_each_job_of_a_write_gets_its_own_batch_s_progress(user):
    """Many jobs in one write, steps out of order, ties on the lowest loss, accuracy missing
    at some last steps: each job's progress is what its own batch says."""
    rng = np.random.default_rng(20)
    jobs = TrainingJobFactory.create_batch(6, owner=user, total_epochs=100)
    batches = []
    for index, job in enumerate(jobs):
        steps = rng.permutation(np.arange(index * 7, index * 7 + 3 + 2 * index))
        losses = rng.integers(1, 4, len(steps)) / 2  # ties on the minimum are common
        accuracies = np.where(rng.random(len(steps)) < 0.5, np.nan, rng.random(len(steps)))
        rates = rng.random(len(steps)) / 100
        batches.append(
            (job, batch(steps, losses=losses, accuracies=accuracies, learning_rates=rates))
        )
    batches_write(*batches)
    for job, points in batches:
        job.refresh_from_db()
        last, best = int(np.argmax(points.steps)), int(np.argmin(points.losses))
        accuracy = points.accuracies[last]
        assert job.current_step == points.steps[last] + 1
        assert job.last_loss == points.losses[last]
        assert job.last_accuracy == (None if np.isnan(accuracy) else accuracy)
        assert job.last_learning_rate == points.learning_rates[last]
        assert (job.best_loss, job.best_loss_step) == (points.losses[best], points.steps[best])
