from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F, Q
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

    total_epochs = models.PositiveIntegerField()
    steps_per_epoch = models.PositiveIntegerField()
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

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="job_owner_created_idx"),
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
            models.CheckConstraint(
                condition=Q(current_step__lte=F("total_epochs") * F("steps_per_epoch")),
                name="job_current_step_within_total",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("jobs:detail", args=[self.pk])

    @property
    def total_steps(self) -> int:
        return self.total_epochs * self.steps_per_epoch

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def progress_percent(self) -> float:
        return 100.0 * self.current_step / self.total_steps if self.total_steps else 0.0

    @property
    def current_epoch(self) -> int:
        """The epoch the next step belongs to (the last one once all steps are done)."""
        return min(self.current_step // self.steps_per_epoch + 1, self.total_epochs)

    @property
    def eta(self) -> timedelta | None:
        if self.status != self.Status.RUNNING or not self.steps_per_second:
            return None
        return timedelta(seconds=(self.total_steps - self.current_step) / self.steps_per_second)
