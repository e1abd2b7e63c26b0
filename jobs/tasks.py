"""Celery tasks of the jobs app (beat-scheduled housekeeping)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from jobs.services import jobs_mark_stalled

logger = logging.getLogger(__name__)


@shared_task(name="jobs.tasks.mark_stalled")
def mark_stalled() -> int:
    """External running jobs silent for TRAINMON_STALL_SECONDS become stalled.

    Idempotent: a second run finds nothing left to mark. A report revives a stalled job.
    """
    silent_since = timezone.now() - timedelta(seconds=settings.TRAINMON_STALL_SECONDS)
    stalled = jobs_mark_stalled(reported_before=silent_since)
    if stalled:
        logger.info("%d external job(s) stalled: no report since %s", stalled, silent_since)
    return stalled
