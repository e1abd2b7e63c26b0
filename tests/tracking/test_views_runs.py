"""Runs through the real MLflow client (mlflow-skinny) against live_server."""

from __future__ import annotations

import math
import time

import mlflow
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from jobs.models import TrainingJob
from metrics.models import MetricKey, NamedMetric, TrainingMetric


def job_of(run_id: str) -> TrainingJob:
    return TrainingJob.objects.get(run_uuid=run_id)


def test_a_fluent_run_reports_params_tags_and_metrics_and_finishes(tracking):
    mlflow.set_experiment("fluent")
    with mlflow.start_run(run_name="first") as run:
        mlflow.log_params({"lr": 0.01, "optimizer": "adam"})
        mlflow.log_param("batch_size", 32)
        mlflow.set_tag("team", "nlp")
        for step in range(10):
            mlflow.log_metric("loss", 2.0 / (step + 1), step=step)
        mlflow.log_metrics({"accuracy": 0.9, "val/loss": float("nan")}, step=9)
    job = job_of(run.info.run_id)
    assert job.owner == tracking.user
    assert job.name == "first"
    assert job.source == TrainingJob.Source.EXTERNAL
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.finished_at is not None
    assert job.experiment.name == "fluent"
    assert job.hyperparameters == {"lr": "0.01", "optimizer": "adam", "batch_size": "32"}
    assert job.tags["team"] == "nlp"
    assert job.tags["mlflow.source.type"] == "LOCAL"
    # The headline follows "loss" (tracking.headline): progress, last and best loss.
    assert job.current_step == 10
    assert job.last_loss == pytest.approx(0.2)
    assert job.best_loss == pytest.approx(0.2)
    assert TrainingMetric.objects.filter(job=job).count() == 10
    assert set(MetricKey.objects.filter(job=job).values_list("name", flat=True)) == {
        "loss",
        "accuracy",
        "val/loss",
    }

    got = tracking.client().get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "first"
    assert got.info.lifecycle_stage == "active"
    assert got.info.artifact_uri == (
        f"mlflow-artifacts:/{got.info.experiment_id}/{run.info.run_id}/artifacts"
    )
    assert got.info.end_time >= got.info.start_time
    assert got.data.params == {"lr": "0.01", "optimizer": "adam", "batch_size": "32"}
    assert got.data.tags["team"] == "nlp"
    assert got.data.tags["mlflow.runName"] == "first"
    assert got.data.metrics["loss"] == pytest.approx(0.2)
    assert got.data.metrics["accuracy"] == 0.9
    assert math.isnan(got.data.metrics["val/loss"])


def test_a_run_that_raises_ends_failed_and_the_error_reaches_the_caller(tracking):
    mlflow.set_experiment("crashes")
    with pytest.raises(ZeroDivisionError), mlflow.start_run() as run:
        mlflow.log_metric("loss", 1.0, step=0)
        _ = 1 / 0
    job = job_of(run.info.run_id)
    assert job.status == TrainingJob.Status.FAILED
    assert job.failure_reason
    assert tracking.client().get_run(run.info.run_id).info.status == "FAILED"


def test_start_run_without_an_experiment_uses_the_default(tracking):
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
    assert run.info.experiment_id == "0"
    job = job_of(run.info.run_id)
    assert job.experiment.is_default
    assert job.experiment.owner == tracking.user
    # A generated name when neither run_name nor the mlflow.runName tag gives one.
    assert job.name
    experiment = tracking.client().get_experiment("0")
    assert experiment.lifecycle_stage == "active"
    assert experiment.name == "Default"


def test_the_run_name_comes_from_the_mlflow_run_name_tag(tracking):
    client = tracking.client()
    run = client.create_run("0", tags={"mlflow.runName": "from-tag"})
    assert run.info.run_name == "from-tag"
    assert job_of(run.info.run_id).name == "from-tag"


def test_resuming_a_finished_run_runs_it_again_and_keeps_its_points(tracking):
    mlflow.set_experiment("resume")
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 1.0, step=0)
    assert job_of(run.info.run_id).status == TrainingJob.Status.COMPLETED
    with mlflow.start_run(run_id=run.info.run_id):
        assert job_of(run.info.run_id).status == TrainingJob.Status.RUNNING
        assert job_of(run.info.run_id).finished_at is None
        mlflow.log_metric("loss", 0.5, step=1)
    job = job_of(run.info.run_id)
    assert job.status == TrainingJob.Status.COMPLETED
    history = tracking.client().get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]


def test_log_batch_past_the_chunk_limits_stores_everything(tracking):
    client = tracking.client()
    run = client.create_run("0")
    now = int(time.time() * 1000)
    metrics = [Metric(f"m{i % 5}", float(i), now, i // 5) for i in range(2600)]
    params = [Param(f"p{i}", str(i)) for i in range(250)]
    tags = [RunTag(f"t{i}", "v" * 10) for i in range(150)]
    client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=tags)
    job = job_of(run.info.run_id)
    assert NamedMetric.objects.filter(key__job=job).count() == 2600
    assert len(job.hyperparameters) == 250
    assert sum(1 for key in job.tags if key.startswith("t")) == 150
    got = client.get_run(run.info.run_id)
    assert got.data.params["p249"] == "249"
    assert got.data.metrics["m4"] == 2599.0


def test_async_logging_reaches_every_point_exactly_once(tracking):
    mlflow.config.enable_async_logging(True)
    try:
        mlflow.set_experiment("async")
        with mlflow.start_run() as run:
            for step in range(300):
                mlflow.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
            mlflow.log_params({"a": "1", "b": "2"})
    finally:
        mlflow.config.enable_async_logging(False)
    job = job_of(run.info.run_id)
    for name in ("loss", "lr"):
        steps = list(
            NamedMetric.objects.filter(key__job=job, key__name=name).values_list("step", flat=True)
        )
        assert sorted(steps) == list(range(300))
    assert job.hyperparameters == {"a": "1", "b": "2"}
    assert job.status == TrainingJob.Status.COMPLETED
    assert job.current_step == 300


def test_a_retried_batch_stores_no_point_twice(tracking):
    client = tracking.client()
    run = client.create_run("0")
    batch = [Metric("loss", 1.0, 1000, 0), Metric("loss", 0.5, 1000, 1)]
    client.log_batch(run.info.run_id, metrics=batch)
    client.log_batch(run.info.run_id, metrics=batch)
    # MLflow allows a second value at a step; trainmon keeps the first (README).
    client.log_batch(run.info.run_id, metrics=[Metric("loss", 9.0, 2000, 1)])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5)]


def test_params_are_immutable_the_same_value_again_is_fine(tracking):
    client = tracking.client()
    run = client.create_run("0")
    client.log_param(run.info.run_id, "lr", "0.01")
    client.log_param(run.info.run_id, "lr", "0.01")
    with pytest.raises(MlflowException) as raised:
        client.log_param(run.info.run_id, "lr", "0.02")
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    # The whole batch is refused: its metric and tag are not stored either.
    with pytest.raises(MlflowException):
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("loss", 1.0, 0, 0)],
            params=[Param("lr", "0.5")],
            tags=[RunTag("t", "v")],
        )
    job = job_of(run.info.run_id)
    assert job.hyperparameters == {"lr": "0.01"}
    assert "t" not in job.tags
    assert not MetricKey.objects.filter(job=job).exists()


def test_tags_set_and_deleted(tracking):
    client = tracking.client()
    run = client.create_run("0")
    client.set_tag(run.info.run_id, "team", "vision")
    client.set_tag(run.info.run_id, "team", "nlp")
    assert client.get_run(run.info.run_id).data.tags["team"] == "nlp"
    client.delete_tag(run.info.run_id, "team")
    assert "team" not in client.get_run(run.info.run_id).data.tags
    with pytest.raises(MlflowException) as raised:
        client.delete_tag(run.info.run_id, "team")
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"


def test_renaming_a_run_with_the_run_name_tag_or_update(tracking):
    client = tracking.client()
    run = client.create_run("0", run_name="before")
    client.set_tag(run.info.run_id, "mlflow.runName", "after")
    assert job_of(run.info.run_id).name == "after"
    client.update_run(run.info.run_id, name="again")
    assert client.get_run(run.info.run_id).info.run_name == "again"


def test_deleted_runs_refuse_writes_and_leave_search_until_restored(tracking):
    client = tracking.client()
    run = client.create_run("0")
    client.delete_run(run.info.run_id)
    assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    with pytest.raises(MlflowException) as raised:
        client.log_metric(run.info.run_id, "loss", 1.0)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    assert client.search_runs(["0"]) == []
    assert len(client.search_runs(["0"], run_view_type=3)) == 1
    client.restore_run(run.info.run_id)
    assert [r.info.run_id for r in client.search_runs(["0"])] == [run.info.run_id]


def test_statuses_map_both_ways(tracking):
    client = tracking.client()
    run = client.create_run("0")
    for mlflow_status, status in [
        ("KILLED", TrainingJob.Status.CANCELLED),
        ("RUNNING", TrainingJob.Status.RUNNING),
        ("SCHEDULED", TrainingJob.Status.QUEUED),
        ("FAILED", TrainingJob.Status.FAILED),
        ("FINISHED", TrainingJob.Status.COMPLETED),
    ]:
        client.set_terminated(run.info.run_id, mlflow_status)
        assert job_of(run.info.run_id).status == status
        assert client.get_run(run.info.run_id).info.status == mlflow_status


def test_log_inputs_are_kept_with_the_run(tracking):
    from mlflow.entities import Dataset, DatasetInput, InputTag

    client = tracking.client()
    run = client.create_run("0")
    dataset = Dataset("mnist", "abc123", "local", "/data/mnist", '{"x": 1}', "")
    client.log_inputs(
        run.info.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])]
    )
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("mnist", "abc123")]
    assert inputs[0].tags[0].value == "train"


def test_lightning_mlflow_logger_call_pattern(tracking):
    """MLFlowLogger (lightning 2.x) as it calls MlflowClient, replayed without torch."""
    client = tracking.client()
    experiment = client.get_experiment_by_name("lightning_logs")
    assert experiment is None
    experiment_id = client.create_experiment(name="lightning_logs")
    run = client.create_run(experiment_id=experiment_id, tags={"mlflow.runName": "lit-run"})
    hparams = {f"hp{i}": "x" * 300 if i == 0 else i for i in range(130)}
    params = [Param(key, str(value)[:250]) for key, value in hparams.items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id=run.info.run_id, params=params[start : start + 100])
    for step in range(20):
        now = int(time.time() * 1000)
        client.log_batch(
            run_id=run.info.run_id,
            metrics=[
                Metric("train_loss", 1.0 / (step + 1), now, step),
                Metric("epoch", float(step // 10), now, step),
            ],
        )
    client.get_run(run.info.run_id)
    client.set_terminated(run.info.run_id, "FINISHED")
    job = job_of(run.info.run_id)
    assert job.name == "lit-run"
    assert job.status == TrainingJob.Status.COMPLETED
    assert len(job.hyperparameters) == 130
    assert job.hyperparameters["hp0"] == "x" * 250
    assert job.last_loss == pytest.approx(1 / 20)  # train_loss is a headline loss key
    assert NamedMetric.objects.filter(key__job=job, key__name="epoch").count() == 20


def test_hugging_face_mlflow_callback_call_pattern(tracking):
    """transformers' MLflowCallback: params in chunks, metrics logged asynchronously each
    logging step, end_run at the end."""
    mlflow.set_experiment("hf")
    run = mlflow.start_run(run_name="trainer")
    params = {f"arg{i}": str(i) for i in range(150)}
    items = list(params.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]), synchronous=False)
    for step in range(1, 31):
        mlflow.log_metrics(
            {"loss": 3.0 / step, "learning_rate": 5e-5, "grad_norm": 1.0, "epoch": step / 10},
            step=step,
            synchronous=False,
        )
    mlflow.log_metrics({"eval_loss": 0.7, "eval_accuracy": 0.8}, step=30, synchronous=False)
    mlflow.end_run()
    job = job_of(run.info.run_id)
    assert job.status == TrainingJob.Status.COMPLETED
    assert len(job.hyperparameters) == 150
    assert job.last_loss == pytest.approx(0.1)
    assert job.last_learning_rate == pytest.approx(5e-5)
    assert NamedMetric.objects.filter(key__job=job, key__name="loss").count() == 30
    assert tracking.client().get_run(run.info.run_id).data.metrics["eval_accuracy"] == 0.8


def test_error_codes_the_client_branches_on(tracking, other_user):
    from jobs.services import job_create

    client = tracking.client()
    with pytest.raises(MlflowException) as raised:
        client.get_run("0" * 32)
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    # Another user's run is as missing as one that never existed.
    theirs = job_create(owner=other_user, name="theirs", source=TrainingJob.Source.EXTERNAL)
    with pytest.raises(MlflowException) as raised:
        client.get_run(theirs.run_uuid)
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    with pytest.raises(MlflowException) as raised:
        client.log_metric(theirs.run_uuid, "loss", 1.0)
    assert raised.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert not MetricKey.objects.filter(job=theirs).exists()
    run = client.create_run("0")
    with pytest.raises(MlflowException) as raised:
        client.log_metric(run.info.run_id, "bad key!", 1.0)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as raised:
        client.set_tag(run.info.run_id, "long", "x" * 8001)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException) as raised:
        client.log_param(run.info.run_id, "big", "x" * 6001)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    client.log_param(run.info.run_id, "k" * 250, "x" * 6000)
    with pytest.raises(MlflowException) as raised:
        client.log_param(run.info.run_id, "k" * 251, "x")
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_a_wrong_token_is_unauthenticated(tracking, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "not-a-token")
    with pytest.raises(MlflowException) as raised:
        tracking.client().search_experiments()
    assert raised.value.error_code == "UNAUTHENTICATED"


def test_basic_auth_with_the_token_as_password(tracking, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", tracking.user.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", tracking.token)
    run = tracking.client().create_run("0")
    assert job_of(run.info.run_id).owner == tracking.user
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone-else")
    with pytest.raises(MlflowException) as raised:
        tracking.client().get_run(run.info.run_id)
    assert raised.value.error_code == "UNAUTHENTICATED"


def test_a_diverged_run_stays_failed_when_the_script_ends_normally(tracking):
    with mlflow.start_run() as run:
        mlflow.log_metric("loss", 1.0, step=0)
        mlflow.log_metric("loss", float("nan"), step=1)
        assert job_of(run.info.run_id).status == TrainingJob.Status.FAILED
    job = job_of(run.info.run_id)
    assert job.status == TrainingJob.Status.FAILED
    assert "diverged" in job.failure_reason
    assert tracking.client().get_run(run.info.run_id).info.status == "FAILED"


def test_a_simulated_job_takes_no_mlflow_writes(tracking):
    from tests.support.factories import TrainingJobFactory

    simulated = TrainingJobFactory(owner=tracking.user)
    client = tracking.client()
    assert client.get_run(simulated.run_uuid).info.run_name == simulated.name
    with pytest.raises(MlflowException) as raised:
        client.log_metric(simulated.run_uuid, "loss", 1.0)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"
    with pytest.raises(MlflowException):
        client.set_terminated(simulated.run_uuid)
    assert job_of(simulated.run_uuid).status == simulated.status
