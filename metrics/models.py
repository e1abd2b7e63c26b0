from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from jobs.models import TrainingJob


class TrainingMetric(models.Model):
    # (job, step) is the primary key: the idempotency guarantee and the job index in one.
    # A surrogate id would cost every stored point a sequence value and a second index
    # entry (a third of a COPY's time); the price is that the admin cannot list these rows
    # (Django 5.2 refuses composite keys there), so the job's admin page shows them.
    pk = models.CompositePrimaryKey("job", "step")
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


class SummaryBucket(models.Model):
    """One bucket of one series at one resolution (metrics.summary keeps both kinds)."""

    # The column naming the series a bucket belongs to.
    OWNER = "job_id"

    width = models.PositiveIntegerField(help_text="Steps per bucket at this level.")
    bucket = models.PositiveBigIntegerField(help_text="step // width")
    count = models.PositiveIntegerField()

    class Meta:
        abstract = True

    def __str__(self) -> str:
        owner = getattr(self, self.OWNER)
        return f"{owner}@{self.width}x{self.bucket}: {self.count} points"


class MetricSummary(SummaryBucket):
    """One bucket of a job's points at one resolution; kept by metrics.summary.

    Derived data: written only in the transaction that stores the bucket's points, read by
    charts instead of the raw rows. Exactly equal to an aggregate over those rows.
    """

    # (job, width, bucket) is the primary key, as (job, step) is the points': every write
    # upserts ~10 buckets a job, and a surrogate id would index each new one twice. The key
    # leads with job_id, so the FK needs no index of its own. No database FK, for the
    # points' reason (TrainingMetric): buckets are written with their points, under the
    # job's lock; the checks of a tick's new buckets and log rows were 5% of its time.
    pk = models.CompositePrimaryKey("job", "width", "bucket")
    job = models.ForeignKey(
        TrainingJob,
        models.CASCADE,
        related_name="metric_summaries",
        db_index=False,
        db_constraint=False,
    )
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


class MetricKey(models.Model):
    """A named scalar series of a job ("val/loss", "train/grad_norm"), with running stats.

    The stats are kept by the write path (metrics.services) in the transaction that stores
    the key's points, so key lists never scan points: `count` points stored, first and last
    step, the value at the last step (NULL when it was NaN), min and max over finite values.
    """

    # The (job, name) unique index leads with job_id, so the FK needs no index of its own.
    job = models.ForeignKey(TrainingJob, models.CASCADE, related_name="metric_keys", db_index=False)
    name = models.CharField(max_length=250)
    created_at = models.DateTimeField(default=timezone.now)
    count = models.BigIntegerField(default=0)
    first_step = models.BigIntegerField(null=True, blank=True)
    last_step = models.BigIntegerField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)
    last_reported_at = models.DateTimeField(null=True, blank=True)
    min_value = models.FloatField(null=True, blank=True)
    max_value = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "name"], name="metric_key_unique_job_name"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}: {self.name}"


class NamedMetric(models.Model):
    """One point of a named series. NULL value is NaN (SQLite cannot store NaN); +-Infinity
    is stored as such. Both are drawn as gaps and never fail the job."""

    # No database FK, as for TrainingMetric: points are written only under their job's lock,
    # and a key goes only with its job. The (key, step) primary key is the only index, as
    # TrainingMetric's (job, step).
    pk = models.CompositePrimaryKey("key", "step")
    key = models.ForeignKey(
        MetricKey, models.CASCADE, related_name="points", db_index=False, db_constraint=False
    )
    step = models.PositiveBigIntegerField()
    value = models.FloatField(null=True, blank=True)
    reported_at = models.DateTimeField(
        default=timezone.now, help_text="The client's wall clock when it logged the point."
    )

    def __str__(self) -> str:
        return f"{self.key_id}@{self.step}: {self.value}"


class KeySummary(SummaryBucket):
    """One bucket of a key's finite points at one resolution; see metrics.summary."""

    OWNER = "key_id"

    # (key, width, bucket) is the primary key, and no database FK, as for MetricSummary.
    pk = models.CompositePrimaryKey("key", "width", "bucket")
    key = models.ForeignKey(
        MetricKey, models.CASCADE, related_name="summaries", db_index=False, db_constraint=False
    )
    sum_value = models.FloatField()
    min_value = models.FloatField()
    min_step = models.PositiveBigIntegerField()
    max_value = models.FloatField()
    max_step = models.PositiveBigIntegerField()
    last_step = models.PositiveBigIntegerField()
    last_value = models.FloatField()


class IngestLog(models.Model):
    """Which step range of which series one write created: the poll cursor's history.

    One row per (write, series) that created points; `seq` is the job's `ingest_seq` after
    that write, `key` NULL for the headline series. A page that last polled at seq N reads
    the rows after N and refetches those ranges, so a late (out-of-order) point reaches it.
    Rows older than TRAINMON_INGEST_LOG_SECONDS are pruned (metrics.tasks.prune_ingest_log);
    a cursor from before that gets a full reload.
    """

    # No database FKs, as for the points (TrainingMetric): written with them, under the
    # job's lock.
    job = models.ForeignKey(
        TrainingJob, models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    seq = models.BigIntegerField()
    key = models.ForeignKey(
        MetricKey,
        models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    min_step = models.BigIntegerField()
    max_step = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [
            models.Index(fields=["job", "seq"], name="ingest_log_job_seq_idx"),
            models.Index(fields=["created_at"], name="ingest_log_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id}#{self.seq}: {self.key_id} {self.min_step}..{self.max_step}"
