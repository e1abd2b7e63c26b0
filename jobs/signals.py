from __future__ import annotations

from typing import Any

from django.db.models.signals import pre_delete
from django.dispatch import receiver

from jobs.models import TrainingJob


@receiver(pre_delete, sender=TrainingJob)
def lock_job_before_delete(sender: type[TrainingJob], instance: TrainingJob, **kwargs: Any) -> None:
    """Wait for any write in flight to the job, so the cascade sees (and deletes) its points.

    Writers hold the job's row lock while they insert points; the points, summary and
    ingest-log tables have no database foreign key (see metrics.models), so this lock is
    what keeps orphans out. Runs inside the deletion's transaction, before the cascade's
    DELETEs but after Django collected the job's keys: a key created meanwhile would fail
    the deletion, so jobs.services.job_delete takes the lock before deleting. This catches
    the other paths (a user's deletion cascading to their jobs).
    """
    list(TrainingJob.objects.select_for_update().filter(pk=instance.pk).values_list("pk"))
