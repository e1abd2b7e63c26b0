from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from jobs.display import job_progress, time_ago
from jobs.models import TrainingJob

NAME_WIDTH = 40
COLUMNS = ("ID", "NAME", "STATUS", "PROGRESS", "LAST LOSS", "UPDATED")
RIGHT_ALIGNED = {"ID", "PROGRESS", "LAST LOSS"}


class Command(BaseCommand):
    help = "List jobs, newest first: id, name, status, progress, last loss, last update."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--status",
            metavar="STATUS",
            help=f"Only jobs with this status: {', '.join(TrainingJob.Status.values)}.",
        )
        parser.add_argument(
            "--limit", type=int, metavar="N", help="Show at most N jobs (default: all)."
        )

    def handle(self, *args: object, **options: Any) -> None:
        jobs = TrainingJob.objects.only(
            "name", "status", "source", "current_step", "total_epochs", "steps_per_epoch",
            "last_loss", "updated_at", "created_at",
        )  # fmt: skip
        if status := options["status"]:
            if status not in TrainingJob.Status.values:
                valid = ", ".join(TrainingJob.Status.values)
                raise CommandError(f"Unknown status {status!r}; choose one of: {valid}.")
            jobs = jobs.filter(status=status)
        if (limit := options["limit"]) is not None:
            if limit < 1:
                raise CommandError("--limit must be a positive number.")
            jobs = jobs[:limit]

        now = timezone.now()
        rows = [
            (
                str(job.pk),
                _truncate(job.name, NAME_WIDTH),
                job.status,
                job_progress(job).label,
                "-" if job.last_loss is None else f"{job.last_loss:.4f}",
                time_ago(job.updated_at, now=now),
            )
            for job in jobs
        ]
        if not rows:
            self.stderr.write("No jobs." if not status else f"No {status} jobs.")
            return
        widths = [max(len(cell) for cell in column) for column in zip(COLUMNS, *rows, strict=True)]
        for row in (COLUMNS, *rows):
            cells = (
                cell.rjust(width) if header in RIGHT_ALIGNED else cell.ljust(width)
                for header, cell, width in zip(COLUMNS, row, widths, strict=True)
            )
            self.stdout.write("  ".join(cells).rstrip())


def _truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
