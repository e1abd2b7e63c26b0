"""The beat's scheduler (CELERY_BEAT_SCHEDULER); imported by `celery beat` and `worker --beat`."""

from __future__ import annotations

import logging
from typing import Any

from celery.beat import PersistentScheduler, ScheduleEntry, SchedulingError
from kombu.exceptions import OperationalError

logger = logging.getLogger("celery.beat")


class SteadyScheduler(PersistentScheduler):
    """Celery's PersistentScheduler, except that a due task it cannot send because the broker
    is away is one warning line. Celery logs each such failure as an error with the whole
    stack and the exception's traceback (some 160 lines), every tick of the outage; the
    message that matters is the same each time, and beat sends the next tick anyway."""

    def apply_entry(self, entry: ScheduleEntry, producer: Any = None) -> None:
        logger.info("Scheduler: Sending due task %s (%s)", entry.name, entry.task)
        try:
            self.apply_async(entry, producer=producer, advance=False)
        except SchedulingError as error:
            # Celery re-raises the send's own error as a SchedulingError from inside its
            # `except`, so the original is the context.
            cause = error.__context__
            if isinstance(cause, OperationalError):
                logger.warning(
                    "Cannot send %s: the broker is unreachable (%s); trying again at its next "
                    "due time.",
                    entry.name,
                    cause,
                )
            else:
                logger.error("Message Error: %s", error, exc_info=True)
        else:
            logger.debug("%s sent.", entry.task)
