"""Reads of the compare page: which named keys a set of jobs share, and one key's series and
stats per job. The headline loss is read by `metrics.selectors.series_downsampled`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Aggregate, CharField, OuterRef, QuerySet, Subquery, Value
from django.db.models.sql.compiler import SQLCompiler

from jobs.models import TrainingJob
from metrics.models import MetricKey

# A key name cannot hold a newline (metrics.points.KEY_NAME_RE): a safe separator.
_NAME_SEPARATOR = "\n"


class _KeyNames(Aggregate):
    """The names aggregated into one string: SQLite's GROUP_CONCAT, PostgreSQL's STRING_AGG."""

    function = "GROUP_CONCAT"
    output_field = CharField()

    def as_postgresql(self, compiler: SQLCompiler, connection: Any, **extra: Any) -> Any:
        return super().as_sql(compiler, connection, function="STRING_AGG", **extra)


def jobs_with_key_names(jobs: QuerySet[TrainingJob]) -> QuerySet[TrainingJob]:
    """`jobs` annotated with `key_names` (their keys' names, newline-separated), in the same
    query: the compare page lists the keys its jobs share without a query per job."""
    names = (
        MetricKey.objects.filter(job_id=OuterRef("pk"))
        .order_by()
        .values("job_id")
        .annotate(names=_KeyNames("name", Value(_NAME_SEPARATOR)))
        .values("names")
    )
    return jobs.annotate(key_names=Subquery(names, output_field=CharField()))


def key_names(job: TrainingJob) -> set[str]:
    """The names a job annotated by `jobs_with_key_names` carries."""
    text = getattr(job, "key_names", None) or ""
    return set(text.split(_NAME_SEPARATOR)) if text else set()


def shared_key_names(jobs: Iterable[TrainingJob]) -> list[str]:
    """The key names every one of `jobs` has, sorted."""
    sets = [key_names(job) for job in jobs]
    return sorted(set.intersection(*sets)) if sets else []


def keys_named(jobs: Iterable[TrainingJob], name: str) -> dict[int, MetricKey]:
    """Each job's key called `name`, by job id (jobs without one are left out); one query."""
    found = MetricKey.objects.filter(job_id__in=[job.pk for job in jobs], name=name)
    return {key.job_id: key for key in found}
