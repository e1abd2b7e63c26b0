"""A deleted job's run artifacts leave the storage with it (its logged models stay, as in
MLflow: they belong to the experiment)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from jobs.models import TrainingJob
from tracking.artifacts import artifact_delete_all, run_root


@receiver(post_delete, sender=TrainingJob, dispatch_uid="tracking_run_artifacts_delete")
def run_artifacts_delete(sender: type[TrainingJob], instance: TrainingJob, **kwargs: Any) -> None:
    root = run_root(instance.run_uuid)
    # After the commit: a rolled-back delete keeps its files.
    transaction.on_commit(lambda: artifact_delete_all(root=root))
