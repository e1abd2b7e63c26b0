"""The live job page: charts and progress grow while ticks run, then stop at completion.

The charts are the charts engineer's (metrics/_charts.html, charts.js); this test holds them
to the page's DOM contract: #charts[data-point-count], #live-toggle, #points-note.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from jobs import services
from jobs.dashboard_rows import progress_bar_attrs
from jobs.live_figures import job_live_texts
from jobs.models import TrainingJob
from tests.browser.support import (
    TICK_INTERVAL_SECONDS,
    TIMER_SLACK_MS,
    assert_no_request_within,
    poll_interval_ms,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

STEPS_PER_TICK = 6
TOTAL_STEPS = 2 * 60


def point_count(page) -> int:
    return int(page.get_attribute("#charts", "data-point-count") or 0)


def progress_now(page) -> int:
    return int(page.get_attribute("#job-progress [role=progressbar]", "aria-valuenow"))


def wait_for_points_above(page, count: int) -> None:
    page.wait_for_function(
        "n => Number(document.getElementById('charts').dataset.pointCount) > n", arg=count
    )


def test_charts_and_progress_follow_the_ticks_until_done(open_page, user, ticker, browser_errors):
    job = services.job_create(
        owner=user,
        name="live-run",
        total_epochs=2,
        steps_per_epoch=60,
        steps_per_tick=STEPS_PER_TICK,
        seed=7,
    )
    page = open_page(user)
    polls: list[str] = []
    page.on("request", lambda request: "/poll/" in request.url and polls.append(request.url))
    page.goto(job.get_absolute_url())
    page.wait_for_selector("#charts[data-point-count]")
    assert point_count(page) == 0
    assert progress_now(page) == 0
    interval_ms = poll_interval_ms(page, "#charts-poller")

    ticks = ticker([job.pk])
    ticks.wait_for_ticks(2)
    wait_for_points_above(page, 0)
    page.wait_for_function(
        "() => Number(document.querySelector('#job-progress [role=progressbar]')"
        ".getAttribute('aria-valuenow')) > 0"
    )

    # Paused live updates: the engine goes on, the chart holds still.
    page.click("#live-toggle")
    held = point_count(page)
    seen = ticks.ticks
    # More than two poll intervals of ticks.
    ticks.wait_for_ticks(seen + int(2 * interval_ms / (TICK_INTERVAL_SECONDS * 1000)) + 1)
    assert point_count(page) == held

    # Completion: every point plotted, the header says so, a toast, and polling stops: the
    # last poll is answered 286 (htmx's "stop polling").
    with page.expect_response(lambda response: "/poll/" in response.url and response.status == 286):
        page.click("#live-toggle")
        wait_for_points_above(page, held)
        page.wait_for_function(
            "n => Number(document.getElementById('charts').dataset.pointCount) === n",
            arg=TOTAL_STEPS,
        )
    page.wait_for_selector("#job-header .badge-completed")
    page.wait_for_selector("#toasts .toast:has-text('omplete')")
    assert progress_now(page) == TOTAL_STEPS
    assert page.locator("#job-progress .progress-big").inner_text() == "100%"
    assert re.search(rf"\b{TOTAL_STEPS}\b", page.locator("#points-note").inner_text())
    ticks.stop()
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.COMPLETED

    polls_at_end = len(polls)
    assert_no_request_within(
        page,
        interval_ms + TIMER_SLACK_MS,
        lambda request: "/poll/" in request.url,
        "the page kept polling a finished job",
    )
    assert len(polls) == polls_at_end, "the page kept polling a finished job"
    assert browser_errors.messages == []


def test_an_up_to_date_page_gets_empty_polls_and_still_the_news(
    open_page, user, ticker, browser_errors
):
    job = services.job_create(
        owner=user,
        name="quiet-run",
        total_epochs=2,
        steps_per_epoch=60,
        steps_per_tick=STEPS_PER_TICK,
        seed=7,
    )
    page = open_page(user)
    page.goto(job.get_absolute_url())
    page.wait_for_selector("#charts[data-point-count]")
    # Nothing stored since the page loaded: two polls in a row are bare 204s (htmx swaps
    # nothing and keeps polling).
    for _ in range(2):
        with page.expect_response(
            lambda response: "/poll/" in response.url and response.status == 204
        ):
            pass
    assert point_count(page) == 0
    assert page.locator("[data-figure=last_loss_step]").is_hidden()  # no loss yet
    answers: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda response: (
            "/poll/" in response.url
            and answers.append((response.status, response.headers.get("content-type", "")))
        ),
    )
    # Then points arrive: a poll brings them, and the cards' figures as JSON, which the page
    # shows exactly as the server wrote them.
    ticks = ticker([job.pk])
    ticks.wait_for_ticks(1)
    ticks.stop()
    job.refresh_from_db()
    page.wait_for_function(
        "seq => document.getElementById('job-progress').dataset.ingestSeq === seq",
        arg=str(job.ingest_seq),
    )
    wait_for_points_above(page, job.current_step - 1)
    assert (200, "application/json") in answers
    shown = page.eval_on_selector_all(
        "[data-figure]",
        "elements => elements.map(e => [e.dataset.figure, e.textContent, e.hidden])",
    )
    texts = job_live_texts(job)
    assert {name: text for name, text, _ in shown} == texts
    assert all(hidden is (texts[name] == "") for name, _, hidden in shown)
    assert page.locator("[data-figure=last_loss_step]").is_visible()
    _, fill = progress_bar_attrs(job)
    assert progress_now(page) == job.current_step > 0
    assert page.get_attribute("#job-progress .progress-fill", "data-width") == fill["data-width"]
    assert browser_errors.messages == []


def test_actions_pause_resume_cancel_and_delete(open_page, user, browser_errors):
    job = services.job_create(owner=user, name="to-control", total_epochs=1, steps_per_epoch=50)
    page = open_page(user)
    page.goto(job.get_absolute_url())

    page.click("#job-actions [data-action=pause]")
    page.wait_for_selector("#job-header .badge-paused")
    page.wait_for_selector("#toasts .toast:has-text('Paused “to-control”.')")
    assert page.locator("#job-actions [data-action]").evaluate_all(
        "buttons => buttons.map(b => b.dataset.action)"
    ) == ["resume", "cancel", "delete"]

    page.click("#job-actions [data-action=resume]")
    page.wait_for_selector("#job-header .badge-running")

    page.click("#job-actions [data-action=cancel]")  # hx-confirm: accepted by the fixture
    page.wait_for_selector("#job-header .badge-cancelled")
    job.refresh_from_db()
    assert job.status == TrainingJob.Status.CANCELLED

    page.click("#job-actions [data-action=delete]")
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    assert "Deleted “to-control”." in page.locator("#toasts").inner_text()
    assert not TrainingJob.objects.filter(pk=job.pk).exists()
    assert browser_errors.messages == []


def test_an_action_the_status_no_longer_allows_is_explained(open_page, user, browser_errors):
    job = services.job_create(owner=user, name="raced", total_epochs=1, steps_per_epoch=50)
    page = open_page(user)
    page.goto(job.get_absolute_url())
    services.job_cancel(job=job)  # someone else cancels it meanwhile

    page.click("#job-actions [data-action=pause]")
    page.wait_for_selector("#toasts .toast[data-level=error]:has-text('Cannot pause')")
    page.wait_for_selector("#job-header .badge-cancelled")
    messages = [m for m in browser_errors.messages if "409" not in m]
    assert messages == []
