"""Which outside services this machine has, for tests that need the real thing.

On a fresh machine a missing service skips its tests with the reason. CI lists the services it
provides in TRAINMON_REQUIRE_SERVICES (e.g. "postgres,redis,chromium"); there a missing one
fails the test instead, so a green CI run always means the real service was exercised.
"""

from __future__ import annotations

import os
import shutil
import socket
from functools import cache
from urllib.parse import urlparse

import pytest

CHROMIUM_PATH = os.environ.get("TRAINMON_CHROMIUM", "/usr/bin/chromium")
# Tests get their own Redis database so they never read the app's (or an old run's) queue.
TEST_REDIS_URL = os.environ.get("TRAINMON_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


def required_services() -> set[str]:
    return {s.strip() for s in os.environ.get("TRAINMON_REQUIRE_SERVICES", "").split(",") if s}


@cache
def redis_available() -> bool:
    url = urlparse(TEST_REDIS_URL)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 6379), timeout=1):
            return True
    except OSError:
        return False


@cache
def chromium_available() -> bool:
    if not (os.path.exists(CHROMIUM_PATH) or shutil.which(CHROMIUM_PATH)):
        return False
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def postgres_in_use() -> bool:
    from django.db import connection

    return connection.vendor == "postgresql"


def missing_service(service: str, reason: str) -> None:
    """Skip, or fail where CI promised the service."""
    if service in required_services():
        pytest.fail(f"{reason} (CI requires {service})", pytrace=False)
    pytest.skip(reason)
