from __future__ import annotations

import math
from typing import Any, TypeVar

from django.contrib import admin
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest
from django.utils.functional import cached_property

from jobs.models import TrainingJob
from metrics.models import MetricKey, NamedMetric, TrainingMetric

_Point = TypeVar("_Point", TrainingMetric, NamedMetric)

# Below this many rows (by the planner's estimate) an exact count is cheap enough to run.
EXACT_COUNT_BELOW = 100_000
# The job filter of the named points offers this many jobs (the newest with keys).
JOB_CHOICES = 20


class EstimatedCountPaginator(Paginator[TrainingMetric]):
    """Counts with PostgreSQL's row estimate when the whole table is listed."""

    @cached_property
    def count(self) -> int:
        # COUNT(*) over millions of points is a full index scan on every page view; the
        # planner's estimate (pg_class.reltuples, kept by autovacuum) costs nothing.
        query = getattr(self.object_list, "query", None)
        if connection.vendor == "postgresql" and query is not None and not query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [query.model._meta.db_table],
                )
                (estimate,) = cursor.fetchone()
            if estimate >= EXACT_COUNT_BELOW:  # -1 when the table was never analysed
                return int(estimate)  # fetchone() is Any to mypy; a bigint is an int already
        return super().count


class JobStatusFilter(admin.ChoicesFieldListFilter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.title = "job status"


class ReadOnlyPointsAdmin(admin.ModelAdmin[_Point]):
    """Points browsed, never edited: they are stored with their job's or key's figures and
    summary (metrics.services), which an edit would leave wrong, and go away with the job.

    Newest first, read backwards off the unique index that `ordering` names; any other order
    would sort the whole table, so headers do not sort. Counts are estimates on big tables,
    and facet counts (a GROUP BY over every point) are off.
    """

    show_facets = admin.ShowFacets.NEVER
    sortable_by = ()
    paginator = EstimatedCountPaginator
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: _Point | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: _Point | None = None) -> bool:
        return False


@admin.register(TrainingMetric)
class TrainingMetricAdmin(ReadOnlyPointsAdmin[TrainingMetric]):
    list_display = (
        "job",
        "epoch",
        "step",
        "loss_display",
        "accuracy_display",
        "learning_rate_display",
        "created_at",
    )
    list_select_related = ("job",)
    list_filter = (("job__status", JobStatusFilter),)
    # Newest job's latest points first, off the (job_id, step) unique index.
    ordering = ("-job_id", "-step")

    @admin.display(description="loss")
    def loss_display(self, point: TrainingMetric) -> str:
        return f"{point.loss:.5g}"

    @admin.display(description="accuracy")
    def accuracy_display(self, point: TrainingMetric) -> str | None:
        return None if point.accuracy is None else f"{point.accuracy:.4f}"

    @admin.display(description="learning rate")
    def learning_rate_display(self, point: TrainingMetric) -> str | None:
        return None if point.learning_rate is None else f"{point.learning_rate:.4g}"


class NamedJobFilter(admin.SimpleListFilter):
    """Points of one job. Offers the newest jobs with keys (a bounded list: there may be
    thousands of jobs); any job's points are at ?job=<id>, the link its admin page shows."""

    title = "job"
    parameter_name = "job"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        jobs = (
            TrainingJob.objects.filter(Exists(MetricKey.objects.filter(job=OuterRef("pk"))))
            .order_by("-pk")
            .values_list("pk", "name")[:JOB_CHOICES]
        )
        choices = [(str(pk), f"{name} (#{pk})") for pk, name in jobs]
        selected = self.value()
        if selected and selected not in {value for value, _ in choices}:
            choices.insert(0, (selected, f"job #{selected}"))
        return choices

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[NamedMetric]
    ) -> QuerySet[NamedMetric]:
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit():
            return queryset.none()
        return queryset.filter(key__job_id=int(value))


@admin.register(NamedMetric)
class NamedMetricAdmin(ReadOnlyPointsAdmin[NamedMetric]):
    list_display = ("job_display", "key_display", "step", "value_display", "reported_at")
    list_select_related = ("key", "key__job")
    list_filter = (NamedJobFilter,)
    # The newest key's latest points first, off the (key_id, step) unique index.
    ordering = ("-key_id", "-step")

    @admin.display(description="job")
    def job_display(self, point: NamedMetric) -> TrainingJob:
        return point.key.job

    @admin.display(description="key")
    def key_display(self, point: NamedMetric) -> str:
        return point.key.name

    @admin.display(description="value")
    def value_display(self, point: NamedMetric) -> str:
        # NULL is how a NaN is stored (SQLite cannot hold NaN).
        if point.value is None or math.isnan(point.value):
            return "NaN"
        return f"{point.value:.6g}"
