"""The simulation engine's Celery tasks: thin wrappers that take ids and call the services.

Every task is idempotent, so the at-least-once delivery `acks_late` gives costs nothing: a
tick carries its identity (the time slot it was sent in) and a job remembers the last tick
that advanced it, so a re-delivered or duplicated tick writes nothing.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from celery import shared_task
from celery.signals import before_task_publish
from django.conf import settings
from django.db import OperationalError, transaction
from django.utils import timezone

from metrics.services import (
    TickResult,
    ingest_log_prune,
    simulation_advance,
    simulation_due_job_ids,
    tick_slot,
)

logger = logging.getLogger(__name__)

SIMULATE_TICK = "metrics.tasks.simulate_tick"
ADVANCE_JOBS = "metrics.tasks.advance_jobs"
# A chunk that hit a transient database error (SQLite busy, a dropped connection) is retried;
# its explicit tick keeps the retry from advancing a job twice.
ADVANCE_MAX_RETRIES = 3


@before_task_publish.connect
def _stamp_tick_slot(sender: str | None = None, body: Any = None, **_: Any) -> None:
    """Give every simulate_tick message the tick slot of the moment it is sent.

    Beat sends no arguments; stamping at send time (not at run time) means a message that
    waits in the queue, or is delivered twice, still names the tick it was sent for.
    """
    if sender != SIMULATE_TICK or not isinstance(body, tuple):
        return
    args, kwargs = body[0], body[1]  # message protocol 2: (args, kwargs, embed)
    if not args and kwargs.get("tick") is None:
        kwargs["tick"] = tick_slot(timezone.now())


@shared_task(name=SIMULATE_TICK)
def simulate_tick(tick: int | None = None) -> dict[str, int]:
    """Advance every running simulated job once for `tick` (beat's, or now's slot).

    Up to TRAINMON_TICK_CHUNK_SIZE due jobs are advanced here; past that the jobs are split
    into `advance_jobs` subtasks of that size, so several workers share the tick.
    """
    if tick is None:
        tick = tick_slot(timezone.now())
    chunk_size = max(settings.TRAINMON_TICK_CHUNK_SIZE, 1)
    if len(simulation_due_job_ids(tick=tick, limit=chunk_size + 1)) <= chunk_size:
        return _summary(tick, simulation_advance(tick=tick))
    job_ids = simulation_due_job_ids(tick=tick)
    chunks = [job_ids[start : start + chunk_size] for start in range(0, len(job_ids), chunk_size)]
    for chunk in chunks:
        transaction.on_commit(
            partial(
                advance_jobs.apply_async,
                (chunk,),
                {"tick": tick},
                expires=settings.TRAINMON_TICK_EXPIRES_SECONDS,
            )
        )
    logger.info("tick %s: %d jobs split into %d subtasks", tick, len(job_ids), len(chunks))
    return {"tick": tick, "jobs_due": len(job_ids), "subtasks": len(chunks)}


@shared_task(
    name=ADVANCE_JOBS,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    max_retries=ADVANCE_MAX_RETRIES,
)
def advance_jobs(job_ids: list[int], tick: int | None = None) -> dict[str, int]:
    """Advance these jobs once for `tick` (None: an ad-hoc tick that always advances)."""
    return _summary(tick, simulation_advance(job_ids=job_ids, tick=tick))


@shared_task(name="metrics.tasks.prune_ingest_log")
def prune_ingest_log() -> dict[str, int]:
    """Drop ingest log rows past TRAINMON_INGEST_LOG_SECONDS (idempotent)."""
    return {"deleted": ingest_log_prune()}


def _summary(tick: int | None, result: TickResult) -> dict[str, Any]:
    if result.jobs_completed or result.jobs_failed:
        logger.info(
            "tick %s: %d jobs completed, %d failed", tick, result.jobs_completed, result.jobs_failed
        )
    return {
        "tick": tick,
        "jobs_advanced": result.jobs_advanced,
        "points_written": result.points_written,
        "jobs_completed": result.jobs_completed,
        "jobs_failed": result.jobs_failed,
    }
