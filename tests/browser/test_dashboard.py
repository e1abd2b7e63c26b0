from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from jobs import services
from jobs.models import TrainingJob
from tests.browser.support import TIMER_SLACK_MS, assert_no_request_within, poll_interval_ms

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def row(page, job):
    return page.locator(f"tr[data-job-id='{job.pk}']")


def test_rows_update_in_place_and_polling_stops_when_done(open_page, user, ticker, browser_errors):
    job = services.job_create(
        owner=user, name="dash-run", total_epochs=1, steps_per_epoch=40, steps_per_tick=4, seed=1
    )
    other = services.job_create(owner=user, name="other-run", total_epochs=1, steps_per_epoch=5)
    services.job_cancel(job=other)
    page = open_page(user)
    refreshes: list[str] = []
    page.on(
        "request",
        lambda request: request.headers.get("hx-request") and refreshes.append(request.url),
    )
    page.goto("/")
    assert page.get_attribute("#job-table", "data-polling") == "true"
    interval_ms = poll_interval_ms(page, "#job-table")
    bar = f"tr[data-job-id='{job.pk}'] [role=progressbar]"
    assert page.get_attribute(bar, "aria-valuenow") == "0"

    # A ticked box survives the refreshes.
    row(page, other).locator("input[name=jobs]").check()

    ticks = ticker([job.pk])
    page.wait_for_function(
        "s => Number(document.querySelector(s).getAttribute('aria-valuenow')) > 0", arg=bar
    )
    assert row(page, other).locator("input[name=jobs]").is_checked()

    ticks.wait_for_ticks(10)
    page.wait_for_selector(f"tr[data-job-id='{job.pk}'] .badge-completed")
    assert page.get_attribute(bar, "aria-valuenow") == "40"
    assert page.get_attribute("#job-table", "data-polling") is None
    assert "1 completed" in " ".join(page.locator("#status-summary").inner_text().split())
    # The refresh that swapped in the table without its poll was the last: had another been
    # scheduled, it would come within one interval.
    refreshes_at_end = len(refreshes)
    assert_no_request_within(
        page,
        interval_ms + TIMER_SLACK_MS,
        lambda request: request.headers.get("hx-request"),
        "the dashboard kept polling with nothing active",
    )
    assert len(refreshes) == refreshes_at_end, "the dashboard kept polling with nothing active"
    assert row(page, other).locator("input[name=jobs]").is_checked()
    assert browser_errors.messages == []


def test_search_filters_as_you_type(open_page, user, browser_errors):
    for name in ("bert-base", "bert-large", "vit-small"):
        services.job_create(owner=user, name=name, total_epochs=1, steps_per_epoch=5, start=False)
    page = open_page(user)
    page.goto("/")
    assert page.locator("tr.job-row").count() == 3
    page.locator("#job-search").press_sequentially("bert")
    page.wait_for_function("() => document.querySelectorAll('tr.job-row').length === 2")
    assert "q=bert" in page.url
    page.select_option("#job-status", "queued")
    page.wait_for_url("**status=queued**")
    assert page.locator("tr.job-row").count() == 2
    page.fill("#job-search", "nothing-like-it")
    page.wait_for_selector("text=No jobs match")
    assert browser_errors.messages == []


def test_compare_button_needs_two_jobs(open_page, user, browser_errors):
    jobs = [
        services.job_create(owner=user, name=f"run-{i}", total_epochs=1, steps_per_epoch=5)
        for i in range(3)
    ]
    for job in jobs:
        services.job_cancel(job=job)
    page = open_page(user)
    page.goto("/")
    button = page.locator("#compare-button")
    assert button.is_disabled()
    row(page, jobs[0]).locator("input[name=jobs]").check()
    assert button.is_disabled()
    row(page, jobs[2]).locator("input[name=jobs]").check()
    assert button.is_enabled()
    assert button.inner_text() == "Compare selected (2)"
    button.click()
    page.wait_for_url("**/compare/**")
    assert f"jobs={jobs[0].pk}" in page.url and f"jobs={jobs[2].pk}" in page.url
    assert TrainingJob.objects.count() == 3


def wait_for_refresh(page) -> None:
    """Waits for the table's next 2-second refresh to be swapped in and settled."""
    with page.expect_response(
        lambda r: urlsplit(r.url).path == "/" and r.request.headers.get("hx-request") == "true"
    ):
        pass
    page.wait_for_timeout(100)  # htmx settles 20 ms after the swap


def test_keyboard_focus_survives_the_refreshes(open_page, user, ticker, browser_errors):
    job = services.job_create(
        owner=user, name="focus-run", total_epochs=1, steps_per_epoch=400, steps_per_tick=2
    )
    page = open_page(user)
    page.goto("/")
    ticker([job.pk])
    for element_id in (f"job-link-{job.pk}", f"compare-{job.pk}", "summary-running"):
        page.focus(f"#{element_id}")
        page.evaluate("() => { window.focusedBefore = document.activeElement; }")
        wait_for_refresh(page)
        assert page.evaluate("() => document.activeElement.id") == element_id
        if element_id.startswith("job-link"):
            # A new element took the old one's place, and the focus with it.
            assert page.evaluate("() => !document.body.contains(window.focusedBefore)")
    assert browser_errors.messages == []


def test_toasts_survive_history_saves_and_are_not_replayed(open_page, user, browser_errors):
    for name in ("bert-base", "vit-small"):
        services.job_create(owner=user, name=name, total_epochs=1, steps_per_epoch=5, start=False)
    doomed = services.job_create(owner=user, name="doomed", total_epochs=1, steps_per_epoch=5)
    page = open_page(user)
    page.goto(doomed.get_absolute_url())
    page.click("#job-actions [data-action=delete]")  # hx-confirm: accepted by the fixture
    page.wait_for_url(lambda url: urlsplit(url).path == "/")
    toast = page.locator("#toasts .toast:has-text('Deleted “doomed”.')")
    assert toast.is_visible()

    # A search pushes a history entry, so htmx snapshots the page first: the toast stays.
    page.locator("#job-search").press_sequentially("bert")
    page.wait_for_function("() => document.querySelectorAll('tr.job-row').length === 1")
    assert "q=bert" in page.url
    assert toast.is_visible()

    # Dismissed, it stays dismissed when Back restores the snapshot taken while it showed.
    toast.locator(".toast-close").click()
    page.wait_for_selector("#toasts .toast", state="detached")
    page.go_back()
    page.wait_for_function("() => document.querySelectorAll('tr.job-row').length === 2")
    assert page.locator("#toasts .toast").count() == 0
    assert browser_errors.messages == []
