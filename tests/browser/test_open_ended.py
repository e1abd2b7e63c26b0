"""Open-ended external runs (issue 12) in the browser: with no declared length, the dashboard
and the job page show an indeterminate bar (role=progressbar without aria-valuenow) that
sweeps, and the steps done, live."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import transaction

from jobs import services
from jobs.models import TrainingJob
from metrics.points import MetricBatch
from metrics.services import metric_batches_write

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SWEEP = "s => getComputedStyle(document.querySelector(s)).animationName"


def open_ended_job(user) -> TrainingJob:
    return services.job_create(owner=user, name="open-run", source=TrainingJob.Source.EXTERNAL)


def report(job: TrainingJob, steps: range) -> None:
    """Points as the API stores them, numbered from 1."""
    count = len(steps)
    batch = MetricBatch(
        steps=np.arange(steps.start, steps.stop, dtype=np.int64),
        epochs=np.ones(count, dtype=np.int64),
        losses=np.linspace(2.0, 1.0, count),
        accuracies=np.full(count, np.nan),
        learning_rates=np.full(count, np.nan),
    )
    with transaction.atomic():
        [locked] = services.jobs_lock([job.pk])
        metric_batches_write([(locked, batch)])


def assert_indeterminate(page, bar: str, steps: str) -> None:
    assert page.get_attribute(bar, "role") == "progressbar"
    assert page.get_attribute(bar, "aria-valuenow") is None
    assert page.get_attribute(bar, "aria-valuetext") == f"{steps} done, no declared length"
    assert page.evaluate(SWEEP, f"{bar} .progress-fill") == "progress-sweep"


def test_the_dashboard_row_sweeps_and_counts_steps(open_page, user, browser_errors):
    job = open_ended_job(user)
    report(job, range(1, 51))
    page = open_page(user)
    page.goto("/")
    bar = f"tr[data-job-id='{job.pk}'] [role=progressbar]"
    assert_indeterminate(page, bar, "51 steps")
    text = f"tr[data-job-id='{job.pk}'] .progress-text"
    assert page.inner_text(text).startswith("51 steps · ")
    assert "%" not in page.inner_text(f"tr[data-job-id='{job.pk}']")

    report(job, range(51, 301))  # the table refreshes while the job runs
    page.wait_for_function(
        "s => document.querySelector(s).textContent.startsWith('301 steps')", arg=text
    )
    assert_indeterminate(page, bar, "301 steps")
    assert not browser_errors.messages


def test_the_job_page_sweeps_and_counts_steps_live(open_page, user, browser_errors):
    job = open_ended_job(user)
    report(job, range(1, 51))
    page = open_page(user)
    page.goto(job.get_absolute_url())
    bar = "#job-progress [role=progressbar]"
    assert_indeterminate(page, bar, "51 steps")
    assert page.inner_text("#job-progress .progress-big") == "51 steps"
    assert "elapsed" in page.inner_text("#job-progress .progress-steps")

    report(job, range(51, 201))  # the page's poll brings the progress partials
    page.wait_for_function(
        "() => document.querySelector('#job-progress .progress-big').textContent === '201 steps'"
    )
    assert_indeterminate(page, bar, "201 steps")

    services.job_complete(job=job)  # finished: the bar fills and stops sweeping
    page.reload()
    assert page.evaluate(SWEEP, f"{bar} .progress-fill") == "none"
    fill = page.evaluate(
        "s => document.querySelector(s).getBoundingClientRect().width", f"{bar} .progress-fill"
    )
    assert fill == pytest.approx(page.evaluate("s => document.querySelector(s).clientWidth", bar))
    assert not browser_errors.messages
