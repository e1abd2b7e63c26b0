from __future__ import annotations

import pytest
from django.contrib.admin.sites import site
from django.db import connection
from django.test import RequestFactory
from django.urls import reverse

from jobs.models import TrainingJob
from metrics.admin import EstimatedCountPaginator
from metrics.models import NamedMetric, TrainingMetric
from tests.support.factories import TrainingJobFactory, TrainingMetricFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:metrics_trainingmetric_changelist")
# session, user, count, the page of points with their jobs
CHANGELIST_QUERIES = 4


def add_points(job: TrainingJob, count: int, start: int = 0) -> None:
    TrainingMetric.objects.bulk_create(
        TrainingMetricFactory.build(job=job, step=step, epoch=1)
        for step in range(start, start + count)
    )


class TestAccess:
    def test_anonymous_is_sent_to_log_in(self, client):
        response = client.get(CHANGELIST)
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next={CHANGELIST}"

    def test_non_staff_user_is_refused(self, client, user):
        client.force_login(user)
        response = client.get(CHANGELIST)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


class TestChangelist:
    @pytest.mark.parametrize("points", [10, 500])
    def test_query_count_does_not_grow_with_points(
        self, staff_client, django_assert_num_queries, points
    ):
        jobs = TrainingJobFactory.create_batch(3, total_epochs=10, steps_per_epoch=100)
        for index, job in enumerate(jobs):
            add_points(job, points // 3 + (index < points % 3))
        # PostgreSQL reads the planner's estimate first; a table this small is then counted.
        expected = CHANGELIST_QUERIES + (connection.vendor == "postgresql")
        with django_assert_num_queries(expected):
            response = staff_client.get(CHANGELIST)
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == min(points, 100)

    def test_newest_job_and_latest_step_first(self, staff_client):
        old, new = TrainingJobFactory.create_batch(2)
        add_points(old, 3)
        add_points(new, 3)
        changelist = staff_client.get(CHANGELIST).context["cl"]
        assert [(p.job_id, p.step) for p in changelist.result_list] == [
            (new.pk, 2),
            (new.pk, 1),
            (new.pk, 0),
            (old.pk, 2),
            (old.pk, 1),
            (old.pk, 0),
        ]

    def test_filter_by_job_status(self, staff_client):
        running = TrainingJobFactory(name="still-going")
        failed = TrainingJobFactory(name="blew-up", status=TrainingJob.Status.FAILED)
        add_points(running, 2)
        add_points(failed, 3)
        changelist = staff_client.get(CHANGELIST, {"job__status__exact": "failed"}).context["cl"]
        assert {point.job_id for point in changelist.result_list} == {failed.pk}
        assert changelist.result_count == 3

    def test_points_are_read_only(self, staff_client, job):
        add_points(job, 1)
        point = TrainingMetric.objects.get()
        assert staff_client.get(reverse("admin:metrics_trainingmetric_add")).status_code == 403
        change = reverse("admin:metrics_trainingmetric_change", args=[point.pk])
        response = staff_client.get(change)
        assert response.status_code == 200
        assert 'name="_save"' not in response.content.decode()
        staff_client.post(change, {"loss": 9.0, "job": job.pk, "step": 0, "epoch": 1})
        point.refresh_from_db()
        assert point.loss == 1.0


class TestPaginatorCount:
    def paginator(self, queryset):
        return EstimatedCountPaginator(queryset, per_page=100)

    def test_counts_exactly_below_the_threshold(self, job):
        add_points(job, 30)
        assert self.paginator(TrainingMetric.objects.order_by("pk")).count == 30

    @pytest.mark.postgres
    def test_whole_table_uses_the_planner_estimate(self, job, monkeypatch):
        monkeypatch.setattr("metrics.admin.EXACT_COUNT_BELOW", 1)
        add_points(job, 40)
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {TrainingMetric._meta.db_table}")
        add_points(job, 5, start=40)  # not analysed yet: the estimate still says 40
        assert self.paginator(TrainingMetric.objects.order_by("pk")).count == 40
        # A filtered list is counted for real.
        assert self.paginator(TrainingMetric.objects.filter(job=job).order_by("pk")).count == 45

    def test_the_admin_uses_it_without_the_full_count(self):
        model_admin = site.get_model_admin(TrainingMetric)
        request = RequestFactory().get(CHANGELIST)
        assert isinstance(model_admin.get_paginator(request, [], 100), EstimatedCountPaginator)
        assert model_admin.show_full_result_count is False


# --- named points ---------------------------------------------------------------------------

NAMED_CHANGELIST = reverse("admin:metrics_namedmetric_changelist")


def add_named(job: TrainingJob, names: list[str], steps: range) -> None:
    from django.db import transaction

    from jobs.services import jobs_lock
    from metrics.points import MetricBatch, NamedBatch
    from metrics.services import metric_batches_write

    batch = NamedBatch.from_points(
        (name, step, float("nan") if step == 1 else step / 10, 1.7e9)
        for name in names
        for step in steps
    )
    with transaction.atomic():
        [locked] = jobs_lock([job.pk])
        metric_batches_write([(locked, MetricBatch.empty())], named={locked.pk: batch})


class TestNamedChangelist:
    def test_non_staff_user_is_refused(self, client, user):
        client.force_login(user)
        assert client.get(NAMED_CHANGELIST).status_code == 302

    @pytest.mark.parametrize("steps", [5, 300])
    def test_query_count_does_not_grow_with_points(
        self, staff_client, django_assert_num_queries, steps
    ):
        jobs = TrainingJobFactory.create_batch(
            2, source="external", total_epochs=1, steps_per_epoch=300
        )
        for job in jobs:
            add_named(job, ["val/loss", "grad_norm"], range(steps))
        # session, user, the job filter's choices, count, the page of points with keys and
        # jobs; PostgreSQL reads the planner's estimate first.
        expected = 5 + (connection.vendor == "postgresql")
        with django_assert_num_queries(expected):
            response = staff_client.get(NAMED_CHANGELIST)
        assert response.status_code == 200
        assert len(response.context["cl"].result_list) == min(4 * steps, 100)

    def test_newest_key_latest_step_first_and_nan_shown(self, staff_client, job):
        add_named(job, ["a", "b"], range(3))
        changelist = staff_client.get(NAMED_CHANGELIST).context["cl"]
        assert [(p.key.name, p.step) for p in changelist.result_list] == [
            ("b", 2),
            ("b", 1),
            ("b", 0),
            ("a", 2),
            ("a", 1),
            ("a", 0),
        ]
        page = staff_client.get(NAMED_CHANGELIST).content.decode()
        assert "NaN" in page

    def test_filter_by_job(self, staff_client):
        first, second = TrainingJobFactory.create_batch(2, source="external")
        add_named(first, ["a"], range(2))
        add_named(second, ["a", "b"], range(3))
        changelist = staff_client.get(NAMED_CHANGELIST, {"job": second.pk}).context["cl"]
        assert {point.key.job_id for point in changelist.result_list} == {second.pk}
        assert changelist.result_count == 6
        page = staff_client.get(NAMED_CHANGELIST).content.decode()
        assert f"?job={first.pk}" in page  # offered in the filter
        assert staff_client.get(NAMED_CHANGELIST, {"job": "x"}).context["cl"].result_count == 0

    def test_points_are_read_only(self, staff_client, job):
        add_named(job, ["a"], range(1))
        point = NamedMetric.objects.get()
        assert staff_client.get(reverse("admin:metrics_namedmetric_add")).status_code == 403
        response = staff_client.get(reverse("admin:metrics_namedmetric_change", args=[point.pk]))
        assert response.status_code == 200
        assert 'name="_save"' not in response.content.decode()

    def test_the_admin_counts_with_the_estimate(self):
        model_admin = site.get_model_admin(NamedMetric)
        request = RequestFactory().get(NAMED_CHANGELIST)
        assert isinstance(model_admin.get_paginator(request, [], 100), EstimatedCountPaginator)
        assert model_admin.show_full_result_count is False
