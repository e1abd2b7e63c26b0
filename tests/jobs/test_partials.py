"""The job partials render alone, and out of band for the metrics poll response."""

from __future__ import annotations

import re

import pytest
from django.template.loader import render_to_string
from django.test import RequestFactory

from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db

PARTIALS = {
    "jobs/_job_header.html": "job-header",
    "jobs/_job_progress.html": "job-progress",
    "jobs/_job_stats.html": "job-stats",
    "jobs/_job_actions.html": "job-actions",
}


@pytest.fixture
def request_for(rf: RequestFactory):
    def build(user):
        request = rf.get("/")
        request.user = user
        return request

    return build


def root_tag(html: str) -> str:
    return re.search(r"<[a-z]+ [^>]*>", html.lstrip()).group(0)


@pytest.mark.parametrize(("template", "element_id"), PARTIALS.items())
def test_root_has_its_id_and_swaps_out_of_band_only_when_asked(
    template, element_id, job, request_for
):
    inline = render_to_string(template, {"job": job}, request=request_for(job.owner))
    oob = render_to_string(template, {"job": job, "oob": True}, request=request_for(job.owner))
    assert f'id="{element_id}"' in root_tag(inline)
    assert "hx-swap-oob" not in inline
    assert f'id="{element_id}"' in root_tag(oob)
    assert 'hx-swap-oob="true"' in root_tag(oob)
    # Only the root swaps out of band, never something nested inside it.
    assert oob.count("hx-swap-oob") == 1


def test_header_holds_the_badge_and_the_actions(job, request_for):
    html = render_to_string("jobs/_job_header.html", {"job": job}, request=request_for(job.owner))
    assert 'class="badge badge-running"' in html
    assert 'id="job-actions"' in html


def test_partials_render_without_a_request(job):
    # The actions compute themselves from the job; a caller need not pass `actions`.
    html = render_to_string("jobs/_job_header.html", {"job": job, "oob": True})
    assert set(re.findall(r'data-action="(\w+)"', html)) == {"pause", "cancel", "delete"}


@pytest.mark.parametrize("status", Status.values)
def test_status_badge_is_colour_and_text(status):
    job = TrainingJobFactory.build(status=status)
    html = render_to_string("jobs/_status_badge.html", {"job": job})
    assert f'class="badge badge-{status}"' in html
    assert job.get_status_display() in html


def test_progress_bar_is_accessible_and_keeps_its_fill_id(job):
    job.current_step = 15
    html = render_to_string("jobs/_job_progress.html", {"job": job})
    assert 'role="progressbar"' in html
    assert 'aria-valuemin="0" aria-valuemax="60" aria-valuenow="15"' in html
    assert f'id="progress-fill-{job.pk}" data-width="25.00%"' in html
    assert "25.0%" in html


def test_stats_show_best_loss_and_its_step(job):
    job.best_loss, job.best_loss_step, job.last_accuracy = 0.41234, 17, 0.875
    html = render_to_string("jobs/_job_stats.html", {"job": job})
    assert "0.4123" in html
    assert "at step 17" in html
    assert "87.5%" in html
