from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from jobs.cli import OWNER_HELP, owner_from_option, validation_message
from jobs.services import job_create, job_pause


class Command(BaseCommand):
    help = (
        "Create a simulated training job and print its id (and nothing else) on stdout, "
        "so that JOB=$(./manage.py createjob ...) works. The job runs at once unless --paused."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name", metavar="NAME", help="The job's name.")
        parser.add_argument(
            "--epochs", type=int, required=True, metavar="N", help="Number of epochs."
        )
        parser.add_argument(
            "--steps-per-epoch", type=int, required=True, metavar="N", help="Steps in each epoch."
        )
        parser.add_argument(
            "--steps-per-tick",
            type=int,
            default=10,
            metavar="N",
            help="Simulation speed: steps written per tick (default: %(default)s).",
        )
        parser.add_argument(
            "--seed", type=int, metavar="N", help="Seed of the simulated curves (default: random)."
        )
        parser.add_argument("--owner", metavar="USER", help=OWNER_HELP)
        parser.add_argument(
            "--paused",
            action="store_true",
            help="Create the job paused: it does not run until `resumejob ID`.",
        )
        parser.add_argument(
            "--model-name", default="", metavar="LABEL", help="Model label, e.g. resnet50."
        )
        parser.add_argument(
            "--dataset", default="", metavar="LABEL", help="Dataset label, e.g. imagenet-1k."
        )
        parser.add_argument(
            "--diverge-at-step",
            type=int,
            metavar="N",
            help="Make the loss blow up from this step on, so the job fails (for demos).",
        )

    def handle(self, *args: object, **options: Any) -> None:
        owner = owner_from_option(options["owner"])
        try:
            with transaction.atomic():
                job = job_create(
                    owner=owner,
                    name=options["name"],
                    total_epochs=options["epochs"],
                    steps_per_epoch=options["steps_per_epoch"],
                    steps_per_tick=options["steps_per_tick"],
                    seed=options["seed"],
                    model_name=options["model_name"],
                    dataset=options["dataset"],
                    diverge_at_step=options["diverge_at_step"],
                    start=not options["paused"],
                )
                if options["paused"]:
                    # Queued then paused: the tick skips it, and resumejob starts it.
                    job_pause(job=job)
        except ValidationError as error:
            raise CommandError(validation_message(error)) from None

        self.stdout.write(str(job.pk))
        if options["verbosity"] >= 1:
            self.stderr.write(
                f"Created job {job.pk} ({job.name!r}, {job.total_steps:,} steps), {job.status}, "
                f"owned by {owner.get_username()}.",
                style_func=self.style.SUCCESS,
            )
