"""Experiments through the real MLflow client against live_server."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from jobs.models import Experiment, TrainingJob
from jobs.services import experiment_default


def test_set_experiment_creates_it_once_and_groups_the_runs(tracking):
    mlflow.set_experiment("grouped")
    with mlflow.start_run() as first:
        pass
    mlflow.set_experiment("grouped")
    with mlflow.start_run() as second:
        pass
    experiment = Experiment.objects.get(owner=tracking.user, name="grouped")
    assert first.info.experiment_id == second.info.experiment_id == str(experiment.pk)
    assert set(experiment.jobs.values_list("run_uuid", flat=True)) == {
        first.info.run_id,
        second.info.run_id,
    }


def test_create_get_by_name_update_delete_restore(tracking):
    client = tracking.client()
    experiment_id = client.create_experiment("exp", tags={"owner": "me"})
    with pytest.raises(MlflowException) as raised:
        client.create_experiment("exp")
    assert raised.value.error_code == "RESOURCE_ALREADY_EXISTS"
    got = client.get_experiment_by_name("exp")
    assert got.experiment_id == experiment_id
    assert got.tags == {"owner": "me"}
    assert got.lifecycle_stage == "active"
    assert client.get_experiment_by_name("missing") is None
    client.rename_experiment(experiment_id, "renamed")
    assert client.get_experiment(experiment_id).name == "renamed"
    client.set_experiment_tag(experiment_id, "stage", "dev")
    assert client.get_experiment(experiment_id).tags["stage"] == "dev"
    client.delete_experiment(experiment_id)
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"
    with pytest.raises(MlflowException):
        client.create_run(experiment_id)
    names = [e.name for e in client.search_experiments()]
    assert names == ["Default"]
    assert {e.name for e in client.search_experiments(view_type=3)} == {"Default", "renamed"}
    client.restore_experiment(experiment_id)
    assert client.get_experiment(experiment_id).lifecycle_stage == "active"
    with pytest.raises(MlflowException) as raised:
        client.delete_experiment("0")
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_search_experiments_filters_orders_and_pages(tracking):
    client = tracking.client()
    for name in ("alpha", "beta", "gamma", "delta"):
        client.create_experiment(name, tags={"group": "greek" if name != "delta" else "other"})
    found = client.search_experiments(filter_string="name LIKE '%a'", order_by=["name DESC"])
    assert [e.name for e in found] == ["gamma", "delta", "beta", "alpha"]
    found = client.search_experiments(filter_string="tags.group = 'greek'", order_by=["name"])
    assert [e.name for e in found] == ["alpha", "beta", "gamma"]
    page = client.search_experiments(max_results=2, order_by=["name ASC"])
    assert [e.name for e in page] == ["Default", "alpha"]
    assert page.token
    rest = client.search_experiments(max_results=2, order_by=["name ASC"], page_token=page.token)
    assert [e.name for e in rest] == ["beta", "delta"]


def test_another_users_experiment_is_missing(tracking, other_user):
    theirs = Experiment.objects.create(owner=other_user, name="secret")
    client = tracking.client()
    with pytest.raises(MlflowException) as raised:
        client.get_experiment(str(theirs.pk))
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as raised:
        client.create_run(str(theirs.pk))
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert client.get_experiment_by_name("secret") is None
    # The same name is free for this user: names are unique per owner.
    assert client.create_experiment("secret") != str(theirs.pk)
    assert not TrainingJob.objects.filter(experiment=theirs).exists()


def test_each_user_has_one_default(db, user):
    first = experiment_default(user=user)
    assert experiment_default(user=user) == first
    assert first.is_default
    assert Experiment.objects.filter(owner=user).count() == 1
