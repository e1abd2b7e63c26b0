"""Reads of the compare page: which named keys a set of jobs share, and one key's series and
stats per job. The headline loss is read by `metrics.selectors.series_downsampled`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Aggregate, CharField, OuterRef, QuerySet, Subquery, Value
from django.db.models.sql.compiler import SQLCompiler

from jobs.models import TrainingJob
from metrics.models import MetricKey
from metrics.selectors import named_series_downsampled
from metrics.series import NamedSeries

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


@dataclass(frozen=True)
class KeyLine:
    """One job's line of a compared key: its series (None: the job has no such key), its
    last value and its best (lowest) finite value."""

    series: NamedSeries | None
    last: float | None
    best: float | None


def key_series(jobs: Iterable[TrainingJob], name: str, max_points: int) -> dict[int, KeyLine]:
    """Each job's key `name`, downsampled to `max_points`, by job id: one query for the keys
    (their stats are the last and best values), then one series read per job that has it."""
    jobs = list(jobs)
    found = {
        key.job_id: key
        for key in MetricKey.objects.filter(job_id__in=[job.pk for job in jobs], name=name)
    }
    lines: dict[int, KeyLine] = {}
    for job in jobs:
        key = found.get(job.pk)
        if key is None:
            lines[job.pk] = KeyLine(None, None, None)
        else:
            # The compare chart draws steps and values only.
            series = named_series_downsampled(key=key, max_points=max_points, times=False)
            lines[job.pk] = KeyLine(series, key.last_value, key.min_value)
    return lines
