from __future__ import annotations

import uuid

from django.db import models
from django.utils import timezone

from jobs.models import Experiment, TrainingJob


def new_model_id() -> str:
    # MLflow's own shape ("m-" and 32 hex digits), so ids look familiar in scripts and logs.
    return f"m-{uuid.uuid4().hex}"


class LoggedModelStatus(models.TextChoices):
    PENDING = "LOGGED_MODEL_PENDING", "Pending"
    READY = "LOGGED_MODEL_READY", "Ready"
    UPLOAD_FAILED = "LOGGED_MODEL_UPLOAD_FAILED", "Upload failed"


class LoggedModel(models.Model):
    """A model logged through MLflow (`<flavor>.log_model`): its files are artifacts under
    `models/<model_id>/`, reached from its run as `runs:/<run id>/<name>`."""

    Status = LoggedModelStatus

    model_id = models.CharField(max_length=64, primary_key=True, default=new_model_id)
    experiment = models.ForeignKey(Experiment, models.CASCADE, related_name="logged_models")
    # The run that produced it; the model outlives a deleted run, as in MLflow.
    source_run = models.ForeignKey(
        TrainingJob, models.SET_NULL, null=True, blank=True, related_name="logged_models"
    )
    name = models.CharField(max_length=250)
    model_type = models.CharField(max_length=250, blank=True)
    status = models.CharField(
        max_length=32, choices=LoggedModelStatus, default=LoggedModelStatus.PENDING
    )
    status_message = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "model_id"]
        indexes = [models.Index(fields=["experiment", "name"], name="logged_model_exp_name_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.model_id})"


class RunOutput(models.Model):
    """A logged model recorded as an output of a run (`runs/outputs`), at a step."""

    job = models.ForeignKey(TrainingJob, models.CASCADE, related_name="model_outputs")
    model = models.ForeignKey(LoggedModel, models.CASCADE, related_name="run_outputs")
    step = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "model"], name="run_output_job_model_unique")
        ]

    def __str__(self) -> str:
        return f"{self.job_id} -> {self.model_id}"
