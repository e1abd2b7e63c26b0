"""Whole screens: no sideways scrolling on a phone, and screenshots for people to look at
(test-artifacts/, git-ignored)."""

from __future__ import annotations

import pytest

from jobs import services
from tests.browser.support import PHONE, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


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


@pytest.mark.parametrize("color_scheme", ["light", "dark"])
def test_screenshots(open_page, user, jobs_with_history, color_scheme, browser_errors):
    page = open_page(user, color_scheme=color_scheme)
    page.goto("/")
    page.wait_for_load_state("networkidle")
    assert screenshot(page, f"dashboard-{color_scheme}").exists()
    page.goto(jobs_with_history[0].get_absolute_url())
    page.wait_for_selector("#charts[data-point-count]")
    page.wait_for_function("() => Number(document.getElementById('charts').dataset.pointCount) > 0")
    assert screenshot(page, f"job-{color_scheme}").exists()
    page.goto(jobs_with_history[2].get_absolute_url())  # the failed one
    page.wait_for_selector("#job-header .job-failure")
    assert screenshot(page, f"job-failed-{color_scheme}").exists()
    page.goto("/jobs/new/")
    assert screenshot(page, f"new-job-{color_scheme}").exists()
    phone = open_page(user, viewport=PHONE, color_scheme=color_scheme)
    phone.goto("/")
    phone.wait_for_load_state("networkidle")
    assert screenshot(phone, f"dashboard-phone-{color_scheme}").exists()
    phone.goto(jobs_with_history[1].get_absolute_url())
    phone.wait_for_function(
        "() => Number(document.getElementById('charts').dataset.pointCount) > 0"
    )
    assert screenshot(phone, f"job-phone-{color_scheme}").exists()
    assert browser_errors.messages == []
