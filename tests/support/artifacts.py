"""Artifacts stored under the test's own folder: the app's STORAGES["artifacts"], replaced."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def artifacts_dir(settings, tmp_path) -> Path:
    folder = tmp_path / "artifacts"
    settings.STORAGES = {
        **settings.STORAGES,
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(folder), "allow_overwrite": True},
        },
    }
    return folder
