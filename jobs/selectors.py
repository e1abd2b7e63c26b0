"""Reads of jobs that pages, the API and exports share."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet
from django.http import Http404

from jobs.models import TrainingJob


def jobs_visible_to(user: AbstractBaseUser | AnonymousUser) -> QuerySet[TrainingJob]:
    """Users see their own jobs; staff see everyone's."""
    if not user.is_authenticated:
        return TrainingJob.objects.none()
    if user.is_staff:
        return TrainingJob.objects.all()
    return TrainingJob.objects.filter(owner=user)


def job_for_user(user: AbstractBaseUser | AnonymousUser, job_id: int) -> TrainingJob:
    """The job if `user` may see it; another user's job is a 404, like a missing one."""
    try:
        return jobs_visible_to(user).get(pk=job_id)
    except TrainingJob.DoesNotExist:
        raise Http404(f"No job {job_id}.") from None
