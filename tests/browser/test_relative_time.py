"""static/trainmon/relative-time.js writes the same labels as jobs.display.time_ago."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from jobs import display

pytestmark = pytest.mark.browser

AGES_SECONDS = [0.2, 1, 3, 59, 60, 61, 3599, 3600, 7200, 86399, 86400, 3 * 86400, 7 * 86400 - 1]
RELATIVE_TIME_JS = Path(settings.BASE_DIR) / "static/trainmon/relative-time.js"
# The real script over <time> elements whose datetimes are the given ages before a fixed
# "now"; its timer is caught and fired once, then the labels it wrote are read back.
HARNESS = """
([now, isoTimes]) => {
    Date.now = () => now;
    for (const iso of isoTimes) {
        const element = document.createElement("time");
        element.setAttribute("datetime", iso);
        element.dataset.relative = "";
        document.body.append(element);
    }
}
"""


def test_the_browsers_relative_time_says_what_the_server_says(chromium):
    now = timezone.now().replace(microsecond=0)
    moments = [now - timedelta(seconds=seconds) for seconds in AGES_SECONDS]
    page = chromium.new_page()
    try:
        page.set_content("<!doctype html><body></body>")
        page.evaluate("() => { window.setInterval = (callback) => { window.__tick = callback; }; }")
        page.evaluate(
            HARNESS,
            [now.timestamp() * 1000, [m.isoformat(timespec="milliseconds") for m in moments]],
        )
        page.add_script_tag(content=RELATIVE_TIME_JS.read_text())
        labels = page.evaluate(
            "() => { window.__tick(); return [...document.querySelectorAll('time')]"
            ".map((element) => element.textContent); }"
        )
    finally:
        page.close()
    assert labels == [display.time_ago(moment, now=now) for moment in moments]
