"""Reads of jobs that pages, the API and exports share."""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Case, Count, IntegerField, Q, QuerySet, Value, When
from django.http import Http404

from jobs.models import TrainingJob

# Columns no list shows; hyperparameters may be tens of kilobytes per job.
LIST_DEFERRED_FIELDS = ("hyperparameters", "description")


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
) -> QuerySet[TrainingJob]:
    """The dashboard's list: running jobs first, then newest; never touches the metrics table."""
    jobs = job_list_visible(user=user).select_related("owner").defer(*LIST_DEFERRED_FIELDS)
    if status:
        jobs = jobs.filter(status=status)
    if search and (term := search.strip()):
        jobs = jobs.filter(
            Q(name__icontains=term) | Q(model_name__icontains=term) | Q(dataset__icontains=term)
        )
    running_first = Case(
        When(status=TrainingJob.Status.RUNNING, then=Value(0)),
        default=Value(1),
        output_field=IntegerField(),
    )
    return jobs.annotate(running_first=running_first).order_by(
        "running_first", "-created_at", "-id"
    )


def job_count_by_status(*, user: User | AnonymousUser) -> dict[str, int]:
    """How many of the user's visible jobs are in each status (every status, zeros included)."""
    counts = dict.fromkeys(TrainingJob.Status.values, 0)
    rows = job_list_visible(user=user).order_by().values_list("status").annotate(count=Count("id"))
    for status, count in rows:
        counts[status] = count
    return counts
