from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from django.conf import settings
from django.utils import timezone

from jobs.models import TrainingJob
from jobs.tasks import mark_stalled
from tests.support.factories import TrainingJobFactory
from tests.support.metric_points import batches_write, metric_batch

Status = TrainingJob.Status
Source = TrainingJob.Source
pytestmark = pytest.mark.django_db


def silent_for(seconds: float) -> dict[str, object]:
    at = timezone.now() - timedelta(seconds=seconds)
    return {"last_reported_at": at, "started_at": at}


def report(job: TrainingJob, step: int) -> None:
    points = metric_batch(
        [step], steps_per_epoch=job.steps_per_epoch, losses=1.0, learning_rates=np.nan
    )
    batches_write((job, points))


def status_of(job: TrainingJob) -> str:
    job.refresh_from_db()
    return job.status


def test_an_external_job_silent_too_long_stalls_and_a_report_revives_it(user):
    job = TrainingJobFactory(
        owner=user, source=Source.EXTERNAL, **silent_for(settings.TRAINMON_STALL_SECONDS + 5)
    )
    assert mark_stalled() == 1
    assert status_of(job) == Status.STALLED
    assert mark_stalled() == 0  # idempotent

    report(job, step=0)
    assert status_of(job) == Status.RUNNING
    assert mark_stalled() == 0
    assert status_of(job) == Status.RUNNING


def test_an_external_job_that_never_reported_stalls_once_it_has_run_long_enough(user):
    job = TrainingJobFactory(
        owner=user,
        source=Source.EXTERNAL,
        last_reported_at=None,
        started_at=timezone.now() - timedelta(seconds=settings.TRAINMON_STALL_SECONDS + 5),
    )
    mark_stalled()
    assert status_of(job) == Status.STALLED


def test_a_recent_report_keeps_an_external_job_running(user):
    job = TrainingJobFactory(
        owner=user, source=Source.EXTERNAL, **silent_for(settings.TRAINMON_STALL_SECONDS - 30)
    )
    assert mark_stalled() == 0
    assert status_of(job) == Status.RUNNING


@pytest.mark.parametrize("status", [Status.PAUSED, Status.QUEUED, Status.COMPLETED])
def test_only_running_external_jobs_stall(user, status):
    job = TrainingJobFactory(
        owner=user,
        source=Source.EXTERNAL,
        status=status,
        **silent_for(settings.TRAINMON_STALL_SECONDS * 10),
    )
    mark_stalled()
    assert status_of(job) == status


def test_simulated_jobs_never_stall(user):
    job = TrainingJobFactory(owner=user, **silent_for(settings.TRAINMON_STALL_SECONDS * 10))
    assert mark_stalled() == 0
    assert status_of(job) == Status.RUNNING
