from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from jobs.models import TrainingJob


class TrainingMetric(models.Model):
    # The (job, step) unique index leads with job_id, so the FK needs no index of its own.
    # No database FK either: its per-row check was half the cost of storing a point, and
    # integrity holds without it: points are written only under a lock on their job's row
    # (metrics.services), a job's deletion takes that lock first (jobs.signals), and Django
    # cascades the delete.
    job = models.ForeignKey(
        TrainingJob, models.CASCADE, related_name="metrics", db_index=False, db_constraint=False
    )
    epoch = models.PositiveIntegerField()
    step = models.PositiveBigIntegerField()
    loss = models.FloatField()
    accuracy = models.FloatField(null=True, blank=True)
    learning_rate = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "step"], name="metric_unique_job_step"),
            models.CheckConstraint(condition=Q(epoch__gte=1), name="metric_epoch_positive"),
            models.CheckConstraint(
                condition=Q(accuracy__isnull=True) | Q(accuracy__gte=0, accuracy__lte=1),
                name="metric_accuracy_in_unit_range",
            ),
            models.CheckConstraint(
                condition=Q(learning_rate__isnull=True) | Q(learning_rate__gte=0),
                name="metric_learning_rate_nonneg",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}@{self.step}: loss {self.loss:.4g}"


class MetricSummary(models.Model):
    """One bucket of a job's points at one resolution; kept by metrics.summary.

    Derived data: written only in the transaction that stores the bucket's points, read by
    charts instead of the raw rows. Exactly equal to an aggregate over those rows.
    """

    # The (job, width, bucket) unique index leads with job_id, so the FK needs no index.
    job = models.ForeignKey(
        TrainingJob, models.CASCADE, related_name="metric_summaries", db_index=False
    )
    width = models.PositiveIntegerField(help_text="Steps per bucket at this level.")
    bucket = models.PositiveBigIntegerField(help_text="step // width")
    count = models.PositiveIntegerField()
    sum_loss = models.FloatField()
    # The lowest-loss point (lowest step on ties), the highest-loss point (highest step on
    # ties) and the last point of the bucket, each as stored.
    min_loss = models.FloatField()
    min_step = models.PositiveBigIntegerField()
    min_accuracy = models.FloatField(null=True, blank=True)
    min_learning_rate = models.FloatField(null=True, blank=True)
    max_loss = models.FloatField()
    max_step = models.PositiveBigIntegerField()
    max_accuracy = models.FloatField(null=True, blank=True)
    max_learning_rate = models.FloatField(null=True, blank=True)
    last_step = models.PositiveBigIntegerField()
    last_loss = models.FloatField()
    last_accuracy = models.FloatField(null=True, blank=True)
    last_learning_rate = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["job", "width", "bucket"], name="metric_summary_unique_bucket"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}@{self.width}x{self.bucket}: {self.count} points"
