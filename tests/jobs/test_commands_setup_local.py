from __future__ import annotations

import pytest

from jobs.models import TrainingJob
from metrics.management.commands.seed_demo import DEMO_JOBS
from tests.support.commands import command_outputs
from tests.support.factories import UserFactory


@pytest.fixture
def admin_user(db):
    return UserFactory(username="admin", is_staff=True, is_superuser=True)


def test_setup_local_seeds_an_empty_database(admin_user):
    command_outputs("setup_local")
    assert TrainingJob.objects.filter(owner=admin_user).count() == len(DEMO_JOBS)
