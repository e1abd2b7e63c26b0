"""How progress reads in each case: within, at, past and without a declared length."""

from __future__ import annotations

import pytest

from jobs import display
from jobs.display import Progress


@pytest.mark.parametrize(
    ("current", "total", "label", "steps_text", "width"),
    [
        (0, 200, "0%", "step 0 / 200", "0.00%"),
        (199, 200, "99.5%", "step 199 / 200", "99.50%"),
        (999, 1000, "99.9%", "step 999 / 1,000", "99.90%"),  # never 100% before the end
        (200, 200, "100%", "step 200 / 200", "100.00%"),  # 0-based steps: 0..199 done
        # 1-based steps: the last one is step 200, so 201 steps "done": still the end.
        (201, 200, "100%", "step 200 / 200", "100.00%"),
        (202, 200, "past length", "step 202 of 200 declared, past it", "100.00%"),
        (5_000, 200, "past length", "step 5,000 of 200 declared, past it", "100.00%"),
        (0, None, "0 steps", "no declared length", None),
        (1, None, "1 step", "no declared length", None),
        (1_234, None, "1,234 steps", "no declared length", None),
    ],
)
def test_progress_wording(current, total, label, steps_text, width):
    progress = Progress(current, total)
    assert progress.label == label
    assert progress.steps_text == steps_text
    assert progress.width == width
    assert display.progress_label(current, total) == label


def test_the_summary_line_and_the_bars_value_text():
    assert Progress(421, 1000).summary == "42.1% · step 421 / 1,000"
    assert Progress(421, 1000).value_text == "42.1%, step 421 of 1,000"
    assert Progress(1234, 1000).summary == "step 1,234 of 1,000 declared, past it"
    assert Progress(1234, 1000).value_text == "step 1,234 of 1,000 declared, past it"
    assert Progress(1234, None).summary == "1,234 steps · no declared length"
    assert Progress(1234, None).value_text == "1,234 steps done, no declared length"


def test_progress_floor_without_a_length_is_unknown_and_past_it_stays_100():
    assert display.progress_floor(10, None) is None
    assert display.progress_floor(10_000, 100, decimals=3) == 100.0
    assert display.progress_floor(99_999, 100_000, decimals=3) == 99.999


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "1 s"), (42, "42 s"), (125, "2 min"), (7_800, "2 h 10 min"), (3 * 86_400, "3 d")],
)
def test_duration_label(seconds, text):
    from datetime import timedelta

    assert display.duration_label(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    ("current", "label", "width"),
    [(199, "99.5%", "99.50%"), (200, "99.9%", "99.99%"), (201, "100%", "100.00%")],
)
def test_an_unfinished_external_job_is_not_100_percent_before_its_end(current, label, width):
    # 200 steps counted from 0 are 199 steps of a run numbered from 1: its last step is 200.
    progress = Progress(current, 200, open_end=True)
    assert (progress.label, progress.width) == (label, width)
    assert display.progress_floor(current, 200, decimals=3, open_end=True) < 100 or current > 200
