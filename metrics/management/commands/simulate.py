"""`manage.py simulate [JOB_ID ...] [--ticks N | --until-done]`: ticks in process, no broker."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from jobs.models import TrainingJob
from metrics.services import TickResult, simulation_advance

Status = TrainingJob.Status
DEFAULT_TICKS = 1


class Command(BaseCommand):
    help = (
        "Advance running simulated jobs tick by tick in this process, as the Celery beat does, "
        "without a broker or worker."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        # Numbers are parsed in handle(), so bad input is a one-line CommandError (exit 1)
        # rather than argparse's usage dump.
        parser.add_argument(
            "job_ids",
            nargs="*",
            metavar="JOB_ID",
            help="Jobs to advance (default: every running simulated job).",
        )
        parser.add_argument("--ticks", metavar="N", help=f"Run N ticks (default {DEFAULT_TICKS}).")
        parser.add_argument(
            "--until-done",
            action="store_true",
            help="Tick until none of the jobs is running any more (completed, failed, paused…).",
        )
        parser.add_argument(
            "--interval",
            metavar="SECONDS",
            default="0",
            help="Wait this long between ticks (default 0: as fast as possible).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["ticks"] is not None and options["until_done"]:
            raise CommandError("Give either --ticks or --until-done, not both.")
        ticks = None if options["ticks"] is None else _positive_int(options["ticks"], "--ticks")
        interval = _interval(options["interval"])
        job_ids = [_job_id(value) for value in options["job_ids"]]
        jobs = _running_simulated_jobs(job_ids)

        if options["until_done"]:
            if not jobs:
                self.stdout.write("No running simulated jobs: nothing to do.")
                return
            # Each tick moves every job on by its steps_per_tick, so the slowest job bounds
            # the loop; one spare tick lets it complete if it sits at its last step.
            expected = max(
                math.ceil((job.simulation_length[0] - job.current_step) / job.steps_per_tick)
                for job in jobs
            )
            budget = expected + 1
        else:
            expected = budget = ticks or DEFAULT_TICKS

        totals = _Totals()
        watched = [job.pk for job in jobs] if options["until_done"] else None
        bar = tqdm(total=expected, unit="tick", file=sys.stderr, disable=not sys.stderr.isatty())
        try:
            while totals.ticks < budget:
                if totals.ticks and interval:
                    time.sleep(interval)
                totals.add(simulation_advance(job_ids=job_ids or None))
                bar.set_postfix(points=totals.points, refresh=False)
                bar.update()
                if watched is not None and not _any_running(watched):
                    break
        except KeyboardInterrupt:
            raise CommandError(
                f"Interrupted after {totals.ticks} ticks ({totals.points} points written)."
            ) from None
        finally:
            bar.close()
        if watched is not None and _any_running(watched):
            # Only if something kept the jobs from advancing (another process holding their
            # rows tick after tick): stop rather than loop forever.
            raise CommandError(
                f"Stopped after {totals.ticks} ticks with jobs still running; "
                f"they should have been done after {expected}."
            )
        self.stdout.write(totals.summary())


@dataclass
class _Totals:
    ticks: int = 0
    points: int = 0
    completed: int = 0
    failed: int = 0
    job_ids: set[int] = field(default_factory=set)

    def add(self, result: TickResult) -> None:
        self.ticks += 1
        self.points += result.points_written
        self.completed += result.jobs_completed
        self.failed += result.jobs_failed
        self.job_ids.update(result.job_ids)

    def summary(self) -> str:
        running = TrainingJob.objects.filter(pk__in=self.job_ids, status=Status.RUNNING).count()
        jobs = len(self.job_ids)
        return (
            f"{self.ticks} {_plural(self.ticks, 'tick')}: {self.points} points written for "
            f"{jobs} {_plural(jobs, 'job')}; {self.completed} completed, {self.failed} failed, "
            f"{running} still running."
        )


def _running_simulated_jobs(job_ids: list[int]) -> list[TrainingJob]:
    """The jobs to watch: those named (each must be running and simulated), or all of them."""
    running = TrainingJob.objects.filter(status=Status.RUNNING, source=TrainingJob.Source.SIMULATED)
    if not job_ids:
        return list(running)
    found = TrainingJob.objects.in_bulk(job_ids)
    for job_id in job_ids:
        job = found.get(job_id)
        if job is None:
            raise CommandError(f"No job with id {job_id}.")
        if job.source != TrainingJob.Source.SIMULATED:
            raise CommandError(
                f"Job {job_id} ({job.name!r}) is external: it reports its own metrics and "
                f"cannot be simulated."
            )
        if job.status != Status.RUNNING:
            raise CommandError(
                f"Job {job_id} ({job.name!r}) is {job.status}; only running jobs can be simulated."
            )
    return [found[job_id] for job_id in dict.fromkeys(job_ids)]


def _any_running(job_ids: list[int]) -> bool:
    return TrainingJob.objects.filter(pk__in=job_ids, status=Status.RUNNING).exists()


def _positive_int(value: str, name: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise CommandError(f"{name} must be a positive integer, got {value!r}.") from None
    if number <= 0:
        raise CommandError(f"{name} must be a positive integer, got {value!r}.")
    return number


def _job_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise CommandError(f"Job ids are integers, got {value!r}.") from None


def _interval(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds >= 0):
        raise CommandError(f"--interval must be a number of seconds >= 0, got {value!r}.")
    return seconds


def _plural(count: int, word: str) -> str:
    return word if count == 1 else f"{word}s"
