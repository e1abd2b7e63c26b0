from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import display
from jobs.dashboard_rows import rate_text
from jobs.models import TrainingJob
from jobs.templatetags import jobs_ui
from tests.support.factories import TrainingJobFactory


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.2, "just now"),
        (3, "3 s ago"),
        (59, "59 s ago"),
        (60, "1 min ago"),
        (3599, "59 min ago"),
        (7200, "2 h ago"),
        (3 * 86400, "3 d ago"),
    ],
)
def test_ago(seconds, expected, monkeypatch):
    now = timezone.now()
    monkeypatch.setattr(display.timezone, "now", lambda: now)  # no clock between the two reads
    assert jobs_ui.ago(now - timedelta(seconds=seconds)) == expected


def test_ago_past_a_week_is_a_date():
    moment = timezone.now() - timedelta(days=30)
    assert jobs_ui.ago(moment) == timezone.localtime(moment).strftime("%-d %b %Y")


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.2, "~1 s"),
        (44.6, "~45 s"),
        (240, "~4 min"),
        (3599, "~60 min"),
        (3600 + 600, "~1 h 10 min"),
        (7200, "~2 h"),
        (3 * 86400 + 4 * 3600, "~3 d 4 h"),
    ],
)
def test_approx_duration(seconds, expected):
    assert display.approx_duration_text(timedelta(seconds=seconds)) == expected


# The template filters, and the formats the job page's live figures use (jobs.live_figures).
NUMBER_FORMATS = {
    "loss": jobs_ui.loss,
    "sci": jobs_ui.sci,
    "rate": rate_text,
    "fraction_percent": display.percent_text,
    "hyperparameter": jobs_ui.hyperparameter,
}


@pytest.mark.parametrize(
    ("filter_name", "value", "expected"),
    [
        ("loss", None, "—"),
        ("loss", 0.412345, "0.4123"),
        ("loss", 12345.6, "1.23e+04"),
        ("loss", math.inf, "inf"),
        ("sci", 3e-4, "3.0e-4"),
        ("sci", 0.1, "0.1"),
        ("sci", 0.0, "0"),
        ("rate", 12.34, "12.3"),
        ("rate", 1234.5, "1,234"),
        ("fraction_percent", 0.8734, "87.3%"),
        ("hyperparameter", "adamw", "adamw"),
        ("hyperparameter", [1, 2], "[1, 2]"),
        ("hyperparameter", True, "true"),
    ],
)
def test_number_formats(filter_name, value, expected):
    assert NUMBER_FORMATS[filter_name](value) == expected


@pytest.mark.parametrize(
    ("step", "expected"), [(0, "0%"), (1, "0.1%"), (999, "99.9%"), (1000, "100%")]
)
def test_progress_rounds_down_so_only_done_is_100(step, expected):
    job = TrainingJobFactory.build(total_epochs=1, steps_per_epoch=1000, current_step=step)
    assert display.job_progress(job).label == expected


@pytest.mark.parametrize(
    ("status", "actions"),
    [
        (TrainingJob.Status.QUEUED, ["start", "pause", "cancel"]),
        (TrainingJob.Status.RUNNING, ["pause", "cancel"]),
        (TrainingJob.Status.PAUSED, ["resume", "cancel"]),
        (TrainingJob.Status.COMPLETED, []),
    ],
)
def test_user_actions_leave_out_the_engines_transitions(status, actions):
    assert jobs_ui.user_actions(TrainingJobFactory.build(status=status)) == actions


@pytest.mark.parametrize(
    ("current", "total", "expected"),
    [(0, 1000, "0%"), (1, 3, "33.3%"), (996, 1000, "99.6%"), (9996, 10000, "99.9%"),
     (99_999_999, 100_000_000, "99.9%"), (1000, 1000, "100%")],
)  # fmt: skip
def test_progress_label_never_rounds_up_to_done(current, total, expected):
    assert display.progress_label(current, total) == expected
