"""The points have no admin lists of their own: their tables' primary keys are (job, step)
and (key, step), which Django 5.2's admin cannot register. Staff reach them from the job's
admin page (tests/jobs/test_admin.py): the newest points, every key's stats, and links to
the full exports, which these tests follow."""

from __future__ import annotations

import pytest
from django.contrib.admin.sites import site
from django.urls import NoReverseMatch, reverse

from metrics.models import NamedMetric, TrainingMetric
from tests.jobs.test_admin import named_write
from tests.support.factories import TrainingMetricFactory

pytestmark = pytest.mark.django_db


def change_url(job) -> str:
    return reverse("admin:jobs_trainingjob_change", args=[job.pk])


@pytest.mark.parametrize("model", [TrainingMetric, NamedMetric])
def test_points_have_no_admin_of_their_own(model):
    assert not site.is_registered(model)
    with pytest.raises(NoReverseMatch):
        reverse(f"admin:metrics_{model._meta.model_name}_changelist")


def test_the_job_page_links_every_headline_point(staff_client, job):
    for step in range(3):
        TrainingMetricFactory(job=job, step=step, loss=0.75)
    html = staff_client.get(change_url(job)).content.decode()
    csv_url = reverse("metrics:export_csv", args=[job.pk])
    assert f'href="{csv_url}"' in html
    assert f'href="{reverse("metrics:export_json", args=[job.pk])}"' in html
    export = b"".join(staff_client.get(csv_url).streaming_content).decode()
    assert len(export.strip().splitlines()) == 1 + 3  # header, then every point


def test_the_job_page_links_every_named_point(staff_client, job):
    named_write(job, {"val/loss": [2.0, float("nan")], "grad_norm": [1.0]})
    html = staff_client.get(change_url(job)).content.decode()
    csv_url = reverse("metrics:export_keys_csv", args=[job.pk])
    assert f'href="{csv_url}"' in html
    assert f'href="{reverse("metrics:export_keys_json", args=[job.pk])}"' in html
    export = b"".join(staff_client.get(csv_url).streaming_content).decode()
    assert len(export.strip().splitlines()) == 1 + 3
