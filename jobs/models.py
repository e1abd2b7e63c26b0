from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import timedelta
from functools import cache
from typing import Any, Self

from django.conf import settings
from django.db import models
from django.db.models import DEFERRED, F, Q
from django.db.models.base import ModelState
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.functions import Cast
from django.db.models.query_utils import DeferredAttribute
from django.db.models.signals import post_init, pre_init
from django.urls import reverse
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    STALLED = "stalled", "Stalled"


class JobSource(models.TextChoices):
    SIMULATED = "simulated", "Simulated"
    EXTERNAL = "external", "External"


class Lifecycle(models.TextChoices):
    ACTIVE = "active", "Active"
    DELETED = "deleted", "Deleted"


def _is_system_tag(key: object) -> bool:
    return str(key).startswith("mlflow.")


def new_run_uuid() -> str:
    return uuid.uuid4().hex


class Experiment(models.Model):
    """A named group of jobs (MLflow's experiment). Every user has a Default one, made on
    demand (jobs.services.experiment_default); MLflow calls it "0"."""

    Lifecycle = Lifecycle

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=500)
    is_default = models.BooleanField(default=False, editable=False)
    lifecycle = models.CharField(max_length=16, choices=Lifecycle, default=Lifecycle.ACTIVE)
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="experiment_unique_owner_name"),
            models.UniqueConstraint(
                fields=["owner"], condition=Q(is_default=True), name="experiment_one_default"
            ),
            models.CheckConstraint(condition=~Q(name=""), name="experiment_name_not_empty"),
            models.CheckConstraint(
                condition=Q(lifecycle__in=Lifecycle.values), name="experiment_lifecycle_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name


# 0 for a running job, 1 otherwise: the dashboard lists running jobs first. Its index below
# matches only this very expression, so the list orders by it too.
RUNNING_FIRST = models.Case(
    models.When(status=JobStatus.RUNNING, then=models.Value(0)),
    default=models.Value(1),
    output_field=models.IntegerField(),
)


class TrainingJob(models.Model):
    Status = JobStatus
    Source = JobSource

    TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
    # Statuses in which new points can still arrive: the UI keeps polling these.
    ACTIVE_STATUSES = frozenset(
        {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED, JobStatus.STALLED}
    )

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="training_jobs"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    model_name = models.CharField(max_length=200, blank=True)
    dataset = models.CharField(max_length=200, blank=True)
    hyperparameters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=JobStatus, default=JobStatus.QUEUED)
    source = models.CharField(max_length=16, choices=JobSource, default=JobSource.SIMULATED)

    # The declared length: a hint for progress and ETA, never a limit. External jobs may leave
    # both out (open-ended runs); simulated jobs need both (constraints below).
    total_epochs = models.PositiveIntegerField(null=True, blank=True)
    steps_per_epoch = models.PositiveIntegerField(null=True, blank=True)
    steps_per_tick = models.PositiveIntegerField(
        default=10, help_text="Simulation speed: steps written per tick."
    )

    # Simulator parameters (simulated jobs only); see metrics/simulator.py.
    initial_loss = models.FloatField(default=2.5)
    final_loss = models.FloatField(default=0.3)
    decay_rate = models.FloatField(help_text="Per-step loss decay; defaults to 5 / total steps.")
    seed = models.PositiveBigIntegerField()
    base_learning_rate = models.FloatField(default=1e-3)
    warmup_steps = models.PositiveIntegerField(default=0)
    diverge_at_step = models.PositiveIntegerField(null=True, blank=True)

    # Progress, kept on the job so lists never touch the metrics table.
    current_step = models.PositiveBigIntegerField(default=0, help_text="Steps done.")
    last_loss = models.FloatField(null=True, blank=True)
    best_loss = models.FloatField(null=True, blank=True)
    best_loss_step = models.PositiveBigIntegerField(null=True, blank=True)
    last_accuracy = models.FloatField(null=True, blank=True)
    last_learning_rate = models.FloatField(null=True, blank=True)
    steps_per_second = models.FloatField(null=True, blank=True)
    last_reported_at = models.DateTimeField(null=True, blank=True)
    # The scheduled tick (time slot) that last advanced this simulated job: a replayed or
    # concurrent run of the same tick skips the job, so each tick advances it at most once.
    last_tick = models.BigIntegerField(null=True, blank=True, editable=False)
    # The job's ingest position: +1 per write that stored any point, under the job's row
    # lock. A page's poll cursor is one of these (metrics.selectors.job_poll).
    ingest_seq = models.BigIntegerField(default=0, editable=False)
    # The named key the dashboard shows when the job reports no headline loss.
    primary_metric = models.CharField(max_length=250, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.TextField(blank=True)

    # MLflow: the experiment (NULL = the owner's Default), the run id, the run's tags
    # (mlflow.* system tags kept), whether the run is deleted, and dataset inputs.
    experiment = models.ForeignKey(
        Experiment, models.SET_NULL, null=True, blank=True, related_name="jobs"
    )
    run_uuid = models.CharField(max_length=32, unique=True, default=new_run_uuid, editable=False)
    tags = models.JSONField(default=dict, blank=True)
    lifecycle = models.CharField(max_length=16, choices=Lifecycle, default=Lifecycle.ACTIVE)
    inputs = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_created_idx"),
            # The dashboard's order (jobs.selectors.job_list_dashboard): a page of 50 reads
            # 50 rows instead of sorting all of a user's jobs (9 ms at 1,000 jobs). Staff,
            # who see every job, get the same order without the owner.
            models.Index(
                F("owner"),
                RUNNING_FIRST,
                F("created_at").desc(),
                F("id").desc(),
                name="job_owner_dashboard_idx",
            ),
            models.Index(
                RUNNING_FIRST, F("created_at").desc(), F("id").desc(), name="job_dashboard_idx"
            ),
            # The tick and the stall sweep look up running jobs only.
            models.Index(
                fields=["source"], name="job_running_source_idx", condition=Q(status="running")
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=~Q(name=""), name="job_name_not_empty"),
            models.CheckConstraint(
                condition=Q(status__in=JobStatus.values), name="job_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(source__in=JobSource.values), name="job_source_valid"
            ),
            models.CheckConstraint(condition=Q(total_epochs__gt=0), name="job_epochs_positive"),
            models.CheckConstraint(
                condition=Q(steps_per_epoch__gt=0), name="job_steps_per_epoch_positive"
            ),
            models.CheckConstraint(
                condition=Q(steps_per_tick__gt=0), name="job_steps_per_tick_positive"
            ),
            models.CheckConstraint(condition=Q(final_loss__gte=0), name="job_final_loss_nonneg"),
            models.CheckConstraint(
                condition=Q(initial_loss__gt=F("final_loss")), name="job_loss_decreases"
            ),
            models.CheckConstraint(condition=Q(decay_rate__gt=0), name="job_decay_positive"),
            models.CheckConstraint(
                condition=Q(base_learning_rate__gte=0), name="job_learning_rate_nonneg"
            ),
            # Both lengths or neither; a simulated job has both (it runs to its last step).
            models.CheckConstraint(
                condition=Q(total_epochs__isnull=True, steps_per_epoch__isnull=True)
                | Q(total_epochs__isnull=False, steps_per_epoch__isnull=False),
                name="job_length_both_or_neither",
            ),
            models.CheckConstraint(
                condition=~Q(source=JobSource.SIMULATED) | Q(total_epochs__isnull=False),
                name="job_simulated_has_length",
            ),
            # An external job's declared length is a hint: its points may run past it.
            models.CheckConstraint(
                condition=~Q(source=JobSource.SIMULATED)
                # Cast: Python-side validation binds the lengths as typed-less parameters, and
                # PostgreSQL cannot multiply two untyped NULLs (an external job has none).
                | Q(
                    current_step__lte=Cast("total_epochs", models.BigIntegerField())
                    * Cast("steps_per_epoch", models.BigIntegerField())
                ),
                name="job_current_step_within_total",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("jobs:detail", args=[self.pk])

    @classmethod
    def from_db(
        cls, db: str | None, field_names: Collection[str], values: Collection[Any], **kwargs: Any
    ) -> Self:
        # A tick loads 500 jobs a chunk, 10,000 a second, and Model.__init__ (two signal
        # sends, a setattr per field, ~40 fields checked against the loaded ones) was a
        # tenth of a worker's CPU. Loading is documented as overridable ("Customizing model
        # loading"); this builds the instance as __init__ would for plain fields: the
        # loaded values in the instance dict (a deferred field is one absent from it).
        if kwargs or not _plain_loading(cls):
            # Django's own, with the loaded fields looked up in a set.
            fields = cls._meta.concrete_fields
            if len(values) != len(fields):
                loaded = frozenset(field_names)
                given = iter(values)
                values = [next(given) if f.attname in loaded else DEFERRED for f in fields]
            return super().from_db(db, field_names, values, **kwargs)
        new = cls.__new__(cls)
        new.__dict__.update(zip(field_names, values, strict=True))
        state = new._state = ModelState()
        state.adding = False
        state.db = db
        return new

    @property
    def user_tags(self) -> list[tuple[str, str]]:
        """The run's tags a person set, by key; MLflow's own (mlflow.*) are `system_tags`."""
        return sorted((str(k), str(v)) for k, v in self.tags.items() if not _is_system_tag(k))

    @property
    def system_tags(self) -> list[tuple[str, str]]:
        return sorted((str(k), str(v)) for k, v in self.tags.items() if _is_system_tag(k))

    @property
    def total_steps(self) -> int | None:
        """The declared number of steps; None for an open-ended external job."""
        if self.total_epochs is None or self.steps_per_epoch is None:
            return None
        return self.total_epochs * self.steps_per_epoch

    @property
    def simulation_length(self) -> tuple[int, int]:
        """(total_steps, steps_per_epoch) of a job that must have a length: a simulated one
        always does (a database constraint). For the simulator's callers, which need ints."""
        if self.total_epochs is None or self.steps_per_epoch is None:
            raise ValueError(f"Job {self.pk} has no declared length; only external jobs may.")
        return self.total_epochs * self.steps_per_epoch, self.steps_per_epoch

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def progress_percent(self) -> float | None:
        """Share of the declared length done, at most 100; None without a declared length."""
        total = self.total_steps
        if total is None:
            return None
        return min(100.0 * self.current_step / total, 100.0) if total else 0.0

    @property
    def current_epoch(self) -> int | None:
        """The epoch the next step belongs to (the last one once all steps are done).

        None without a declared length. Past the declared length it stays at the last
        declared epoch: the progress bar says the run went past it.
        """
        if self.total_epochs is None or self.steps_per_epoch is None:
            return None
        return min(self.current_step // self.steps_per_epoch + 1, self.total_epochs)

    def epoch_at(self, step: int) -> int | None:
        """The epoch of a point at `step` that came without one: step // steps_per_epoch + 1.

        Not capped at total_epochs (a declared length is never a limit); None when the job
        has no declared length, so the point's epoch stays empty.
        """
        if self.steps_per_epoch is None:
            return None
        return step // self.steps_per_epoch + 1

    @property
    def elapsed(self) -> timedelta | None:
        """Wall time since the start, up to the finish (or now); None before the start."""
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max(end - self.started_at, timedelta(0))

    @property
    def eta(self) -> timedelta | None:
        """Time left at the current rate; None without a declared length or once it is reached."""
        total = self.total_steps
        if (
            total is None
            or self.current_step >= total
            or self.status != self.Status.RUNNING
            or not self.steps_per_second
        ):
            return None
        return timedelta(seconds=(total - self.current_step) / self.steps_per_second)


def _plain_loading(model: type[models.Model]) -> bool:
    """Whether loading `model` needs nothing __init__ does beyond storing values: no
    pre_init/post_init receivers, and no field whose attribute is more than a stored value
    (a file's descriptor, say)."""
    if pre_init.has_listeners(model) or post_init.has_listeners(model):
        return False
    return _fields_plain(model)


@cache
def _fields_plain(model: type[models.Model]) -> bool:
    return all(
        type(model.__dict__.get(field.attname)) in _STORED_VALUE_ATTRIBUTES
        for field in model._meta.concrete_fields
    )


# A foreign key's id attribute only clears the cached related object when set, and a new
# instance has none cached.
_STORED_VALUE_ATTRIBUTES = (DeferredAttribute, ForeignKeyDeferredAttribute)
