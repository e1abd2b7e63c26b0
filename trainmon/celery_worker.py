"""The worker's broker consumer (CELERY_WORKER_CONSUMER); imported by `celery worker` only."""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.worker.consumer import Consumer

# Celery's consumer waits 2, 4, 6 ... up to 30 s between attempts to reach a lost broker, so
# after a long outage the simulation could stand still for half a minute once the broker is
# back. An attempt a second costs nothing and resumes the ticks within a tick or two.
BROKER_RETRY_SECONDS = 1.0


class SteadyRetryConsumer(Consumer):
    """Celery's consumer, retrying a lost broker every BROKER_RETRY_SECONDS."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = partial(
            conn.ensure_connection,
            interval_start=BROKER_RETRY_SECONDS,
            interval_step=0,
            interval_max=BROKER_RETRY_SECONDS,
        )
        return super().ensure_connected(conn)
