"""Request and response bodies of the HTTP API (metrics/api.py).

Inputs are strict: a step is a JSON integer, not "5" or 5.0 or true, and unknown keys are
errors, so a typo such as "acc" for "accuracy" is reported instead of silently dropped.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from django.conf import settings
from django.http import HttpRequest
from ninja import Schema
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jobs.models import JobStatus, TrainingJob
from jobs.services import (
    MAX_EPOCHS,
    MAX_STEPS_PER_EPOCH,
    MAX_TOTAL_STEPS,
    unstorable_json,
    unstorable_text,
)

# Databases store steps as signed 64-bit and epochs as signed 32-bit integers.
MAX_STEP = 2**63 - 1
MAX_EPOCH = 2**31 - 1
LABEL_MAX_LENGTH = 200  # TrainingJob.name / model_name / dataset
DESCRIPTION_MAX_LENGTH = 10_000
REASON_MAX_LENGTH = 2_000
TOO_MANY_POINTS = "too_many_points"

# JSON has no NaN: a diverged loss may be sent as one of these strings.
NON_FINITE_LOSSES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# --- text that every database stores ----------------------------------------------------------


def _storable_text(value: str) -> str:
    if problem := unstorable_text(value):
        raise PydanticCustomError("unstorable_text", problem)
    return value


def _none_as_empty(value: object) -> object:
    return "" if value is None else value


def _check_json_value(value: Any) -> None:
    if problem := unstorable_json(value):
        raise PydanticCustomError("unstorable_json", problem)


Text = Annotated[StrictStr, BeforeValidator(_none_as_empty)]


class ErrorOut(Schema):
    error: str = Field(description="What went wrong, in one sentence.")
    details: Any = Field(
        None,
        description="For invalid input, a list of {field, message} objects (with `index` for "
        "a bad point), at most 50; otherwise null or an object.",
    )


# --- jobs ---------------------------------------------------------------------------------------


class JobIn(BaseModel):
    """An external job: your training script reports its points."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=LABEL_MAX_LENGTH, examples=["mlp-spirals"])
    total_epochs: StrictInt = Field(ge=1, le=MAX_EPOCHS)
    steps_per_epoch: StrictInt = Field(ge=1, le=MAX_STEPS_PER_EPOCH)
    model_name: Text = Field("", max_length=LABEL_MAX_LENGTH)
    dataset: Text = Field("", max_length=LABEL_MAX_LENGTH)
    description: Text = Field("", max_length=DESCRIPTION_MAX_LENGTH)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description='Any JSON object, e.g. {"lr": 0.05}.'
    )

    @field_validator("name", "model_name", "dataset", "description")
    @classmethod
    def _text(cls, value: str) -> str:
        return _storable_text(value)

    @field_validator("hyperparameters", mode="before")
    @classmethod
    def _null_hyperparameters(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("hyperparameters")
    @classmethod
    def _json_safe(cls, value: dict[str, Any]) -> dict[str, Any]:
        _check_json_value(value)
        return value

    @model_validator(mode="after")
    def _total_steps(self) -> JobIn:
        if self.total_epochs * self.steps_per_epoch > MAX_TOTAL_STEPS:
            raise PydanticCustomError(
                "too_many_steps",
                f"total_epochs * steps_per_epoch must be at most {MAX_TOTAL_STEPS:,}.",
            )
        return self


class JobOut(Schema):
    id: int
    name: str
    description: str
    model_name: str
    dataset: str
    hyperparameters: dict[str, Any]
    status: JobStatus
    source: str
    total_epochs: int
    steps_per_epoch: int
    total_steps: int
    current_step: int = Field(description="Steps done: points are steps 0..current_step-1.")
    current_epoch: int
    progress_percent: float
    last_loss: float | None
    best_loss: float | None
    best_loss_step: int | None
    last_accuracy: float | None
    last_learning_rate: float | None
    steps_per_second: float | None
    eta_seconds: float | None
    failure_reason: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_reported_at: datetime | None
    url: str = Field(description="The job's page.")

    @classmethod
    def of(cls, job: TrainingJob, request: HttpRequest) -> JobOut:
        eta = job.eta
        return cls(
            id=job.pk,
            name=job.name,
            description=job.description,
            model_name=job.model_name,
            dataset=job.dataset,
            hyperparameters=job.hyperparameters,
            status=job.status,
            source=job.source,
            total_epochs=job.total_epochs,
            steps_per_epoch=job.steps_per_epoch,
            total_steps=job.total_steps,
            current_step=job.current_step,
            current_epoch=job.current_epoch,
            progress_percent=round(job.progress_percent, 3),
            last_loss=job.last_loss,
            best_loss=job.best_loss,
            best_loss_step=job.best_loss_step,
            last_accuracy=job.last_accuracy,
            last_learning_rate=job.last_learning_rate,
            steps_per_second=job.steps_per_second,
            eta_seconds=None if eta is None else eta.total_seconds(),
            failure_reason=job.failure_reason,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_reported_at=job.last_reported_at,
            url=request.build_absolute_uri(job.get_absolute_url()),
        )


class FinishIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["completed", "failed"]
    reason: Text = Field(
        "", max_length=REASON_MAX_LENGTH, description="Why it failed (shown on the job page)."
    )

    @field_validator("reason")
    @classmethod
    def _text(cls, value: str) -> str:
        return _storable_text(value)


# --- points -------------------------------------------------------------------------------------


def _loss_from_string(value: object) -> object:
    if isinstance(value, str):
        try:
            return NON_FINITE_LOSSES[value]
        except KeyError:
            raise PydanticCustomError(
                "loss_string",
                'A loss must be a number, or one of the strings "NaN", "Infinity", "-Infinity".',
            ) from None
    return value


Loss = Annotated[
    StrictFloat,
    BeforeValidator(_loss_from_string),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number"},
                {"type": "string", "enum": list(NON_FINITE_LOSSES)},
            ],
            "description": 'A number; NaN or an infinity (as "NaN", "Infinity", "-Infinity") '
            "means the training diverged: the job fails at that step.",
        }
    ),
]


class PointIn(BaseModel):
    # A plain pydantic model, not a ninja Schema: a batch holds up to 10,000 of them and
    # Schema's ORM-attribute support costs time on every one.
    model_config = ConfigDict(extra="forbid")

    step: StrictInt = Field(ge=0, le=MAX_STEP, description="0-based, below the job's total steps.")
    epoch: StrictInt = Field(ge=1, le=MAX_EPOCH, description="1-based, at most the job's epochs.")
    loss: Loss
    accuracy: StrictFloat | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    learning_rate: StrictFloat | None = Field(None, ge=0, allow_inf_nan=False)


class MetricsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: list[PointIn] = Field(
        description="At most TRAINMON_API_MAX_POINTS (10,000) points; steps unique. Stored all "
        "or nothing; steps already stored are skipped and counted as duplicates.",
    )

    @field_validator("points", mode="before")
    @classmethod
    def _at_most_max_points(cls, value: object) -> object:
        # Checked before the points themselves: an oversized batch is refused as a whole (413).
        limit = settings.TRAINMON_API_MAX_POINTS
        if isinstance(value, list) and len(value) > limit:
            raise PydanticCustomError(
                TOO_MANY_POINTS,
                "A batch holds at most {limit} points; this one has {count}.",
                {"limit": limit, "count": len(value)},
            )
        return value


class MetricsOut(Schema):
    created: int = Field(description="Points stored by this request.")
    duplicates: int = Field(description="Points at steps already stored: skipped.")
    discarded: int = Field(
        description="Points from the first non-finite loss on: not stored, the job failed."
    )
    job: JobOut


class SeriesOut(Schema):
    """Columns of the job's points after `after`, in step order."""

    steps: list[int]
    loss: list[float]
    accuracy: list[float | None]
    learning_rate: list[float | None]
    total: int = Field(description="Points stored after `after`.")
    downsampled: bool = Field(
        description="True when more than max_points were stored: the range was downsampled "
        "(each bucket keeps its lowest and highest loss and its last point)."
    )
    last_step: int | None = Field(description="Pass as `after` to get only newer points.")
