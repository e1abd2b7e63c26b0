"""Filters that turn job figures into the short forms the pages show ("~4 min", "3 s ago")."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils.safestring import SafeString

from jobs import dashboard_rows
from jobs.display import (
    EMPTY,
    job_progress,
    sci_text,
    time_ago,
)
from jobs.live_figures import job_live_texts
from jobs.models import TrainingJob
from jobs.services import JOB_ACTIONS, JobAction, job_allowed_actions

register = template.Library()


@register.filter
def ago(moment: datetime | None) -> str:
    """'just now', '42 s ago', '3 min ago', '5 h ago', '2 d ago', then the date."""
    return time_ago(moment)


@register.filter
def loss(value: float | None) -> str:
    return dashboard_rows.loss_text(value)


@register.filter
def thousands(value: int | None) -> str:
    """1234567 → '1,234,567', like humanize's intcomma without its localisation cost."""
    return EMPTY if value is None else f"{value:,}"


@register.filter
def live_texts(job: TrainingJob) -> dict[str, str]:
    """The job page's live texts by data-figure name (jobs.live_figures, shared with the poll)."""
    return job_live_texts(job)


@register.filter
def steps_of(job: TrainingJob) -> str:
    """Steps done against the declared length: '421 / 1,000', '1,234 / 1,000 declared',
    or '1,234' for an open-ended run."""
    total = job.total_steps
    if total is None:
        return f"{job.current_step:,}"
    declared = " declared" if job_progress(job).past else ""
    return f"{job.current_step:,} / {total:,}{declared}"


@register.filter
def sci(value: float | None) -> str:
    """Learning rates: '3.0e-4' for small ones, plain digits otherwise."""
    return sci_text(value)


@register.simple_tag(takes_context=True)
def job_rows(context: template.Context, jobs: list[TrainingJob]) -> SafeString:
    """The dashboard's rows (see jobs.dashboard_rows: built in Python, for speed)."""
    return dashboard_rows.job_rows(jobs, user=context["user"])


@register.simple_tag
def status_badge(job: TrainingJob) -> SafeString:
    return dashboard_rows.status_badge(job)


@register.simple_tag
def progress_bar(job: TrainingJob) -> SafeString:
    return dashboard_rows.progress_bar(job)


@register.filter
def hyperparameter(value: Any) -> str:
    """A hyperparameter's value as its JSON, but strings bare: 0.1, [64, 128], adamw."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@register.filter
def user_actions(job: TrainingJob) -> list[str]:
    """The legal transitions a user may ask for now (not the engine's complete/fail)."""
    return job_allowed_actions(job=job, by_users=True)


@register.filter
def action_buttons(job: TrainingJob) -> list[JobAction]:
    """The job page's buttons: `user_actions`, each with its label, tone and confirmation."""
    return [JOB_ACTIONS[name] for name in user_actions(job)]
