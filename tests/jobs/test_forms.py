from __future__ import annotations

import pytest

from jobs.forms import JobCreateForm
from jobs.models import TrainingJob
from jobs.services import MAX_TOTAL_STEPS

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db

ESSENTIALS = {
    "name": "bert-base",
    "total_epochs": "4",
    "steps_per_epoch": "250",
    "steps_per_tick": "10",
    "start": "on",
    "initial_loss": "2.5",
    "final_loss": "0.3",
    "base_learning_rate": "0.001",
}


def create(user, **overrides):
    form = JobCreateForm(ESSENTIALS | overrides)
    return form, form.create_job(owner=user)


def test_essentials_create_a_running_job_with_the_services_defaults(user):
    form, job = create(user)
    assert form.errors == {}
    assert job.owner == user
    assert job.status == Status.RUNNING
    assert job.total_steps == 1000
    assert job.decay_rate == pytest.approx(5.0 / 1000)  # blank decay spans the job
    assert job.warmup_steps == 50
    assert job.hyperparameters == {}
    assert job.diverge_at_step is None


def test_unticked_start_leaves_the_job_queued(user):
    data = dict(ESSENTIALS)
    del data["start"]
    job = JobCreateForm(data).create_job(owner=user)
    assert job.status == Status.QUEUED


def test_advanced_values_reach_the_job(user):
    _, job = create(
        user,
        seed="42",
        decay_rate="0.01",
        warmup_steps="7",
        diverge_at_step="300",
        model_name="bert-base-uncased",
        dataset="sst2",
        description="baseline",
        hyperparameters='{"batch_size": 32, "optimizer": "adamw"}',
    )
    assert (job.seed, job.decay_rate, job.warmup_steps, job.diverge_at_step) == (42, 0.01, 7, 300)
    assert (job.model_name, job.dataset, job.description) == (
        "bert-base-uncased",
        "sst2",
        "baseline",
    )
    assert job.hyperparameters == {"batch_size": 32, "optimizer": "adamw"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "   "}, "name"),
        ({"total_epochs": "0"}, "total_epochs"),
        ({"steps_per_epoch": "abc"}, "steps_per_epoch"),
        ({"steps_per_tick": "-1"}, "steps_per_tick"),
        ({"initial_loss": "inf"}, "initial_loss"),
        ({"final_loss": "nan"}, "final_loss"),
        ({"seed": "-5"}, "seed"),
        ({"hyperparameters": "{not json"}, "hyperparameters"),
        ({"hyperparameters": "[1, 2]"}, "hyperparameters"),
    ],
)
def test_bad_input_is_an_error_on_its_field(user, overrides, field):
    form, job = create(user, **overrides)
    assert job is None
    assert field in form.errors
    assert not TrainingJob.objects.exists()


def test_the_services_rules_are_mapped_onto_fields(user):
    # The form has no rule for losses; job_create has, and its message lands on the field.
    form, job = create(user, initial_loss="0.2", final_loss="0.3")
    assert job is None
    assert form.errors["final_loss"] == ["The final loss must be lower than the initial loss."]
    assert form.advanced_has_errors
    assert not TrainingJob.objects.exists()


def test_decay_rate_must_be_positive(user):
    form, job = create(user, decay_rate="0")
    assert job is None
    assert "decay_rate" in form.errors


def test_too_many_steps_in_all(user):
    form, job = create(user, total_epochs="10000", steps_per_epoch=str(MAX_TOTAL_STEPS // 1000))
    assert job is None
    assert "steps in all" in form.errors["steps_per_epoch"][0]


def test_essential_errors_leave_advanced_closed(user):
    form, _ = create(user, total_epochs="0")
    assert not form.advanced_has_errors


def test_values_are_kept_on_error(user):
    form, _ = create(user, total_epochs="0", name="kept")
    assert 'value="kept"' in str(form["name"])
    assert 'value="0"' in str(form["total_epochs"])


def test_unbound_form_creates_nothing(user):
    assert JobCreateForm().create_job(owner=user) is None
    assert not TrainingJob.objects.exists()
