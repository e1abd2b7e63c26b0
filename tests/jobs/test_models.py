"""The database keeps jobs consistent; the model derives progress from its fields."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.db.models.signals import post_init

from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "fields",
    [
        {"total_epochs": 0},
        {"steps_per_epoch": 0},
        {"steps_per_tick": 0},
        {"initial_loss": 0.1, "final_loss": 0.2},
        {"name": ""},
        {"status": "exploded"},
        {"current_step": 61},  # 3 epochs x 20 steps
    ],
)
def test_the_database_rejects_inconsistent_jobs(user, fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingJobFactory(owner=user, **fields)


def test_progress_properties(user):
    job = TrainingJobFactory(owner=user, total_epochs=4, steps_per_epoch=25, current_step=30)
    assert job.total_steps == 100
    assert job.progress_percent == 30.0
    assert job.current_epoch == 2
    assert TrainingJob.objects.get(pk=job.pk).is_active


# --- open-ended external runs (issue 12) --------------------------------------------------------

External = TrainingJob.Source.EXTERNAL


@pytest.mark.parametrize(
    "fields",
    [
        {"total_epochs": None, "steps_per_epoch": None},  # a simulated job needs its length
        {"total_epochs": None},  # both or neither
        {"steps_per_epoch": None, "source": External},
    ],
)
def test_the_database_rejects_a_missing_or_half_length(user, fields):
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingJobFactory(owner=user, **fields)


def test_an_external_job_may_run_past_its_declared_length_or_have_none(user):
    past = TrainingJobFactory(owner=user, source=External, current_step=1_000)  # 60 declared
    open_ended = TrainingJobFactory(
        owner=user, source=External, total_epochs=None, steps_per_epoch=None, current_step=7
    )
    assert TrainingJob.objects.filter(pk__in=[past.pk, open_ended.pk]).count() == 2


def test_progress_properties_without_a_declared_length(user):
    job = TrainingJobFactory(
        owner=user,
        source=External,
        total_epochs=None,
        steps_per_epoch=None,
        current_step=1_234,
        steps_per_second=10.0,
    )
    assert job.total_steps is None
    assert job.progress_percent is None
    assert job.current_epoch is None
    assert job.eta is None  # running with a rate, but nothing to count down to
    assert job.epoch_at(500) is None
    assert job.elapsed is not None


def test_past_the_declared_length_the_bar_is_full_and_there_is_no_eta(user):
    job = TrainingJobFactory(owner=user, source=External, current_step=90, steps_per_second=5.0)
    assert job.total_steps == 60
    assert job.progress_percent == 100.0
    assert job.current_epoch == 3  # the last declared epoch
    assert job.eta is None


def test_the_eta_counts_down_within_the_declared_length(user):
    job = TrainingJobFactory(owner=user, source=External, current_step=50, steps_per_second=5.0)
    assert job.eta.total_seconds() == 2.0


@pytest.mark.parametrize(("step", "epoch"), [(0, 1), (19, 1), (20, 2), (59, 3), (60, 4), (200, 11)])
def test_a_points_epoch_is_derived_from_the_declared_length_but_not_capped(user, step, epoch):
    job = TrainingJobFactory.build(owner=user, total_epochs=3, steps_per_epoch=20)
    assert job.epoch_at(step) == epoch


def test_the_simulators_length_is_ints_or_an_error(user):
    assert TrainingJobFactory.build(total_epochs=3, steps_per_epoch=20).simulation_length == (
        60,
        20,
    )
    job = TrainingJobFactory.build(source=External, total_epochs=None, steps_per_epoch=None)
    with pytest.raises(ValueError, match="no declared length"):
        job.simulation_length  # noqa: B018


@pytest.mark.parametrize("deferred", [("description", "hyperparameters"), ("owner", "tags")])
def test_a_job_loaded_with_fields_deferred_has_every_other_field_in_place(user, deferred):
    job = TrainingJobFactory(
        owner=user, description="about", hyperparameters={"lr": 0.1}, tags={"team": "nlp"}
    )
    partial = TrainingJob.objects.defer(*deferred).get(pk=job.pk)
    assert partial.get_deferred_fields() == {
        TrainingJob._meta.get_field(name).attname for name in deferred
    }
    full = TrainingJob.objects.get(pk=job.pk)
    for field in TrainingJob._meta.concrete_fields:
        # A deferred one is read on first use.
        assert getattr(partial, field.attname) == getattr(full, field.attname), field.name


def test_a_loaded_job_is_saved_and_related_as_one_built_by_its_constructor(user):
    # Loading skips Model.__init__ (jobs/models.py, from_db): the instance must behave as a
    # constructed one does.
    job = TrainingJobFactory(owner=user, name="before")
    loaded = TrainingJob.objects.defer("description").get(pk=job.pk)
    assert (loaded._state.adding, loaded._state.db) == (False, "default")
    assert loaded.owner == user  # the foreign key resolves from owner_id
    loaded.name = "after"
    loaded.save(update_fields=["name"])
    assert TrainingJob.objects.get(pk=job.pk).name == "after"
    assert loaded == job and hash(loaded) == hash(job)


def test_a_post_init_receiver_still_sees_every_loaded_job(user):
    job = TrainingJobFactory(owner=user)
    seen: list[tuple[int, bool]] = []

    def receiver(sender: type[TrainingJob], instance: TrainingJob, **kwargs: object) -> None:
        seen.append((instance.pk, instance._state.adding))

    post_init.connect(receiver, sender=TrainingJob)
    try:
        loaded = TrainingJob.objects.defer("tags").get(pk=job.pk)
    finally:
        post_init.disconnect(receiver, sender=TrainingJob)
    # Django sends post_init before from_db marks the instance loaded.
    assert seen == [(job.pk, True)]
    assert loaded._state.adding is False
