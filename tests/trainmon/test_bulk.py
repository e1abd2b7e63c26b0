"""trainmon.bulk: many values as one statement parameter."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from jobs.models import TrainingJob
from tests.support.factories import TrainingJobFactory
from trainmon.bulk import InArray

pytestmark = pytest.mark.django_db


def test_in_array_keeps_the_rows_whose_column_is_one_of_the_values():
    jobs = TrainingJobFactory.create_batch(4)
    wanted = [jobs[3].pk, jobs[1].pk, 10**12]
    chosen = TrainingJob.objects.filter(InArray(F("pk"), wanted)).order_by("pk")
    assert list(chosen) == [jobs[1], jobs[3]]
    assert not TrainingJob.objects.filter(InArray(F("pk"), [])).exists()


@pytest.mark.postgres
def test_in_array_sends_the_values_as_one_parameter_on_postgresql():
    ids = [job.pk for job in TrainingJobFactory.create_batch(3)]
    with CaptureQueriesContext(connection) as queries:
        assert TrainingJob.objects.filter(InArray(F("pk"), ids)).count() == 3
    [query] = queries.captured_queries
    assert "= ANY(" in query["sql"]
    assert "IN (" not in query["sql"]
