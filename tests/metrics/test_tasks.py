from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from celery import Task
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from celery.states import SUCCESS
from django.conf import settings
from django.db import connection
from django.test.utils import override_settings
from django.utils import timezone

from jobs.models import TrainingJob
from metrics.models import IngestLog, TrainingMetric
from metrics.services import tick_slot
from metrics.tasks import (
    ADVANCE_JOBS,
    SIMULATE_TICK,
    advance_jobs,
    prune_ingest_log,
    simulate_tick,
)
from tests.support.factories import TrainingJobFactory, reload
from tests.support.metric_points import named_write
from tests.support.processes import running_processes
from tests.support.services import TEST_REDIS_URL
from trainmon.celery import app as celery_app

pytestmark = pytest.mark.django_db

# The tests' own Redis database (TRAINMON_TEST_REDIS_URL), purged before each test, so no
# other run's messages are consumed.
ENGINE_REDIS_URL = TEST_REDIS_URL
# Bounds for waiting on a worker thread; the loop returns as soon as the condition holds.
DELIVERY_TIMEOUT_SECONDS = 30
POLL_SECONDS = 0.05
# Polling transports (memory://) otherwise look for messages once a second.
BROKER_OPTIONS = {"polling_interval": POLL_SECONDS}


class TestSimulateTick:
    def test_advances_every_running_job_once_for_its_tick(self, user):
        jobs = TrainingJobFactory.create_batch(3, owner=user)
        summary = simulate_tick(tick=42)
        assert summary == {
            "tick": 42,
            "jobs_advanced": 3,
            "points_written": 30,
            "jobs_completed": 0,
            "jobs_failed": 0,
        }
        assert simulate_tick(tick=42)["points_written"] == 0
        assert [reload(job).current_step for job in jobs] == [10, 10, 10]

    def test_without_a_tick_it_uses_the_current_slot(self, job):
        before = tick_slot(timezone.now())
        simulate_tick()
        assert before <= reload(job).last_tick <= tick_slot(timezone.now())

    @override_settings(TRAINMON_TICK_CHUNK_SIZE=2)
    def test_past_the_chunk_size_it_fans_out_one_subtask_per_chunk(
        self, user, django_capture_on_commit_callbacks
    ):
        jobs = TrainingJobFactory.create_batch(5, owner=user)
        celery_app.conf.task_always_eager = True  # subtasks run in place, no broker
        try:
            with django_capture_on_commit_callbacks(execute=True) as subtasks:
                summary = simulate_tick(tick=42)
        finally:
            celery_app.conf.task_always_eager = False
        assert summary == {"tick": 42, "jobs_due": 5, "subtasks": 3}
        assert len(subtasks) == 3
        for job in jobs:
            assert (reload(job).current_step, job.last_tick) == (10, 42)

    @override_settings(TRAINMON_TICK_CHUNK_SIZE=2)
    def test_at_the_chunk_size_it_works_in_place(self, user, django_capture_on_commit_callbacks):
        TrainingJobFactory.create_batch(2, owner=user)
        with django_capture_on_commit_callbacks() as subtasks:
            summary = simulate_tick(tick=42)
        assert summary["jobs_advanced"] == 2
        assert subtasks == []


class TestAdvanceJobs:
    def test_advances_only_its_jobs_once_per_tick(self, user):
        mine, other = TrainingJobFactory.create_batch(2, owner=user)
        assert advance_jobs([mine.pk], tick=9)["jobs_advanced"] == 1
        assert advance_jobs([mine.pk], tick=9)["jobs_advanced"] == 0
        assert (reload(mine).current_step, reload(other).current_step) == (10, 0)

    def test_skips_jobs_that_stopped_running_since_the_fan_out(self, job):
        TrainingJob.objects.filter(pk=job.pk).update(status=TrainingJob.Status.PAUSED)
        assert advance_jobs([job.pk], tick=9)["jobs_advanced"] == 0
        assert not job.metrics.exists()


# --- through a real broker and worker ---------------------------------------------------------


def reset_producer_pools() -> None:
    # Celery caches its producer pools per app; after the broker URL changes they would keep
    # publishing to the old broker. This is what Celery itself does after a fork.
    celery_app._after_fork()


@contextmanager
def use_broker(url: str) -> Iterator[None]:
    """Point the project's Celery app at `url`, with an empty queue, and restore it after."""
    conf = celery_app.conf
    saved = conf.broker_url, conf.broker_transport_options
    conf.broker_url, conf.broker_transport_options = url, BROKER_OPTIONS
    reset_producer_pools()
    try:
        with celery_app.connection_for_write() as broker:
            celery_app.control.purge(connection=broker)
        yield
    finally:
        conf.broker_url, conf.broker_transport_options = saved
        reset_producer_pools()


@contextmanager
def worker_thread() -> Iterator[list[tuple[str, str]]]:
    """A real worker consuming in a thread; yields the (task, state) of each task it ran.

    Tests wait on that list rather than polling the database while the worker writes (the
    shared in-memory SQLite test database answers concurrent access with "table locked").
    The worker closes its database connection after each task, so the test database can be
    flushed and dropped afterwards.
    """
    finished: list[tuple[str, str]] = []

    def after_task(task: Task, state: str, **_: object) -> None:
        connection.close()
        finished.append((task.name, state))

    task_postrun.connect(after_task, weak=False)
    try:
        with start_worker(celery_app, perform_ping_check=False, shutdown_timeout=30):
            yield finished
    finally:
        task_postrun.disconnect(after_task)


def wait_for_tasks(finished: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """Wait (bounded) until the worker has run `count` tasks; return what it ran."""
    deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    while len(finished) < count and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return list(finished)


BROKERS = [
    pytest.param("memory://", id="memory"),
    pytest.param(ENGINE_REDIS_URL, id="redis", marks=pytest.mark.redis),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize(
    ("chunk_size", "tasks"),
    [(500, [SIMULATE_TICK]), (1, [SIMULATE_TICK, ADVANCE_JOBS, ADVANCE_JOBS, ADVANCE_JOBS])],
    ids=["in-place", "fan-out"],
)
def test_a_worker_advances_jobs_from_ticks_sent_through_the_broker(user, broker, chunk_size, tasks):
    jobs = TrainingJobFactory.create_batch(3, owner=user)
    before = tick_slot(timezone.now())
    with (
        override_settings(TRAINMON_TICK_CHUNK_SIZE=chunk_size),
        use_broker(broker),
        worker_thread() as finished,
    ):
        simulate_tick.delay()
        assert wait_for_tasks(finished, len(tasks)) == [(name, SUCCESS) for name in tasks]
    assert TrainingMetric.objects.count() == 30
    sent_in = {reload(job).last_tick for job in jobs}
    assert len(sent_in) == 1
    assert before <= sent_in.pop() <= tick_slot(timezone.now())
    for job in jobs:
        assert job.current_step == 10
        assert list(job.metrics.order_by("step").values_list("step", flat=True)) == list(range(10))


@pytest.mark.django_db(transaction=True)
def test_a_redelivered_tick_writes_nothing_new(user):
    job = TrainingJobFactory(owner=user)
    with use_broker("memory://"), worker_thread() as finished:
        simulate_tick.delay(tick=77)
        simulate_tick.delay(tick=77)  # the same tick again, as a re-delivery would bring it
        simulate_tick.delay(tick=78)
        assert wait_for_tasks(finished, 3) == [(SIMULATE_TICK, SUCCESS)] * 3
    assert (reload(job).current_step, job.last_tick) == (20, 78)
    assert TrainingMetric.objects.count() == 20


def test_each_tick_message_names_the_slot_it_was_sent_in(job):
    with use_broker("memory://"):
        sent_in = tick_slot(timezone.now())
        simulate_tick.delay()
        with celery_app.connection_for_read() as broker:
            message = broker.SimpleQueue("celery", no_ack=True).get(timeout=5)
            args, kwargs, _ = message.decode()
    assert args == []
    assert sent_in <= kwargs["tick"] <= tick_slot(timezone.now())


class TestPruneIngestLog:
    def test_drops_rows_past_the_window_and_keeps_the_rest(self, job):
        named_write(job, {"a": ([0], 1.0)})
        named_write(job, {"a": ([1], 1.0)})
        window = timedelta(seconds=settings.TRAINMON_INGEST_LOG_SECONDS)
        IngestLog.objects.filter(seq=1).update(created_at=timezone.now() - window * 1.01)
        assert prune_ingest_log() == {"deleted": 1}
        assert list(IngestLog.objects.values_list("seq", flat=True)) == [2]
        assert prune_ingest_log() == {"deleted": 0}

    def test_beat_runs_it(self):
        tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
        assert "metrics.tasks.prune_ingest_log" in tasks


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_worker_keeps_its_database_connection_from_task_to_task(user, tmp_path):
    """Celery's Django fix-up would close it after every task (CELERY_DB_REUSE_MAX)."""
    job = TrainingJobFactory(owner=user, total_epochs=10)
    with running_processes(tmp_path, tick_seconds=3600) as processes:
        processes.worker("worker", beat=False, concurrency=1, application_name="reusing-worker")
        # An explicit connection: CELERY_BROKER_URL, if the run sets it, outranks conf.
        with celery_app.connection_for_write(processes.broker_url) as broker:
            advance_jobs.apply_async(([job.pk],), connection=broker)
            wait_for_step(job, 10)
            with connection.cursor() as cursor:
                cursor.execute("SELECT now()")
                (after_the_first_task,) = cursor.fetchone()
            for _ in range(3):
                advance_jobs.apply_async(([job.pk],), connection=broker)
            wait_for_step(job, 40)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT backend_start FROM pg_stat_activity WHERE application_name = %s",
                ["reusing-worker"],
            )
            started = [row[0] for row in cursor.fetchall()]
    assert len(started) == 1, "the worker holds one connection after its tasks"
    assert started[0] < after_the_first_task, "opened for the first task, kept for the next"


def wait_for_step(job: TrainingJob, step: int) -> None:
    deadline = time.monotonic() + DELIVERY_TIMEOUT_SECONDS
    while reload(job).current_step < step:
        assert time.monotonic() < deadline, f"job at step {job.current_step}, waiting for {step}"
        time.sleep(POLL_SECONDS)
