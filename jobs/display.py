"""How a job's figures read wherever they are shown: pages, the admin, the API and commands.

static/trainmon/relative-time.js repeats `time_ago` in the browser (it keeps the labels true
between refreshes); tests/test_jobs_templatetags.py checks that the two agree.

Progress (`job_progress`) has four cases, since a declared length is a hint, never a limit:

- within the declared length: the percentage, rounded down ("99.9%", never 100 early), and
  "step 421 / 1,000", with an ETA;
- at it: "100%" once the declared steps are done. A script numbering its steps from 1 ends
  on step M, one past a 0-based count of M, so one step of slack still counts as "at it" and
  reads "step M / M". The other way round, M steps counted from 0 are M - 1 steps of a
  1-based run: an unfinished external job (`open_end`) at exactly M reads "99.9%" until its
  script finishes it or sends one more step, so neither numbering shows 100% before the end;
- past it (more than one step over): the bar stays full and reads "step 1,234 of 1,000
  declared, past it"; no ETA;
- no declared length: "1,234 steps", the rate and the elapsed time, and an indeterminate bar
  (role=progressbar without aria-valuenow); no percentage, no ETA.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.utils import timezone
from django.utils.formats import date_format

if TYPE_CHECKING:
    from jobs.models import TrainingJob

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
EMPTY = "—"
# Figures below this are shown in scientific notation (learning rates).
SCIENTIFIC_BELOW = 1e-2


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


def duration_label(duration: timedelta) -> str:
    """A span as people say it: '45 s', '4 min', '2 h 10 min', '3 d 4 h'."""
    seconds = max(duration.total_seconds(), 0)
    if seconds < MINUTE:
        return f"{max(round(seconds), 1)} s"
    if seconds < HOUR:
        return f"{round(seconds / MINUTE)} min"
    if seconds < DAY:
        hours, minutes = divmod(round(seconds / MINUTE), 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(round(seconds / HOUR), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def approx_duration_text(duration: timedelta | None) -> str:
    """An ETA as people say it: '~45 s', '~4 min', '~2 h 10 min', '~3 d 4 h'."""
    return EMPTY if duration is None else f"~{duration_label(duration)}"


def duration_text(duration: timedelta | None) -> str:
    """An elapsed time: '45 s', '4 min', '2 h 10 min'."""
    return EMPTY if duration is None else duration_label(duration)


def percent_text(value: float | None) -> str:
    """An accuracy in [0, 1] as a percentage: '87.5%'."""
    return EMPTY if value is None else f"{100 * value:.1f}%"


def sci_text(value: float | None) -> str:
    """Learning rates: '3.0e-4' for small ones, plain digits otherwise."""
    if value is None:
        return EMPTY
    if value == 0 or abs(value) >= SCIENTIFIC_BELOW:
        return f"{value:.4g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def progress_floor(
    current_step: int, total_steps: int | None, *, decimals: int = 1, open_end: bool = False
) -> float | None:
    """The percentage done, rounded down to `decimals`: 100 only once every step is done.

    Integer arithmetic, so 999 of 1,000 steps is exactly 99.9, never 99.89999 or 100. Past
    the declared length it stays 100; None without a declared length. `open_end`: the job
    ends when its script says so (see the module's docstring), so exactly at the declared
    length it is one unit short of 100.
    """
    if total_steps is None:
        return None
    if total_steps <= 0:
        return 0.0
    scale: int = 10**decimals  # int ** int is Any to mypy (a negative power is a float)
    value = min(current_step * 100 * scale // total_steps, 100 * scale)
    if open_end and current_step == total_steps:
        value -= 1
    return value / scale


def progress_label(current_step: int, total_steps: int | None, *, open_end: bool = False) -> str:
    """'0%', '0.1%', '99.9%', '100%' (only when done), 'past length', or '1,234 steps'."""
    return Progress(current_step, total_steps, open_end=open_end).label


@dataclass(frozen=True)
class Progress:
    """A job's progress as every page, the admin and `manage.py jobs` word it."""

    current_step: int  # steps done: the highest step seen + 1
    total_steps: int | None  # the declared length, None for an open-ended run
    # The run ends when its script says so (an unfinished external job), not at its last
    # declared step: exactly at the declared length it is not 100% yet.
    open_end: bool = False

    @property
    def known(self) -> bool:
        return self.total_steps is not None

    @property
    def past(self) -> bool:
        """More than one step past the declared length (one step of slack for 1-based steps)."""
        return self.total_steps is not None and self.current_step > self.total_steps + 1

    @property
    def percent(self) -> float | None:
        """Rounded down to 0.1, at most 100; None without a declared length."""
        return progress_floor(self.current_step, self.total_steps, open_end=self.open_end)

    @property
    def shown_step(self) -> int:
        """The step count shown: at the declared length a 1-based run's extra step is hidden."""
        if self.total_steps is not None and not self.past:
            return min(self.current_step, self.total_steps)
        return self.current_step

    @property
    def label(self) -> str:
        """The short form: '42.1%', '100%', 'past length', '1,234 steps'."""
        percent = self.percent
        if percent is None:
            return f"{self.current_step:,} step{'' if self.current_step == 1 else 's'}"
        if self.past:
            return "past length"
        return f"{percent:.0f}%" if percent in (0, 100) else f"{percent:.1f}%"

    @property
    def steps_text(self) -> str:
        """'step 421 / 1,000', 'step 1,234 of 1,000 declared, past it', 'no declared length'."""
        if self.total_steps is None:
            return "no declared length"
        if self.past:
            return f"step {self.current_step:,} of {self.total_steps:,} declared, past it"
        return f"step {self.shown_step:,} / {self.total_steps:,}"

    @property
    def summary(self) -> str:
        """One line for lists: '42.1% · step 421 / 1,000', 'step 1,234 of 1,000 declared,
        past it', '1,234 steps · no declared length'."""
        return self.steps_text if self.past else f"{self.label} · {self.steps_text}"

    @property
    def value_text(self) -> str:
        """The progress bar's aria-valuetext."""
        if self.total_steps is None:
            return f"{self.label} done, no declared length"
        if self.past:
            return self.steps_text
        return f"{self.label}, step {self.shown_step:,} of {self.total_steps:,}"

    @property
    def width(self) -> str | None:
        """The bar's fill for data-width ('42.10%'); None: the bar is indeterminate."""
        percent = progress_floor(
            self.current_step, self.total_steps, decimals=2, open_end=self.open_end
        )
        return None if percent is None else f"{percent:.2f}%"


def job_progress(job: TrainingJob) -> Progress:
    return Progress(job.current_step, job.total_steps, open_end=progress_open_end(job))


def progress_open_end(job: TrainingJob) -> bool:
    """Whether the job ends at its script's word rather than at its last declared step."""
    return job.source == job.Source.EXTERNAL and not job.is_terminal
