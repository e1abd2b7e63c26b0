"""The database keeps jobs consistent; the model derives progress from its fields."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

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
