"""Request and response bodies of the job endpoints (jobs/api.py).

Inputs are strict: a count is a JSON integer, not "5" or 5.0 or true, and unknown keys are
errors, so a typo is reported instead of silently dropped. Limits and messages are the
service's (jobs.services): the schema documents them and checks them with the same words.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from django.http import HttpRequest
from ninja import Schema
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jobs.display import progress_floor, progress_open_end
from jobs.models import JobSource, JobStatus, TrainingJob
from jobs.services import (
    DEFAULT_EXPERIMENT_NAME,
    EXPERIMENT_NAME_MAX,
    JOB_BOUNDS,
    hyperparameters_problem,
    length_problems,
    total_steps_problem,
    unstorable_text,
)

LABEL_MAX_LENGTH = TrainingJob._meta.get_field("name").max_length
DESCRIPTION_MAX_LENGTH = 10_000
REASON_MAX_LENGTH = 2_000
PROGRESS_DECIMALS = 3


def storable_text(value: str) -> str:
    if problem := unstorable_text(value):
        raise PydanticCustomError("unstorable_text", problem)
    return value


def _none_as_empty(value: object) -> object:
    return "" if value is None else value


Text = Annotated[StrictStr, BeforeValidator(_none_as_empty)]


def _service_check(field: str) -> AfterValidator:
    """The service's bound for `field`, with its message."""
    bound = JOB_BOUNDS[field]

    def check(value: int) -> int:
        if problem := bound.problem(value):
            raise PydanticCustomError("out_of_range", problem)
        return value

    return AfterValidator(check)


def _service_range(field: str) -> dict[str, Any]:
    """The service's bound for `field`, for the schema (json_schema_extra)."""
    bound = JOB_BOUNDS[field]
    return {"minimum": bound.minimum, "maximum": bound.maximum}


# Integer fields checked by the service's bounds, with their messages; the fields document
# the range themselves (`_service_range`), beside the null that leaves them out.
TotalEpochs = Annotated[StrictInt, _service_check("total_epochs")]
StepsPerEpoch = Annotated[StrictInt, _service_check("steps_per_epoch")]


LENGTH_HINT = (
    "Optional, with steps_per_epoch: give both or neither. A hint for progress and ETA, never "
    "a limit: points past it are stored."
)


class JobIn(BaseModel):
    """An external job: your training script reports its points.

    The length (total_epochs and steps_per_epoch) is optional: leave both out for a run of
    unknown length, whose pages show steps done, rate and elapsed time instead of a percentage.
    """

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=LABEL_MAX_LENGTH, examples=["mlp-spirals"])
    total_epochs: TotalEpochs | None = Field(
        None, description=LENGTH_HINT, json_schema_extra=_service_range("total_epochs")
    )
    steps_per_epoch: StepsPerEpoch | None = Field(
        None,
        description="Optional, with total_epochs: give both or neither.",
        json_schema_extra=_service_range("steps_per_epoch"),
    )
    model_name: Text = Field("", max_length=LABEL_MAX_LENGTH)
    dataset: Text = Field("", max_length=LABEL_MAX_LENGTH)
    description: Text = Field("", max_length=DESCRIPTION_MAX_LENGTH)
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description='Any JSON object, e.g. {"lr": 0.05}, at most '
        "TRAINMON_HYPERPARAMETERS_MAX_BYTES (64 KiB) as JSON.",
    )
    experiment: Text | None = Field(
        None,
        max_length=EXPERIMENT_NAME_MAX,
        description="The experiment's name: made if new; left out, the Default experiment.",
        examples=["spirals"],
    )

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = storable_text(value).strip()
        if not value:
            raise PydanticCustomError("experiment_empty", "An experiment needs a name.")
        return value

    @field_validator("name", "model_name", "dataset", "description")
    @classmethod
    def _text(cls, value: str) -> str:
        return storable_text(value)

    @field_validator("hyperparameters", mode="before")
    @classmethod
    def _null_hyperparameters(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("hyperparameters")
    @classmethod
    def _json_safe(cls, value: dict[str, Any]) -> dict[str, Any]:
        if problem := hyperparameters_problem(value):
            raise PydanticCustomError("unstorable_json", problem)
        return value

    @model_validator(mode="after")
    def _total_steps(self) -> JobIn:
        if problems := length_problems(JobSource.EXTERNAL, self.total_epochs, self.steps_per_epoch):
            raise PydanticCustomError("length_incomplete", " ".join(problems.values()))
        if self.total_epochs is None or self.steps_per_epoch is None:
            return self
        if problem := total_steps_problem(self.total_epochs, self.steps_per_epoch):
            raise PydanticCustomError("too_many_steps", problem)
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
    total_epochs: int | None = Field(description="Declared; null for a run of unknown length.")
    steps_per_epoch: int | None = Field(description="Declared; null for a run of unknown length.")
    total_steps: int | None = Field(
        description="total_epochs * steps_per_epoch: a hint, points may run past it."
    )
    current_step: int = Field(description="Steps done: the highest step reported + 1.")
    current_epoch: int | None = Field(description="null for a run of unknown length.")
    progress_percent: float | None = Field(
        description="Of the declared length, rounded down: 100 only once every declared step "
        "is done, and it stays 100 past them. null for a run of unknown length."
    )
    last_loss: float | None
    best_loss: float | None
    best_loss_step: int | None
    last_accuracy: float | None
    last_learning_rate: float | None
    steps_per_second: float | None
    eta_seconds: float | None = Field(
        description="null unless running with a rate, within a declared length."
    )
    failure_reason: str
    experiment: str = Field(description="The experiment's name (Default when none was named).")
    run_id: str = Field(description="The MLflow run id (the MLflow tracking API's run_id).")
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
            status=JobStatus(job.status),
            source=job.source,
            total_epochs=job.total_epochs,
            steps_per_epoch=job.steps_per_epoch,
            total_steps=job.total_steps,
            current_step=job.current_step,
            current_epoch=job.current_epoch,
            progress_percent=progress_floor(
                job.current_step,
                job.total_steps,
                decimals=PROGRESS_DECIMALS,
                open_end=progress_open_end(job),
            ),
            last_loss=job.last_loss,
            best_loss=job.best_loss,
            best_loss_step=job.best_loss_step,
            last_accuracy=job.last_accuracy,
            last_learning_rate=job.last_learning_rate,
            steps_per_second=job.steps_per_second,
            eta_seconds=None if eta is None else eta.total_seconds(),
            failure_reason=job.failure_reason,
            experiment=job.experiment.name if job.experiment else DEFAULT_EXPERIMENT_NAME,
            run_id=job.run_uuid,
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
        return storable_text(value)
