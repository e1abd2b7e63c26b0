"""The stdlib client against a real HTTP server (pytest-django's live_server)."""

from __future__ import annotations

import ast
import sys
import urllib.error
from pathlib import Path

import pytest

from accounts.services import api_token_create
from clients import trainmon_client
from clients.trainmon_client import Run, TrainmonError
from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory, UserFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def owner():
    return UserFactory()


@pytest.fixture
def token(owner) -> str:
    return api_token_create(user=owner, name="client tests")[1]


@pytest.fixture
def run_args(live_server, token) -> dict:
    return {
        "base_url": live_server.url,
        "token": token,
        "name": "client-run",
        "total_epochs": 2,
        "steps_per_epoch": 50,
        "backoff": 0.0,
        "flush_interval": 3600.0,
    }


def test_the_client_uses_the_standard_library_only():
    tree = ast.parse(Path(trainmon_client.__file__).read_text())
    modules = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert modules - {"__future__"} <= set(sys.stdlib_module_names)


def test_a_run_reports_its_points_and_completes(run_args, owner):
    with Run(**run_args, batch_size=30, hyperparameters={"lr": 0.1}) as run:
        assert run.total_steps == 100
        for step in range(100):
            run.log(step, loss=2.0 - step / 100, accuracy=step / 100, learning_rate=0.1)
    job = TrainingJob.objects.get(pk=run.job_id)
    assert (job.owner, job.source, job.status) == (owner, "external", Status.COMPLETED)
    assert job.hyperparameters == {"lr": 0.1}
    assert job.current_step == 100
    assert (run.created, run.duplicates) == (100, 0)
    assert run.job["status"] == "completed"
    assert run.url.endswith(f"/jobs/{job.pk}/")
    epochs = dict(job.metrics.values_list("step", "epoch"))
    assert (epochs[0], epochs[49], epochs[50], epochs[99]) == (1, 1, 2, 2)
    assert job.metrics.get(step=99).accuracy == pytest.approx(0.99)


def test_points_wait_for_the_batch_size_or_the_flush_interval(run_args):
    with Run(**{**run_args, "flush_interval": 3600.0}, batch_size=10) as run:
        job = TrainingJob.objects.get(pk=run.job_id)
        for step in range(9):
            run.log(step, loss=1.0)
        assert not job.metrics.exists()
        run.log(9, loss=1.0)
        assert job.metrics.count() == 10
        run.flush_interval = 0.0  # due at every log from now on
        run.log(10, loss=1.0)
        assert job.metrics.count() == 11


def test_an_exception_flushes_fails_the_job_and_propagates(run_args):
    with pytest.raises(RuntimeError, match="boom"), Run(**run_args) as run:
        for step in range(7):
            run.log(step, loss=1.0)
        raise RuntimeError("boom")
    job = TrainingJob.objects.get(pk=run.job_id)
    assert job.status == Status.FAILED
    assert job.failure_reason == "RuntimeError: boom"
    assert job.metrics.count() == 7


def test_a_nan_loss_fails_the_job_and_stops_the_run(run_args):
    with (
        pytest.raises(TrainmonError, match="diverged at step 3"),
        Run(**run_args, batch_size=1) as run,
    ):
        for step in range(10):
            run.log(step, loss=float("nan") if step == 3 else 1.0)
    job = TrainingJob.objects.get(pk=run.job_id)
    assert job.status == Status.FAILED
    assert job.failure_reason == "loss diverged at step 3"
    assert sorted(job.metrics.values_list("step", flat=True)) == [0, 1, 2]


def test_infinite_loss_and_nan_accuracy_travel_as_json(run_args):
    with Run(**run_args) as run:
        run.log(0, loss=1.0, accuracy=float("nan"), learning_rate=float("nan"))
        run.log(1, loss=float("inf"))
    job = TrainingJob.objects.get(pk=run.job_id)
    assert list(job.metrics.values_list("step", "accuracy", "learning_rate")) == [(0, None, None)]
    assert (job.status, job.failure_reason) == (Status.FAILED, "loss diverged at step 1")


def test_a_lost_response_is_retried_without_double_counting(run_args, monkeypatch):
    """The server stores a batch, the reply is lost, the client sends it again."""
    real_urlopen = trainmon_client.urlopen
    lost = []

    def urlopen_losing_first_metrics_reply(request, timeout):
        response = real_urlopen(request, timeout=timeout)
        if request.full_url.endswith("/metrics/") and not lost:
            response.read()
            response.close()
            lost.append(request.data)
            raise urllib.error.URLError(ConnectionResetError("connection reset by peer"))
        return response

    monkeypatch.setattr(trainmon_client, "urlopen", urlopen_losing_first_metrics_reply)
    with Run(**run_args, batch_size=25) as run:
        for step in range(100):
            run.log(step, loss=1.0 + step)
    assert len(lost) == 1
    job = TrainingJob.objects.get(pk=run.job_id)
    assert job.metrics.count() == 100
    assert (run.created, run.duplicates) == (75, 25)
    assert job.current_step == 100
    assert job.status == Status.COMPLETED


def test_5xx_is_retried_with_backoff_then_given_up(run_args, monkeypatch):
    real_urlopen = trainmon_client.urlopen
    calls = []
    sleeps = []

    def unavailable_twice(request, timeout):
        calls.append(request.full_url)
        if len(calls) <= 2:
            raise urllib.error.HTTPError(request.full_url, 503, "Unavailable", {}, None)
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(trainmon_client, "urlopen", unavailable_twice)
    monkeypatch.setattr(trainmon_client.time, "sleep", sleeps.append)
    run = Run(**{**run_args, "backoff": 0.5})
    run.start()
    assert len(calls) == 3
    assert sleeps == [0.5, 1.0]
    assert TrainingJob.objects.count() == 1

    def always_failing(request, timeout):
        calls.append(request.full_url)
        raise urllib.error.HTTPError(request.full_url, 502, "Bad Gateway", {}, None)

    calls.clear()
    monkeypatch.setattr(trainmon_client, "urlopen", always_failing)
    run.max_retries = 3
    with pytest.raises(TrainmonError, match="HTTP 502") as error:
        run.finish("completed")
    assert error.value.status == 502
    assert len(calls) == 4


def test_4xx_is_not_retried_and_carries_the_servers_message(live_server, monkeypatch):
    real_urlopen = trainmon_client.urlopen
    calls = []

    def counting(request, timeout):
        calls.append(request.full_url)
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(trainmon_client, "urlopen", counting)
    run = Run(live_server.url, "tm_wrong", name="x", total_epochs=1, steps_per_epoch=1)
    with pytest.raises(TrainmonError) as error, run:
        pass
    assert error.value.status == 401
    assert "Bearer" in str(error.value)
    assert len(calls) == 1
    assert not TrainingJob.objects.exists()


def test_invalid_points_raise_with_the_servers_details(run_args):
    with pytest.raises(TrainmonError) as error, Run(**run_args) as run:
        # A negative step (a step past the declared length is stored since issue 12).
        run.log(-1, loss=1.0, epoch=1)
        run.flush()
    assert error.value.status == 400
    assert error.value.details[0]["field"] == "points[0].step"
    job = TrainingJob.objects.get(pk=run.job_id)
    assert job.status == Status.FAILED
    assert "points[0].step" not in job.failure_reason
    assert "HTTP 400" in job.failure_reason


def test_an_unreachable_server_is_a_clear_error(token):
    run = Run(
        "http://127.0.0.1:9",
        token,
        name="x",
        total_epochs=1,
        steps_per_epoch=1,
        max_retries=2,
        backoff=0.0,
    )
    with pytest.raises(TrainmonError, match=r"no answer from http://127\.0\.0\.1:9"):
        run.start()


def test_resume_an_existing_job(run_args, token, live_server):
    first = Run(**run_args)
    first.start()
    for step in range(40):
        first.log(step, loss=1.0)
    first.flush()  # then the process dies: no finish
    with Run(live_server.url, token, job_id=first.job_id, backoff=0.0) as resumed:
        assert resumed.total_steps == 100
        for step in range(30, 100):  # from a checkpoint before the crash: overlap is fine
            resumed.log(step, loss=0.5)
    job = TrainingJob.objects.get(pk=first.job_id)
    assert (job.status, job.current_step, job.metrics.count()) == (Status.COMPLETED, 100, 100)
    assert (resumed.created, resumed.duplicates) == (60, 10)


def test_resuming_a_finished_or_foreign_job_fails(live_server, token, owner):
    foreign = TrainingJobFactory(owner=UserFactory(), source="external")
    with pytest.raises(TrainmonError) as error:
        Run(live_server.url, token, job_id=foreign.pk).start()
    assert error.value.status == 404
    mine = TrainingJobFactory(owner=owner, source="external", status=Status.COMPLETED)
    with pytest.raises(TrainmonError, match="completed") as error:
        Run(live_server.url, token, job_id=mine.pk).start()
    assert error.value.status == 409


def test_finish_is_safe_to_retry(run_args):
    run = Run(**run_args)
    run.start()
    run.finish("completed")
    # A retry after a lost reply finds the job already completed: not an error.
    assert run.finish("completed")["status"] == "completed"
    with pytest.raises(TrainmonError):
        run.finish("failed", "too late")


def test_the_client_refuses_bad_arguments(run_args):
    with pytest.raises(ValueError, match="job_id"):
        Run(run_args["base_url"], "t", name="x")
    with pytest.raises(ValueError, match="batch_size"):
        Run(**run_args, batch_size=10_001)
    run = Run(**run_args)
    with pytest.raises(RuntimeError, match="start"):
        run.log(0, loss=1.0)
    run.start()
    with pytest.raises(TypeError):
        run.log(1.5, loss=1.0)
