from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.db import connection
from django.http import Http404
from django.utils import timezone

from jobs.models import TrainingJob
from jobs.selectors import (
    LIVE_FIELDS,
    job_count_by_status,
    job_get_live,
    job_get_visible,
    job_list_dashboard,
)
from tests.support.factories import TrainingJobFactory

Status = TrainingJob.Status
pytestmark = pytest.mark.django_db


def test_status_counts_cover_every_status(user, other_user):
    TrainingJobFactory.create_batch(2, owner=user, status=Status.RUNNING)
    TrainingJobFactory(owner=user, status=Status.FAILED)
    TrainingJobFactory(owner=other_user, status=Status.FAILED)
    counts = job_count_by_status(user=user)
    assert counts == dict.fromkeys(Status.values, 0) | {"running": 2, "failed": 1}


def test_staff_counts_include_everyone(staff_user, user, other_user):
    TrainingJobFactory(owner=user)
    TrainingJobFactory(owner=other_user)
    assert job_count_by_status(user=staff_user)["running"] == 2


def test_dashboard_list_filters_and_searches(user, other_user):
    match = TrainingJobFactory(owner=user, name="GPT-2 small", status=Status.PAUSED)
    TrainingJobFactory(owner=user, name="gpt-2 medium", status=Status.RUNNING)
    TrainingJobFactory(owner=other_user, name="gpt-2 theirs", status=Status.PAUSED)
    assert list(job_list_dashboard(user=user, status="paused", search=" gpt ")) == [match]
    assert job_list_dashboard(user=user, search="").count() == 2


def test_the_dashboard_list_leaves_hyperparameters_unread(user):
    TrainingJobFactory(owner=user, hyperparameters={"notes": "x" * 1000})
    (job,) = job_list_dashboard(user=user)
    assert "hyperparameters" in job.get_deferred_fields()


# --- the primary metric of jobs without a headline loss (issue 12) -------------------------------


def test_the_dashboard_list_carries_each_jobs_primary_metric(user, metric_key):
    external = TrainingJob.Source.EXTERNAL
    named = TrainingJobFactory(owner=user, source=external, primary_metric="val_loss")
    metric_key(named, "val_loss", last=0.41, low=0.39)
    metric_key(named, "grad_norm", last=7.0, low=1.0)  # not its primary key
    without_key = TrainingJobFactory(owner=user, source=external, primary_metric="val_loss")
    metric_key(TrainingJobFactory(owner=user), "val_loss", last=9.0, low=9.0)  # another job's

    rows = {job.pk: job for job in job_list_dashboard(user=user)}
    assert (rows[named.pk].primary_last, rows[named.pk].primary_min) == (0.41, 0.39)
    assert (rows[without_key.pk].primary_last, rows[without_key.pk].primary_min) == (None, None)


def test_the_primary_metric_costs_no_query_per_row(user, metric_key, django_assert_num_queries):
    for index in range(30):
        job = TrainingJobFactory(owner=user, primary_metric="val_loss", last_loss=None)
        metric_key(job, "val_loss", last=float(index), low=0.0)
    list(job_list_dashboard(user=user))  # the first list also looks for the keys' table, once
    with django_assert_num_queries(1):
        jobs = list(job_list_dashboard(user=user))
    assert sorted(job.primary_last for job in jobs) == [float(index) for index in range(30)]


@pytest.mark.postgres
@pytest.mark.parametrize("staff", [False, True])
def test_dashboard_page_is_read_in_index_order_without_a_sort(user, staff_user, staff):
    # The index holds the list's own order expression: a page reads its rows, whatever the
    # number of jobs. Scans that would need a sort are turned off, so a plan without the
    # index shows a Sort node.
    for status in (Status.RUNNING, Status.COMPLETED, Status.FAILED):
        TrainingJobFactory.create_batch(3, owner=user, status=status)
    page = job_list_dashboard(user=staff_user if staff else user)[:50]
    sql, params = page.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "job_dashboard_idx" in plan if staff else "job_owner_dashboard_idx" in plan
    assert "Sort" not in plan


def test_the_live_job_follows_the_visibility_rule(user, other_user, staff_user):
    mine = TrainingJobFactory(owner=user)
    theirs = TrainingJobFactory(owner=other_user)
    # Exactly who may see the job may poll it: staff everyone's, others their own.
    for viewer, job, visible in [
        (user, mine, True),
        (user, theirs, False),
        (staff_user, theirs, True),
        (AnonymousUser(), mine, False),
    ]:
        for read in (job_get_live, job_get_visible):
            if visible:
                assert read(user=viewer, job_id=job.pk).pk == job.pk
            else:
                with pytest.raises(Http404):
                    read(user=viewer, job_id=job.pk)
    for missing in (theirs.pk + 1000, 0, -1, 2**63, 10**30):
        with pytest.raises(Http404):
            job_get_live(user=staff_user, job_id=missing)


def test_the_live_job_holds_what_the_orm_reads(user, django_assert_num_queries):
    job = TrainingJobFactory(
        owner=user,
        status=Status.FAILED,
        failure_reason="out of memory",
        current_step=55,
        last_loss=0.5,
        best_loss=0.25,
        best_loss_step=99,
        steps_per_second=12.5,
        finished_at=timezone.now(),
        ingest_seq=7,
    )
    expected = TrainingJob.objects.get(pk=job.pk)
    with django_assert_num_queries(1):
        live = job_get_live(user=user, job_id=job.pk)
        # Typed as the ORM types them (SQLite stores datetimes as text), no lazy loads.
        for name in ("pk", *(f for f in LIVE_FIELDS if f != "owner"), "owner_id"):
            assert getattr(live, name) == getattr(expected, name), name
        assert live.elapsed == expected.elapsed
        assert live.is_terminal
    assert live.description == expected.description  # any other field still loads, on access
