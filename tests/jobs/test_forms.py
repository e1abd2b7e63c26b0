from __future__ import annotations

import json
import math

import pytest
from django.db import transaction
from django.db.models import FloatField, QuerySet
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from jobs.forms import JobCreateForm
from jobs.models import TrainingJob
from jobs.services import JOB_BOUNDS, MAX_TOTAL_STEPS, Bound
from metrics.models import MetricSummary, TrainingMetric
from metrics.services import simulation_advance
from tests.support.job_bounds import BOUND_REFUSALS

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


# --- bounds: the service's, with its messages -----------------------------------------------


@pytest.mark.parametrize(("field", "value", "message"), BOUND_REFUSALS)
def test_each_bound_is_refused_with_the_services_message(user, field, value, message):
    form, job = create(user, **{field: value})
    assert job is None
    assert form.errors[field] == [message]
    assert not TrainingJob.objects.exists()


def test_the_fields_show_the_services_limits(user):
    html = str(JobCreateForm()["initial_loss"]) + str(JobCreateForm()["steps_per_tick"])
    assert 'min="0.001"' in html and 'max="1000000.0"' in html
    assert 'max="10000"' in html


def test_hyperparameters_have_a_size_limit(user, settings):
    settings.TRAINMON_HYPERPARAMETERS_MAX_BYTES = 100
    form, job = create(user, hyperparameters=json.dumps({"notes": "x" * 100}))
    assert job is None
    assert form.errors["hyperparameters"] == [
        "Hyperparameters can be at most 100 bytes of JSON; these are 112."
    ]
    _, job = create(user, hyperparameters=json.dumps({"notes": "x" * 80}))
    assert job is not None


def test_the_default_hyperparameters_limit_is_64_kib(user):
    form, job = create(user, hyperparameters=json.dumps({"notes": "x" * 64 * 1024}))
    assert job is None
    assert "at most 65,536 bytes" in form.errors["hyperparameters"][0]


# --- whatever the form accepts, the engine can run ------------------------------------------


def _in_range(bound: Bound) -> st.SearchStrategy[str]:
    """What a person may type inside the bound (hypothesis tries its edges first)."""
    if bound.integer:
        return st.integers(bound.minimum, min(bound.maximum, 50)).map(str) | st.integers(
            bound.minimum, bound.maximum
        ).map(str)
    return st.floats(bound.minimum, bound.maximum, exclude_min=bound.exclusive_minimum).map(repr)


# Anything at all, for a field or two: past the edges, absurd, or not a number.
WILD = st.one_of(
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(["1.7e308", "1e308", "5e-324", "-0.0", "-1", "0", "1e309", "nan", "x"]),
)
OPTIONAL = ("decay_rate", "seed", "warmup_steps", "diverge_at_step")
IN_RANGE = st.fixed_dictionaries(
    {
        "total_epochs": st.integers(1, 4).map(str) | _in_range(JOB_BOUNDS["total_epochs"]),
        "steps_per_epoch": st.integers(1, 400).map(str) | _in_range(JOB_BOUNDS["steps_per_epoch"]),
        **{
            field: _in_range(JOB_BOUNDS[field])
            for field in ("steps_per_tick", "initial_loss", "final_loss", "base_learning_rate")
        },
        **{field: st.just("") | _in_range(JOB_BOUNDS[field]) for field in OPTIONAL},
    }
)
TICKS = 3


@hypothesis_settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    numbers=IN_RANGE, wild=st.dictionaries(st.sampled_from(sorted(JOB_BOUNDS)), WILD, max_size=2)
)
def test_every_job_the_form_accepts_ticks_with_finite_values(user, numbers, wild):
    with transaction.atomic():
        form, job = create(user, **(numbers | wild))
        event("accepted" if job else "refused")
        if job is None:
            assert form.errors
            assert not TrainingJob.objects.exists()
        else:
            for _ in range(TICKS):
                simulation_advance(job_ids=[job.pk])
            job.refresh_from_db()
            done = min(TICKS * job.steps_per_tick, job.total_steps)
            if job.diverge_at_step is None or job.diverge_at_step >= done:
                assert job.current_step == done
            for name in ("last_loss", "best_loss", "last_accuracy", "last_learning_rate"):
                value = getattr(job, name)
                assert value is None or math.isfinite(value), (name, value)
            assert_all_finite(TrainingMetric.objects.filter(job=job))
            assert_all_finite(MetricSummary.objects.filter(job=job))
        transaction.set_rollback(True)


def assert_all_finite(rows: QuerySet) -> None:
    names = [f.name for f in rows.model._meta.concrete_fields if isinstance(f, FloatField)]
    for row in rows.values_list(*names):
        values = dict(zip(names, row, strict=True))
        assert all(value is None or math.isfinite(value) for value in row), values
