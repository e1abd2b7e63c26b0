"""Figures the templates and their scripts share with the Python code, so that neither writes
them down a second time (charts.js and the hx-trigger attributes read them from the page)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest

from metrics.series import SERIES_MAX_POINTS


def live_updates(request: HttpRequest) -> dict[str, Any]:
    return {
        "poll_seconds": settings.TRAINMON_POLL_SECONDS,
        "series_max_points": SERIES_MAX_POINTS,
    }
