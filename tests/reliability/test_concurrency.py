"""Two workers and two beat schedulers (an operator's mistake), 50 jobs: no step lost or doubled.

Each worker runs as the Procfile starts it, `celery worker --beat`, so two beats send a tick
every period; a small chunk size makes every tick fan out `advance_jobs` subtasks, which the
two workers' four pool processes race for. Meanwhile the test pauses, resumes and cancels jobs
through the web UI, as a user would.
"""

from __future__ import annotations

import re
import time

import pytest
from django.urls import reverse

from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory
from tests.support.processes import running_processes
from tests.support.reliability import history_problems, steps_of

TICK_SECONDS = 0.5
RUN_SECONDS = 16
CHUNK_SIZE = 20  # 50 jobs: three advance_jobs subtasks per tick
TOGGLE_EVERY_SECONDS = 2.0
CANCEL_AFTER_SECONDS = 6.0
# Long jobs cannot finish in RUN_SECONDS (at most 32 ticks of 25 steps); short ones finish
# within a few ticks, the last tick a partial one (7 does not divide their lengths).
LONG_JOBS, LONG_EPOCHS, LONG_STEPS_PER_EPOCH = 44, 50, 100
SHORT_JOBS, SHORT_EPOCHS, SHORT_STEPS_PER_TICK = 6, 3, 7
# A job running freely all along moves at least this many ticks: proof the engine ran at all.
MIN_TICKS_SEEN = 3
SUBTASK_DONE = re.compile(r"Task metrics\.tasks\.advance_jobs\[[^\]]+\] succeeded")


def htmx_action(client, job: TrainingJob, action: str) -> None:
    url = reverse("jobs:action", args=[job.pk, action])
    response = client.post(url, headers={"HX-Request": "true"})
    assert response.status_code == 200, (action, job.pk, response.content[:300])


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_workers_and_two_beats_write_every_step_exactly_once(user, client, settings, tmp_path):
    settings.TRAINMON_TICK_SECONDS = TICK_SECONDS
    client.force_login(user)
    long_jobs = [
        TrainingJobFactory(
            owner=user,
            total_epochs=LONG_EPOCHS,
            steps_per_epoch=LONG_STEPS_PER_EPOCH,
            steps_per_tick=5 + index % 21,
        )
        for index in range(LONG_JOBS)
    ]
    short_jobs = [
        TrainingJobFactory(
            owner=user,
            total_epochs=SHORT_EPOCHS,
            steps_per_epoch=5 + 2 * index,
            steps_per_tick=SHORT_STEPS_PER_TICK,
        )
        for index in range(SHORT_JOBS)
    ]
    toggled, cancelled, free = long_jobs[:4], long_jobs[4:6], long_jobs[6:]
    frozen_at: dict[int, int] = {}  # job -> its step when it was paused or cancelled

    with running_processes(
        tmp_path,
        tick_seconds=TICK_SECONDS,
        env={"TRAINMON_TICK_CHUNK_SIZE": str(CHUNK_SIZE)},
    ) as processes:
        workers = [processes.worker(name, wait=False) for name in ("rel-a", "rel-b")]
        for worker in workers:
            worker.wait_for_log(" ready.")
        started = time.monotonic()
        paused = False
        while (elapsed := time.monotonic() - started) < RUN_SECONDS:
            if cancelled[0].pk not in frozen_at and elapsed >= CANCEL_AFTER_SECONDS:
                for job in cancelled:
                    htmx_action(client, job, "cancel")
                frozen_at.update(steps_of(cancelled))
            # Once a pause has returned, no tick may move the job until it is resumed.
            if paused:
                assert steps_of(toggled) == {job.pk: frozen_at[job.pk] for job in toggled}
                for job in toggled:
                    htmx_action(client, job, "resume")
            else:
                for job in toggled:
                    htmx_action(client, job, "pause")
                frozen_at.update(steps_of(toggled))
            paused = not paused
            time.sleep(TOGGLE_EVERY_SECONDS)
        for worker in workers:
            assert worker.alive, worker.log_tail()
            worker.stop()
        if paused:
            assert steps_of(toggled) == {job.pk: frozen_at[job.pk] for job in toggled}

        for worker in workers:
            log = worker.log()
            # Both schedulers sent ticks and both workers ran the subtasks they fanned out.
            assert "Sending due task simulate-tick" in log, worker.log_tail()
            assert SUBTASK_DONE.search(log), worker.log_tail()

    assert history_problems(long_jobs + short_jobs) == []
    steps = steps_of(long_jobs + short_jobs)
    for job in cancelled:
        job.refresh_from_db()
        assert job.status == TrainingJob.Status.CANCELLED
        assert steps[job.pk] == frozen_at[job.pk]
    for job in short_jobs:
        job.refresh_from_db()
        assert (job.status, job.current_step) == (TrainingJob.Status.COMPLETED, job.total_steps)
    for job in free:
        assert MIN_TICKS_SEEN * job.steps_per_tick <= steps[job.pk] < job.total_steps
