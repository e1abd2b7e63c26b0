"""Experiments and run data outside the MLflow protocol: the dashboard's filter, the native
API's and the new-job form's experiment, and the job page's tags."""

from __future__ import annotations

import pytest
from django.urls import reverse

from accounts.services import api_token_create
from jobs.models import Experiment, TrainingJob
from jobs.services import experiment_default, experiment_get_or_create
from tests.support.factories import TrainingJobFactory

pytestmark = pytest.mark.django_db


def test_the_dashboard_filters_by_experiment(user_client, user, other_user):
    vision = experiment_get_or_create(user=user, name="vision")
    default = experiment_default(user=user)
    TrainingJobFactory(owner=user, name="in-vision", experiment=vision)
    TrainingJobFactory(owner=user, name="in-default-by-null")
    TrainingJobFactory(owner=user, name="in-default-by-fk", experiment=default)
    theirs = experiment_get_or_create(user=other_user, name="theirs")
    page = user_client.get(reverse("jobs:dashboard")).content.decode()
    assert 'id="job-experiment"' in page
    assert "vision" in page and "theirs" not in page
    page = user_client.get(reverse("jobs:dashboard"), {"experiment": vision.pk}).content.decode()
    assert "in-vision" in page and "in-default-by-null" not in page
    page = user_client.get(reverse("jobs:dashboard"), {"experiment": default.pk}).content.decode()
    assert "in-default-by-null" in page and "in-default-by-fk" in page
    assert "in-vision" not in page
    # Another user's experiment, or nonsense, filters nothing rather than failing.
    for value in (theirs.pk, "x", "9" * 30):
        response = user_client.get(reverse("jobs:dashboard"), {"experiment": value})
        assert response.status_code == 200
        assert "in-vision" in response.content.decode()


def test_the_native_api_names_an_experiment(client, user):
    _, raw = api_token_create(user=user, name="t")
    headers = {"Authorization": f"Bearer {raw}"}
    response = client.post(
        reverse("api:job_create"),
        {"name": "api-job", "experiment": "from-api"},
        "application/json",
        headers=headers,
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["experiment"] == "from-api"
    job = TrainingJob.objects.get(pk=body["id"])
    assert job.experiment == Experiment.objects.get(owner=user, name="from-api")
    assert body["run_id"] == job.run_uuid
    # The same name again joins the same experiment; none means Default.
    again = client.post(
        reverse("api:job_create"),
        {"name": "api-job-2", "experiment": "from-api"},
        "application/json",
        headers=headers,
    ).json()
    assert TrainingJob.objects.get(pk=again["id"]).experiment == job.experiment
    plain = client.post(
        reverse("api:job_create"), {"name": "plain"}, "application/json", headers=headers
    ).json()
    assert plain["experiment"] == "Default"
    bad = client.post(
        reverse("api:job_create"),
        {"name": "x", "experiment": "  "},
        "application/json",
        headers=headers,
    )
    assert bad.status_code == 400


def test_the_new_job_form_names_an_experiment(user_client, user):
    data = {
        "name": "form-job",
        "total_epochs": "1",
        "steps_per_epoch": "5",
        "steps_per_tick": "5",
        "initial_loss": "2.5",
        "final_loss": "0.3",
        "base_learning_rate": "0.001",
        "experiment": "from-form",
    }
    response = user_client.post(reverse("jobs:new"), data)
    assert response.status_code == 302
    assert TrainingJob.objects.get(name="form-job").experiment.name == "from-form"
    # A job the rules refuse leaves no experiment behind.
    refused = user_client.post(
        reverse("jobs:new"), {**data, "final_loss": "9", "experiment": "never-made"}
    )
    assert refused.status_code == 400
    assert not Experiment.objects.filter(name="never-made").exists()


def test_the_job_page_shows_tags_with_system_tags_folded(user_client, user):
    job = TrainingJobFactory(
        owner=user,
        source=TrainingJob.Source.EXTERNAL,
        tags={"team": "nlp", "mlflow.source.type": "LOCAL", "mlflow.user": "ana"},
        experiment=experiment_get_or_create(user=user, name="exp-a"),
    )
    page = user_client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    user_tags = page[page.index('id="run-tags"') : page.index('<details class="system-tags"')]
    assert "team" in user_tags and "nlp" in user_tags
    assert "mlflow.source.type" not in user_tags
    folded = page[page.index('<details class="system-tags"') :]
    assert "mlflow.source.type" in folded and "mlflow.user" in folded
    assert "exp-a" in page and job.run_uuid in page
