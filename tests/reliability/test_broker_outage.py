"""The broker (Redis) goes away for 10 s under a running deployment, then comes back.

gunicorn, a worker with its embedded beat (the Procfile's processes) and the API all share
one redis-server of the test's own. While it is down the web UI and the API must answer as
usual: they never wait on the broker. Once it is back on the same port (empty: it keeps
nothing on disk), the worker and beat must reconnect by themselves and the simulation resume,
including a job created through the web form during the outage.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.error
import urllib.request

import pytest

from accounts.services import api_token_create
from bench.processes import free_port, port_open
from jobs.models import TrainingJob
from jobs.services import job_create
from metrics.models import TrainingMetric
from tests.support.factories import TrainingJobFactory
from tests.support.processes import running_processes
from tests.support.reliability import current_slot, history_problems, wait_for_ticks_after

TICK_SECONDS = 0.5
OUTAGE_SECONDS = 6.0
REQUEST_EVERY_SECONDS = 1.0
# Bounds, not speed requirements: the worker's reconnect back-off is a few seconds.
START_TIMEOUT_SECONDS = 30.0
RESUME_TIMEOUT_SECONDS = 20.0
HTTP_TIMEOUT_SECONDS = 10.0
POINTS_PER_REPORT = 10
# The worker's log line for each attempt to reach a lost broker: (interval, most tries).
RETRY = re.compile(r"Trying again in ([\d.]+) seconds?\.\.\. \(\d+/(\w+)\)")


class Web:
    """A logged-in browser (session and CSRF cookies) and an API client, against gunicorn."""

    def __init__(self, port: int, *, session: str, token: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.csrf = secrets.token_hex(16)  # any 32-character secret, sent as cookie and header
        self.cookies = f"sessionid={session}; csrftoken={self.csrf}"
        self.token = token

    def request(
        self, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.base + path, data=body, method=method, headers=headers or {}
        )
        opener = urllib.request.build_opener(NoRedirects)
        try:
            with opener.open(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def page(self, path: str) -> int:
        return self.request("GET", path, headers={"Cookie": self.cookies})[0]

    def form(self, path: str, fields: dict[str, object]) -> tuple[int, bytes]:
        body = "&".join(f"{key}={value}" for key, value in fields.items()).encode()
        headers = {
            "Cookie": self.cookies,
            "X-CSRFToken": self.csrf,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        return self.request("POST", path, body=body, headers=headers)

    def api(self, path: str, payload: object) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        status, body = self.request(
            "POST", path, body=json.dumps(payload).encode(), headers=headers
        )
        return status, json.loads(body)


class NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_web_and_api_answer_through_a_broker_outage_and_the_engine_resumes(
    user, client, settings, tmp_path
):
    settings.TRAINMON_TICK_SECONDS = TICK_SECONDS
    simulated = TrainingJobFactory.create_batch(
        5, owner=user, total_epochs=100, steps_per_epoch=1000
    )
    external = job_create(
        owner=user,
        name="reports-through-the-api",
        total_epochs=1,
        steps_per_epoch=100_000,
        source=TrainingJob.Source.EXTERNAL,
    )
    _, token = api_token_create(user=user, name="outage")
    client.force_login(user)
    port = free_port()
    web = Web(port, session=client.cookies["sessionid"].value, token=token)
    job = simulated[0]
    pages = [
        "/",
        "/?status=running",
        f"/jobs/{job.pk}/",
        f"/jobs/{job.pk}/poll/?after=0",
        f"/jobs/{job.pk}/series/",
        f"/jobs/{job.pk}/metrics.csv",
        "/healthz",
    ]
    reported = 0

    with running_processes(tmp_path, tick_seconds=TICK_SECONDS) as processes:
        processes.gunicorn("rel-web", port=port, secret_key=settings.SECRET_KEY)
        worker = processes.worker("rel-outage-worker")
        wait_for_ticks_after(
            simulated, current_slot(), timeout=START_TIMEOUT_SECONDS, what="the engine to tick"
        )

        processes.redis.stop()
        assert not port_open(processes.redis_port)
        down_since = time.monotonic()
        created = None
        while time.monotonic() - down_since < OUTAGE_SECONDS:
            for path in pages:
                assert web.page(path) == 200, path
            points = [
                {"step": step, "epoch": 1, "loss": 1.0 / (step + 1)}
                for step in range(reported, reported + POINTS_PER_REPORT)
            ]
            status, reply = web.api(f"/api/v1/jobs/{external.pk}/metrics/", {"points": points})
            assert (status, reply["created"]) == (200, POINTS_PER_REPORT), reply
            reported += POINTS_PER_REPORT
            if created is None:
                status, body = web.form(
                    "/jobs/new/",
                    {
                        "name": "created-during-the-outage",
                        "total_epochs": 100,
                        "steps_per_epoch": 1000,
                        "steps_per_tick": 10,
                        "start": "on",
                        "initial_loss": 2.5,
                        "final_loss": 0.3,
                        "base_learning_rate": 0.001,
                    },
                )
                assert status == 302, body[:500]
                created = TrainingJob.objects.get(name="created-during-the-outage")
                assert created.status == TrainingJob.Status.RUNNING
            time.sleep(REQUEST_EVERY_SECONDS)
        assert not port_open(processes.redis_port), "the broker came back by itself?"
        assert worker.alive, worker.log_tail()

        processes.redis.start()
        processes.redis.wait_for_port(processes.redis_port)
        back_at, back_in_slot = time.monotonic(), current_slot()
        wait_for_ticks_after(
            [*simulated, created],
            back_in_slot,
            timeout=RESUME_TIMEOUT_SECONDS,
            what="the engine to resume after the broker came back",
        )
        resumed_after = time.monotonic() - back_at
        assert worker.alive, worker.log_tail()
        log = worker.log()
        worker.stop()

    # The worker lost the broker and retried it once a second, with no limit on the tries.
    assert "Connection to broker lost" in log
    assert set(RETRY.findall(log)) == {("1.00", "None")}, RETRY.findall(log)
    # Beat said so in one warning line per tick it could not send, with no traceback (Celery's
    # own scheduler logs "Message Error" with some 160 lines of stack, every tick).
    assert "WARNING/Beat] Cannot send simulate-tick: the broker is unreachable" in log
    assert "Message Error" not in log
    assert [line for line in log.splitlines() if "/Beat]" in line and "INFO/" not in line] == [
        line for line in log.splitlines() if "WARNING/Beat] Cannot send " in line
    ]
    assert history_problems([*simulated, created]) == []
    steps = list(
        TrainingMetric.objects.filter(job=external).order_by("step").values_list("step", flat=True)
    )
    assert steps == list(range(reported))
    print(f"the engine resumed {resumed_after:.1f} s after the broker came back")
