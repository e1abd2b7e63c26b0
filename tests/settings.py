"""The project's settings in local mode (plain HTTP on loopback), as `make run` uses them."""

import os

os.environ.setdefault("TRAINMON_LOCAL", "1")
os.environ.setdefault("TRAINMON_TICK_SECONDS", "1")

from trainmon.settings import *  # noqa: F403
from trainmon.settings import STORAGES

# Tests render templates without running collectstatic first.
STORAGES = {
    **STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
