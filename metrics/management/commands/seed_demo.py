from __future__ import annotations

from argparse import ArgumentParser
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from jobs.cli import OWNER_HELP, owner_from_option
from jobs.models import TrainingJob
from jobs.services import job_create, job_pause, jobs_lock
from metrics.services import metric_batches_write, simulator_for

Status = TrainingJob.Status

DEFAULT_JOBS = 6
DEMO_SEED = 7_000
# Each write covers this much simulated time: under jobs.services.RATE_GAP_SECONDS, so the
# jobs get a steps/s figure as if the tick had written them.
SECONDS_PER_BATCH = 30


@dataclass(frozen=True)
class DemoJob:
    name: str
    model_name: str
    dataset: str
    description: str
    hyperparameters: dict[str, Any]
    total_epochs: int
    steps_per_epoch: int
    steps_per_tick: int
    status: str  # what the job shows once seeded
    done: float = 1.0  # share of the steps already written
    ended_ago: timedelta = timedelta(0)  # age of its last point
    diverge_at_step: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


# The first few cover every state, so even `--jobs 4` shows running, completed, failed and paused.
# Running jobs keep a few hundred to two thousand steps to go: the dashboard moves at once.
DEMO_JOBS = (
    DemoJob(
        name="bert-base-sst2",
        model_name="bert-base-uncased",
        dataset="glue/sst2",
        description="Sentiment fine-tune, the baseline for the sweep.",
        hyperparameters={"optimizer": "adamw", "learning_rate": 3e-5, "batch_size": 32,
                         "weight_decay": 0.01, "scheduler": "cosine", "max_seq_len": 128},
        total_epochs=4, steps_per_epoch=250, steps_per_tick=2, status=Status.RUNNING, done=0.45,
    ),
    DemoJob(
        name="resnet50-imagenet-subset",
        model_name="resnet50",
        dataset="imagenet-1k (100 classes)",
        description="Reference run on the 100-class subset.",
        hyperparameters={"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.9,
                         "batch_size": 256, "weight_decay": 1e-4, "label_smoothing": 0.1},
        total_epochs=10, steps_per_epoch=100, steps_per_tick=10, status=Status.COMPLETED,
        ended_ago=timedelta(hours=3), options={"initial_loss": 4.6, "final_loss": 1.1},
    ),
    DemoJob(
        name="vit-small-cifar100-lr1e-2",
        model_name="vit-small",
        dataset="cifar100",
        description="Learning rate too high on purpose: the loss blows up.",
        hyperparameters={"optimizer": "adamw", "learning_rate": 1e-2, "batch_size": 128,
                         "weight_decay": 0.05, "patch_size": 4, "warmup_steps": 10},
        total_epochs=6, steps_per_epoch=100, steps_per_tick=10, status=Status.FAILED,
        ended_ago=timedelta(minutes=50), diverge_at_step=280,
        options={"initial_loss": 4.6, "final_loss": 1.4, "warmup_steps": 10},
    ),
    DemoJob(
        name="distilbert-imdb-sweep-3",
        model_name="distilbert-base-uncased",
        dataset="imdb",
        description="Sweep point 3 of 8, paused to free the GPU.",
        hyperparameters={"optimizer": "adamw", "learning_rate": 5e-5, "batch_size": 16,
                         "weight_decay": 0.0, "dropout": 0.2, "max_seq_len": 256},
        total_epochs=5, steps_per_epoch=120, steps_per_tick=5, status=Status.PAUSED, done=0.55,
        ended_ago=timedelta(minutes=25), options={"initial_loss": 0.7, "final_loss": 0.22},
    ),
    DemoJob(
        name="gpt2-small-wikitext103",
        model_name="gpt2",
        dataset="wikitext-103",
        description="Language-model pre-training smoke test.",
        hyperparameters={"optimizer": "adamw", "learning_rate": 6e-4, "batch_size": 64,
                         "context": 512, "betas": [0.9, 0.95], "grad_clip": 1.0},
        total_epochs=8, steps_per_epoch=250, steps_per_tick=5, status=Status.RUNNING, done=0.2,
        options={"initial_loss": 10.8, "final_loss": 3.2},
    ),
    DemoJob(
        name="efficientnet-b0-food101",
        model_name="efficientnet-b0",
        dataset="food101",
        description="Transfer learning from ImageNet weights.",
        hyperparameters={"optimizer": "rmsprop", "learning_rate": 1e-3, "batch_size": 64,
                         "weight_decay": 1e-5, "augment": "randaugment", "frozen_blocks": 4},
        total_epochs=5, steps_per_epoch=80, steps_per_tick=10, status=Status.COMPLETED,
        ended_ago=timedelta(days=1, hours=2), options={"initial_loss": 4.6, "final_loss": 0.9},
    ),
)  # fmt: skip


class Command(BaseCommand):
    help = (
        "Create demo jobs with their histories: running (with steps left, so the dashboard "
        "moves), paused, completed and failed (diverged) simulated jobs, a few thousand points "
        "in all. Run `make run` (or a worker) to see the running ones advance."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--jobs",
            type=int,
            default=DEFAULT_JOBS,
            metavar="N",
            help=f"How many demo jobs to create (default: %(default)s; the first "
            f"{len(DEMO_JOBS)} are all different, later ones repeat them with other seeds).",
        )
        parser.add_argument("--owner", metavar="USER", help=OWNER_HELP)

    def handle(self, *args: object, **options: Any) -> None:
        count = options["jobs"]
        if count < 1:
            raise CommandError("--jobs must be at least 1.")
        owner = owner_from_option(options["owner"])
        now = timezone.now()
        statuses: Counter[str] = Counter()
        points = 0
        with transaction.atomic():
            for index in range(count):
                job, written = _seed_job(owner, index, now)
                statuses[job.status] += 1
                points += written
        summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        self.stdout.write(
            f"Created {count} demo jobs ({summary}) with {points:,} points, "
            f"owned by {owner.get_username()}."
        )


def _seed_job(owner: User, index: int, now: datetime) -> tuple[TrainingJob, int]:
    spec = DEMO_JOBS[index % len(DEMO_JOBS)]
    repeat = index // len(DEMO_JOBS)
    job = job_create(
        owner=owner,
        name=spec.name if not repeat else f"{spec.name} #{repeat + 1}",
        description=spec.description,
        model_name=spec.model_name,
        dataset=spec.dataset,
        hyperparameters=spec.hyperparameters,
        total_epochs=spec.total_epochs,
        steps_per_epoch=spec.steps_per_epoch,
        steps_per_tick=spec.steps_per_tick,
        base_learning_rate=spec.hyperparameters["learning_rate"],
        seed=DEMO_SEED + index,
        diverge_at_step=spec.diverge_at_step,
        **spec.options,
    )
    total_steps, steps_per_epoch = job.simulation_length
    steps = round(total_steps * spec.done)
    steps_per_second = job.steps_per_tick / settings.TRAINMON_TICK_SECONDS
    started = now - spec.ended_ago - timedelta(seconds=steps / steps_per_second)
    # Backdated as if the job had run for real; the status still comes from the services.
    TrainingJob.objects.filter(pk=job.pk).update(
        created_at=started, started_at=started, updated_at=started
    )
    job.refresh_from_db()

    simulator = simulator_for(job)
    batch_size = max(1, round(steps_per_second * SECONDS_PER_BATCH))
    written = 0
    for start in range(0, steps, batch_size):
        size = min(batch_size, steps - start)
        batch = simulator.generate_metrics_batch(start, size, total_steps, steps_per_epoch)
        (job,) = jobs_lock([job.pk])
        reported = started + timedelta(seconds=(start + size) / steps_per_second)
        named = simulator.generate_named_batch(
            batch, total_steps, steps_per_epoch, reported.timestamp()
        )
        (result,) = metric_batches_write([(job, batch)], named={job.pk: named}, now=reported)
        written += result.created
        if job.is_terminal:  # finished, or diverged
            break
    if spec.status == Status.PAUSED:
        job_pause(job=job)
    return job, written
