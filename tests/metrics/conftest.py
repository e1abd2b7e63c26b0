from __future__ import annotations

import pytest

from accounts.services import api_token_create
from jobs.models import TrainingJob
from tests.support.api import Api
from tests.support.factories import TrainingJobFactory


@pytest.fixture
def api(user) -> Api:
    return Api(api_token_create(user=user, name="test")[1])


@pytest.fixture
def other_api(other_user) -> Api:
    return Api(api_token_create(user=other_user, name="other")[1])


@pytest.fixture
def ext_job(user) -> TrainingJob:
    """A running external job of 3 epochs x 20 steps (steps 0..59)."""
    return TrainingJobFactory(owner=user, source=TrainingJob.Source.EXTERNAL)
