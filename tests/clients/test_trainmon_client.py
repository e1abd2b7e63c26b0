"""The stdlib client against a real HTTP server (pytest-django's live_server)."""

from __future__ import annotations

import ast
import io
import json
import socket
import sys
import time
import urllib.error
from pathlib import Path

import pytest

from accounts.services import api_token_create
from clients import trainmon_client
from clients.trainmon_client import Run, TrainmonError, resend
from jobs.models import TrainingJob
from metrics.models import NamedMetric
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
def run_args(live_server, token, tmp_path) -> dict:
    return {
        "base_url": live_server.url,
        "token": token,
        "name": "client-run",
        "total_epochs": 2,
        "steps_per_epoch": 50,
        "backoff": 0.0,
        "flush_interval": 3600.0,
        "unsent_dir": tmp_path,
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


def eventually(condition, timeout: float = 10.0) -> bool:
    """Whether `condition()` comes true within `timeout` s (the sender is a thread)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_points_wait_for_the_batch_size_or_the_flush_interval(run_args):
    with Run(**{**run_args, "flush_interval": 3600.0}, batch_size=10) as run:
        job = TrainingJob.objects.get(pk=run.job_id)
        for step in range(9):
            run.log(step, loss=1.0)
        time.sleep(0.3)  # time enough for the sender, had it any reason to send
        assert not job.metrics.exists()
        run.log(9, loss=1.0)
        assert eventually(lambda: job.metrics.count() == 10)
        run.flush_interval = 0.0  # due at once from now on
        run.log(10, loss=1.0)
        assert eventually(lambda: job.metrics.count() == 11)


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
        run.log(5, loss=1.0, accuracy=1.5)  # an accuracy is from 0 to 1
        run.flush()
    assert error.value.status == 400
    assert error.value.details[0]["field"] == "columns.accuracy[0]"
    job = TrainingJob.objects.get(pk=run.job_id)
    assert job.status == Status.FAILED
    assert "columns.accuracy[0]" not in job.failure_reason
    assert "HTTP 400" in job.failure_reason
    assert run.refused == 1


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
        Run(run_args["base_url"], "t")
    with pytest.raises(ValueError, match="buffer_size"):
        Run(**run_args, batch_size=100, buffer_size=10)
    with pytest.raises(ValueError, match="batch_size"):
        Run(**run_args, batch_size=10_001)
    run = Run(**run_args)
    with pytest.raises(RuntimeError, match="start"):
        run.log(0, loss=1.0)
    run.start()
    with pytest.raises(TypeError):
        run.log(1.5, loss=1.0)
    with pytest.raises(ValueError, match="step"):
        run.log(-1, loss=1.0)
    with pytest.raises(ValueError, match="loss or at least one named metric"):
        run.log(1)
    with pytest.raises(ValueError, match="letters, digits"):
        run.log(1, **{"val,loss": 1.0})
    with pytest.raises(ValueError):
        run.log(1, val_loss="high")  # type: ignore[arg-type]
    run.close()
    with pytest.raises(RuntimeError, match="closed"):
        run.log(2, loss=1.0)


# --- named metrics, the background sender, the unsent file -----------------------------------


def named(job_id: int) -> dict[str, dict[int, float | None]]:
    values: dict[str, dict[int, float | None]] = {}
    for name, step, value in NamedMetric.objects.filter(key__job_id=job_id).values_list(
        "key__name", "step", "value"
    ):
        values.setdefault(name, {})[step] = value
    return values


def test_named_metrics_travel_beside_the_loss_or_alone(run_args):
    with Run(**run_args, batch_size=7) as run:
        for step in range(20):
            run.log(step, loss=1.0, grad_norm=step / 10, **{"train/lr scale": 2.0})
            if step % 10 == 9:  # an epoch end: validation at the same step, logged apart
                run.log(step, val_loss=0.5, **{"val/acc": float("nan")})
        run.log(20, accuracy=0.75)  # no loss: sent as a named series of that name
    job = TrainingJob.objects.get(pk=run.job_id)
    assert job.status == Status.COMPLETED
    assert job.metrics.count() == 20
    values = named(run.job_id)
    assert values["grad_norm"][19] == pytest.approx(1.9)
    assert len(values["train/lr scale"]) == 20
    assert values["val_loss"] == {9: 0.5, 19: 0.5}
    assert set(values["val/acc"]) == {9, 19}  # NaN is stored (as NULL), the job went on
    assert values["accuracy"] == {20: 0.75}
    assert (run.created, run.named_created) == (20, 20 + 20 + 2 + 2 + 1)


def sent_bodies(monkeypatch, older_server: bool = False) -> list[dict]:
    """The bodies of the client's POSTs of points, in order, as the server got them. An
    older server refuses column bodies as it did: 400, "columns" an unknown field."""
    real_urlopen = trainmon_client.urlopen
    bodies: list[dict] = []

    def recording(request, timeout):
        if request.full_url.endswith("/metrics/"):
            body = json.loads(request.data)
            bodies.append(body)
            if older_server and "columns" in body:
                refusal = {
                    "error": "Invalid request: 2 problem(s).",
                    "details": [
                        {"field": "points", "message": "Field required"},
                        {"field": "columns", "message": "Extra inputs are not permitted"},
                    ],
                }
                raise urllib.error.HTTPError(
                    request.full_url,
                    400,
                    "Bad Request",
                    {},
                    io.BytesIO(json.dumps(refusal).encode()),
                )
        return real_urlopen(request, timeout=timeout)

    monkeypatch.setattr(trainmon_client, "urlopen", recording)
    return bodies


def test_points_travel_as_columns(run_args, monkeypatch):
    bodies = sent_bodies(monkeypatch)
    with Run(**run_args, batch_size=4) as run:
        run.log(0, loss=2.0, accuracy=0.5, val_loss=1.0, timestamp=1_700_000_000.0)
        run.log(1, loss=1.5, timestamp=1_700_000_001.0)
        run.log(1, **{"val/acc": float("nan")}, timestamp=1_700_000_002.0)  # merged into step 1
        run.log(2, loss=float("inf"), epoch=1, timestamp=1_700_000_003.0)
    assert bodies == [
        {
            "columns": {
                "step": [0, 1, 2],
                "epoch": [1, 1, 1],
                "loss": [2.0, 1.5, "Infinity"],
                "accuracy": [0.5, None, None],
                "timestamp": [1_700_000_000.0, 1_700_000_002.0, 1_700_000_003.0],
                "metrics": {"val_loss": [1.0, None, None], "val/acc": [None, "NaN", None]},
            }
        }
    ]
    job = TrainingJob.objects.get(pk=run.job_id)
    assert (job.status, job.failure_reason) == (Status.FAILED, "loss diverged at step 2")
    assert (run.created, run.named_created) == (2, 2)


def test_a_server_without_columns_gets_rows_and_nothing_is_lost(run_args, token, monkeypatch):
    bodies = sent_bodies(monkeypatch, older_server=True)
    with Run(**run_args, batch_size=5) as run:
        for step in range(12):
            run.log(step, loss=1.0, val_loss=0.5)
    # Refused once as columns, then rows from there on.
    assert [next(iter(body)) for body in bodies] == ["columns", "points", "points", "points"]
    job = TrainingJob.objects.get(pk=run.job_id)
    assert (job.status, job.metrics.count(), len(named(job.pk)["val_loss"])) == (
        Status.COMPLETED,
        12,
        12,
    )
    assert (run.created, run.refused) == (12, 0)


def test_resend_to_a_server_without_columns_sends_rows(run_args, token, monkeypatch, tmp_path):
    run = Run(**run_args)
    run.start()
    run.close()
    path = tmp_path / "unsent.jsonl"
    lines = [{"trainmon_unsent": 1, "base_url": run.base_url, "job_id": run.job_id}]
    lines += [{"point": {"step": step, "loss": 1.0, "timestamp": 1e9}} for step in range(3)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    bodies = sent_bodies(monkeypatch, older_server=True)
    totals = resend(path, token)
    assert [next(iter(body)) for body in bodies] == ["columns", "points"]
    assert (totals["points"], totals["created"]) == (3, 3)


def test_the_timestamp_is_taken_when_logged_not_when_sent(run_args):
    with Run(**run_args) as run:
        run.log(0, metric=1.0, timestamp=1_700_000_000.0)
        before = time.time()
        run.log(1, metric=2.0)
        time.sleep(0.2)
    points = dict(NamedMetric.objects.values_list("step", "reported_at"))
    assert points[0].timestamp() == 1_700_000_000.0
    assert before - 1 <= points[1].timestamp() <= before + 0.1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_server():
    """A port that takes connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("server", ["refusing", "silent"])
def test_a_dead_server_never_blocks_log_beyond_the_bound_and_nothing_is_lost(
    run_args, token, live_server, silent_server, server
):
    block = 0.2
    run = Run(
        **{**run_args, "total_epochs": 20},  # steps 0..999
        batch_size=10,
        buffer_size=100,
        block_seconds=block,
        close_timeout=0.5,
    )
    # The job is created (with the default timeout: a loaded machine may take longer than
    # 0.3 s to answer that first request), then the server goes away.
    run.start()
    run.timeout = 0.3
    run.base_url = f"http://127.0.0.1:{closed_port()}" if server == "refusing" else silent_server
    durations = []
    started = time.monotonic()
    for step in range(1000):
        before = time.perf_counter()
        run.log(step, loss=1.0, val_loss=0.5)
        durations.append(time.perf_counter() - before)
    logging_took = time.monotonic() - started
    # One wait of at most `block` s once the buffer fills; after that the oldest points go
    # to disk at once. Had every log waited, 900 logs would take 180 s.
    assert max(durations) < block + 0.5
    assert logging_took < 3
    assert run.spilled >= 800
    started = time.monotonic()
    run.close()  # retries for close_timeout, then writes what is left
    assert time.monotonic() - started < 0.5 + 0.3 + 1.5
    assert run.unsent_path is not None
    assert run.unsent_path.parent == run_args["unsent_dir"]
    lines = [json.loads(line) for line in run.unsent_path.read_text().splitlines()]
    assert lines[0]["job_id"] == run.job_id
    assert sorted(line["point"]["step"] for line in lines[1:]) == list(range(1000))
    assert TrainingJob.objects.get(pk=run.job_id).metrics.count() == 0

    totals = resend(run.unsent_path, token, base_url=live_server.url)
    assert (totals["points"], totals["created"], totals["named_created"]) == (1000, 1000, 1000)
    job = TrainingJob.objects.get(pk=run.job_id)
    assert (job.metrics.count(), len(named(job.pk)["val_loss"])) == (1000, 1000)
    # Resending again is harmless: every point is a counted duplicate.
    again = resend(run.unsent_path, token, base_url=live_server.url)
    assert (again["created"], again["duplicates"], again["named_duplicates"]) == (0, 1000, 1000)


def test_a_run_that_ends_while_the_server_is_down_is_finished_by_resend(
    run_args, token, live_server, capsys
):
    with Run(**run_args, close_timeout=0.2, max_retries=1) as run:
        for step in range(30):
            run.log(step, loss=1.0)
        run.base_url = f"http://127.0.0.1:{closed_port()}"
        run.log(30, loss=0.5)
    job = TrainingJob.objects.get(pk=run.job_id)
    assert job.status == Status.RUNNING  # the finish could not be sent: it waits in the file
    assert run.unsent_path is not None
    records = [json.loads(line) for line in run.unsent_path.read_text().splitlines()]
    assert records[-1] == {"finish": {"status": "completed", "reason": ""}}
    code = trainmon_client.main(
        ["resend", str(run.unsent_path), "--token", token, "--url", live_server.url]
    )
    assert code == 0
    assert "Sent" in capsys.readouterr().out
    job.refresh_from_db()
    assert (job.status, job.metrics.count()) == (Status.COMPLETED, 31)


def test_resend_says_so_when_the_server_is_still_down(run_args, token, capsys, monkeypatch):
    # The CLI retries five times with backoff from 0.5 s: 15 s of waiting, capped here.
    monkeypatch.setattr(trainmon_client, "MAX_BACKOFF_SECONDS", 0.05)
    run = Run(**run_args, close_timeout=0.1)
    run.start()
    run.base_url = f"http://127.0.0.1:{closed_port()}"
    run.log(0, loss=1.0)
    run.close()
    code = trainmon_client.main(["resend", str(run.unsent_path), "--token", token])
    assert code == 1
    assert "run this again later" in capsys.readouterr().err


def test_a_batch_too_big_for_the_server_is_split_not_dropped(run_args, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096  # a few dozen points per request
    with Run(**run_args, batch_size=100) as run:
        for step in range(100):
            run.log(step, loss=1.0, **{f"train/metric_{k}": k / 3 for k in range(5)})
    job = TrainingJob.objects.get(pk=run.job_id)
    assert (job.status, job.metrics.count()) == (Status.COMPLETED, 100)
    assert (run.created, run.named_created, run.refused) == (100, 500, 0)
