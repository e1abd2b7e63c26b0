"""Reads of jobs that pages, the API and exports share."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AnonymousUser, User
from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Count, Field, FloatField, Q, QuerySet
from django.db.models.expressions import Col, RawSQL
from django.http import Http404

from jobs.models import RUNNING_FIRST, Experiment, Lifecycle, TrainingJob
from trainmon.prepared import prepared_cursor

# What a dashboard row shows (jobs.dashboard_rows), and no more: a page loads 50 rows, and
# every other column costs decoding and a model field each. A row reading a column left
# out here would cost a query per row (tests/jobs/test_views.py counts them).
DASHBOARD_FIELDS = (
    "owner__username",
    "name",
    "model_name",
    "dataset",
    "status",
    "source",
    "total_epochs",
    "steps_per_epoch",
    "current_step",
    "last_loss",
    "best_loss",
    "steps_per_second",
    "primary_metric",
    "updated_at",
    "started_at",
    "finished_at",
)
MAX_JOB_ID = 2**63 - 1  # the id column is a signed 64-bit integer (BigAutoField)
# What the job page's live partials (header, progress, stats) and a poll read of a job; a
# poll fetches only these. A partial that reads another field costs that poll a query
# (tests/metrics/test_views.py counts them).
LIVE_FIELDS = (
    "owner",
    "name",
    "model_name",
    "dataset",
    "status",
    "source",
    "total_epochs",
    "steps_per_epoch",
    "current_step",
    "last_loss",
    "best_loss",
    "best_loss_step",
    "last_accuracy",
    "last_learning_rate",
    "steps_per_second",
    "ingest_seq",
    "created_at",
    "started_at",
    "finished_at",
    "failure_reason",
)
# The named keys' table (metrics.MetricKey, one row per job and key, with its running stats).
# Named here rather than imported: the jobs app never imports metrics.
METRIC_KEY_TABLE = "metrics_metrickey"


def job_list_visible(*, user: User | AnonymousUser) -> QuerySet[TrainingJob]:
    """Users see their own jobs; staff see everyone's."""
    if not user.is_authenticated:
        return TrainingJob.objects.none()
    if user.is_staff:
        return TrainingJob.objects.all()
    return TrainingJob.objects.filter(owner=user)


def job_get_visible(*, user: User | AnonymousUser, job_id: int) -> TrainingJob:
    """The job if `user` may see it; another user's job is a 404, like a missing one."""
    try:
        return job_list_visible(user=user).get(pk=job_id)
    except TrainingJob.DoesNotExist:
        raise Http404(f"No job {job_id}.") from None


def job_get_live(*, user: User | AnonymousUser, job_id: int) -> TrainingJob:
    """The job with only LIVE_FIELDS loaded, if `user` may see it (the rule of
    job_list_visible: staff see every job, others their own), else a 404.

    For the poll, every two seconds per open page: one indexed SELECT without the ORM's query
    building, which costs several times the query itself, planned once per connection
    (trainmon.prepared); a poll with nothing new reads nothing else. Values pass through the
    backend's converters as a queryset's do (SQLite returns datetimes as text).
    """
    # Out of the id column's range there is no job, and a driver cannot even bind the number
    # (the ORM's lookups check this themselves; raw SQL has to).
    if not user.is_authenticated or not 0 < job_id <= MAX_JOB_ID:
        raise Http404(f"No job {job_id}.")
    fields, sql, converters = _live_select()
    params = [job_id]
    if not user.is_staff:
        sql += " AND owner_id = %s"
        params.append(user.pk)
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        raise Http404(f"No job {job_id}.")
    values = list(row)
    for index, column, convert in converters:
        values[index] = convert(values[index], column, connection)
    return TrainingJob.from_db(connection.alias, [field.attname for field in fields], values)


_Converter = tuple[int, Col, Callable[[Any, Col, BaseDatabaseWrapper], Any]]


@functools.cache
def _live_select() -> tuple[list[Field[Any, Any]], str, list[_Converter]]:
    """The fields job_get_live reads, its SELECT up to the job's id, and the backend's
    converters of its columns (by position), worked out once: looking them up on every poll
    cost a third of the read. Like the SELECT, they depend on the backend and the settings,
    not on the connection (SQLite's convert datetimes; PostgreSQL's return them ready)."""
    meta = TrainingJob._meta
    fields: list[Field[Any, Any]] = [
        field
        for field in (meta.pk, *(meta.get_field(name) for name in LIVE_FIELDS))
        if isinstance(field, Field) and field.column  # all of them: for the type checker
    ]
    columns = ", ".join(connection.ops.quote_name(field.column or "") for field in fields)
    sql = f"SELECT {columns} FROM {connection.ops.quote_name(meta.db_table)} WHERE id = %s"
    converters: list[_Converter] = []
    for index, field in enumerate(fields):
        column = field.get_col(meta.db_table)
        for convert in [
            *connection.ops.get_db_converters(column),
            *column.get_db_converters(connection),
        ]:
            converters.append((index, column, convert))
    return fields, sql, converters


def job_get_owned(*, user: User | AnonymousUser, job_id: int) -> TrainingJob:
    """The job if `user` owns it, staff or not; anything else is a 404.

    For API tokens: a token sits on a training machine, so it reaches its user's own jobs
    only, and a leaked staff token does not expose everyone's.
    """
    if not user.is_authenticated:
        raise Http404(f"No job {job_id}.")
    try:
        return TrainingJob.objects.get(pk=job_id, owner=user)
    except TrainingJob.DoesNotExist:
        raise Http404(f"No job {job_id}.") from None


def job_list_dashboard(
    *,
    user: User | AnonymousUser,
    status: str | None = None,
    search: str | None = None,
    experiment: Experiment | None = None,
) -> QuerySet[TrainingJob]:
    """The dashboard's list: running jobs first, then newest; never touches the metrics table."""
    jobs = job_list_visible(user=user).select_related("owner").only(*DASHBOARD_FIELDS)
    if status:
        jobs = jobs.filter(status=status)
    if experiment is not None:
        jobs = jobs.filter(experiment_jobs_q(experiment))
    if search and (term := search.strip()):
        jobs = jobs.filter(
            Q(name__icontains=term) | Q(model_name__icontains=term) | Q(dataset__icontains=term)
        )
    # In the order of the job_owner_dashboard_idx index: a page reads its own rows only.
    ordered = jobs.annotate(running_first=RUNNING_FIRST).order_by(
        "running_first", "-created_at", "-id"
    )
    return with_primary_metric_stats(ordered)


def with_primary_metric_stats(jobs: QuerySet[TrainingJob]) -> QuerySet[TrainingJob]:
    """`jobs` annotated with `primary_last` and `primary_min`: the last and lowest value of
    each job's `primary_metric` key, for rows that show it when the job has no headline loss.

    Two correlated subqueries in the list's one query, each a lookup on the keys' (job, name)
    unique index, so a page of jobs costs no query per row. Raw SQL against the table name:
    the jobs app does not import metrics (see METRIC_KEY_TABLE). Both are NULL when the job
    has no such key, or no finite value in it yet.
    """
    job_table = TrainingJob._meta.db_table

    def stat(column: str) -> RawSQL:
        return RawSQL(
            f"SELECT k.{column} FROM {METRIC_KEY_TABLE} k "
            f"WHERE k.job_id = {job_table}.id AND k.name = {job_table}.primary_metric",
            (),
            output_field=FloatField(),
        )

    return jobs.annotate(primary_last=stat("last_value"), primary_min=stat("min_value"))


def job_count_by_status(*, user: User | AnonymousUser) -> dict[str, int]:
    """How many of the user's visible jobs are in each status (every status, zeros included)."""
    counts = dict.fromkeys(TrainingJob.Status.values, 0)
    rows = job_list_visible(user=user).order_by().values_list("status").annotate(count=Count("id"))
    for status, count in rows:
        counts[status] = count
    return counts


# --- experiments ---------------------------------------------------------------------------------


def experiment_jobs_q(experiment: Experiment) -> Q:
    """The jobs of `experiment`: a Default's include its owner's jobs with no experiment."""
    if experiment.is_default:
        return Q(owner_id=experiment.owner_id) & (
            Q(experiment__isnull=True) | Q(experiment_id=experiment.pk)
        )
    return Q(experiment_id=experiment.pk)


def experiment_list(*, user: User | AnonymousUser) -> list[Experiment]:
    """The user's active experiments by name, for the dashboard's filter and the form."""
    if not user.is_authenticated:
        return []
    return list(Experiment.objects.filter(owner=user, lifecycle=Lifecycle.ACTIVE).order_by("name"))


def experiment_get_for_filter(*, user: User | AnonymousUser, value: str) -> Experiment | None:
    """The user's experiment with pk `value`, or None (no filter) for anything else."""
    if not user.is_authenticated or not value.isdigit() or len(value) > 18:
        return None
    return Experiment.objects.filter(owner=user, pk=int(value)).first()
