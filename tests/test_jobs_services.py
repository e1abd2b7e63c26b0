from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from jobs import services
from jobs.models import TrainingJob
from jobs.services import JobTransitionError
from tests.factories import TrainingJobFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


def create(user, **overrides):
    fields = {"owner": user, "name": "bert-base", "total_epochs": 4, "steps_per_epoch": 250}
    return services.job_create(**(fields | overrides))


class TestJobCreate:
    def test_defaults_span_the_job_and_start_it(self, user):
        job = create(user)
        assert job.pk is not None
        assert job.status == Status.RUNNING
        assert job.started_at is not None
        assert job.total_steps == 1000
        assert job.decay_rate == pytest.approx(5.0 / 1000)
        assert job.warmup_steps == 50
        assert 0 <= job.seed < 2**63

    def test_start_false_leaves_it_queued(self, user):
        job = create(user, start=False)
        assert job.status == Status.QUEUED
        assert job.started_at is None

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"name": "  "}, "name"),
            ({"total_epochs": 0}, "total_epochs"),
            ({"steps_per_epoch": -3}, "steps_per_epoch"),
            ({"steps_per_tick": 0}, "steps_per_tick"),
            ({"initial_loss": 0.2, "final_loss": 0.3}, "final_loss"),
            ({"initial_loss": 0.3, "final_loss": 0.3}, "final_loss"),
            ({"final_loss": -1.0}, "final_loss"),
            ({"initial_loss": float("nan")}, "initial_loss"),
            ({"decay_rate": 0.0}, "decay_rate"),
            ({"seed": -1}, "seed"),
            ({"hyperparameters": [1, 2]}, "hyperparameters"),
            ({"total_epochs": 10_001}, "total_epochs"),
            ({"total_epochs": 10_000, "steps_per_epoch": 1_000_000}, "steps_per_epoch"),
            ({"steps_per_tick": 10_001}, "steps_per_tick"),
        ],
    )
    def test_bad_input_names_the_field_and_writes_nothing(self, user, overrides, field):
        with pytest.raises(ValidationError) as error:
            create(user, **overrides)
        assert field in error.value.message_dict
        assert not TrainingJob.objects.exists()


class TestTransitions:
    def test_pause_resume_cancel(self, job):
        services.job_pause(job=job)
        assert job.status == Status.PAUSED
        services.job_resume(job=job)
        assert job.status == Status.RUNNING
        services.job_cancel(job=job)
        assert job.status == Status.CANCELLED
        assert job.finished_at is not None

    def test_start_sets_started_at_once(self, user):
        job = create(user, start=False)
        services.job_start(job=job)
        assert job.status == Status.RUNNING
        started = job.started_at
        services.job_pause(job=job)
        services.job_resume(job=job)
        assert job.started_at == started

    def test_fail_keeps_the_reason(self, job):
        services.job_fail(job=job, reason="CUDA out of memory")
        job.refresh_from_db()
        assert job.status == Status.FAILED
        assert job.failure_reason == "CUDA out of memory"

    @pytest.mark.parametrize("terminal", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
    @pytest.mark.parametrize("action", ["start", "pause", "resume", "cancel", "complete", "fail"])
    def test_terminal_jobs_never_move(self, user, terminal, action):
        job = TrainingJobFactory(owner=user, status=terminal)
        with pytest.raises(JobTransitionError, match=f"Cannot {action}"):
            services.job_transition(job=job, action=action)
        job.refresh_from_db()
        assert job.status == terminal

    def test_the_database_status_decides_not_the_stale_instance(self, job):
        stale = TrainingJob.objects.get(pk=job.pk)
        services.job_cancel(job=job)
        with pytest.raises(JobTransitionError):
            services.job_pause(job=stale)
        assert stale.status == Status.CANCELLED

    def test_allowed_actions_follow_the_table(self, user):
        assert services.job_allowed_actions(job=TrainingJobFactory(owner=user)) == [
            "pause",
            "cancel",
            "complete",
            "fail",
        ]
        paused = TrainingJobFactory(owner=user, status=Status.PAUSED)
        assert "resume" in services.job_allowed_actions(job=paused)
        done = TrainingJobFactory(owner=user, status=Status.COMPLETED)
        assert services.job_allowed_actions(job=done) == []


class TestVisibility:
    def test_users_see_their_own_jobs_and_staff_see_all(self, user, other_user, staff_user):
        from django.contrib.auth.models import AnonymousUser
        from django.http import Http404

        from jobs.selectors import job_get_visible, job_list_visible

        mine = TrainingJobFactory(owner=user)
        theirs = TrainingJobFactory(owner=other_user)
        assert list(job_list_visible(user=user)) == [mine]
        assert set(job_list_visible(user=staff_user)) == {mine, theirs}
        assert not job_list_visible(user=AnonymousUser()).exists()
        assert job_get_visible(user=user, job_id=mine.pk) == mine
        with pytest.raises(Http404):
            job_get_visible(user=user, job_id=theirs.pk)


def nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


class TestStorableValues:
    """job_create refuses what a database would refuse later, whoever calls it."""

    @pytest.mark.parametrize(
        ("overrides", "field"),
        [
            ({"name": "bad\x00name"}, "name"),
            ({"description": "lone \ud800 surrogate"}, "description"),
            ({"model_name": "\x00"}, "model_name"),
            ({"hyperparameters": {"lr": float("nan")}}, "hyperparameters"),
            ({"hyperparameters": {"note": "a\x00b"}}, "hyperparameters"),
            ({"hyperparameters": {"k\x00": 1}}, "hyperparameters"),
            ({"hyperparameters": {"deep": nested(20)}}, "hyperparameters"),
        ],
    )
    def test_unstorable_values_are_refused_with_the_field(self, user, overrides, field):
        with pytest.raises(ValidationError) as error:
            create(user, **overrides)
        assert field in error.value.message_dict
        assert not TrainingJob.objects.exists()

    def test_unicode_that_stores_is_kept(self, user):
        job = create(user, name="résnet ✓ 训练", hyperparameters={"λ": [1, {"ok": "✓"}]})
        job.refresh_from_db()
        assert job.name == "résnet ✓ 训练"
        assert job.hyperparameters == {"λ": [1, {"ok": "✓"}]}


def test_job_build_validates_without_writing(user):
    job = services.job_build(owner=user, name="dry", total_epochs=2, steps_per_epoch=10)
    assert job.pk is None
    assert job.decay_rate == pytest.approx(5.0 / 20)
    assert not TrainingJob.objects.exists()
    with pytest.raises(ValidationError):
        services.job_build(owner=user, name="dry", total_epochs=0, steps_per_epoch=10)
