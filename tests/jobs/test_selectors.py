from __future__ import annotations

import pytest

from jobs.models import TrainingJob
from jobs.selectors import job_status_counts, jobs_for_dashboard
from tests.support.factories import TrainingJobFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


def test_status_counts_cover_every_status(user, other_user):
    TrainingJobFactory.create_batch(2, owner=user, status=Status.RUNNING)
    TrainingJobFactory(owner=user, status=Status.FAILED)
    TrainingJobFactory(owner=other_user, status=Status.FAILED)
    counts = job_status_counts(user)
    assert counts == dict.fromkeys(Status.values, 0) | {"running": 2, "failed": 1}


def test_staff_counts_include_everyone(staff_user, user, other_user):
    TrainingJobFactory(owner=user)
    TrainingJobFactory(owner=other_user)
    assert job_status_counts(staff_user)["running"] == 2


def test_dashboard_list_filters_and_searches(user, other_user):
    match = TrainingJobFactory(owner=user, name="GPT-2 small", status=Status.PAUSED)
    TrainingJobFactory(owner=user, name="gpt-2 medium", status=Status.RUNNING)
    TrainingJobFactory(owner=other_user, name="gpt-2 theirs", status=Status.PAUSED)
    assert list(jobs_for_dashboard(user, status="paused", search=" gpt ")) == [match]
    assert jobs_for_dashboard(user, search="").count() == 2


class TestVisibility:
    def test_users_see_their_own_jobs_and_staff_see_all(self, user, other_user, staff_user):
        from django.contrib.auth.models import AnonymousUser
        from django.http import Http404

        from jobs.selectors import job_for_user, jobs_visible_to

        mine = TrainingJobFactory(owner=user)
        theirs = TrainingJobFactory(owner=other_user)
        assert list(jobs_visible_to(user)) == [mine]
        assert set(jobs_visible_to(staff_user)) == {mine, theirs}
        assert not jobs_visible_to(AnonymousUser()).exists()
        assert job_for_user(user, mine.pk) == mine
        with pytest.raises(Http404):
            job_for_user(user, theirs.pk)


def test_dashboard_list_never_loads_hyperparameters(user, django_assert_num_queries):
    TrainingJobFactory.create_batch(3, owner=user, hyperparameters={"big": "x" * 50_000})
    with django_assert_num_queries(1) as captured:
        jobs = list(jobs_for_dashboard(user))
    assert len(jobs) == 3
    assert "hyperparameters" not in captured.captured_queries[0]["sql"]
    assert all("hyperparameters" in job.get_deferred_fields() for job in jobs)
