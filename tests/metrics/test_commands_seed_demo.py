from __future__ import annotations

import re
from functools import partial

import pytest
from django.core.management.base import CommandError
from django.db.models import Count, Max

from jobs.models import TrainingJob
from metrics.management.commands.seed_demo import DEMO_JOBS
from metrics.models import NamedMetric, TrainingMetric
from metrics.simulator import VAL_LOSS_KEY
from tests.support.commands import command_output
from tests.support.factories import UserFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_user(db):
    return UserFactory(username="admin", is_staff=True, is_superuser=True)


seed = partial(command_output, "seed_demo")


class TestSeedDemo:
    def test_setup_local_call_seeds_a_realistic_mix(self, admin_user):
        output = seed(owner="admin")

        jobs = list(TrainingJob.objects.annotate(points=Count("metrics"), top=Max("metrics__step")))
        assert len(jobs) == len(DEMO_JOBS)
        assert {job.owner_id for job in jobs} == {admin_user.pk}
        by_status = {status: [j for j in jobs if j.status == status] for status in Status.values}
        assert len(by_status[Status.RUNNING]) == 2
        assert len(by_status[Status.PAUSED]) == 1
        assert len(by_status[Status.COMPLETED]) == 2
        assert len(by_status[Status.FAILED]) == 1
        assert "Created 6 demo jobs" in output

        for job in jobs:
            # Every stored point is accounted for in the job's own progress fields.
            assert job.points == job.current_step
            if job.points:
                assert job.top == job.current_step - 1
            assert job.last_loss is not None and job.best_loss is not None
            assert job.hyperparameters and job.model_name and job.dataset
        for job in by_status[Status.COMPLETED]:
            assert job.current_step == job.total_steps
            assert job.finished_at is not None
            # The simulator's named series came along: validation at every epoch end.
            val_steps = NamedMetric.objects.filter(key__job=job, key__name=VAL_LOSS_KEY)
            assert val_steps.count() == job.total_epochs
        for job in by_status[Status.RUNNING] + by_status[Status.PAUSED]:
            assert 0 < job.current_step < job.total_steps
        for job in by_status[Status.RUNNING]:
            assert 200 <= job.total_steps - job.current_step <= 3000  # moves at once, for a while
            assert job.steps_per_second
        (failed,) = by_status[Status.FAILED]
        assert failed.diverge_at_step is not None
        assert failed.failure_reason == f"loss diverged at step {failed.current_step}"
        assert failed.current_step > failed.diverge_at_step

        # Small enough that `make run` starts at once.
        assert 1000 <= TrainingMetric.objects.count() <= 5000
        assert len({job.model_name for job in jobs}) == len(jobs)

    def test_more_jobs_repeat_the_mix_with_other_seeds(self, admin_user):
        seed(owner="admin", jobs=len(DEMO_JOBS) + 2)
        names = set(TrainingJob.objects.values_list("name", flat=True))
        assert f"{DEMO_JOBS[0].name} #2" in names
        assert TrainingJob.objects.values("seed").distinct().count() == len(DEMO_JOBS) + 2

    def test_few_jobs_still_show_every_state(self, admin_user):
        seed(jobs=4)  # the only superuser owns them
        assert set(TrainingJob.objects.values_list("status", flat=True)) == {
            Status.RUNNING,
            Status.COMPLETED,
            Status.FAILED,
            Status.PAUSED,
        }

    def test_unknown_owner_creates_nothing(self, admin_user):
        with pytest.raises(CommandError, match="No user 'ghost'"):
            seed(owner="ghost")
        assert not TrainingJob.objects.exists()

    def test_jobs_must_be_positive(self, admin_user):
        with pytest.raises(CommandError, match=re.escape("--jobs must be at least 1.")):
            seed(jobs=0)
        assert not TrainingJob.objects.exists()
