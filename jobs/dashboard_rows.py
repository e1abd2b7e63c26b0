"""The dashboard's job rows, the status badge and the progress bar as HTML, built in Python.

The dashboard shows 50 rows of about 30 figures each and re-renders them every poll. Through
the template engine (an include per row, two more per row for the badge and the bar, a
filter per figure) that was ~22 ms of the page's ~35 ms; string formatting takes ~1 ms for
the same bytes. The badge and the bar are used on other pages too: their partials
(`jobs/_status_badge.html`, `jobs/_progress_bar.html`) call the functions here, so their
markup is written once. Every value goes through `escape` unless it is markup built here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING

from django.urls import reverse
from django.utils import timezone
from django.utils.formats import get_format, localize
from django.utils.safestring import SafeString, mark_safe

from jobs.display import EMPTY, duration_label, job_progress, time_ago

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    from jobs.models import TrainingJob

# Django's `loss` and `rate` filters (jobs_ui) say the same; they import these.
LARGE_LOSS = 1000
FAST_RATE = 100


def loss_text(value: float | None) -> str:
    if value is None:
        return EMPTY
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= LARGE_LOSS:
        return f"{value:.3g}"
    return f"{value:.4f}"


def rate_text(value: float | None) -> str:
    if value is None:
        return EMPTY
    return f"{value:.1f}" if value < FAST_RATE else f"{value:,.0f}"


def status_badge(job: TrainingJob, label: str | None = None) -> SafeString:
    """The status as colour and text (UI.md: one badge everywhere); `label`: the status's
    display name, if the caller has it at hand."""
    status = escape(job.status)
    text = job.get_status_display() if label is None else label
    return mark_safe(
        f'<span class="badge badge-{status}" data-status="{status}">'
        f'<span class="badge-dot" aria-hidden="true"></span>{escape(text)}</span>\n'
    )


def progress_bar(job: TrainingJob) -> SafeString:
    """The bar alone. progress.js sets the fill's width from data-width (the CSP allows no
    style attributes). The fill's id is stable across refreshes: htmx settles the old
    data-width into the new one (htmx-config attributesToSettle), so the CSS transition
    runs. Without a declared length the bar is indeterminate: no aria-valuenow (ARIA's way
    to say so), and a fill that sweeps while the job may still report (full once it is
    finished). Past the declared length it stays full."""
    bar, fill = progress_bar_attrs(job)
    return mark_safe(f"\n\n<div{_attributes(bar)}>\n  <div{_attributes(fill)}></div>\n</div>\n\n")


Attributes = dict[str, str | None]


def progress_bar_attrs(job: TrainingJob) -> tuple[Attributes, Attributes]:
    """The bar's attributes and its fill's, in the order the markup writes them; None is an
    attribute left out. The job page's poll sends these same dicts for its script to set on
    the live bar (static/trainmon/job-figures.js), so the markup is described once."""
    p = job_progress(job)
    bar: Attributes = {
        "class": "progress progress-past" if p.past else "progress",
        "data-status": job.status,
        "role": "progressbar",
        "aria-label": f"Progress of {job.name}",
        "aria-valuemin": None,
        "aria-valuemax": None,
        "aria-valuenow": None,
        "aria-valuetext": p.value_text,
    }
    fill: Attributes = {"class": "progress-fill", "id": f"progress-fill-{job.pk}"}
    if p.known:
        now = job.total_steps if p.past else p.shown_step
        bar |= {
            "aria-valuemin": "0",
            "aria-valuemax": str(job.total_steps),
            "aria-valuenow": str(now),
        }
        fill["data-width"] = p.width
    else:
        bar["class"] = "progress progress-indeterminate"
        fill["data-width"] = "100.00%" if job.is_terminal else None
    return bar, fill


def _attributes(attrs: Attributes) -> str:
    return "".join(
        f' {name}="{escape(value)}"' for name, value in attrs.items() if value is not None
    )


def job_rows(jobs: Iterable[TrainingJob], *, user: User | AnonymousUser) -> SafeString:
    """One <tr> per job for the dashboard's table (its columns: jobs/_job_table.html)."""
    page = _Page()
    return mark_safe("".join(_row(job, user.pk, page) for job in jobs))


class _Page:
    """What every row of a page shares, worked out once: the labels of the statuses and
    sources (lazy translations), the job link around the id, the "updated" titles."""

    def __init__(self) -> None:
        from jobs.models import TrainingJob

        self.statuses = {value: str(label) for value, label in TrainingJob.Status.choices}
        self.sources = {value: str(label).lower() for value, label in TrainingJob.Source.choices}
        marker = 2**62
        before, after = reverse("jobs:detail", args=[marker]).split(str(marker))
        self.link_before, self.link_after = escape(before), escape(after)
        self._titles: dict[datetime, str] = {}
        # Format characters finer than a minute (seconds, microseconds, whole timestamps).
        self._by_minute = not set(get_format("DATETIME_FORMAT")) & set("sUuvcrIOTZe")

    def title(self, moment: datetime) -> str:
        # The locale's DATETIME_FORMAT ("Dec. 1, 2026, 4:35 a.m."), as {{ moment }} renders
        # it. Formatting costs ~30 us, and rows updated by one tick share their minute.
        if self._by_minute:
            moment = moment.replace(second=0, microsecond=0)
        if moment not in self._titles:
            self._titles[moment] = escape(localize(moment))
        return self._titles[moment]


def _row(job: TrainingJob, user_id: int | None, page: _Page) -> str:
    pk = job.pk
    name = escape(job.name)
    if job.model_name or job.dataset:
        sub = f"{escape(job.model_name or EMPTY)} · {escape(job.dataset or EMPTY)}"
    else:
        sub = escape(page.sources.get(job.source, job.source))
    if job.owner_id != user_id:
        sub += f" · {escape(job.owner.get_username())}"
    p = job_progress(job)
    if p.known:
        progress_text = escape(p.summary)
    else:
        elapsed = job.elapsed
        progress_text = (
            f"{escape(p.label)} · {EMPTY if elapsed is None else duration_label(elapsed)} elapsed"
        )
    epoch = EMPTY if job.total_epochs is None else f"{job.current_epoch} / {job.total_epochs}"
    metric = escape(job.primary_metric)
    primary_last = getattr(job, "primary_last", None)
    primary_min = getattr(job, "primary_min", None)
    if job.last_loss is None and primary_last is not None:
        last = (
            f'<td class="c-loss num" data-label="Last"><span class="metric-name">{metric}</span>'
            f" {loss_text(primary_last)}</td>"
        )
    else:
        last = f'<td class="c-loss num" data-label="Loss">{loss_text(job.last_loss)}</td>'
    if job.best_loss is None and primary_min is not None:
        best = (
            f'<td class="c-best num" data-label="Best"><span class="metric-name">{metric}</span>'
            f" {loss_text(primary_min)}</td>"
        )
    else:
        best = f'<td class="c-best num" data-label="Best">{loss_text(job.best_loss)}</td>'
    eta = job.eta
    updated = timezone.localtime(job.updated_at)
    return (
        f'<tr class="job-row" data-status="{escape(job.status)}" data-job-id="{pk}">\n'
        '  <td class="c-select">\n'
        # hx-preserve keeps the user's ticks across the 2-second refreshes.
        f'    <input type="checkbox" name="jobs" value="{pk}" id="compare-{pk}" '
        f'hx-preserve="true" aria-label="Select {name} to compare">\n'
        "  </td>\n"
        '  <td class="c-name">\n'
        # Stable ids: htmx gives focus back to the element with the focused one's id after
        # each refresh.
        f'    <a class="job-link" id="job-link-{pk}" href="{page.link_before}{pk}'
        f'{page.link_after}">{name}</a>\n'
        f'    <span class="job-sub">{sub}</span>\n'
        "  </td>\n"
        f'  <td class="c-status">{status_badge(job, page.statuses.get(job.status))}</td>\n'
        '  <td class="c-progress">\n'
        f"    {progress_bar(job)}\n"
        f'    <span class="progress-text">{progress_text}</span>\n'
        "  </td>\n"
        f'  <td class="c-epoch num" data-label="Epoch">{epoch}</td>\n'
        # Without a headline loss, the job's primary metric (job_list_dashboard annotates
        # it), labelled with its name.
        f"  {last}\n"
        f"  {best}\n"
        f'  <td class="c-rate num" data-label="Steps/s">{rate_text(job.steps_per_second)}</td>\n'
        f'  <td class="c-eta num" data-label="ETA">'
        f"{EMPTY if eta is None else '~' + duration_label(eta)}</td>\n"
        f'  <td class="c-updated num" data-label="Updated"><time datetime="{updated.isoformat()}"'
        f' title="{page.title(updated)}" data-relative>{escape(time_ago(job.updated_at))}'
        "</time></td>\n"
        "</tr>\n"
    )
