from __future__ import annotations

import pytest

from jobs.models import TrainingJob
from jobs.selectors import job_count_by_status, job_list_dashboard
from tests.support.factories import TrainingJobFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


def test_status_counts_cover_every_status(user, other_user):
    TrainingJobFactory.create_batch(2, owner=user, status=Status.RUNNING)
    TrainingJobFactory(owner=user, status=Status.FAILED)
    TrainingJobFactory(owner=other_user, status=Status.FAILED)
    counts = job_count_by_status(user=user)
    assert counts == dict.fromkeys(Status.values, 0) | {"running": 2, "failed": 1}


def test_staff_counts_include_everyone(staff_user, user, other_user):
    TrainingJobFactory(owner=user)
    TrainingJobFactory(owner=other_user)
    assert job_count_by_status(user=staff_user)["running"] == 2


def test_dashboard_list_filters_and_searches(user, other_user):
    match = TrainingJobFactory(owner=user, name="GPT-2 small", status=Status.PAUSED)
    TrainingJobFactory(owner=user, name="gpt-2 medium", status=Status.RUNNING)
    TrainingJobFactory(owner=other_user, name="gpt-2 theirs", status=Status.PAUSED)
    assert list(job_list_dashboard(user=user, status="paused", search=" gpt ")) == [match]
    assert job_list_dashboard(user=user, search="").count() == 2


def test_the_dashboard_list_leaves_hyperparameters_unread(user):
    TrainingJobFactory(owner=user, hyperparameters={"notes": "x" * 1000})
    (job,) = job_list_dashboard(user=user)
    assert "hyperparameters" in job.get_deferred_fields()
