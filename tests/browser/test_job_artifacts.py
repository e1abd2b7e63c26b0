"""The job page loads its artifact list after the page (htmx, no inline script), under the
strict CSP, and the links download the stored bytes."""

from __future__ import annotations

import io

import pytest
from django.urls import reverse

from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory, UserFactory
from tracking.artifacts import artifact_save, run_root

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_artifact_list_loads_and_links_download(open_page, artifacts_dir, browser_errors):
    owner = UserFactory()
    job = TrainingJobFactory(owner=owner, source=TrainingJob.Source.EXTERNAL)
    artifact_save(
        root=run_root(job.run_uuid),
        path="plots/loss.csv",
        stream=io.BytesIO(b"step,loss\n0,1.0\n"),
        max_bytes=1000,
    )
    page = open_page(owner)
    page.goto(reverse("jobs:detail", args=[job.pk]))
    link = page.locator("#artifacts-title ~ div a", has_text="plots/loss.csv")
    link.wait_for()
    href = link.get_attribute("href")
    assert href == reverse("tracking_pages:job_artifact", args=[job.pk, "plots/loss.csv"])
    assert page.request.get(href).body() == b"step,loss\n0,1.0\n"
    assert not browser_errors.csp_violations
