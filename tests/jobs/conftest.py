from __future__ import annotations

from collections.abc import Callable

import pytest
from django.utils import timezone

from jobs.models import TrainingJob
from metrics.models import MetricKey

KeyRow = Callable[..., MetricKey]


@pytest.fixture
def metric_key(db) -> KeyRow:
    """Store a named key's running stats, as the metrics write path keeps them."""

    def add(
        job: TrainingJob, name: str, *, last: float | None, low: float | None, count: int = 10
    ) -> MetricKey:
        return MetricKey.objects.create(
            job=job,
            name=name,
            count=count,
            first_step=0,
            last_step=count - 1,
            last_value=last,
            last_reported_at=timezone.now(),
            min_value=low,
            max_value=last,
        )

    return add
