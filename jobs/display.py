"""How a job's figures read wherever they are shown: pages, the admin, the API and commands.

static/trainmon/relative-time.js repeats `time_ago` in the browser (it keeps the labels true
between refreshes); tests/test_jobs_templatetags.py checks that the two agree.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone
from django.utils.formats import date_format

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
EMPTY = "—"


def time_ago(moment: datetime | None, *, now: datetime | None = None) -> str:  # noqa: PLR0911
    """'just now', '42 s ago', '3 min ago', '5 h ago', '2 d ago', then the date ('4 Mar 2026')."""
    if moment is None:
        return EMPTY
    seconds = ((now or timezone.now()) - moment).total_seconds()
    if seconds < 1:
        return "just now"
    if seconds < MINUTE:
        return f"{int(seconds)} s ago"
    if seconds < HOUR:
        return f"{int(seconds // MINUTE)} min ago"
    if seconds < DAY:
        return f"{int(seconds // HOUR)} h ago"
    if seconds < WEEK:
        return f"{int(seconds // DAY)} d ago"
    return date_format(timezone.localtime(moment), "j M Y")


def progress_floor(current_step: int, total_steps: int, *, decimals: int = 1) -> float:
    """The percentage done, rounded down to `decimals`: 100 only once every step is done.

    Integer arithmetic, so 999 of 1,000 steps is exactly 99.9, never 99.89999 or 100.
    """
    if total_steps <= 0:
        return 0.0
    scale: int = 10**decimals  # int ** int is Any to mypy (a negative power is a float)
    return min(current_step * 100 * scale // total_steps, 100 * scale) / scale


def progress_label(current_step: int, total_steps: int) -> str:
    """'0%', '0.1%', '99.9%', '100%' (only when done)."""
    percent = progress_floor(current_step, total_steps)
    return f"{percent:.0f}%" if percent in (0, 100) else f"{percent:.1f}%"
