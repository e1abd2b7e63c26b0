"""A worker killed with SIGKILL in the middle of ticks, again and again: no step lost or doubled.

The kills are aimed: the test watches the worker's database connection and strikes the moment
it is inside a transaction (a tick writing thousands of points), so the database must roll the
half-done tick back and a later tick carry on from the last committed one. Two ways to die:
- "worker": the whole worker with its embedded beat (a machine crash, the OOM killer), then a
  restart as a supervisor would do it;
- "task": only the pool process running the tick; the worker forks a new one and re-queues the
  task, which `acks_late` kept unacknowledged, and the re-delivered tick must change nothing.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from bench.processes import wait_until
from tests.support.factories import TrainingJobFactory
from tests.support.processes import running_processes, wait_for_worker
from tests.support.reliability import (
    current_slot,
    history_problems,
    in_transaction_client_port,
    pid_of_client_port,
    steps_of,
    wait_for_ticks_after,
)

TICK_SECONDS = 0.5
WORKER_DB_NAME = "trainmon-rel-crash-worker"
# Heavy ticks (thousands of points) keep a transaction open long enough to be hit.
RUNNING_JOBS, STEPS_PER_TICK = 40, 100
LONG_EPOCHS, STEPS_PER_EPOCH = 100, 1000
# These finish somewhere among the kills (11 to 23 ticks, the last one partial).
FINISHING_JOBS = 5
KILLS = ("worker", "task", "worker", "task")
PAUSE_BEFORE_KILL_SECONDS = (1.0, 3.0)
AIM_TIMEOUT_SECONDS = 5.0
AIM_ATTEMPTS = 5  # a "task" kill that never catches a tick becomes a "worker" kill
START_TIMEOUT_SECONDS = 30.0
RECOVERY_TIMEOUT_SECONDS = 30.0


def strike_a_tick(children: list[int]) -> int | None:
    """SIGKILL the pool process caught inside a tick's transaction; its pid, or None."""
    for _ in range(AIM_ATTEMPTS):
        port = in_transaction_client_port(WORKER_DB_NAME, timeout=AIM_TIMEOUT_SECONDS)
        # The tick may end between the two looks (its connection closes with it): aim again.
        if port is not None and (victim := pid_of_client_port(port, children)):
            os.kill(victim, signal.SIGKILL)
            return victim
    return None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_tick_loses_and_doubles_nothing(user, settings, tmp_path):
    settings.TRAINMON_TICK_SECONDS = TICK_SECONDS
    running = TrainingJobFactory.create_batch(
        RUNNING_JOBS,
        owner=user,
        total_epochs=LONG_EPOCHS,
        steps_per_epoch=STEPS_PER_EPOCH,
        steps_per_tick=STEPS_PER_TICK,
    )
    finishing = [
        TrainingJobFactory(
            owner=user,
            total_epochs=1,
            steps_per_epoch=(10 + 3 * index) * STEPS_PER_TICK + 37,
            steps_per_tick=STEPS_PER_TICK,
        )
        for index in range(FINISHING_JOBS)
    ]
    mid_tick = 0
    with running_processes(tmp_path, tick_seconds=TICK_SECONDS) as processes:
        worker = processes.worker("rel-crash-worker", application_name=WORKER_DB_NAME)
        wait_for_ticks_after(
            running, current_slot(), timeout=START_TIMEOUT_SECONDS, what="the engine to tick"
        )
        for kill in KILLS:
            time.sleep(random.uniform(*PAUSE_BEFORE_KILL_SECONDS))
            children = worker.children()
            victim = strike_a_tick(children) if kill == "task" else None
            if victim is None:
                port = in_transaction_client_port(WORKER_DB_NAME, timeout=AIM_TIMEOUT_SECONDS)
                worker.kill()
                mid_tick += port is not None
                wait_for_worker(worker.start())
                continue
            mid_tick += 1
            count = len(children)
            wait_until(
                lambda victim=victim, count=count: (
                    victim not in worker.children() and len(worker.children()) == count
                ),
                timeout=RECOVERY_TIMEOUT_SECONDS,
                what="the worker to replace its killed pool process",
            )
            assert worker.alive, worker.log_tail()
        recovered_from = current_slot()
        before = steps_of(running)
        wait_for_ticks_after(
            running,
            recovered_from,
            timeout=RECOVERY_TIMEOUT_SECONDS,
            what="every running job to move again after the last kill",
        )
        assert worker.alive, worker.log_tail()
        worker.stop()

    assert history_problems(running + finishing) == []
    after = steps_of(running)
    assert all(after[pk] > before[pk] for pk in before)
    # Otherwise the test proved recovery from kills between ticks only.
    assert mid_tick >= 1, f"no kill of {len(KILLS)} struck while a tick's transaction was open"
