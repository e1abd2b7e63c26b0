from __future__ import annotations

from typing import Any

from django.db.models.signals import pre_delete
from django.dispatch import receiver

from jobs.models import TrainingJob


@receiver(pre_delete, sender=TrainingJob)
def lock_job_before_delete(sender: type[TrainingJob], instance: TrainingJob, **kwargs: Any) -> None:
    """Wait for any write in flight to the job, so the cascade sees (and deletes) its points.

    Writers hold the job's row lock while they insert points; the points table has no
    database foreign key (see metrics.models), so this lock is what keeps orphans out.
    Runs inside the deletion's transaction, before the cascade's DELETEs.
    """
    list(TrainingJob.objects.select_for_update().filter(pk=instance.pk).values_list("pk"))
