from __future__ import annotations

import math

import pytest
from django.core.exceptions import ValidationError

from jobs import services
from jobs.models import TrainingJob
from jobs.services import JOB_BOUNDS, JobTransitionError
from tests.support.factories import TrainingJobFactory
from tests.support.job_bounds import BOUND_REFUSALS

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


class TestBounds:
    @pytest.mark.parametrize(("field", "value", "message"), BOUND_REFUSALS)
    def test_each_bound_is_refused_with_its_message(self, user, field, value, message):
        number = int(value) if JOB_BOUNDS[field].integer else float(value)
        with pytest.raises(ValidationError) as error:
            create(user, **{field: number})
        assert error.value.message_dict[field] == [message]
        assert not TrainingJob.objects.exists()

    @pytest.mark.parametrize(
        "overrides",
        [
            {"initial_loss": 1.7e308},  # the summary's loss sums overflowed to inf
            {"base_learning_rate": 1e308},  # the schedule grew to Infinity, written into jsonb
            {"initial_loss": 1e6 + 1},
            {"decay_rate": 5e-324, "initial_loss": float("inf")},
            {"seed": True},
            {"warmup_steps": 2**31},  # past PostgreSQL's integer column
            {"seed": 10**400},  # past any float, too
            {"initial_loss": 10**400},
        ],
    )
    def test_values_that_would_overflow_downstream_are_refused(self, user, overrides):
        with pytest.raises(ValidationError):
            create(user, **overrides)

    def test_the_edges_are_accepted(self, user):
        job = create(
            user,
            initial_loss=1e6,
            final_loss=0.0,
            decay_rate=10.0,
            base_learning_rate=10.0,
            warmup_steps=100_000_000,
            diverge_at_step=100_000_000,
            seed=2**63 - 1,
            steps_per_tick=10_000,
        )
        job.refresh_from_db()
        assert (job.initial_loss, job.base_learning_rate, job.seed) == (1e6, 10.0, 2**63 - 1)

    def test_hyperparameters_size_is_a_setting(self, user, settings):
        settings.TRAINMON_HYPERPARAMETERS_MAX_BYTES = 20
        with pytest.raises(ValidationError) as error:
            create(user, hyperparameters={"optimizer": "adamw-8bit"})
        assert error.value.message_dict["hyperparameters"] == [
            "Hyperparameters can be at most 20 bytes of JSON; these are 26."
        ]
        assert create(user, hyperparameters={"lr": 0.1}).hyperparameters == {"lr": 0.1}


class TestJobUpdate:
    def test_writes_only_the_given_columns(self, job):
        TrainingJob.objects.filter(pk=job.pk).update(current_step=30)  # a tick since the read
        services.job_update(job=job, data={"name": "  renamed  ", "steps_per_tick": 20})
        job.refresh_from_db()
        assert (job.name, job.steps_per_tick, job.current_step) == ("renamed", 20, 30)

    @pytest.mark.parametrize(
        ("data", "field"),
        [
            ({"steps_per_tick": 10_001}, "steps_per_tick"),
            ({"name": " "}, "name"),
            ({"hyperparameters": [1]}, "hyperparameters"),
            ({"description": "a\x00b"}, "description"),
            ({"initial_loss": 3.0}, "initial_loss"),  # a curve in flight is not rewritten
            ({"status": "completed"}, "status"),
        ],
    )
    def test_refuses_what_a_new_job_would_not_get(self, job, data, field):
        before = TrainingJob.objects.values().get(pk=job.pk)
        with pytest.raises(ValidationError) as error:
            services.job_update(job=job, data=data)
        assert field in error.value.message_dict
        assert TrainingJob.objects.values().get(pk=job.pk) == before


class TestActionTable:
    def test_user_actions_are_the_tables_and_in_button_order(self):
        assert services.USER_ACTIONS == ("start", "pause", "resume", "cancel")
        assert {name: action.past_tense for name, action in services.JOB_ACTIONS.items()} == {
            "start": "started",
            "pause": "paused",
            "resume": "resumed",
            "cancel": "cancelled",
            "complete": "completed",
            "fail": "failed",
        }

    def test_users_are_offered_only_their_actions(self, user):
        job = TrainingJobFactory(owner=user)
        assert services.job_allowed_actions(job=job, by_users=True) == ["pause", "cancel"]


# --- open-ended external runs (issue 12) --------------------------------------------------------


def write_points(job, steps, *, epochs=None):
    """Store headline points through the one write path, as the API does."""
    import numpy as np
    from django.db import transaction

    from metrics.points import MetricBatch
    from metrics.services import metric_batches_write

    steps = np.asarray(steps, dtype=np.int64)
    batch = MetricBatch(
        steps=steps,
        epochs=np.asarray(epochs if epochs is not None else [1] * len(steps), dtype=np.int64),
        losses=np.linspace(2.0, 1.0, len(steps)),
        accuracies=np.full(len(steps), np.nan),
        learning_rates=np.full(len(steps), np.nan),
    )
    with transaction.atomic():
        [locked] = services.jobs_lock([job.pk])
        [result] = metric_batches_write([(locked, batch)])
    job.refresh_from_db()
    return result


class TestOpenEndedJobs:
    def test_an_external_job_may_leave_out_its_length(self, user):
        job = create(
            user, source=TrainingJob.Source.EXTERNAL, total_epochs=None, steps_per_epoch=None
        )
        job.refresh_from_db()
        assert (job.total_epochs, job.steps_per_epoch, job.total_steps) == (None, None, None)
        assert job.status == Status.RUNNING
        assert job.decay_rate > 0  # never used, but the column needs a value
        assert job.warmup_steps == 0

    def test_a_simulated_job_needs_its_length(self, user):
        with pytest.raises(ValidationError) as error:
            create(user, total_epochs=None, steps_per_epoch=None)
        assert error.value.message_dict == {
            "total_epochs": ["A simulated job needs total epochs."],
            "steps_per_epoch": ["A simulated job needs steps per epoch."],
        }
        assert not TrainingJob.objects.exists()

    @pytest.mark.parametrize("missing", ["total_epochs", "steps_per_epoch"])
    def test_an_external_job_gives_both_or_neither(self, user, missing):
        with pytest.raises(ValidationError) as error:
            create(user, source=TrainingJob.Source.EXTERNAL, **{missing: None})
        assert error.value.message_dict == {
            missing: [
                "Give both total_epochs and steps_per_epoch, or neither (a run of unknown length)."
            ]
        }
        assert not TrainingJob.objects.exists()

    def test_points_of_a_job_without_length_are_stored_and_counted(self, user):
        job = create(
            user, source=TrainingJob.Source.EXTERNAL, total_epochs=None, steps_per_epoch=None
        )
        result = write_points(job, range(1, 501))  # numbered from 1
        assert result.created == 500
        assert job.current_step == 501
        assert job.status == Status.RUNNING
        assert job.progress_percent is None

    @pytest.mark.parametrize(
        ("first", "before_last", "label"), [(0, "99.5%", "99.9%"), (1, "99.9%", "100%")]
    )
    def test_steps_numbered_from_0_or_1_both_end_at_the_declared_length(
        self, user, first, before_last, label
    ):
        # 5 epochs x 40 steps: 0..199 or 1..200, the numpy script.
        job = create(user, source=TrainingJob.Source.EXTERNAL, total_epochs=5, steps_per_epoch=40)
        assert write_points(job, range(first, first + 199)).created == 199
        from jobs.display import job_progress

        assert job_progress(job).label == before_last  # not 100% before the end
        assert write_points(job, [first + 199]).created == 1  # the last one is stored
        assert job.metrics.count() == 200
        # 0-based: every declared step is in, but the script may number from 1 and send one
        # more: 100% once it finishes the job (or sends it).
        assert job_progress(job).label == label
        assert job.status == Status.RUNNING  # an external job ends when its script says so
        services.job_complete(job=job)
        assert job_progress(job).label == "100%"

    def test_points_past_the_declared_length_are_stored(self, user):
        job = create(user, source=TrainingJob.Source.EXTERNAL, total_epochs=1, steps_per_epoch=10)
        assert write_points(job, range(25)).created == 25
        assert job.current_step == 25
        assert job.metrics.count() == 25
        assert job.status == Status.RUNNING
        from jobs.display import job_progress

        assert job_progress(job).steps_text == "step 25 of 10 declared, past it"


def test_recorded_progress_is_what_the_jobs_hold_in_memory(user):
    from datetime import UTC, datetime

    from django.db import transaction

    from jobs.services import BatchSummary, jobs_lock, jobs_record_progress

    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    ids = [
        TrainingJobFactory(owner=user, total_epochs=1, steps_per_epoch=10).pk,
        TrainingJobFactory(owner=user, total_epochs=2, steps_per_epoch=10).pk,
        TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL).pk,
    ]
    with transaction.atomic():
        finishing, diverging, named_only = jobs_lock(ids)
        jobs_record_progress(
            [
                # The last step: completed, its rate from the time since the last report.
                BatchSummary(finishing, 9, 0.5, 0.75, math.inf, 0.4, 7),
                BatchSummary(diverging, 2, 1.5, None, None, 1.2, 1, diverged_at_step=3),
                # Named points only: no loss yet, so no best loss step (NULL).
                BatchSummary(named_only, named_max_step=41, first_key="val/ünï 'q'"),
            ],
            now=now,
            tick=77,
        )
    # Every column the UPDATE writes.
    figures = ("current_step", "last_loss", "best_loss", "best_loss_step", "last_accuracy")
    rates = ("last_learning_rate", "steps_per_second", "ingest_seq", "last_tick")
    texts_and_times = ("status", "failure_reason", "primary_metric", "finished_at")
    fields = [*figures, *rates, *texts_and_times, "last_reported_at"]
    for job in (finishing, diverging, named_only):
        stored = TrainingJob.objects.values(*fields).get(pk=job.pk)
        assert stored == {field: getattr(job, field) for field in fields}
    assert (finishing.status, finishing.finished_at, finishing.last_learning_rate) == (
        Status.COMPLETED,
        now,
        math.inf,
    )
    assert (diverging.status, diverging.failure_reason) == (
        Status.FAILED,
        "loss diverged at step 3",
    )
    assert (named_only.best_loss_step, named_only.last_accuracy) == (None, None)
    assert (named_only.current_step, named_only.primary_metric) == (42, "val/ünï 'q'")
