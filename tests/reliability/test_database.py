"""The database drops the worker's connections in the middle of ticks; the worker carries on.

`pg_terminate_backend` is what a PostgreSQL restart, a failover or an idle-connection reaper
does to a client. The test aims it at the worker's connections (tagged by application_name)
while a tick's transaction is open, until ticks have really died of it, then checks that the
worker is still up, the simulation moves on, and the half-done ticks left nothing behind.
"""

from __future__ import annotations

import random
import time

import pytest
from django.db import connection

from tests.support.factories import TrainingJobFactory
from tests.support.processes import running_processes
from tests.support.reliability import (
    current_slot,
    history_problems,
    in_transaction_client_port,
    steps_of,
    wait_for_ticks_after,
)

TICK_SECONDS = 0.5
WORKER_DB_NAME = "trainmon-rel-hiccup-worker"
RUNNING_JOBS, STEPS_PER_TICK = 30, 100
# Terminate until this many ticks died of it, within a bounded number of tries.
WANTED_HITS, MAX_TERMINATIONS = 2, 12
PAUSE_BETWEEN_SECONDS = (0.3, 1.2)
AIM_TIMEOUT_SECONDS = 5.0
START_TIMEOUT_SECONDS = 30.0
RECOVERY_TIMEOUT_SECONDS = 20.0
# How the worker logs a tick that died of it.
TERMINATED = "raised unexpected: OperationalError('terminating connection due to administrator"


def terminate_mid_tick() -> int:
    """Terminate the worker's connections once one is inside a transaction (bounded wait)."""
    in_transaction_client_port(WORKER_DB_NAME, timeout=AIM_TIMEOUT_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s"
            " AND pid <> pg_backend_pid()",
            [WORKER_DB_NAME],
        )
        return cursor.fetchone()[0]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_worker_survives_its_database_connections_being_dropped(user, settings, tmp_path):
    settings.TRAINMON_TICK_SECONDS = TICK_SECONDS
    jobs = TrainingJobFactory.create_batch(
        RUNNING_JOBS,
        owner=user,
        total_epochs=100,
        steps_per_epoch=1000,
        steps_per_tick=STEPS_PER_TICK,
    )
    with running_processes(tmp_path, tick_seconds=TICK_SECONDS) as processes:
        worker = processes.worker("rel-hiccup-worker", application_name=WORKER_DB_NAME)
        wait_for_ticks_after(
            jobs, current_slot(), timeout=START_TIMEOUT_SECONDS, what="the engine to tick"
        )
        pool = set(worker.children())
        terminated = hits = 0
        for _ in range(MAX_TERMINATIONS):
            time.sleep(random.uniform(*PAUSE_BETWEEN_SECONDS))
            terminated += terminate_mid_tick()
            hits = worker.log().count(TERMINATED)
            if hits >= WANTED_HITS:
                break
        assert hits >= 1, "no tick was ever caught with its connection open"

        after_hiccups = current_slot()
        before = steps_of(jobs)
        wait_for_ticks_after(
            jobs,
            after_hiccups,
            timeout=RECOVERY_TIMEOUT_SECONDS,
            what="every job to move again after the hiccups",
        )
        # The same worker and pool processes: nothing crashed or had to be restarted.
        assert worker.alive, worker.log_tail()
        assert set(worker.children()) == pool, worker.log_tail()
        worker.stop()

    assert history_problems(jobs) == []
    after = steps_of(jobs)
    assert all(after[pk] > before[pk] for pk in before)
    print(f"{terminated} connections terminated; {hits} ticks died of it and were recovered from")
