from __future__ import annotations

import pytest

from tests.support.artifacts import artifacts_dir  # noqa: F401 (a fixture)
from tests.support.factories import TrainingJobFactory, UserFactory
from tests.support.services import (
    CHROMIUM_PATH,
    TEST_REDIS_URL,
    chromium_available,
    missing_service,
    postgres_in_use,
    redis_available,
)


@pytest.fixture(autouse=True)
def _require_marked_services(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("postgres") and not postgres_in_use():
        missing_service(
            "postgres", "needs PostgreSQL: run with DATABASE_URL=postgres://... (see README)"
        )
    if request.node.get_closest_marker("redis") and not redis_available():
        missing_service("redis", f"needs a Redis server at {TEST_REDIS_URL}")
    if request.node.get_closest_marker("browser") and not chromium_available():
        missing_service("chromium", f"needs Chromium at {CHROMIUM_PATH} and playwright")


@pytest.fixture
def every_key_summarised(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys summarised from their first point (metrics.summary.KEY_SUMMARY_FROM), so a test's
    small series go through the key summary as a long run's keys do."""
    monkeypatch.setattr("metrics.summary.KEY_SUMMARY_FROM", 0)


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def other_user(db):
    return UserFactory()


@pytest.fixture
def staff_user(db):
    return UserFactory(is_staff=True, is_superuser=True)


@pytest.fixture
def job(user):
    return TrainingJobFactory(owner=user)


@pytest.fixture
def user_client(client, user):
    client.force_login(user)
    return client


@pytest.fixture
def staff_client(client, staff_user):
    client.force_login(staff_user)
    return client
