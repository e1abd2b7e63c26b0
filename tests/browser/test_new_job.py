from __future__ import annotations

import re

import pytest

from jobs.models import TrainingJob

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_create_a_job_through_the_form(open_page, user, browser_errors):
    page = open_page(user)
    page.goto("/")
    page.click("text=New job")
    page.wait_for_url("**/jobs/new/")
    page.fill("#id_name", "browser-run")
    page.fill("#id_total_epochs", "2")
    page.fill("#id_steps_per_epoch", "50")
    page.fill("#id_steps_per_tick", "5")
    page.click("summary:has-text('Advanced')")
    page.fill("#id_seed", "42")
    page.fill("#id_hyperparameters", '{"batch_size": 64}')
    page.click("button:has-text('Create job')")

    page.wait_for_url(re.compile(r"/jobs/\d+/$"))  # the redirect: the job exists by now
    job = TrainingJob.objects.get(name="browser-run")
    assert page.url.endswith(f"/jobs/{job.pk}/")
    assert page.locator("#job-header h1").inner_text() == "browser-run"
    assert page.locator("#job-header .badge").inner_text() == "Running"
    assert "Started “browser-run”." in page.locator("#toasts").inner_text()
    assert page.locator(".kv td code").inner_text() == "64"
    assert (job.seed, job.total_steps, job.owner) == (42, 100, user)
    assert browser_errors.messages == []


def test_errors_show_next_to_their_field_and_keep_values(open_page, user, browser_errors):
    page = open_page(user)
    page.goto("/jobs/new/")
    page.fill("#id_name", "kept")
    page.click("summary:has-text('Advanced')")
    page.fill("#id_initial_loss", "0.1")
    page.fill("#id_final_loss", "0.5")
    page.click("button:has-text('Create job')")
    errors = page.locator("#id_final_loss_errors")
    assert "lower than the initial loss" in errors.inner_text()
    assert page.locator("details.advanced").get_attribute("open") is not None
    assert page.input_value("#id_name") == "kept"
    assert not TrainingJob.objects.exists()
    # The re-rendered form is a 400 on purpose (bad input); the browser logs that status.
    assert [m for m in browser_errors.messages if "400 (Bad Request)" not in m] == []
