from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from jobs.models import TrainingJob


class TrainingMetric(models.Model):
    # The (job, step) unique index leads with job_id, so the FK needs no index of its own.
    job = models.ForeignKey(TrainingJob, models.CASCADE, related_name="metrics", db_index=False)
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
