"""Writes of logged models (`mlflow.<flavor>.log_model`): create, finalize, tags, params,
delete, and a run's model outputs."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from jobs.models import Experiment, TrainingJob
from tracking.artifacts import artifact_delete_all, model_root
from tracking.models import LoggedModel, RunOutput


def logged_model_create(
    *,
    experiment: Experiment,
    name: str = "",
    source_run: TrainingJob | None = None,
    model_type: str = "",
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> LoggedModel:
    # MLflow names an unnamed model itself; a short random one reads well in a list.
    return LoggedModel.objects.create(
        experiment=experiment,
        name=name or f"model-{uuid.uuid4().hex[:8]}",
        source_run=source_run,
        model_type=model_type,
        params=params or {},
        tags=tags or {},
    )


def logged_model_update(
    *,
    model: LoggedModel,
    status: str | None = None,
    set_tags: dict[str, str] | None = None,
    delete_tag: str | None = None,
    add_params: dict[str, str] | None = None,
) -> LoggedModel:
    """One change to a model, made under its row lock so concurrent tag or param writes from
    the client's threads never lose each other's keys."""
    with transaction.atomic():
        locked = LoggedModel.objects.select_for_update().get(pk=model.pk)
        if status is not None:
            locked.status = status
        if set_tags:
            locked.tags = {**locked.tags, **set_tags}
        if delete_tag is not None:
            locked.tags.pop(delete_tag, None)
        if add_params:
            locked.params = {**locked.params, **add_params}
        locked.updated_at = timezone.now()
        locked.save()
    return locked


def logged_model_delete(*, model: LoggedModel) -> None:
    model_id = model.model_id
    model.delete()
    # Files go after the row: a failure here leaves unreachable files, never a broken model.
    transaction.on_commit(lambda: artifact_delete_all(root=model_root(model_id)))


def run_outputs_log(*, job: TrainingJob, outputs: list[tuple[LoggedModel, int]]) -> None:
    """Record models as outputs of `job`; logging the same model again moves its step."""
    with transaction.atomic():
        for model, step in outputs:
            RunOutput.objects.update_or_create(job=job, model=model, defaults={"step": step})
