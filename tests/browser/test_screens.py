"""Whole screens: the Content-Security-Policy holds on every page, no sideways scrolling on a
phone, and each screen showing what it must in both themes, its screenshot kept for people to
look at (test-artifacts/, git-ignored)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from jobs import services
from tests.browser.support import (
    PHONE,
    assert_theme,
    painted_pixels,
    screenshot,
    scrolls_sideways,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHART_COLOURS = {
    "#chart-loss": "--chart-loss",
    "#chart-accuracy": "--chart-accuracy",
    "#chart-lr": "--chart-lr",
}
# A drawn line, not a stray pixel: a line across a phone-wide chart has several hundred.
MIN_LINE_PIXELS = 100


@pytest.fixture
def jobs_with_history(user):
    """A realistic mix: running, paused, completed, failed and queued jobs with points."""
    from metrics.services import simulation_advance

    specs = [
        ("resnet50-imagenet-lr3e-4", "resnet50", "imagenet-1k", 10, 100, None),
        ("bert-base-sst2-warmup500", "bert-base-uncased", "glue/sst2", 4, 250, None),
        ("vit-small-cifar100-lr1e-2", "vit-small", "cifar100", 6, 100, 230),
        ("gpt2-small-wikitext103", "gpt2", "wikitext-103", 8, 250, None),
        ("distilbert-imdb-sweep-3", "distilbert-base-uncased", "imdb", 3, 200, None),
    ]
    jobs = [
        services.job_create(
            owner=user,
            name=name,
            model_name=model,
            dataset=dataset,
            total_epochs=epochs,
            steps_per_epoch=steps,
            steps_per_tick=40,
            seed=index,
            diverge_at_step=diverge,
            hyperparameters={"batch_size": 128, "optimizer": "adamw", "lr": 3e-4},
        )
        for index, (name, model, dataset, epochs, steps, diverge) in enumerate(specs)
    ]
    for _ in range(8):
        simulation_advance()
    services.job_pause(job=jobs[4])
    for _ in range(12):
        simulation_advance(job_ids=[jobs[1].pk])
    services.job_create(
        owner=user, name="llama-lora-queued", total_epochs=1, steps_per_epoch=500, start=False
    )
    return jobs


@pytest.mark.parametrize("path", ["/", "job", "/jobs/new/"])
def test_nothing_scrolls_sideways_on_a_phone(
    open_page, user, jobs_with_history, path, browser_errors
):
    page = open_page(user, viewport=PHONE)
    page.goto(jobs_with_history[0].get_absolute_url() if path == "job" else path)
    page.wait_for_load_state("networkidle")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    if path == "/":
        # The table became cards: one per job, the header row hidden.
        assert page.locator("tr.job-row").first.evaluate("e => getComputedStyle(e).display") == (
            "grid"
        )
    assert browser_errors.messages == []


def assert_charts_drawn(page) -> None:
    """Each chart shows its line, in the theme's colour for it."""
    for canvas, colour in CHART_COLOURS.items():
        assert page.locator(canvas).is_visible(), canvas
        assert painted_pixels(page, canvas, colour) >= MIN_LINE_PIXELS, canvas


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_screenshots(open_page, user, jobs_with_history, color_scheme, browser_errors):
    """Each screen shows what it is for, in the asked theme; the pictures are kept for people."""
    page = open_page(user, color_scheme=color_scheme)
    page.goto("/")
    page.wait_for_load_state("networkidle")
    rows = page.locator("tr.job-row")
    assert rows.count() == len(jobs_with_history) + 1  # and the queued one
    assert all(rows.nth(index).is_visible() for index in range(rows.count()))
    assert_theme(page, color_scheme)
    assert_theme(page, color_scheme, ".job-table")
    assert not scrolls_sideways(page)
    screenshot(page, f"dashboard-{color_scheme}")

    page.goto(jobs_with_history[0].get_absolute_url())
    page.wait_for_selector("#charts[data-point-count]")
    page.wait_for_function("() => Number(document.getElementById('charts').dataset.pointCount) > 0")
    assert_charts_drawn(page)
    assert_theme(page, color_scheme)
    assert_theme(page, color_scheme, "#charts")
    assert not scrolls_sideways(page)
    screenshot(page, f"job-{color_scheme}")

    page.goto(jobs_with_history[2].get_absolute_url())  # the failed one
    failure = page.wait_for_selector("#job-header .job-failure")
    assert failure.is_visible()
    assert "loss diverged at step" in failure.inner_text()
    assert_theme(page, color_scheme, "#job-header .job-failure")
    assert not scrolls_sideways(page)
    screenshot(page, f"job-failed-{color_scheme}")

    page.goto("/jobs/new/")
    for field in ("#id_name", "#id_total_epochs", "#id_steps_per_epoch", "button.button-primary"):
        assert page.locator(field).is_visible(), field
    assert_theme(page, color_scheme)
    assert_theme(page, color_scheme, "#id_name")
    assert not scrolls_sideways(page)
    screenshot(page, f"new-job-{color_scheme}")

    phone = open_page(user, viewport=PHONE, color_scheme=color_scheme)
    phone.goto("/")
    phone.wait_for_load_state("networkidle")
    card = phone.locator("tr.job-row").first
    assert card.is_visible()
    assert card.bounding_box()["width"] <= PHONE["width"]
    assert_theme(phone, color_scheme)
    assert not scrolls_sideways(phone)
    screenshot(phone, f"dashboard-phone-{color_scheme}")

    phone.goto(jobs_with_history[1].get_absolute_url())
    phone.wait_for_function(
        "() => Number(document.getElementById('charts').dataset.pointCount) > 0"
    )
    assert_charts_drawn(phone)
    assert phone.locator("#chart-loss").bounding_box()["width"] <= PHONE["width"]
    assert_theme(phone, color_scheme)
    assert not scrolls_sideways(phone)
    screenshot(phone, f"job-phone-{color_scheme}")
    assert browser_errors.messages == []


def assert_strict_csp(response) -> None:
    policy = response.headers.get("content-security-policy", "")
    assert "script-src 'self'" in policy, policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, policy


def wait_for_poll(page, path: str) -> None:
    """Waits for the next htmx poll of `path` to come back and settle."""
    with page.expect_response(
        lambda r: urlsplit(r.url).path == path and r.request.headers.get("hx-request") == "true"
    ):
        pass
    page.wait_for_timeout(100)  # the settle step: htmx swaps in attributes 20 ms later


def test_every_screen_keeps_to_the_content_security_policy(
    open_page, user, jobs_with_history, ticker, browser_errors
):
    live = services.job_create(
        owner=user, name="csp-live", total_epochs=1, steps_per_epoch=400, steps_per_tick=5, seed=3
    )
    ticker([live.pk])
    page = open_page(user)

    assert_strict_csp(page.goto("/"))
    assert page.get_attribute("#job-table", "data-polling") == "true"
    wait_for_poll(page, "/")
    page.locator("#job-search").press_sequentially("resnet")
    page.wait_for_function("() => document.querySelectorAll('tr.job-row').length === 1")

    # The job page with live polling running: points arrive through the poller.
    assert_strict_csp(page.goto(live.get_absolute_url()))
    page.wait_for_function("() => Number(document.getElementById('charts').dataset.pointCount) > 0")
    page.evaluate(
        """() => document.addEventListener("transitionrun", (event) => {
          if (event.propertyName === "width") window.widthTransitions = true;
        })"""
    )
    shown = int(page.get_attribute("#charts", "data-point-count"))
    page.wait_for_function(
        "n => Number(document.getElementById('charts').dataset.pointCount) > n", arg=shown
    )
    fill = page.locator(f"#progress-fill-{live.pk}")
    # A poll moved the bar with its CSS transition, and the width comes from data-width
    # through progress.js's stylesheet, not a style attribute.
    page.wait_for_function("() => window.widthTransitions === true")
    assert fill.get_attribute("style") is None
    page.wait_for_function(
        """id => {
          const fill = document.getElementById(id);
          const bar = fill.parentElement.getBoundingClientRect().width;
          const wanted = parseFloat(fill.dataset.width) / 100 * bar;
          return wanted > 0 && Math.abs(fill.getBoundingClientRect().width - wanted) < 1;
        }""",
        arg=f"progress-fill-{live.pk}",
    )

    assert_strict_csp(page.goto("/jobs/new/"))
    page.click("button:has-text('Create job')")  # empty: a 400, the errors inline
    page.wait_for_selector(".field-errors")

    first, second = jobs_with_history[0], jobs_with_history[1]
    assert_strict_csp(page.goto(f"/compare/?jobs={first.pk},{second.pk}"))
    page.wait_for_load_state("networkidle")
    assert page.locator(".series-swatch[data-series]").count() == 2
    assert page.locator(".series-swatch").first.evaluate(
        "e => getComputedStyle(e).backgroundColor"
    ) not in ("", "rgba(0, 0, 0, 0)")
    screenshot(page, "compare")

    assert_strict_csp(page.goto("/accounts/tokens/"))
    page.fill("#token-name", "csp-box")
    page.click(".token-form button[type=submit]")
    page.wait_for_selector("#new-token")
    screenshot(page, "tokens")

    assert_strict_csp(page.goto("/api/v1/docs"))
    page.click(".swagger-ui .opblock-summary >> nth=0")  # open an operation: more rendering
    page.wait_for_selector(".swagger-ui .opblock-body")

    missing = page.goto("/no/such/page/")
    assert missing.status == 404
    assert_strict_csp(missing)

    anonymous = open_page()
    assert_strict_csp(anonymous.goto("/accounts/login/"))
    anonymous.wait_for_selector("#id_username")

    assert browser_errors.csp_violations == []
    # The console's only errors: the statuses of the bad form (400) and the missing page (404).
    expected = ("400 (Bad Request)", "404 (Not Found)")
    assert [m for m in browser_errors.messages if not m.endswith(expected)] == []


def test_the_admin_keeps_to_the_content_security_policy(open_page, staff_user, browser_errors):
    from metrics.services import simulation_advance

    job = services.job_create(
        owner=staff_user, name="admin-csp", total_epochs=1, steps_per_epoch=20
    )
    simulation_advance(job_ids=[job.pk])
    page = open_page(staff_user)
    # The admin links no icon, so Chromium asks for /favicon.ico (a 404 in the console).
    page.route("**/favicon.ico", lambda route: route.fulfill(status=204))
    for path in (
        "/admin/",
        "/admin/jobs/trainingjob/",
        f"/admin/jobs/trainingjob/{job.pk}/change/",
        "/admin/jobs/trainingjob/add/",
        "/admin/accounts/apitoken/",
    ):
        response = page.goto(path)
        assert response.status == 200, path
        assert "unsafe-inline" not in response.headers["content-security-policy"]
        page.wait_for_load_state("networkidle")
    assert browser_errors.csp_violations == []
    assert browser_errors.messages == []


def test_error_pages_look_like_the_app(open_page, user, browser_errors):
    page = open_page(user)
    response = page.goto("/jobs/999999/")
    assert response.status == 404
    assert page.locator(".error-panel h1").inner_text() == "Page not found"
    assert page.locator(".topbar .brand").is_visible()
    assert page.locator(".error-panel").evaluate("e => getComputedStyle(e).textAlign") == "center"
    screenshot(page, "error-404")
    assert browser_errors.csp_violations == []
