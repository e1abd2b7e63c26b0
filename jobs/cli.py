"""What the manage.py commands share: choosing the owner, and the pause/resume/cancel commands.

The transition commands take their wording from jobs.services.JOB_ACTIONS."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from jobs.models import TrainingJob
from jobs.services import JOB_ACTIONS, JobTransitionError, job_transition

OWNER_HELP = (
    "Username of the job's owner. Defaults to the superuser when there is exactly one; "
    "required otherwise."
)


def owner_from_option(username: str | None) -> User:
    """The user named `username`, or the only superuser when no name is given."""
    User = get_user_model()
    if username:
        try:
            return User.objects.get_by_natural_key(username)
        except User.DoesNotExist:
            raise CommandError(f"No user {username!r}; create it first or pick another.") from None
    superusers = list(User.objects.filter(is_superuser=True)[:2])
    if len(superusers) == 1:
        return superusers[0]
    if not superusers:
        raise CommandError("No superuser exists: pass --owner USER (or run createsuperuser).")
    raise CommandError("There are several superusers: choose one with --owner USER.")


def validation_message(error: ValidationError) -> str:
    """A service's ValidationError as one line."""
    return " ".join(error.messages)


def transition_help(action: str) -> str:
    described = JOB_ACTIONS[action]
    sources = ", ".join(sorted(described.sources))
    return (
        f"{described.verb} jobs by id (only {sources} jobs can be {described.past_tense}). "
        "Unknown ids stop the command before anything changes; a job whose status does not "
        "allow it is reported and skipped, and the command then exits with status 1."
    )


class JobTransitionCommand(BaseCommand):
    """`<action>job JOB_ID ...`: one transition per job, through jobs.services."""

    action: str  # a key of jobs.services.JOB_ACTIONS

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "job_ids", nargs="+", type=int, metavar="JOB_ID", help="Job ids, as `jobs` lists them."
        )

    def handle(self, *args: object, **options: Any) -> None:
        job_ids = list(dict.fromkeys(options["job_ids"]))  # in the given order, once each
        jobs = TrainingJob.objects.in_bulk(job_ids)
        if missing := [job_id for job_id in job_ids if job_id not in jobs]:
            raise CommandError(f"No job with id {', '.join(map(str, missing))}; nothing changed.")

        past_tense = JOB_ACTIONS[self.action].past_tense
        refused = 0
        for job_id in job_ids:
            job = jobs[job_id]
            try:
                job_transition(job=job, action=self.action)
            except JobTransitionError as error:
                refused += 1
                self.stderr.write(str(error))
                continue
            self.stdout.write(f"{past_tense.capitalize()} job {job.pk} ({job.name!r}).")
        if refused:
            raise CommandError(
                f"{refused} of {len(job_ids)} jobs could not be {past_tense}; see above."
            )
