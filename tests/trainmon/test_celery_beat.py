"""The beat's scheduler while the broker is away: one warning line per tick it cannot send."""

from __future__ import annotations

import logging

from celery import Celery
from django.conf import settings

from tests.support.processes import free_port
from trainmon.celery_beat import SteadyScheduler


def test_beat_uses_the_steady_scheduler():
    assert settings.CELERY_BEAT_SCHEDULER == "trainmon.celery_beat:SteadyScheduler"


def test_an_unsendable_tick_is_one_warning_line(tmp_path, caplog, monkeypatch):
    # Nothing listens on a free port: every send is refused, as while Redis is down. (Celery
    # lets CELERY_BROKER_URL, which the PostgreSQL + Redis run sets, override the argument.)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    app = Celery("beat-test", broker=f"redis://127.0.0.1:{free_port()}/0")
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0}
    scheduler = SteadyScheduler(app=app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    entry = scheduler.Entry(
        name="simulate-tick", task="metrics.tasks.simulate_tick", schedule=1.0, app=app
    )
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            scheduler.apply_entry(entry)

    problems = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert [record.levelname for record in problems] == ["WARNING", "WARNING"]
    for record in problems:
        message = record.getMessage()
        assert message.startswith("Cannot send simulate-tick: the broker is unreachable (")
        assert "\n" not in message
        assert record.exc_info is None and record.stack_info is None


def test_any_other_failure_still_logs_its_traceback(tmp_path, caplog):
    app = Celery("beat-test", broker="memory://")
    scheduler = SteadyScheduler(app=app, schedule_filename=str(tmp_path / "schedule"), lazy=True)
    entry = scheduler.Entry(
        name="bad-args", task="metrics.tasks.simulate_tick", schedule=1.0, args=object(), app=app
    )
    with caplog.at_level(logging.INFO):
        scheduler.apply_entry(entry)
    [problem] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert problem.levelname == "ERROR" and problem.exc_info is not None
